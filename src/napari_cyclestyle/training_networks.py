"""The networks a run trains: built or loaded, wrapped for torchrun, compiled; precision.

:class:`Networks` holds the networks as built (what files hold); :func:`called_networks`
gives what a step calls (DDP wrappers, compiled). :func:`resolve_precision` says what
``"auto"`` precision is on a device.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import Config, TrainConfig
from .devices import is_out_of_memory
from .distributed import DistributedContext, wrap
from .model import build_network
from .networks import init_weights


class CompiledOrEager:
    """Calls ``torch.compile(network)``; if compiling fails, warns once and calls the
    network itself from then on (compilers fail in many ways: no C compiler, no
    Triton, an unsupported platform)."""

    def __init__(self, network: nn.Module, name: str) -> None:
        self.network, self.name = network, name
        self.compiled: Callable | None = torch.compile(network, options=_cpu_vector_width())

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(batch)
            except Exception as error:  # any compiler failure
                if is_out_of_memory(error):
                    raise
                warnings.warn(
                    f"torch.compile could not compile {self.name} ({type(error).__name__}: "
                    f"{str(error)[:300]}); it trains uncompiled.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled = None
        return self.network(batch)


def _cpu_vector_width() -> dict[str, int]:
    """Inductor's option that names the vector width its CPU kernels are written for.

    Inductor picks the width from the CPU (or ``ATEN_CPU_CAPABILITY``) but leaves it out
    of its cache's keys, so code written for 16-float AVX-512 vectors, cached by one
    process, is compiled with AVX2's 8-float vectors by the next process whose kernels
    are capped at AVX2 (or on another CPU sharing the cache directory), and reads past
    its buffers: a segmentation fault or a corrupted heap. Naming the width puts it in
    the keys. Empty where inductor finds no vector ISA, and on older torch, whose
    inductor has its ISA choice elsewhere: there compiling goes on as before.
    """
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa
    except ImportError:
        return {}
    bits = pick_vec_isa().bit_width()
    return {"cpp.simdlen": bits} if bits else {}


@dataclass
class Networks:
    """The networks, as built (their state dicts are what files hold): all four, or in a
    one-sided run (``mode`` cut or fastcut) G and D_B, with F and D_A None."""

    generator_ab: nn.Module
    generator_ba: nn.Module | None
    discriminator_a: nn.Module | None
    discriminator_b: nn.Module

    @classmethod
    def from_named(cls, named: Mapping[str, Any]) -> Networks:
        """The networks of a :meth:`named` mapping (F and D_A may be missing)."""
        return cls(named["G"], named.get("F"), named.get("D_A"), named["D_B"])

    def named(self) -> dict[str, nn.Module]:
        """The networks the run has, by the names checkpoints use."""
        found = {
            "G": self.generator_ab,
            "F": self.generator_ba,
            "D_A": self.discriminator_a,
            "D_B": self.discriminator_b,
        }
        return {name: network for name, network in found.items() if network is not None}

    def generators(self) -> list[nn.Module]:
        """G, and F when the run has it."""
        return [n for n in (self.generator_ab, self.generator_ba) if n is not None]

    def discriminators(self) -> list[nn.Module]:
        """D_A when the run has it, and D_B."""
        return [n for n in (self.discriminator_a, self.discriminator_b) if n is not None]


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``"auto"`` stands for on ``device`` (bf16 or fp16 on CUDA, else fp32).

    Raises
    ------
    ValueError
        For ``"fp16"`` on a device other than CUDA.
    """
    on_cuda = device.type == "cuda"
    if precision == "auto":
        if not on_cuda:
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not on_cuda:
        raise ValueError("precision='fp16' needs a CUDA device; use 'fp32' or 'auto'.")
    return precision


def build_networks(
    config: Config, device: torch.device, state: dict[str, dict[str, torch.Tensor]] | None
) -> Networks:
    """The networks of the mode, initialised (or loaded from ``state``), on ``device``."""
    train, model = config.train, config.model
    networks = Networks.from_named(
        {name: build_network(model, name) for name in train.network_names}
    )
    for network in networks.named().values():
        init_weights(network)
        network.to(device).train()
        if train.channels_last:
            network.to(memory_format=torch.channels_last)
    if state is not None:
        for name, network in networks.named().items():
            network.load_state_dict(state[name])
    return networks


def called_networks(
    networks: Networks, train: TrainConfig, context: DistributedContext, device: torch.device
) -> Networks:
    """What the step calls: DistributedDataParallel wrappers under torchrun, compiled if
    ``train.compile``."""
    called = {name: wrap(network, context, device) for name, network in networks.named().items()}
    if train.compile:
        # R1 differentiates the discriminators' gradients (a double backward), which
        # torch.compile does not support: with lambda_r1 they run uncompiled.
        compiled = ("G", "F") if train.lambda_r1 > 0 else tuple(called)
        called = {
            name: CompiledOrEager(network, name) if name in compiled else network
            for name, network in called.items()
        }
    return Networks.from_named(called)
