"""What ``tile_size="auto"`` costs and chooses on this CPU, in one process.

Alternating rounds on one RGB uint8 image through resnet_9blocks (ngf 64 by default):

``whole``       ``tile_size=None``: one whole-plane forward;
``timed-whole`` ``tile_size="auto"`` with nothing timed yet and the timing forced to
                find the whole plane faster (``FASTER_BY`` = inf): the whole forward in
                stages plus the crop's runs, what a CPU where the whole plane wins pays
                on its first plane;
``timed``       ``tile_size="auto"`` with nothing timed yet: the real choice, made on the
                way (printed at the end, one per round);
``known``       ``tile_size="auto"`` once timed: what later planes and calls get.

Each round clears the process's timings first (but ``known``). Prints every time, the
ratio of each mode's total to ``whole``'s, and the choices; asserts nothing. Compare
ratios, not times: the CPU is shared.

Usage::

    python benchmarks/bench_whole_or_tiles.py                    # 1024², 4 rounds
    python benchmarks/bench_whole_or_tiles.py --size 2048 --rounds 2
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/bench_whole_or_tiles.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_cyclestyle import whole_or_tiles
from napari_cyclestyle.config import ModelConfig
from napari_cyclestyle.inference import translate
from napari_cyclestyle.intensity import IntensityNorm
from napari_cyclestyle.model import CycleStyleModel, build_generators

MODES = ("whole", "timed-whole", "timed", "known")


def _model(ngf: int) -> CycleStyleModel:
    torch.manual_seed(0)
    config = ModelConfig(generator="resnet_9blocks", ngf=ngf)
    generator_ab, generator_ba = build_generators(config)
    norm = IntensityNorm("fixed", (0.0,), (255.0,), "uint8")
    return CycleStyleModel(config, generator_ab.eval(), generator_ba.eval(), norm, norm)


def _seconds(image: np.ndarray, model: CycleStyleModel, mode: str) -> float:
    if mode != "known":
        whole_or_tiles.forget_timings()
    faster_by = whole_or_tiles.FASTER_BY
    if mode == "timed-whole":
        whole_or_tiles.FASTER_BY = float("inf")
    try:
        start = time.perf_counter()
        translate(image, model, device="cpu", tile_size=None if mode == "whole" else "auto")
        return time.perf_counter() - start
    finally:
        whole_or_tiles.FASTER_BY = faster_by


def measure_rounds(size: int, ngf: int, rounds: int, progress=print) -> dict:
    """Seconds of each mode per round (modes alternating) on one ``size``² RGB uint8
    image, and the choice ``timed`` made in each round; ``progress`` gets a line per
    round."""
    model = _model(ngf)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    translate(image[:256, :256], model, device="cpu")  # warm-up: imports, first kernels
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    choices = []
    for round_ in range(rounds):
        for mode in MODES:
            times[mode].append(_seconds(image, model, mode))
            if mode == "timed":
                choices.append(whole_or_tiles.timed_choices().get((size, size)))
        progress(f"round {round_ + 1}: " + ", ".join(f"{m} {times[m][-1]:.2f} s" for m in MODES))
    whole = sum(times["whole"])
    return {
        "size": size,
        "ngf": ngf,
        "seconds": times,
        "over_whole": {mode: sum(times[mode]) / whole for mode in MODES},
        "choices": [
            {True: "tiles", False: "whole"}.get(choice, "not timed") for choice in choices
        ],
    }


def main(argv: list[str] | None = None) -> None:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side (default 1024)")
    parser.add_argument("--ngf", type=int, default=64, help="generator width (default 64)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of all modes")
    args = parser.parse_args(argv)
    print(
        f"{args.size}² RGB, resnet_9blocks ngf {args.ngf}, {torch.get_num_threads()} threads, "
        f"ISA {torch.backends.cpu.get_cpu_capability()}"
    )
    measured = measure_rounds(args.size, args.ngf, args.rounds)
    print(
        "over whole (ratio of totals): "
        + ", ".join(f"{mode} {ratio:.3f}" for mode, ratio in measured["over_whole"].items())
    )
    print("timed choices: " + ", ".join(measured["choices"]))


if __name__ == "__main__":
    main()
