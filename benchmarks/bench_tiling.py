"""Tiled translation: time and peak memory of a large uint16 image through resnet_9blocks.

Each measurement runs in a fresh Python process, so peak resident memory (``ru_maxrss``)
belongs to that measurement alone. Reported memory is the peak minus the resident size
just before translating (imports, model, input and output arrays already allocated).
"Disk writes" are the MiB sent to block devices meanwhile (``pgpgout``, all processes):
the scratch files of spilled activations, written with direct I/O, and anything else the
kernel writes back.

Measurements
------------
``tiles``     the sum of forward times of the non-overlapping tiles that cover the image
              (no context, no statistics): the cost floor of any tiled method.
``exact``     ``translate(..., statistics="exact")``: whole-image statistics, equals
              whole-image inference; activations over the memory budget go to scratch files.
``estimate``  statistics from a 25 % sample of tiles, blended overlapping tiles.
``tile``      naive per-tile statistics (seams), blended overlapping tiles.
``whole``     one forward over the whole image (only with ``--whole``; needs ~15 bytes per
              pixel per ngf: 16 GiB for 4096² at ngf 64).

Usage::

    python benchmarks/bench_tiling.py                 # 4096² (the full benchmark)
    python benchmarks/bench_tiling.py --size 1024     # quicker; same ratios to expect
    python benchmarks/bench_tiling.py --size 1024 --whole --modes tiles exact
    python benchmarks/bench_tiling.py --figure docs/images/seams.png

Prints figures and ratios; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

MODES = ("tiles", "exact", "estimate", "tile", "whole")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _disk_written_mib() -> float:
    """MiB written to block devices since boot, all processes (Linux; else NaN): direct
    I/O and page cache writeback alike (``nr_written`` counts only the latter)."""
    try:
        with open("/proc/vmstat") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("pgpgout "))
    except (OSError, StopIteration):
        return float("nan")
    return kib / 1024


def _measure(mode: str, size: int, ngf: int, tile: int, budget: int) -> dict:
    import torch

    from napari_cyclestyle.config import ModelConfig
    from napari_cyclestyle.inference import translate
    from napari_cyclestyle.intensity import IntensityNorm
    from napari_cyclestyle.model import CycleStyleModel, build_generators
    from napari_cyclestyle.tiling import auto_tile_size

    torch.manual_seed(0)
    config = ModelConfig(generator="resnet_9blocks", channels_a=1, channels_b=1, ngf=ngf)
    generator_ab, generator_ba = build_generators(config)
    norm = IntensityNorm("fixed", (0.0,), (65535.0,), "uint16")
    model = CycleStyleModel(config, generator_ab, generator_ba, norm, norm)
    if not tile:  # what translate(tile_size="auto") picks: half the budget per tile
        tile = auto_tile_size(generator_ab, 4, budget // 2, torch.device("cpu"))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65535, (size, size), dtype=np.uint16)
    output = np.zeros_like(image)
    baseline = _rss_mib()
    written = _disk_written_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    if mode == "tiles":
        network = generator_ab.eval()
        with torch.inference_mode():
            for y in range(0, size, tile):
                for x in range(0, size, tile):
                    block = image[y : y + tile, x : x + tile].astype(np.float32)
                    network(torch.from_numpy(block / 32767.5 - 1)[None, None].float())
    else:
        options = {"tile_size": None} if mode == "whole" else {"tile_size": tile}
        translate(
            image,
            model,
            device="cpu",
            statistics="exact" if mode == "whole" else mode,
            memory_budget=budget,
            output=output,
            **options,
        )
    return {
        "tile": tile,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "peak_mib": _peak_mib() - baseline,
        "disk_mib": _disk_written_mib() - written,
    }


def seam_figure(path: str) -> None:
    """Save whole-image, naive-tile, estimated and exact outputs and their differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from skimage import data, transform

    from napari_cyclestyle.config import ModelConfig
    from napari_cyclestyle.inference import translate
    from napari_cyclestyle.intensity import IntensityNorm
    from napari_cyclestyle.model import CycleStyleModel, build_generators

    torch.manual_seed(0)
    config = ModelConfig(generator="resnet_9blocks", channels_a=3, channels_b=3, ngf=8)
    generator_ab, generator_ba = build_generators(config)
    unit = IntensityNorm("fixed", (0.0,) * 3, (1.0,) * 3, "float32")
    model = CycleStyleModel(config, generator_ab, generator_ba, unit, unit)
    image = transform.resize(data.astronaut(), (384, 512)).astype(np.float32)
    whole = translate(image, model, device="cpu", tile_size=None)
    options = {"device": "cpu", "tile_size": 128, "overlap": 32}
    rows = [("whole image", whole)]
    for mode in ("tile", "estimate", "exact"):
        rows.append((mode, translate(image, model, statistics=mode, **options)))
    figure, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    for column, (name, result) in enumerate(rows):
        error = np.abs(result - whole).max(axis=-1) * 2
        psnr = 10 * np.log10(4 / max(np.mean(((result - whole) * 2) ** 2), 1e-30))
        axes[0, column].imshow(np.clip(result, 0, 1))
        title = name if column == 0 else f"{name} (128 px tiles): {psnr:.1f} dB"
        axes[0, column].set_title(title)
        shown = axes[1, column].imshow(error, cmap="magma", vmin=0, vmax=0.5)
        axes[1, column].set_title(f"|difference|, max {error.max():.2g}")
    for axis in axes.flat:
        axis.set_axis_off()
    figure.colorbar(shown, ax=axes[1, :], fraction=0.02, label="[-1, 1] units")
    figure.savefig(path, dpi=80, bbox_inches="tight")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, with ``--child``, one measurement) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="image side (default 4096)")
    parser.add_argument("--ngf", type=int, default=64, help="generator width (default 64)")
    parser.add_argument(
        "--tile", type=int, default=0, help="tile side (default 0: as tile_size='auto')"
    )
    parser.add_argument(
        "--budget-mib", type=int, default=1024, help="memory budget in MiB (default 1024)"
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["tiles", "exact", "tile"])
    parser.add_argument("--whole", action="store_true", help="also run whole-image inference")
    parser.add_argument("--figure", metavar="PNG", help="only save the seam figure there")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.figure:
        seam_figure(args.figure)
        return
    budget = args.budget_mib * 2**20
    if args.child:
        result = _measure(args.child, args.size, args.ngf, args.tile, budget)
        print(json.dumps(result))
        return
    modes = list(args.modes) + (["whole"] if args.whole and "whole" not in args.modes else [])
    print(
        f"resnet_9blocks ngf {args.ngf}, {args.size}x{args.size} uint16, "
        f"budget {args.budget_mib} MiB, CPU"
    )
    results = {}
    for mode in modes:
        command = [sys.executable, __file__, "--child", mode, "--size", str(args.size)]
        command += ["--ngf", str(args.ngf), "--tile", str(args.tile)]
        command += ["--budget-mib", str(args.budget_mib)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[mode] = result = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"  {mode:9s} tile {result['tile']:5d} {result['seconds']:8.1f} s wall "
            f"{result['cpu_seconds']:8.1f} s CPU   peak {result['peak_mib']:7.0f} MiB "
            f"beyond input+output   disk writes {result['disk_mib']:6.0f} MiB",
            flush=True,
        )
    if "tiles" in results:
        for mode in modes:
            if mode != "tiles":
                ratios = [
                    results[mode][key] / results["tiles"][key]
                    for key in ("seconds", "cpu_seconds")
                ]
                print(
                    f"  {mode} / sum of tile forwards: wall {ratios[0]:.2f} "
                    f"({ratios[0] - 1:+.0%}), CPU {ratios[1]:.2f} ({ratios[1] - 1:+.0%})"
                )


if __name__ == "__main__":
    main()
