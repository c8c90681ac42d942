"""The graph of lazily evaluated whole-plane activations.

A :class:`Node` is an activation of shape ``(N, C, H, W)`` whose regions can be read:
the input plane, a stored activation, pointwise layers or a :class:`Segment` (a stretch
of convolutions, computed from its source with a halo) on top of another node, or a
sum or concatenation of nodes. Reading a region of a cheap node reads stored data only.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor, nn

from .geometry import (
    UPSAMPLES,
    RegionReader,
    input_span,
    output_size,
    source_index,
    upsample_factor,
)
from .statistics import FrozenNorm
from .store import Store


class Node:
    """An activation of shape ``(N, C, H, W)`` whose regions can be read."""

    shape: tuple[int, int, int, int]
    cheap = True  # reading a region reads stored data only (no convolution)
    leaves = 1  # stored arrays touched by one read
    inputs: tuple[Node, ...] = ()  # the nodes a read reads

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        """The region: a new tensor, or a view of one (never of stored data), so that
        callers may change it in place."""
        raise NotImplementedError

    def first_row_read(self, y: int) -> int:
        """The first row of the stored arrays below this node that reading rows from
        ``y`` on touches (for nodes that keep the geometry: ``y`` itself)."""
        return min((node.first_row_read(y) for node in self.inputs), default=y)

    def stored_leaves(self) -> list[Stored]:
        """The stored arrays a read of this node reads."""
        return [leaf for node in self.inputs for leaf in node.stored_leaves()]

    def prefetch(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Start reading the stored data that reading the region will need (for nodes
        that keep the geometry: the same region of every input)."""
        for node in self.inputs:
            node.prefetch(y0, y1, x0, x1)


class PlaneInput(Node):
    """The normalised input plane, reflect-padded to the network's size multiple."""

    def __init__(
        self,
        read: RegionReader,
        channels: int,
        size: tuple[int, int],
        padded: tuple[int, int],
        offset: tuple[int, int],
        device: torch.device,
    ) -> None:
        self.shape = (1, channels, *padded)
        self._read, self._size, self._offset, self._device = read, size, offset, device

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        rows = source_index(np.arange(y0, y1) - self._offset[0], self._size[0])
        cols = source_index(np.arange(x0, x1) - self._offset[1], self._size[1])
        r0, c0 = int(rows.min()), int(cols.min())
        block = self._read(r0, int(rows.max()) + 1, c0, int(cols.max()) + 1)
        block = block[:, rows - r0][:, :, cols - c0]
        return torch.from_numpy(np.ascontiguousarray(block))[None].to(self._device)


class Crops(Node):
    """``N`` equally sized crops of another node, stacked along the batch axis."""

    def __init__(self, source: Node, origins: list[tuple[int, int]], size: tuple[int, int]):
        self.shape = (len(origins), source.shape[1], *size)
        self._source, self._origins = source, origins
        self.inputs = (source,)

    def first_row_read(self, y: int) -> int:
        return 0  # the crops lie anywhere in the source

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        return torch.cat(
            [self._source.read(cy + y0, cy + y1, cx + x0, cx + x1) for cy, cx in self._origins]
        )

    def prefetch(self, y0: int, y1: int, x0: int, x1: int) -> None:
        for cy, cx in self._origins:
            self._source.prefetch(cy + y0, cy + y1, cx + x0, cx + x1)


class Stored(Node):
    """A stored activation; ``serial`` numbers the stores of one layer-by-layer run."""

    def __init__(
        self,
        store: Store | None,
        shape: tuple[int, int, int, int],
        device: torch.device,
        serial: int,
    ) -> None:
        self.shape, self.serial = shape, serial
        self.store, self._device = store, device

    def read(self, y0: int, y1: int, x0: int, x1: int, norm: FrozenNorm | None = None) -> Tensor:
        """The region, normalised by ``norm`` if given (on the CPU, while it is read)."""
        if norm is not None and self._device.type != "cpu":
            return norm(self.store.read(y0, y1, x0, x1).to(self._device))
        return self.store.read(y0, y1, x0, x1, norm).to(self._device)

    def prefetch(self, y0: int, y1: int, x0: int, x1: int) -> None:
        self.store.prefetch(y0, y1, x0, x1)

    def stored_leaves(self) -> list[Stored]:
        return [self]


class Pointwise(Node):
    def __init__(self, source: Node, ops: list[nn.Module]) -> None:
        self.shape, self.cheap, self.leaves = source.shape, source.cheap, source.leaves
        self.source, self.ops = source, ops
        self.inputs = (source,)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        ops = self.ops
        if isinstance(self.source, Stored) and isinstance(ops[0], FrozenNorm):
            x, ops = self.source.read(y0, y1, x0, x1, ops[0]), ops[1:]
        else:
            x = self.source.read(y0, y1, x0, x1)
        for op in ops:
            x = x.relu_() if type(op) is nn.ReLU else op(x)
        return x


class Combine(Node):
    """Sum (residual connection) or channel concatenation (U-Net skip) of nodes."""

    def __init__(self, parts: list[Node], concat: bool) -> None:
        n, _, h, w = parts[0].shape
        channels = sum(p.shape[1] for p in parts) if concat else parts[0].shape[1]
        self.shape = (n, channels, h, w)
        self.leaves = sum(p.leaves for p in parts)
        self.cheap = all(p.cheap for p in parts) and self.leaves <= 3
        self.parts, self.concat = parts, concat
        self.inputs = tuple(parts)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        values = [p.read(y0, y1, x0, x1) for p in self.parts]
        return torch.cat(values, dim=1) if self.concat else sum(values[1:], values[0])


class Segment(Node):
    """Modules with a spatial extent (padding, convolutions, with pointwise layers between)
    applied to a cheap source. A region is computed from the source region it depends on,
    widened by a halo that covers every module's reach, and cropped: exact wherever the
    halo is inside the plane, and at the plane's borders the modules pad as in a
    whole-plane forward."""

    cheap = False

    def __init__(self, source: Node, modules: list[nn.Module]) -> None:
        self.source, self.modules = source, modules
        self.inputs = (source,)
        n, _, height, width = source.shape
        out_h, out_w, channels = height, width, source.shape[1]
        scale, align = Fraction(1), 1
        for module in modules:
            out_h, out_w = output_size(module, out_h), output_size(module, out_w)
            channels = getattr(module, "out_channels", channels)
            if isinstance(module, nn.Conv2d):
                scale /= module.stride[0]
                align *= module.stride[0]
            elif isinstance(module, nn.ConvTranspose2d):
                scale *= module.stride[0]
            elif isinstance(module, UPSAMPLES):
                scale *= upsample_factor(module)
        # Source indices that output index o depends on: a·o + lo .. a·o + hi.
        a, lo, hi = Fraction(1), Fraction(0), Fraction(0)
        for module in reversed(modules):
            step, low, high = input_span(module)
            a, lo, hi = a * step, step * lo + low, step * hi + high
        # Context beyond floor(start·a) and ceil(stop·a) that covers the whole span.
        halo = max(0, math.ceil(max(-lo, hi + 1 - a)))
        self.shape = (n, channels, out_h, out_w)
        self.scale, self.align, self.halo = scale, align, -(-halo // align) * align

    def source_region(self, start: int, stop: int, size: int) -> tuple[int, int]:
        """Source interval ``[i0, i1)`` needed for output interval ``[start, stop)``."""
        first = math.floor(start / self.scale) - self.halo
        last = math.ceil(stop / self.scale) + self.halo
        first = max(0, first // self.align * self.align)
        last = min(size, -(-last // self.align) * self.align)
        return first, last

    def first_row_read(self, y: int) -> int:
        return self.source.first_row_read(self.source_region(y, y + 1, self.source.shape[2])[0])

    @property
    def source_is_stored(self) -> bool:
        """Whether the source is a stored array read as it is."""
        return isinstance(self.source, Stored)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        return self.read_with_source(y0, y1, x0, x1)[0]

    def prefetch(self, y0: int, y1: int, x0: int, x1: int) -> None:
        self.source.prefetch(*self._source_box(y0, y1, x0, x1))

    def _source_box(self, y0: int, y1: int, x0: int, x1: int) -> tuple[int, int, int, int]:
        _, _, height, width = self.source.shape
        return (*self.source_region(y0, y1, height), *self.source_region(x0, x1, width))

    def read_with_source(self, y0: int, y1: int, x0: int, x1: int) -> tuple[Tensor, Tensor]:
        """The region, and the source values at the same place (for a scale of 1)."""
        sy0, sy1, sx0, sx1 = self._source_box(y0, y1, x0, x1)
        x = inputs = self.source.read(sy0, sy1, sx0, sx1)
        for module in self.modules:
            x = module(x)
        oy, ox = int(sy0 * self.scale), int(sx0 * self.scale)
        expected = (int((sy1 - sy0) * self.scale), int((sx1 - sx0) * self.scale))
        if tuple(x.shape[-2:]) != expected:
            raise ValueError(f"Tiled layers gave {tuple(x.shape[-2:])}, expected {expected}.")
        center = inputs[..., y0 - sy0 : y1 - sy0, x0 - sx0 : x1 - sx0]
        return x[..., y0 - oy : y1 - oy, x0 - ox : x1 - ox], center


def then(node: Node, module: nn.Module) -> Node:
    if isinstance(node, Segment):
        return Segment(node.source, [*node.modules, module])
    if isinstance(node, Pointwise):
        return Pointwise(node.source, [*node.ops, module])
    return Pointwise(node, [module])
