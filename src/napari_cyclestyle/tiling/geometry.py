"""Tile geometry: where tiles start, how they blend, and how far layers reach.

A layer's *span* says which input indices an output index depends on; a stretch of
layers adds up its layers' spans into the halo a tile must be read with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
from torch import nn

PADS = (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d)


CONVS = (nn.Conv2d, nn.ConvTranspose2d)
# Nearest-neighbour up-sampling by an integer factor (the "resize" generators').
UPSAMPLES = (nn.Upsample,)


def upsample_factor(module: nn.Upsample) -> int:
    """The integer factor of a nearest-neighbour ``nn.Upsample``.

    Raises
    ------
    ValueError
        For another mode, a target size instead of a factor, or a fractional factor.
    """
    factor = module.scale_factor
    if isinstance(factor, tuple) and len(set(factor)) == 1:
        factor = factor[0]
    if module.mode != "nearest" or factor is None or isinstance(factor, tuple) or factor % 1:
        raise ValueError("Tiling supports nearest-neighbour up-sampling by an integer factor.")
    return int(factor)


RegionReader = Callable[[int, int, int, int], np.ndarray]


RegionWriter = Callable[[int, int, int, int, np.ndarray], None]


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)``.

    Consecutive tiles overlap by at least ``overlap``; starts are multiples of ``align``
    and the last tile ends flush with ``size`` (so ``size - tile`` must be a multiple of
    ``align`` when ``tile < size``).
    """
    if tile >= size:
        return [0]
    step = max(align, (tile - overlap) // align * align)
    return [*range(0, size - tile, step), size - tile]


def blend_window(length: int, overlap: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    """1D blending weights of a tile: a raised-cosine ramp over ``overlap`` pixels at each
    tapered end, 1 elsewhere (and at image borders). Weights are strictly positive, so
    normalising by their sum reproduces any value that all tiles agree on."""
    weights = np.ones(length, np.float32)
    overlap = min(overlap, length)
    if overlap <= 0:
        return weights
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
    if taper_start:
        weights[:overlap] = ramp
    if taper_end:
        weights[-overlap:] = np.minimum(weights[-overlap:], ramp[::-1])
    return weights


def source_index(index: np.ndarray, size: int) -> np.ndarray:
    """Map padded coordinates to source pixels: reflection (as ``F.pad(mode="reflect")``)
    when the padding is smaller than the size, else replication."""
    if index.min() > -size and index.max() < 2 * size - 1:
        index = np.abs(index)
        return np.where(index >= size, 2 * (size - 1) - index, index)
    return np.clip(index, 0, size - 1)


def output_size(module: nn.Module, size: int) -> int:
    if isinstance(module, PADS):
        pad = module.padding
        return size + (pad[2] + pad[3] if len(pad) == 4 else 2 * pad[0])
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError("Tiling supports convolutions with numeric zero padding only.")
        k, s, p, d = module.kernel_size[0], module.stride[0], module.padding[0], module.dilation[0]
        return (size + 2 * p - d * (k - 1) - 1) // s + 1
    if isinstance(module, nn.ConvTranspose2d):
        k, s, p, d = module.kernel_size[0], module.stride[0], module.padding[0], module.dilation[0]
        return (size - 1) * s - 2 * p + d * (k - 1) + module.output_padding[0] + 1
    if isinstance(module, UPSAMPLES):
        return size * upsample_factor(module)
    return size


def input_span(module: nn.Module) -> tuple[Fraction, Fraction, Fraction]:
    """``(a, lo, hi)``: output index ``o`` of ``module`` depends on the input indices
    ``a·o + lo`` to ``a·o + hi`` (one axis; the module's own padding included)."""
    if isinstance(module, PADS):
        shift = Fraction(-max(module.padding))
        return Fraction(1), shift, shift
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        k, s, p, d = module.kernel_size[0], module.stride[0], module.padding[0], module.dilation[0]
        if isinstance(module, nn.Conv2d):
            return Fraction(s), Fraction(-p), Fraction(d * (k - 1) - p)
        # o = i·s - p + j·d for a tap j: inputs (o + p - d(k-1))/s .. (o + p)/s
        return Fraction(1, s), Fraction(p - d * (k - 1), s), Fraction(p, s)
    if isinstance(module, UPSAMPLES):
        # o reads input floor(o / f): from o/f - (f-1)/f to o/f.
        factor = upsample_factor(module)
        return Fraction(1, factor), Fraction(1 - factor, factor), Fraction(0)
    return Fraction(1), Fraction(0), Fraction(0)


def sample_crops(
    padded: tuple[int, int], inner: int, context: int, fraction: float, align: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int, int, int]], tuple[int, int]]:
    """Evenly spread sample tiles of side ``inner`` with ``context`` around them.

    Returns the crops' origins, each crop's sampled box (in crop coordinates) and the
    common crop size.
    """
    height, width = padded
    crop = (min(height, inner + 2 * context), min(width, inner + 2 * context))
    candidates = [
        (y, x)
        for y in tile_starts(height, min(inner, height), 0, align)
        for x in tile_starts(width, min(inner, width), 0, align)
    ]
    count = max(1, math.ceil(fraction * len(candidates)))
    picks = np.unique(np.linspace(0, len(candidates) - 1, count).round().astype(int))
    origins, boxes = [], []
    for index in picks:
        y, x = candidates[index]
        cy = min(max(y - context, 0), height - crop[0])
        cx = min(max(x - context, 0), width - crop[1])
        origins.append((cy, cx))
        boxes.append((y - cy, min(y - cy + inner, crop[0]), x - cx, min(x - cx + inner, crop[1])))
    return origins, boxes, crop
