"""How the ResNet generator's last convolution trains fastest on this CPU, in one process.

The convolution to an image's few channels (7×7, ``ngf`` → 3) runs at a fraction of the
matmul rate in oneDNN. Alternating rounds, forward and backward through the reflection
padding before it, of:

``nchw``   the plain ``nn.Conv2d`` (the reference code's layer);
``nhwc``   :class:`ImageOutputConv2d`'s channels-last path;
``taps``   :class:`ImageOutputConv2d`'s tap products (one matrix product per image).

Then, with ``--step``, the paper preset's training step at ngf 64 crop 256 with the layer
on its channels-last path and on its tap products, alternating. Prints the best time of
each mode at each size and the ratios; asserts nothing. Compare ratios, not times: the
CPU is shared.

Usage::

    python benchmarks/bench_image_output_conv.py            # the layer at 5 sizes
    python benchmarks/bench_image_output_conv.py --step     # and the whole step
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/bench_image_output_conv.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from napari_cyclestyle.networks import layers

# (input channels, output side, batch): ngf 64 at crop 256 (batch 3 and 1: the step's
# largest and smallest calls), ngf 32 at 128, ngf 16 at 64 and 256.
SIZES = ((64, 256, 3), (64, 256, 1), (32, 128, 3), (16, 64, 3), (16, 256, 1))
MODES = ("nchw", "nhwc", "taps")
NEVER = 10**9


@contextmanager
def _tap_products_from(in_channels: int) -> Iterator[None]:
    """Let :class:`ImageOutputConv2d` take its tap products from ``in_channels`` on."""
    kept = layers.TAP_PRODUCTS_MIN_CHANNELS
    layers.TAP_PRODUCTS_MIN_CHANNELS = in_channels
    try:
        yield
    finally:
        layers.TAP_PRODUCTS_MIN_CHANNELS = kept


def _layer_pass(in_channels: int, side: int, batch: int, mode: str) -> Callable[[], None]:
    """One forward and backward pass through padding and the layer, in ``mode``."""
    torch.manual_seed(0)
    conv = layers.ImageOutputConv2d(in_channels, 3, kernel_size=7).train()
    if mode == "nchw":
        conv.__class__ = torch.nn.Conv2d
    image = torch.randn(batch, in_channels, side, side)
    gradient = torch.randn(batch, 3, side, side)

    def run() -> None:
        with _tap_products_from(in_channels if mode == "taps" else NEVER):
            x = image.clone().requires_grad_()
            conv(F.pad(x, (3, 3, 3, 3), mode="reflect")).backward(gradient)

    return run


def _best_seconds(run: Callable[[], None], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def compare_layer(rounds: int) -> None:
    """Print the three modes' best times at each of :data:`SIZES`."""
    print("| channels | side | batch | nchw ms | nhwc ms | taps ms | taps / nhwc |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for in_channels, side, batch in SIZES:
        runs = {mode: _layer_pass(in_channels, side, batch, mode) for mode in MODES}
        best = dict.fromkeys(MODES, float("inf"))
        for _ in range(rounds):
            for mode in MODES:
                best[mode] = min(best[mode], _best_seconds(runs[mode], 3))
        ms = [f"{1e3 * best[mode]:.1f}" for mode in MODES]
        ratio = best["taps"] / best["nhwc"]
        print(f"| {in_channels} | {side} | {batch} | {' | '.join(ms)} | {ratio:.2f} |")


def compare_step(rounds: int) -> None:
    """Print the paper step's times with the layer on each of its two CPU paths."""
    from bench import TrainCase, _trainer_step

    case = TrainCase("resnet_9blocks ngf64 crop256", "resnet_9blocks", 64, 256)
    times: dict[str, list[float]] = {"nhwc": [], "taps": []}
    with _trainer_step(case, 1, "paper", "cpu") as (_, step):
        step()
        for _ in range(rounds):
            for mode, threshold in (("nhwc", NEVER), ("taps", case.ngf)):
                with _tap_products_from(threshold):
                    start = time.perf_counter()
                    step()
                    times[mode].append(time.perf_counter() - start)
    for mode, seconds in times.items():
        print(f"{case.name} paper step, {mode}: " + ", ".join(f"{s:.2f}" for s in seconds) + " s")
    ratios = sorted(taps / nhwc for taps, nhwc in zip(times["taps"], times["nhwc"], strict=True))
    print("taps over nhwc per round: " + ", ".join(f"{r:.3f}" for r in ratios), end="")
    print(f"; median {ratios[len(ratios) // 2]:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--step", action="store_true", help="also time the training step")
    args = parser.parse_args(argv)
    print(f"CPU kernels (ISA): {torch.backends.cpu.get_cpu_capability()}, ", end="")
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    compare_layer(args.rounds)
    if args.step:
        compare_step(max(args.rounds, 5))


if __name__ == "__main__":
    main()
