"""Translation quality on unpaired tasks whose answers are known, in one run.

Each task builds two unpaired domains from images that scikit-image ships (nothing is
downloaded): domain A shows some scenes, domain B shows *other* scenes passed through a
fixed, known transformation T. A method trains G: A→B on them, and G is scored on
held-out scenes (in neither domain) against the truth T(a):

- ``psnr`` (dB) and ``ssim`` against T(a), over the target dtype's range;
- ``content``: the correlation of the output's fine structure (luminance minus its
  blur) with the truth's. Negative means G inverts the content (bright comes out dark),
  CycleGAN's best-known failure; such runs are flagged ``INVERTED``;
- ``cycle``: the held-out cycle error |F(G(a)) − a|, in % of A's range;
- ``seconds``: training wall-clock time (runs share the CPU ``--jobs`` at a time).

Two budgets: equal steps (every method ``--steps``), and equal wall-clock (each
method gets the steps it makes in the time the first method, the baseline, needed for
``--steps``; the rates come from the equal-steps runs of the same invocation).

Usage::

    .venv/bin/python benchmarks/quality.py                   # every task, method, 2 seeds
    .venv/bin/python benchmarks/quality.py --quick           # CI smoke run, ~1 min
    .venv/bin/python benchmarks/quality.py --tasks stain --methods paper --seeds 0 1 2
    .venv/bin/python benchmarks/quality.py --json quality.json
    .venv/bin/python benchmarks/quality.py --results quality.json --json more.json  # reuses rows

Prints one row per task, method, seed and budget, then the mean and spread per task and
method, and the gain of each method over the baseline. Asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from napari_cyclestyle.presets import PRESETS

SIZE = 256  # every scene is resized and cropped to SIZE × SIZE


@dataclass(frozen=True)
class Task:
    """An unpaired task with a known answer: domain B is ``truth`` applied to scenes A
    never shows; held-out scenes score G."""

    name: str
    description: str
    scenes: tuple[str, ...]  # split in thirds: A, B, held out (every third scene each)
    rgb_in: bool
    truth: Callable[[np.ndarray], np.ndarray]
    input_dtype: str = "uint8"
    noise: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None
    same_channels: bool = True  # do A and B have the same channel count?


def _scene(name: str, rgb: bool, dtype: str) -> np.ndarray:
    """A scikit-image scene, SIZE × SIZE, gray or RGB, as uint8 or uint16."""
    from skimage import data, transform

    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    image = image[..., :3] if image.ndim == 3 else image
    if rgb and image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if not rgb and image.ndim == 3:
        image = (image @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    scale = SIZE / min(image.shape[:2])
    shape = (max(SIZE, round(image.shape[0] * scale)), max(SIZE, round(image.shape[1] * scale)))
    image = transform.resize(image, shape, preserve_range=True, anti_aliasing=True)
    top, left = (shape[0] - SIZE) // 2, (shape[1] - SIZE) // 2
    image = image[top : top + SIZE, left : left + SIZE] / 255.0
    if dtype == "uint16":  # a 12-bit-like camera range: 300 … 3800 counts
        return np.rint(300 + 3500 * image).astype(np.uint16)
    return np.rint(255 * image).astype(np.uint8)


def _stain(gray: np.ndarray) -> np.ndarray:
    from napari_cyclestyle._sample_data import stain

    return stain(gray)


def _tone(rgb: np.ndarray) -> np.ndarray:
    """A colour grade: a fixed channel mix (warm, desaturated) and a gamma of 0.8."""
    mix = np.array([[0.60, 0.35, 0.10], [0.25, 0.60, 0.10], [0.10, 0.25, 0.45]])
    graded = np.clip(rgb / 255.0 @ mix.T, 0, 1) ** 0.8
    return np.rint(255 * graded).astype(np.uint8)


def _fluorescence(counts: np.ndarray) -> np.ndarray:
    """A fluorescence-like response: a power law of the normalised signal, 16-bit."""
    signal = (counts.astype(np.float64) - 300) / 3500
    return np.rint(800 + 40000 * np.clip(signal, 0, 1) ** 2.2).astype(np.uint16)


def _shot_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson-like noise of a camera with 0.25 photo-electrons per count."""
    noisy = rng.poisson(image.astype(np.float64) * 0.25) / 0.25
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def _sharpen(gray: np.ndarray) -> np.ndarray:
    """Unsharp masking (a local operator): a + 1.5 · (a − blur(a, σ = 2))."""
    from scipy.ndimage import gaussian_filter

    image = gray.astype(np.float64)
    sharpened = image + 1.5 * (image - gaussian_filter(image, 2.0))
    return np.rint(np.clip(sharpened, 0, 255)).astype(np.uint8)


GRAY_SCENES = (
    "camera", "brick", "grass", "gravel", "moon", "text", "coins", "page", "clock",
    "cell", "astronaut", "coffee", "chelsea", "rocket", "motorcycle",
)  # fmt: skip
RGB_SCENES = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina",
    "hubble_deep_field", "colorwheel", "motorcycle",
)  # fmt: skip
TASKS = {
    task.name: task
    for task in (
        Task("stain", "gray → stain-like RGB (1→3, no identity loss)", GRAY_SCENES,
             False, _stain, same_channels=False),
        Task("tone", "RGB → colour-graded RGB (3→3)", RGB_SCENES, True, _tone),
        Task("fluorescence", "16-bit power-law response with shot noise (1→1)", GRAY_SCENES,
             False, _fluorescence, "uint16", _shot_noise),
        Task("sharpen", "gray → unsharp-masked gray (1→1, a local operator)", GRAY_SCENES,
             False, _sharpen),
    )
}  # fmt: skip

# Each method: settings on top of BASE. The first method is the baseline. "paper" is the
# recipe of Zhu et al. 2017, spelled out so that it stays reproducible when the
# project's defaults change.
BASE = {
    "model": {"generator": "resnet_6blocks", "ngf": 16, "ndf": 16},
    "train": {"crop_size": 64, "batch_size": 1, "preview_every": 0, "checkpoint_every": 0,
              "log_every": 50, "device": "cpu", "precision": "fp32"},
}  # fmt: skip
# The methods of issue 19, each alone and in a few combinations (see TrainConfig).
_EMA = {"train": {"ema_decay": 0.995}}
_RESIZE = {"model": {"upsampling": "resize"}}
_SN_HINGE = {"model": {"spectral_norm": True}, "train": {"gan_mode": "hinge"}}
_R1 = {"train": {"lambda_r1": 1.0, "r1_every": 4}}
_STRUCTURE = {"train": {"lambda_structure": 1.0}}
_DIFF_AUGMENT = {"train": {"diff_augment": "color,translation,cutout"}}
_PATCH_NCE = {"train": {"lambda_nce": 1.0}}  # needs equal channel counts
_FAST_LR = {"train": {"learning_rate": 5e-4}}


def _combined(*methods: dict) -> dict:
    """The settings of several methods together."""
    combined: dict[str, dict] = {"model": {}, "train": {}}
    for method in methods:
        for section, values in method.items():
            combined[section].update(values)
    return combined


METHODS = {
    "paper": PRESETS["paper"],  # the CycleGAN paper's recipe, set explicitly
    "defaults": {},  # the project's current defaults
    "ema": _EMA,
    "resize": _RESIZE,
    "sn-hinge": _SN_HINGE,
    "r1": _R1,
    "structure": _STRUCTURE,
    "diffaugment": _DIFF_AUGMENT,
    "patchnce": _PATCH_NCE,
    "ema+sn-hinge+structure": _combined(_EMA, _SN_HINGE, _STRUCTURE),
    "resize+structure": _combined(_RESIZE, _STRUCTURE),
    "ema+resize+structure": _combined(_EMA, _RESIZE, _STRUCTURE),
    "ema+resize+structure+lr": _combined(_EMA, _RESIZE, _STRUCTURE, _FAST_LR),
    "ema+sn-hinge+structure+lr": _combined(_EMA, _SN_HINGE, _STRUCTURE, _FAST_LR),
    "ema+patchnce+structure": _combined(_EMA, _PATCH_NCE, _STRUCTURE),
    "all": _combined(_EMA, _RESIZE, _SN_HINGE, _R1, _STRUCTURE, _DIFF_AUGMENT),
}


def applies(task: Task, method: str) -> bool:
    """Whether ``method`` can train on ``task``: PatchNCE embeds a generator's output
    with its own encoder, so it needs domains with the same channel count."""
    return task.same_channels or not METHODS[method].get("train", {}).get("lambda_nce")


def build_task(task: Task, seed: int):
    """Domain A and B training stacks, the held-out A scenes and their truths."""
    rng = np.random.default_rng(1000 + seed)
    scenes = [_scene(name, task.rgb_in, task.input_dtype) for name in task.scenes]
    domain_a = np.stack(scenes[0::3])
    domain_b = [task.truth(scene) for scene in scenes[1::3]]
    if task.noise is not None:
        domain_b = [task.noise(image, rng) for image in domain_b]
    held_out = scenes[2::3]
    return domain_a, np.stack(domain_b), held_out, [task.truth(scene) for scene in held_out]


def _luminance(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float64)
    return image @ np.array([0.299, 0.587, 0.114]) if image.ndim == 3 else image


def content_correlation(output: np.ndarray, truth: np.ndarray) -> float:
    """Correlation of the fine structure (luminance minus its σ = 4 blur) of two images."""
    from scipy.ndimage import gaussian_filter

    structure = [_luminance(x) - gaussian_filter(_luminance(x), 4.0) for x in (output, truth)]
    return float(np.corrcoef(structure[0].ravel(), structure[1].ravel())[0, 1])


def score(model, held_out: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """PSNR, SSIM and content correlation of G against the truth, and the cycle error."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from napari_cyclestyle import translate

    rows = []
    for scene, truth in zip(held_out, truths, strict=True):
        fake = translate(scene, model, "AtoB", device="cpu", tile_size=None)
        back = translate(fake, model, "BtoA", device="cpu", tile_size=None)
        span = float(np.iinfo(truth.dtype).max) if truth.dtype == np.uint8 else 40800.0
        scene_span = float(np.iinfo(np.uint8).max) if scene.dtype == np.uint8 else 3500.0
        channel_axis = -1 if truth.ndim == 3 else None
        fake64, truth64 = fake.astype(np.float64), truth.astype(np.float64)
        rows.append(
            {
                "psnr": peak_signal_noise_ratio(truth64, fake64, data_range=span),
                "ssim": structural_similarity(
                    truth64, fake64, data_range=span, channel_axis=channel_axis
                ),
                "content": content_correlation(fake, truth),
                "cycle": 100 * float(np.abs(back.astype(np.float64) - scene).mean()) / scene_span,
            }
        )
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def run(task_name: str, method: str, seed: int, steps: int, threads: int) -> dict:
    """Train one method on one task for ``steps`` steps and score it (in its own process)."""
    import torch

    from napari_cyclestyle import Config, train

    torch.set_num_threads(threads)
    domain_a, domain_b, held_out, truths = build_task(TASKS[task_name], seed)
    settings = {
        section: {**BASE[section], **METHODS[method].get(section, {})}
        for section in ("model", "train")
    }
    settings["train"].update(seed=seed, n_steps=steps - steps // 2, n_steps_decay=steps // 2)
    config = Config.from_dict(settings)
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "model.safetensors"
        start = time.perf_counter()
        for _ in train(domain_a, domain_b, config, output=output):
            pass
        seconds = time.perf_counter() - start
        from napari_cyclestyle import load_model

        scores = score(load_model(output), held_out, truths)
    return {"task": task_name, "method": method, "seed": seed, "steps": steps,
            "seconds": seconds, **scores}  # fmt: skip


@dataclass
class Job:
    task: str
    method: str
    seed: int
    steps: int
    budget: str


def run_missing(jobs: list[Job], earlier: list[dict], args: argparse.Namespace) -> list[dict]:
    """The rows of ``jobs``: those in ``earlier`` (the rows of ``--results``) reused and
    printed, the others run."""
    found = {(r["task"], r["method"], r["seed"], r["steps"], r["budget"]): r for r in earlier}
    reused = [found[key] for key in map(dataclasses.astuple, jobs) if key in found]
    for row in reused:
        print(format_row(row), flush=True)
    missing = [job for job in jobs if dataclasses.astuple(job) not in found]
    return reused + run_jobs(missing, args.jobs, args.threads)


def run_jobs(jobs: list[Job], workers: int, threads: int) -> list[dict]:
    """Run jobs ``workers`` at a time, each in a fresh process; print each as it ends."""
    results = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [
            (job, pool.submit(run, job.task, job.method, job.seed, job.steps, threads))
            for job in jobs
        ]
        for job, future in futures:
            result = {**future.result(), "budget": job.budget}
            results.append(result)
            print(format_row(result), flush=True)
    return results


_METHOD_WIDTH = max(len(name) for name in METHODS) + 2
HEADER = (
    f"{'task':<13}{'method':<{_METHOD_WIDTH}}{'budget':<7}{'seed':>4}{'steps':>7}{'PSNR dB':>9}"
    f"{'SSIM':>7}{'content':>9}{'cycle %':>9}{'seconds':>9}"
)


def format_row(result: dict) -> str:
    flag = "  INVERTED" if result["content"] < 0 else ""
    return (
        f"{result['task']:<13}{result['method']:<{_METHOD_WIDTH}}{result['budget']:<7}{result['seed']:>4}"
        f"{result['steps']:>7}{result['psnr']:>9.2f}{result['ssim']:>7.3f}"
        f"{result['content']:>9.3f}{result['cycle']:>9.2f}{result['seconds']:>9.1f}{flag}"
    )


def summarise(results: list[dict], baseline: str) -> list[str]:
    """Mean ± spread (sample standard deviation) per task, method and budget, and the
    mean PSNR gain over the baseline."""
    lines = [f"{'task':<13}{'method':<{_METHOD_WIDTH}}{'budget':<7}{'PSNR dB':>15}{'SSIM':>15}"
             f"{'gain dB':>9}{'inverted':>9}"]  # fmt: skip
    groups: dict[tuple, list[dict]] = {}
    for result in results:
        groups.setdefault((result["task"], result["method"], result["budget"]), []).append(result)

    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    for (task, method, budget), rows in groups.items():
        psnr = [row["psnr"] for row in rows]
        ssim = [row["ssim"] for row in rows]
        base = groups.get((task, baseline, "steps"), rows)
        gain = statistics.mean(psnr) - statistics.mean(row["psnr"] for row in base)
        inverted = sum(row["content"] < 0 for row in rows)
        lines.append(
            f"{task:<13}{method:<{_METHOD_WIDTH}}{budget:<7}"
            f"{statistics.mean(psnr):>9.2f} ± {spread(psnr):<4.2f}"
            f"{statistics.mean(ssim):>9.3f} ± {spread(ssim):<4.3f}{gain:>+9.2f}"
            f"{inverted:>6}/{len(rows)}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
        help="the first is the baseline (default: every method, paper first)",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=1500, help="steps of the equal-steps budget")
    parser.add_argument(
        "--budgets", nargs="+", choices=["steps", "time"], default=["steps", "time"]
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one per core)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 steps, one seed")
    parser.add_argument("--json", type=Path, help="also write every row as JSON")
    parser.add_argument(
        "--results", nargs="+", type=Path, metavar="JSON",
        help="rows written by earlier runs' --json: reused instead of run again",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds = 4, args.seeds[:1]

    print(
        f"napari-cyclestyle quality benchmark: {args.steps} steps, seeds {args.seeds}, "
        f"{args.jobs} run(s) at a time with {args.threads} thread(s), {os.cpu_count()} CPUs"
    )
    for name in args.tasks:
        print(f"  {name}: {TASKS[name].description}")
    print(HEADER)
    baseline = args.methods[0]
    earlier = [row for path in args.results or [] for row in json.loads(path.read_text())]
    jobs = [Job(t, m, s, args.steps, "steps") for t in args.tasks for m in args.methods
            for s in args.seeds if applies(TASKS[t], m)]  # fmt: skip
    results = run_missing(jobs, earlier, args) if "steps" in args.budgets else []
    if "time" in args.budgets:
        # Seconds per step of each method, relative to the baseline on the same task.
        def rate(task: str, method: str) -> float:
            rows = [r for r in results if r["task"] == task and r["method"] == method]
            return sum(r["steps"] for r in rows) / sum(r["seconds"] for r in rows)

        timed = []
        for job in jobs:
            if job.method == baseline:
                continue
            ratio = rate(job.task, job.method) / rate(job.task, baseline)
            timed.append(Job(job.task, job.method, job.seed, max(2, round(args.steps * ratio)),
                             "time"))  # fmt: skip
        results += [{**r, "budget": "time"} for r in results if r["method"] == baseline]
        results += run_missing(timed, earlier, args)
    print()
    print("\n".join(summarise(results, baseline)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
