"""Speed and memory of napari-cyclestyle on this machine, in one run.

Measures, each in a fresh Python process (so peak memory belongs to one measurement):

- the machine's fp32 matmul rate (a large square matmul, best of a few, after warm-up),
  and on CUDA its bf16 rate too (the yardstick of mixed-precision steps);
- training through the real :class:`~napari_cyclestyle.Trainer`: steps/s, images/s,
  FLOPs per step (``torch.utils.flop_counter``: convolutions and matmuls, forward and
  backward), the achieved fraction of the matmul rate and peak memory, for
  resnet_9blocks ngf 64 crop 256, resnet_9blocks ngf 16 crop 64 and the small
  encoder-decoder crop 128, at batch 1 and 4, with ``batched_forward`` (the default) and,
  at batch 1, without it (one network call per image set) and, for the
  small resnet in a full run, with ``compile=True`` (time to the first step reported);
  with the ``paper`` preset's losses and layers (``paper``: the work of the reference);
  beside each configuration and batch size, the paper's step written plainly, the way
  the reference code does it (:func:`measure_reference`), and each row's speed over it
  ("vs reference");
  on CUDA also the large configuration in fp32 and with cuDNN autotuning off, beside
  the defaults (mixed precision, autotuning on);
- translation (``translate``, resnet_9blocks ngf 64, RGB uint8) of 1024² and 4096² images
  (1024² whole, and with ``tile_size="auto"``: first in the process, timed before, and
  with its timing forced to choose the whole plane; the choice it made):
  megapixels/s, achieved fraction of the matmul rate, peak memory;
- in one process each, in alternating rounds (a shared CPU's busy moments then slow
  both sides alike): our paper step against the reference step at ngf 16 crop 64,
  batch 1 (:func:`measure_pair`: the median of the rounds' ratios), and on the CPU the
  1024² translation whole against ``tile_size="auto"`` (``bench_whole_or_tiles.py``'s
  rounds, each forgetting the last one's timing), and our paper step at ngf 64 crop 256,
  batch 1, against the matmul measured before and after each of its steps
  (:func:`measure_matmul_pair`: the median of the steps' fractions of it);
- ``import napari_cyclestyle`` time (fresh processes, best of several);
- time to open each widget in a napari viewer (under Xvfb when there is no display),
  once torch is imported.

Usage::

    .venv/bin/python benchmarks/bench.py                  # full run (~40 min on 2 CPU cores)
    .venv/bin/python benchmarks/bench.py --quick          # tiny sizes, well under a minute
    .venv/bin/python benchmarks/bench.py --json out.json  # also write every figure as JSON
    .venv/bin/python benchmarks/bench.py --device cuda    # on a GPU (default: auto)
    .venv/bin/python benchmarks/bench.py --device cuda --one-process --no-widgets

Prints a table, with the CPU kernels' ISA (``torch.backends.cpu.get_cpu_capability()``;
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`` caps
it; MKL's cap keeps the matmul yardstick on the same ISA); asserts nothing. The
targets of issues 6 and 22 are checked at the end of a full run. Peak memory is
resident memory (``ru_maxrss``) above the process's size just before the measured work
on CPU, and ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PLUGIN = "napari-cyclestyle"
WIDGETS = ("Train CycleGAN", "Translate")


@dataclass(frozen=True)
class TrainCase:
    """One training configuration of the benchmark."""

    name: str
    generator: str
    ngf: int
    crop_size: int


FULL_CASES = (
    TrainCase("resnet_9blocks ngf64 crop256", "resnet_9blocks", 64, 256),
    TrainCase("resnet_9blocks ngf16 crop64", "resnet_9blocks", 16, 64),
    TrainCase("encoder_decoder ngf64 crop128", "encoder_decoder", 64, 128),
)
QUICK_CASES = (
    TrainCase("resnet_9blocks ngf4 crop32", "resnet_9blocks", 4, 32),
    TrainCase("encoder_decoder ngf4 crop32", "encoder_decoder", 4, 32),
)
BATCH_SIZES = (1, 4)


@dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of a full or a quick run."""

    matmul_size: int
    cases: tuple[TrainCase, ...]
    min_timed_steps: int
    min_timed_seconds: float
    max_timed_steps: int
    translate_cases: tuple[tuple[int, str], ...]  # (side, tiling: see measure_translation)
    translate_ngf: int
    import_repeats: int
    extra_warmup: bool  # one more untimed step after the FLOP-counted one, if steps are short
    # The measurements in one process, in alternating rounds: the paper step against the
    # reference (measure_pair, at batch 1) and tile_size="auto" against the whole plane.
    paired_case: TrainCase
    paired_translate_size: int
    pair_rounds: int
    pair_block_seconds: float  # each side's block of training steps in a round
    # The paper step against the matmul measured around each of its steps, in one
    # process (measure_matmul_pair, at batch 1): the configuration and the steps timed.
    matmul_paired_case: TrainCase
    matmul_pair_steps: int


FULL_TRANSLATE = (
    (1024, "auto"),
    (1024, "auto-known"),
    (1024, "auto-whole"),
    (1024, "none"),
    (4096, "auto"),
)
FULL = Settings(
    4096,
    FULL_CASES,
    2,
    20.0,
    50,
    FULL_TRANSLATE,
    64,
    5,
    True,
    FULL_CASES[1],
    1024,
    7,
    3.0,
    FULL_CASES[0],
    3,
)
QUICK = Settings(
    512,
    QUICK_CASES,
    1,
    0.0,
    1,
    ((128, "auto"), (256, "none")),
    4,
    2,
    False,
    QUICK_CASES[0],
    256,
    2,
    0.2,
    QUICK_CASES[0],
    1,
)


# ------------------------------------------------------------------ helpers (child side)
def _rss_mib() -> float:
    """Resident memory of this process now, in MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Memory:
    """Peak memory of the work done after construction: RSS on CPU, allocator on CUDA."""

    def __init__(self, device) -> None:
        import torch

        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline = torch.cuda.memory_allocated(device) / 2**20
        else:
            self.baseline = _rss_mib()
        self.device = device

    def peak_mib(self) -> float:
        """Peak memory above the baseline, in MiB."""
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.baseline
        return max(_peak_rss_mib() - self.baseline, 0.0)


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _count_flops(function) -> float:
    """FLOPs of ``function()`` as ``torch.utils.flop_counter`` counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return float(counter.get_total_flops())


# ------------------------------------------------------------------ measurements (child)
def _matmul_rate(n: int, device, dtype) -> float:
    """GFLOP/s of an ``n × n`` matmul in ``dtype`` (best of several, after warm-up)."""
    import torch

    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    _synchronize(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def measure_matmul(settings: Settings, device_name: str) -> dict:
    """fp32 matmul rate in GFLOP/s and, on CUDA, the bf16 rate."""
    import torch

    from napari_cyclestyle.devices import describe_device, resolve_device

    device = resolve_device(device_name)
    n = settings.matmul_size
    result = {
        "size": n,
        "gflops_per_second": _matmul_rate(n, device, torch.float32),
        "device": describe_device(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "isa": torch.backends.cpu.get_cpu_capability(),
    }
    if device.type == "cuda":
        result["bf16_gflops_per_second"] = _matmul_rate(n, device, torch.bfloat16)
    return result


def _domain_images(crop_size: int, seed: int) -> np.ndarray:
    """Four random RGB uint8 images, twice the crop size (at least 256) on a side."""
    side = max(2 * crop_size, 256)
    return np.random.default_rng(seed).integers(0, 256, (4, side, side, 3), dtype=np.uint8)


@contextmanager
def _trainer_step(
    case: TrainCase,
    batch_size: int,
    forward: str,
    device_name: str,
    precision: str = "auto",
    cudnn_benchmark: bool = True,
    channels_last: bool = False,
) -> Iterator[tuple]:
    """A :class:`Trainer` on random images and a function that runs one of its steps.

    ``forward``: ``batched`` (the default step), ``paper`` (batched, with the ``paper``
    preset's losses and layers: the work :func:`_reference_step` does), ``eager``
    (``batched_forward=False``) or ``compiled`` (batched, with ``compile=True``).
    """
    from napari_cyclestyle import Config, ModelConfig, TrainConfig, Trainer
    from napari_cyclestyle.presets import apply_preset

    config = Config(
        ModelConfig(generator=case.generator, ngf=case.ngf, ndf=case.ngf),
        TrainConfig(
            n_steps=10_000,
            n_steps_decay=0,
            batch_size=batch_size,
            crop_size=case.crop_size,
            batched_forward=forward != "eager",
            compile=forward == "compiled",
            device=device_name,
            precision=precision,
            cudnn_benchmark=cudnn_benchmark,
            channels_last=channels_last,
            checkpoint_every=0,
            preview_every=0,
        ),
    )
    if forward == "paper":
        config = Config.from_dict(apply_preset("paper", config.to_dict()))
    domain_a, domain_b = _domain_images(case.crop_size, 1), _domain_images(case.crop_size, 2)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(domain_a, domain_b, config, output=Path(folder) / "bench.safetensors")
        run = trainer.run()
        try:
            yield trainer, lambda: next(run)
        finally:
            run.close()


def measure_training(
    settings: Settings,
    case: TrainCase,
    batch_size: int,
    forward: str,
    device_name: str,
    precision: str = "auto",
    cudnn_benchmark: bool = True,
    channels_last: bool = False,
) -> dict:
    """Speed, FLOPs and peak memory of training steps through :class:`Trainer`
    (``forward``: see :func:`_trainer_step`; the compiled step's FLOPs are not counted,
    since compiled kernels bypass the counter: they are the batched step's)."""
    options = (precision, cudnn_benchmark, channels_last)
    with _trainer_step(case, batch_size, forward, device_name, *options) as (trainer, step):
        memory = _Memory(trainer.device)
        row = _time_steps(settings, step, trainer.device, count_flops=forward != "compiled")
        peak = memory.peak_mib()
    return {
        "config": case.name,
        "batch_size": batch_size,
        "forward": forward,
        "precision": trainer.precision,
        "cudnn_benchmark": cudnn_benchmark if trainer.device.type == "cuda" else None,
        "channels_last": channels_last,
        **row,
        "images_per_second": row["steps_per_second"] * batch_size,
        "peak_mib": peak,
    }


def _time_steps(settings: Settings, step, device, count_flops: bool = True) -> dict:
    """Time calls of ``step()``: the first (FLOP-counted, unless ``count_flops`` is
    false) and, as warm-up, maybe a second are not timed; then the settings' number."""
    import torch

    start = time.perf_counter()
    flops = _count_flops(step) if count_flops else None
    if not count_flops:
        step()
    _synchronize(device)
    first_step = time.perf_counter() - start
    if not count_flops or (settings.extra_warmup and first_step < 5.0):
        step()
    _synchronize(device)
    times: list[float] = []
    cpu_start = time.process_time()
    while len(times) < settings.min_timed_steps or (
        sum(times) < settings.min_timed_seconds and len(times) < settings.max_timed_steps
    ):
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = sum(times)
    steps_per_second = len(times) / seconds
    return {
        "timed_steps": len(times),
        "step_seconds": times,
        "steps_per_second": steps_per_second,
        "first_step_seconds": first_step,
        "gflop_per_step": None if flops is None else flops / 1e9,
        "gflops_per_second": None if flops is None else flops * steps_per_second / 1e9,
        "cpu_share": (time.process_time() - cpu_start) / seconds / torch.get_num_threads(),
    }


def _as_reference_layers(network) -> None:
    """Make ``network``'s layers the reference code's, in place: our instance norm and
    image-output convolution (which pick faster CPU kernels while training) become the
    plain ``nn.InstanceNorm2d`` and ``nn.Conv2d`` they subclass."""
    from torch import nn

    from napari_cyclestyle.networks.layers import ImageOutputConv2d, InstanceNorm

    for layer in network.modules():
        if isinstance(layer, InstanceNorm):
            layer.__class__ = nn.InstanceNorm2d
        elif isinstance(layer, ImageOutputConv2d):
            layer.__class__ = nn.Conv2d


def _reference_step(case: TrainCase, batch_size: int, device) -> Callable[[], None]:
    """The paper's training step written plainly, as the reference code's
    ``optimize_parameters`` does it: one network call per image set (G(a), F(G(a)),
    F(b), G(F(b)), the identities G(b) and F(a), each discriminator on real and pooled
    fake images), LSGAN losses, λ_cycle 10, λ_identity 0.5, Adam(2e-4, β 0.5, 0.999),
    fp32, no fusion; on fixed random images (no data loading). The same networks as
    ours (``ndf`` = ``ngf``, as in :func:`measure_training`)."""
    from itertools import chain

    import torch
    from torch import nn

    from napari_cyclestyle.losses import GANLoss, ImagePool
    from napari_cyclestyle.networks import build_discriminator, build_generator

    torch.manual_seed(0)
    net_g, net_f = (build_generator(case.generator, 3, 3, case.ngf).to(device) for _ in "GF")
    net_d_a, net_d_b = (build_discriminator("basic", 3, case.ngf).to(device) for _ in "AB")
    for network in (net_g, net_f, net_d_a, net_d_b):
        _as_reference_layers(network)
    generators = list(chain(net_g.parameters(), net_f.parameters()))
    discriminators = list(chain(net_d_a.parameters(), net_d_b.parameters()))
    optimizer_g = torch.optim.Adam(generators, lr=2e-4, betas=(0.5, 0.999))
    optimizer_d = torch.optim.Adam(discriminators, lr=2e-4, betas=(0.5, 0.999))
    gan, l1 = GANLoss("lsgan").to(device), nn.L1Loss()
    pool_a, pool_b = ImagePool(50), ImagePool(50)
    shape = (batch_size, 3, case.crop_size, case.crop_size)
    real_a, real_b = (torch.rand(shape, device=device) * 2 - 1 for _ in "AB")

    def step() -> None:
        fake_b = net_g(real_a)
        rec_a = net_f(fake_b)
        fake_a = net_f(real_b)
        rec_b = net_g(fake_a)
        for parameter in discriminators:
            parameter.requires_grad_(False)
        optimizer_g.zero_grad()
        loss_g = (
            gan(net_d_b(fake_b), True)
            + gan(net_d_a(fake_a), True)
            + 10 * l1(rec_a, real_a)
            + 10 * l1(rec_b, real_b)
            + 5 * l1(net_g(real_b), real_b)
            + 5 * l1(net_f(real_a), real_a)
        )
        loss_g.backward()
        optimizer_g.step()
        for parameter in discriminators:
            parameter.requires_grad_(True)
        optimizer_d.zero_grad()
        for net_d, real, fake in (
            (net_d_b, real_b, pool_b.query(fake_b)),
            (net_d_a, real_a, pool_a.query(fake_a)),
        ):
            loss_d = (gan(net_d(real), True) + gan(net_d(fake.detach()), False)) * 0.5
            loss_d.backward()
        optimizer_d.step()

    return step


def measure_reference(settings: Settings, case: TrainCase, batch_size: int, device_name: str):
    """Speed, FLOPs and peak memory of :func:`_reference_step`."""
    from napari_cyclestyle.devices import resolve_device

    device = resolve_device(device_name)
    step = _reference_step(case, batch_size, device)
    memory = _Memory(device)
    row = _time_steps(settings, step, device)
    return {
        "config": case.name,
        "batch_size": batch_size,
        "forward": "reference",
        "precision": "fp32",
        "cudnn_benchmark": None,
        "channels_last": False,
        **row,
        "images_per_second": row["steps_per_second"] * batch_size,
        "peak_mib": memory.peak_mib(),
    }


def _steps_per_second(step, device, seconds: float) -> float:
    """Steps/s of ``step()`` over a block of at least ``seconds`` (and two steps)."""
    count, start = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - start < seconds:
        step()
        _synchronize(device)
        count += 1
    return count / (time.perf_counter() - start)


def measure_pair(settings: Settings, case: TrainCase, batch_size: int, device_name: str):
    """Our Trainer's paper step against :func:`_reference_step` in one process, in
    alternating blocks (the first of each round alternating too): a busy moment of a
    shared CPU slows both alike, where separate processes catch the machine in
    different states. Both warm up first; the speed-up is the median of the rounds'.
    The two share the process's heap settings (our Trainer settles glibc's malloc
    thresholds, which the reference then runs with too)."""
    from napari_cyclestyle.devices import resolve_device

    device = resolve_device(device_name)
    reference = _reference_step(case, batch_size, device)
    with _trainer_step(case, batch_size, "paper", device_name) as (_, paper):
        for _ in range(2):
            reference()
            paper()
        _synchronize(device)
        rounds = []
        for index in range(settings.pair_rounds):
            order = ("reference", "paper") if index % 2 == 0 else ("paper", "reference")
            steps = {"reference": reference, "paper": paper}
            speeds = {
                name: _steps_per_second(steps[name], device, settings.pair_block_seconds)
                for name in order
            }
            rounds.append(speeds)
            _progress(
                f"  round {index + 1}: reference {speeds['reference']:.2f}, paper "
                f"{speeds['paper']:.2f} steps/s ({speeds['paper'] / speeds['reference']:.2f}×)"
            )
    ratios = [speeds["paper"] / speeds["reference"] for speeds in rounds]
    return {
        "config": case.name,
        "batch_size": batch_size,
        "rounds": rounds,
        "ratios": ratios,
        "median_ratio": float(np.median(ratios)),
        "reference_steps_per_second": float(np.median([r["reference"] for r in rounds])),
        "paper_steps_per_second": float(np.median([r["paper"] for r in rounds])),
    }


def measure_matmul_pair(settings: Settings, case: TrainCase, batch_size: int, device_name: str):
    """Our Trainer's paper step against the fp32 matmul in one process: each timed step
    runs between two matmul measurements (the one after a step is the one before the
    next), and its FLOP rate counts against their mean. A row of its own process and
    the matmul measured at the start of the run can catch a shared CPU in different
    states; here a slow moment counts against both. The result is the median of the
    steps' fractions."""
    import torch

    from napari_cyclestyle.devices import resolve_device

    device = resolve_device(device_name)

    def matmul() -> float:
        return _matmul_rate(settings.matmul_size, device, torch.float32)

    with _trainer_step(case, batch_size, "paper", device_name) as (_, paper):
        flops = _count_flops(paper)
        paper()  # a warm-up
        _synchronize(device)
        before, rounds = matmul(), []
        for index in range(settings.matmul_pair_steps):
            start = time.perf_counter()
            paper()
            _synchronize(device)
            seconds = time.perf_counter() - start
            after = matmul()
            rounds.append(
                {
                    "step_seconds": seconds,
                    "gflops_per_second": flops / seconds / 1e9,
                    "matmul_gflops_per_second": (before + after) / 2,
                }
            )
            before = after
            _progress(
                f"  step {index + 1}: {rounds[-1]['gflops_per_second']:.1f} GFLOP/s, matmul "
                f"{rounds[-1]['matmul_gflops_per_second']:.1f} around it"
            )
    fractions = [r["gflops_per_second"] / r["matmul_gflops_per_second"] for r in rounds]
    return {
        "config": case.name,
        "batch_size": batch_size,
        "gflop_per_step": flops / 1e9,
        "rounds": rounds,
        "fractions": fractions,
        "median_fraction": float(np.median(fractions)),
    }


def measure_translation(settings: Settings, size: int, tiling: str, device_name: str) -> dict:
    """Megapixels/s, FLOP rate and peak memory of ``translate`` on a ``size²`` RGB image,
    with ``tile_size="auto"`` (what users get: the process's first such plane, timed
    whole against tiles on the way), ``auto-known`` (the same, once an earlier plane has
    been timed), ``auto-whole`` (the first, with the timing forced to find the whole
    plane faster: what a CPU where it is pays), None (``tiling="none"``: one whole-plane
    forward) or tiles of ``int(tiling)`` pixels."""
    import copy

    import torch

    from napari_cyclestyle import whole_or_tiles
    from napari_cyclestyle.config import ModelConfig
    from napari_cyclestyle.devices import resolve_device
    from napari_cyclestyle.inference import translate_steps
    from napari_cyclestyle.intensity import IntensityNorm
    from napari_cyclestyle.model import CycleStyleModel, build_generators

    device = resolve_device(device_name)
    torch.manual_seed(0)
    config = ModelConfig(generator="resnet_9blocks", ngf=settings.translate_ngf)
    generator_ab, generator_ba = build_generators(config)
    norm = IntensityNorm("fixed", (0.0,), (255.0,), "uint8")
    model = CycleStyleModel(config, generator_ab.eval(), generator_ba.eval(), norm, norm)
    # FLOPs of one whole-image forward, counted on the meta device (no compute).
    shadow = copy.deepcopy(generator_ab).to("meta")
    flops = _count_flops(lambda: shadow(torch.empty(1, 3, size, size, device="meta")))
    rng = np.random.default_rng(0)
    warm = rng.integers(0, 256, (min(size, 256),) * 2 + (3,), dtype=np.uint8)
    for _ in translate_steps(warm, model, device=device):
        pass
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    tile_size = None if tiling == "none" else "auto" if tiling.startswith("auto") else int(tiling)
    if tiling == "auto-known":
        for _ in translate_steps(image, model, device=device, tile_size=tile_size):
            pass
    if tiling == "auto-whole":
        whole_or_tiles.FASTER_BY = float("inf")
    memory = _Memory(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    n_steps = 0
    for step in translate_steps(image, model, device=device, tile_size=tile_size):
        n_steps = step.total
    _synchronize(device)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    return {
        "size": size,
        "tile_size": tiling,
        "ngf": settings.translate_ngf,
        "steps": n_steps,
        "chosen": {True: "tiles", False: "whole"}.get(
            whole_or_tiles.timed_choices().get((size, size)), "not timed"
        ),
        "seconds": seconds,
        "megapixels_per_second": size * size / 1e6 / seconds,
        "gflop": flops / 1e9,
        "gflops_per_second": flops / seconds / 1e9,
        "peak_mib": memory.peak_mib(),
        "cpu_share": cpu_seconds / seconds / torch.get_num_threads(),
    }


def measure_translation_rounds(settings: Settings) -> dict:
    """``tile_size="auto"`` against the whole plane on the CPU, in one process, modes
    alternating: ``bench_whole_or_tiles.measure_rounds`` (its docstring names the
    modes), on a ``paired_translate_size``² image."""
    from bench_whole_or_tiles import measure_rounds

    size, ngf = settings.paired_translate_size, settings.translate_ngf
    return measure_rounds(size, ngf, settings.pair_rounds, _progress)


def measure_widget(name: str, device_name: str) -> dict:
    """Seconds to open a plugin widget in a shown napari viewer, torch already imported."""
    import torch  # noqa: F401  (the target is "once torch is imported")

    start = time.perf_counter()
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    app.processEvents()
    viewer_seconds = time.perf_counter() - start
    start = time.perf_counter()
    viewer.window.add_plugin_dock_widget(PLUGIN, name)
    app.processEvents()
    seconds = time.perf_counter() - start
    viewer.close()
    return {"widget": name, "seconds": seconds, "viewer_seconds": viewer_seconds}


# ------------------------------------------------------------------ orchestration (parent)
def _run_children(
    specs: list[str], args: argparse.Namespace, wrapper: list[str] | None = None
) -> list[dict]:
    """Run measurements in one fresh process; their results, or ``{"error": reason}``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one", ";".join(specs)]
    command += ["--device", args.device] + (["--quick"] if args.quick else [])
    try:
        done = subprocess.run(
            (wrapper or []) + command, capture_output=True, text=True, timeout=1800
        )
    except subprocess.TimeoutExpired:
        return [{"error": "timed out after 30 min"}] * len(specs)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return [{"error": _failure(done.returncode, done.stderr)}] * len(specs)
    return json.loads(lines[-1])


def _failure(returncode: int, stderr: str) -> str:
    """Why a child failed: its exit status (the signal's name if one killed it, which
    leaves no error text) and the last line it wrote to stderr."""
    if returncode < 0:
        status = f"killed by {signal.Signals(-returncode).name}"
    else:
        status = f"exit status {returncode}"
    last = (stderr.strip().splitlines() or [""])[-1]
    return f"{status}; last stderr line: {last[:160]}" if last else status


def _run_isolated(
    specs: list[str], args: argparse.Namespace, wrapper: list[str] | None = None
) -> list[dict]:
    """Each measurement in its own process (full run: peak memory per measurement), or
    all in one (``--quick``, ``--one-process``: a few seconds of start-up instead of many)."""
    if args.quick or args.one_process:
        _progress(f"{len(specs)} measurements in one process ...")
        return _run_children(specs, args, wrapper)
    results = []
    for spec in specs:
        _progress(spec + " ...")
        results += _run_children([spec], args, wrapper)
        _progress("  " + json.dumps({k: v for k, v in results[-1].items() if k != "step_seconds"}))
    return results


def measure_import(repeats: int) -> dict:
    """Best and median wall time of ``import napari_cyclestyle`` in fresh processes."""
    code = (
        "import sys, time; start = time.perf_counter(); import napari_cyclestyle; "
        "print(time.perf_counter() - start, 'torch' in sys.modules)"
    )
    times, torch_imported = [], False
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        seconds, imported = done.stdout.split()
        times.append(float(seconds))
        torch_imported |= imported == "True"
    return {
        "best_seconds": min(times),
        "median_seconds": float(np.median(times)),
        "imports_torch": torch_imported,
    }


def _display_wrapper() -> tuple[list[str] | None, str | None]:
    """How to give a child process an X display: ([], None), (xvfb-run, None), or a reason."""
    if os.environ.get("DISPLAY") or sys.platform in ("darwin", "win32"):
        return [], None
    if shutil.which("xvfb-run"):
        return ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24"], None
    return None, "no display and no xvfb-run"


def machine_facts() -> dict:
    """The CPU's model name, its core count, the platform, Python and the load average."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_start": os.getloadavg(),
    }


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_all(args: argparse.Namespace) -> dict:
    """Every measurement, each in its own process (or all in one with
    ``--quick``/``--one-process``); the collected results."""
    settings = QUICK if args.quick else FULL
    results: dict = {"quick": args.quick, "machine": machine_facts()}
    results["matmul"] = _run_isolated(["matmul"], args)[0]
    training_keys = [
        (case.name, batch_size, forward, "auto", "on", "nchw")
        for case in settings.cases
        for batch_size in BATCH_SIZES
        for forward in (
            ("batched", "paper", "eager", "reference")
            if batch_size == 1
            else ("batched", "paper", "reference")
        )
    ]
    if not args.quick:  # compiling takes minutes; where the step is small it pays most
        training_keys.append((settings.cases[1].name, 1, "compiled", "auto", "on", "nchw"))
    if results["matmul"].get("device", "").startswith("cuda"):
        # What the CUDA defaults (mixed precision, cuDNN autotuning) buy, and what
        # channels-last order would.
        training_keys += [
            (settings.cases[0].name, batch_size, "batched", precision, cudnn, layout)
            for batch_size in BATCH_SIZES
            for precision, cudnn, layout in (
                ("fp32", "on", "nchw"),
                ("auto", "off", "nchw"),
                ("auto", "on", "nhwc"),
            )
        ]
    specs = ["train:" + ":".join(map(str, key)) for key in training_keys]
    specs += [f"translate:{size}:{tiling}" for size, tiling in settings.translate_cases]
    measured = _run_isolated(specs, args)
    results["training"] = [
        {"config": name, "batch_size": batch_size, "forward": forward} | result
        for (name, batch_size, forward, *_), result in zip(
            training_keys, measured[: len(training_keys)], strict=True
        )
    ]
    results["translation"] = [
        {"size": size, "tile_size": tiling} | result
        for (size, tiling), result in zip(
            settings.translate_cases, measured[len(training_keys) :], strict=True
        )
    ]
    results["paired"] = _run_isolated([f"pair:{settings.paired_case.name}:1"], args)[0]
    on_cpu = results["matmul"].get("device", "cpu").startswith("cpu")
    rounds = _run_isolated(["translate-rounds"], args)[0] if on_cpu else {}
    results["translation_rounds"] = rounds
    case = settings.matmul_paired_case
    results["matmul_paired"] = _run_isolated([f"matmul-pair:{case.name}:1"], args)[0]
    _progress("import time ...")
    results["import"] = measure_import(settings.import_repeats)
    wrapper, reason = _display_wrapper()
    if args.no_widgets:
        reason = "skipped (--no-widgets)"
    if reason:
        widgets = [{"error": reason} for _ in WIDGETS]
    else:
        widgets = _run_isolated([f"widget:{name}" for name in WIDGETS], args, wrapper)
    widgets = [{"widget": name} | result for name, result in zip(WIDGETS, widgets, strict=True)]
    results["widgets"] = widgets
    results["machine"]["load_average_end"] = os.getloadavg()
    results["targets"] = [] if args.quick else check_targets(results)
    return results


def run_one(spec: str, args: argparse.Namespace) -> dict:
    """One measurement named by ``spec`` (this process's only work)."""
    settings = QUICK if args.quick else FULL
    kind, _, rest = spec.partition(":")
    if kind == "matmul":
        return measure_matmul(settings, args.device)
    if kind == "train":
        # name:batch:forward:precision:on|off (cuDNN autotune):nchw|nhwc (channels last)
        name, batch_size, forward, precision, cudnn, layout = rest.split(":")
        case = next(case for case in settings.cases if case.name == name)
        if forward == "reference":
            return measure_reference(settings, case, int(batch_size), args.device)
        return measure_training(
            settings,
            case,
            int(batch_size),
            forward,
            args.device,
            precision,
            cudnn == "on",
            layout == "nhwc",
        )
    if kind in ("pair", "matmul-pair"):
        name, batch_size = rest.split(":")
        case = next(case for case in settings.cases if case.name == name)
        measure = measure_pair if kind == "pair" else measure_matmul_pair
        return measure(settings, case, int(batch_size), args.device)
    if kind == "translate-rounds":
        return measure_translation_rounds(settings)
    if kind == "translate":
        size, tiling = rest.split(":")
        return measure_translation(settings, int(size), tiling, args.device)
    if kind == "widget":
        return measure_widget(rest, args.device)
    raise ValueError(f"Unknown measurement {spec!r}.")


# ------------------------------------------------------------------ report
def _find(rows: list[dict], **keys) -> dict:
    return next((row for row in rows if all(row.get(k) == v for k, v in keys.items())), {})


def _fraction_of_matmul(row: dict, matmul: dict) -> float | None:
    """A row's FLOP rate over the matmul rate in its precision (bf16 for mixed precision,
    where measured; fp32 otherwise)."""
    rate = matmul.get("gflops_per_second")
    if row.get("precision") in ("bf16", "fp16"):
        rate = matmul.get("bf16_gflops_per_second", rate)
    if rate and row.get("gflops_per_second") is not None:
        return row["gflops_per_second"] / rate
    return None


def _over_reference(training: list[dict], row: dict) -> float | None:
    """A training row's speed over the plain eager reference step's at its configuration
    and batch size (None where either is missing)."""
    reference = _find(
        training, config=row.get("config"), batch_size=row.get("batch_size"), forward="reference"
    )
    if "steps_per_second" in row and "steps_per_second" in reference:
        return row["steps_per_second"] / reference["steps_per_second"]
    return None


def check_targets(results: dict) -> list[dict]:
    """The targets of issues 6 and 22, each with the measured value and whether it is
    met."""
    training, targets = results["training"], []

    def fraction(row: dict) -> float | None:
        return _fraction_of_matmul(row, results["matmul"])

    def add(name: str, value: float | None, goal: float, unit: str, below: bool = False) -> None:
        met = None if value is None else (value < goal if below else value >= goal)
        targets.append(
            {
                "target": name,
                "value": value,
                "goal": goal,
                "unit": unit,
                "met": met,
                "below": below,
            }
        )

    big, small = FULL_CASES[0].name, FULL_CASES[1].name
    for forward in ("batched", "paper"):
        add(
            f"{big} batch 1, {forward}: fraction of matmul rate",
            fraction(_find(training, config=big, batch_size=1, forward=forward)),
            0.8,
            "",
        )

    matmul_paired = results.get("matmul_paired", {})
    add(
        f"{big} batch 1, paper: fraction of the matmul rate measured around each step, in "
        f"one process (median of {len(matmul_paired.get('fractions', []))} steps)",
        matmul_paired.get("median_fraction"),
        0.8,
        "",
    )

    def speedup(forward: str) -> float | None:
        return _over_reference(
            training, _find(training, config=small, batch_size=1, forward=forward)
        )

    add(
        f"{small} batch 1, paper preset: speed-up over the plain eager reference step",
        speedup("paper"),
        1.5,
        "x",
    )
    paired = results.get("paired", {})
    add(
        f"{small} batch 1, paper preset: speed-up over the reference step, in one process "
        f"(median of {len(paired.get('ratios', []))} alternating rounds)",
        paired.get("median_ratio"),
        1.5,
        "x",
    )
    add(
        f"{small} batch 1, compile=True: speed-up over the plain eager reference step",
        speedup("compiled"),
        1.5,
        "x",
    )
    add(
        f"{small} batch 4: fraction of matmul rate",
        fraction(_find(training, config=small, batch_size=4, forward="batched")),
        0.5,
        "",
    )
    add(
        "translate 1024² resnet_9blocks ngf64: fraction of matmul rate",
        fraction(_find(results["translation"], size=1024, tile_size="auto")),
        0.8,
        "",
    )
    whole = _find(results["translation"], size=1024, tile_size="none").get("seconds")
    for tiling, what in (("auto", "first"), ("auto-whole", "first, timing forced to whole")):
        auto = _find(results["translation"], size=1024, tile_size=tiling).get("seconds")
        add(
            f"translate 1024²: tile_size='auto' ({what}) time over the whole-plane forward's",
            auto / whole if auto and whole else None,
            1.03,
            "x",
            True,
        )
    over_whole = results.get("translation_rounds", {}).get("over_whole", {})
    for mode, what in (("timed", "first"), ("timed-whole", "first, timing forced to whole")):
        add(
            f"translate 1024²: tile_size='auto' ({what}) over the whole plane, in one "
            "process (ratio of the rounds' totals)",
            over_whole.get(mode),
            1.03,
            "x",
            True,
        )
    add("import napari_cyclestyle", results["import"].get("best_seconds"), 0.2, "s", True)
    train_widget = _find(results["widgets"], widget="Train CycleGAN")
    add("open the training widget", train_widget.get("seconds"), 1.0, "s", True)
    return targets


def _cell(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _paired_report(results: dict) -> list[str]:
    """The measurements in one process, alternating, as text lines."""
    paired, rounds = results.get("paired", {}), results.get("translation_rounds", {})
    lines = [""]
    if "ratios" in paired:
        lines.append(
            f"in one process, {paired['config']} batch {paired['batch_size']}: paper "
            f"{paired['paper_steps_per_second']:.2f} steps/s against the reference's "
            f"{paired['reference_steps_per_second']:.2f} (medians); paper over reference "
            "per round: "
            + ", ".join(f"{ratio:.2f}×" for ratio in paired["ratios"])
            + f"; median {paired['median_ratio']:.2f}×"
        )
    elif paired:
        lines.append(f"in one process, paper against reference: n/a ({paired.get('error')})")
    if "over_whole" in rounds:
        lines.append(
            f"in one process, {rounds['size']}² translation, {len(rounds['choices'])} rounds: "
            + ", ".join(
                f"{mode} " + "/".join(f"{t:.2f}" for t in times) + " s"
                for mode, times in rounds["seconds"].items()
            )
            + "; over whole (totals): "
            + ", ".join(f"{mode} {ratio:.3f}" for mode, ratio in rounds["over_whole"].items())
            + "; timed choices: "
            + ", ".join(rounds["choices"])
        )
    elif rounds:
        lines.append(f"in one process, auto against the whole plane: n/a ({rounds.get('error')})")
    matmul_paired = results.get("matmul_paired", {})
    if "fractions" in matmul_paired:
        lines.append(
            f"in one process, {matmul_paired['config']} batch {matmul_paired['batch_size']}: "
            "paper step "
            + ", ".join(f"{r['gflops_per_second']:.1f}" for r in matmul_paired["rounds"])
            + " GFLOP/s against the matmul's "
            + ", ".join(f"{r['matmul_gflops_per_second']:.1f}" for r in matmul_paired["rounds"])
            + " around each step: "
            + ", ".join(f"{f:.0%}" for f in matmul_paired["fractions"])
            + f"; median {matmul_paired['median_fraction']:.0%}"
        )
    elif matmul_paired:
        lines.append(f"in one process, paper against matmul: n/a ({matmul_paired.get('error')})")
    return lines


def format_report(results: dict) -> str:
    """The results as a plain-text table (Markdown-friendly)."""
    machine, matmul = results["machine"], results["matmul"]
    rate = matmul.get("gflops_per_second")
    bf16 = matmul.get("bf16_gflops_per_second")
    lines = [
        f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs, {machine['platform']}, "
        f"python {machine['python']}",
        f"device: {matmul.get('device', 'n/a')}, torch {matmul.get('torch', 'n/a')}, "
        f"{matmul.get('threads', 'n/a')} threads, CPU kernels (ISA) {matmul.get('isa', 'n/a')}",
        "load average (1, 5, 15 min) at start: "
        + ", ".join(f"{x:.2f}" for x in machine["load_average_start"])
        + "; at end: "
        + ", ".join(f"{x:.2f}" for x in machine.get("load_average_end", ())),
        "",
        f"fp32 matmul {matmul.get('size', '?')}²: {_cell(rate, '.1f')} GFLOP/s"
        + (f"; bf16: {bf16:.1f} GFLOP/s (the yardstick of bf16/fp16 rows)" if bf16 else "")
        + (f"  ({matmul['error']})" if "error" in matmul else ""),
        "",
        "| training (Trainer steps) | batch | forward | precision | steps/s | images/s "
        "| GFLOP/step | GFLOP/s | of matmul | vs reference | peak MiB | CPU share |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["training"]:
        share = _fraction_of_matmul(row, matmul)
        if "error" in row:
            lines.append(
                f"| {row['config']} | {row['batch_size']} | {row['forward']} "
                f"| | n/a: {row['error']} | | | | | | | |"
            )
            continue
        ratio = _over_reference(results["training"], row)
        precision = row["precision"] + (
            ", no cuDNN autotune" if row.get("cudnn_benchmark") is False else ""
        )
        if row.get("channels_last"):
            precision += ", channels last"
        lines.append(
            f"| {row['config']} | {row['batch_size']} | {row['forward']} | {precision} "
            f"| {row['steps_per_second']:.3f} | {row['images_per_second']:.3f} "
            f"| {_cell(row['gflop_per_step'], '.1f')} | {_cell(row['gflops_per_second'], '.1f')} "
            f"| {_cell(share, '.0%')} | {_cell(ratio, '.2f')}× | {row['peak_mib']:.0f} "
            f"| {row['cpu_share']:.0%} |"
        )
    lines += [
        "",
        "| translate (resnet_9blocks, RGB uint8) | tile_size | timed choice | ngf | steps "
        "| seconds | MP/s | GFLOP | GFLOP/s | of matmul | peak MiB | CPU share |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["translation"]:
        if "error" in row:
            lines.append(
                f"| {row['size']}² | {row['tile_size']} | n/a: {row['error']} | | | | | | | | | |"
            )
            continue
        share = _fraction_of_matmul(row, matmul)
        lines.append(
            f"| {row['size']}² | {row['tile_size']} | {row['chosen']} | {row['ngf']} "
            f"| {row['steps']} "
            f"| {row['seconds']:.2f} "
            f"| {row['megapixels_per_second']:.3f} | {row['gflop']:.0f} "
            f"| {row['gflops_per_second']:.1f} | {_cell(share, '.0%')} | {row['peak_mib']:.0f} "
            f"| {row['cpu_share']:.0%} |"
        )
    lines += _paired_report(results)
    imported = results["import"]
    lines += [
        "",
        f"import napari_cyclestyle: best {imported['best_seconds']:.3f} s, median "
        f"{imported['median_seconds']:.3f} s (imports torch: "
        f"{'yes' if imported['imports_torch'] else 'no'})",
    ]
    for row in results["widgets"]:
        if "error" in row:
            lines.append(f"open widget {row['widget']!r}: n/a ({row['error']})")
        else:
            lines.append(
                f"open widget {row['widget']!r}: {row['seconds']:.2f} s (torch imported; "
                f"the viewer itself took {row['viewer_seconds']:.1f} s)"
            )
    if results["targets"]:
        lines += ["", "| target | goal | measured | met |", "|---|---:|---:|---|"]
        for target in results["targets"]:
            value, goal, unit = target["value"], target["goal"], target["unit"]
            if unit == "":
                measured, wanted = _cell(value, ".0%"), f"≥ {goal:.0%}"
            elif unit == "x":
                sign = "<" if target.get("below") else "≥"
                measured, wanted = _cell(value, ".2f") + "×", f"{sign} {goal}×"
            else:
                measured, wanted = _cell(value, ".3f") + " s", f"< {goal} s"
            met = {True: "yes", False: "no", None: "n/a"}[target["met"]]
            lines.append(f"| {target['target']} | {wanted} | {measured} | {met} |")
    elif results["quick"]:
        lines += ["", "(--quick: tiny sizes; the targets apply to the full run)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or, with ``--one``, one measurement) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (well under a minute)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    parser.add_argument("--no-widgets", action="store_true", help="skip the widget timings")
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="all measurements in one process: saves the start-up of each (~15 s on a GPU "
        "machine); peak memory stays per measurement on CUDA only",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps([run_one(spec, args) for spec in args.one.split(";")]))
        return
    results = run_all(args)
    print(format_report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
