"""Memory budgets: how much a translation may hold, and the tile size that fits it."""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from .geometry import CONVS

_CPU_BUDGET_CAP = 2**30
# Largest automatic tile on the CPU: smaller tiles keep their activations in cache
# (figures by tile side: benchmarks/README.md, "What the profiles show").
_CPU_TILE = 256


def memory_budget(device: torch.device) -> int:
    """Bytes a translation may use for activations on ``device``.

    Half the free GPU memory on CUDA; a quarter of the available RAM (at most 1 GiB) on
    the CPU and Apple MPS.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return int(min(_available_ram() / 4, _CPU_BUDGET_CAP))


def _available_ram() -> float:
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4.0 * 2**30


def forward_bytes_per_pixel(network: nn.Module) -> int:
    """Peak bytes per input pixel of one forward pass (measured on the CPU for the ResNet
    generators: about 15 bytes per pixel per ``ngf``; U-Nets and the encoder-decoder
    need less)."""
    ngf = getattr(network, "ngf", None)
    if ngf is None:
        ngf = max((m.out_channels for m in network.modules() if isinstance(m, CONVS)), default=64)
    return 16 * int(ngf) + 64


def needs_tiling(network: nn.Module, height: int, width: int, budget: int) -> bool:
    """Whether a forward pass over a ``height`` × ``width`` plane exceeds ``budget`` bytes."""
    return forward_bytes_per_pixel(network) * height * width > budget


def whole_plane_fits(network: nn.Module, height: int, width: int, budget: int | None) -> bool:
    """Whether a forward pass over a whole ``height`` × ``width`` plane fits ``budget``
    bytes or, when None, half the RAM available now."""
    limit = _available_ram() / 2 if budget is None else budget
    return forward_bytes_per_pixel(network) * height * width <= limit


def auto_tile_size(
    network: nn.Module, multiple: int, budget: int, device: torch.device | None = None
) -> int:
    """The largest square tile (a multiple of ``multiple``, at least 64 px) whose forward
    pass fits ``budget`` bytes; on the CPU at most ``_CPU_TILE`` px, where smaller tiles
    keep each tile's activations in cache and run faster."""
    side = int(math.sqrt(budget / forward_bytes_per_pixel(network)))
    if device is not None and device.type == "cpu":
        side = min(side, _CPU_TILE)
    floor = -(-64 // multiple) * multiple
    return max(floor, side // multiple * multiple)
