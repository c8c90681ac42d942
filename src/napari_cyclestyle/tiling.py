"""Tiled translation of planes too large for one pass through a generator.

Three ways to normalise, chosen with ``statistics``:

``"exact"`` (default)
    Every InstanceNorm layer uses the statistics of the whole (padded) plane, so the
    result equals whole-plane inference up to float rounding. The network runs layer by
    layer over the whole plane: each stretch of convolutions between two norm layers is
    computed tile by tile, each tile read with exactly the context (halo) its
    convolutions need, and its output is stored (in RAM, and the tile cells beyond the
    memory budget in scratch files on disk) while the moments of the next norm layer
    accumulate. A stored activation's cells are freed as soon as the last pass reading
    them has moved past. Every convolution therefore runs about once per pixel, as in one
    whole-plane forward, and no overlap or blending is needed. This holds for every
    generator, U-Nets included (their deepest levels are small and fit in a tile).
``"estimate"``
    The statistics come from a sample of tiles (``sample_fraction`` of the plane, each
    with context around it), computed layer by layer as above; then the plane is
    translated in overlapping tiles with those statistics frozen and blended with a
    raised-cosine window. No scratch storage beyond one plane's output accumulator.
``"tile"``
    The naive method, for comparison: every tile is normalised with its own statistics
    (reference CycleGAN issue #1040), then blended. Neighbouring tiles get different tones.

Networks without InstanceNorm (batch norm in eval mode, no norm) need no statistics:
``"exact"`` and ``"estimate"`` both run them layer by layer without a statistics pass.

This module never imports napari or Qt.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from . import spill
from .choices import STATISTICS_MODES
from .devices import exact_inference
from .networks import (
    EncoderDecoderGenerator,
    ResnetBlock,
    ResnetGenerator,
    UnetGenerator,
    UnetSkipBlock,
)

DEFAULT_OVERLAP = 64
DEFAULT_SAMPLE_FRACTION = 0.25
# Side of the sampled tiles in "estimate" mode, and the context kept around each
# (full-resolution pixels): many small tiles spread over the plane sample it best.
_SAMPLE_TILE = 64
_SAMPLE_CONTEXT = 32
_MIN_LEVEL_TILE = 16
_BUFFER_GRANULE = 2**16  # values
_CPU_BUDGET_CAP = 2**30
# Largest automatic tile on the CPU. Exact-mode translation of 1024² through
# resnet_9blocks ngf 64 on 2 Zen 4 cores: 128 px 12.6 s, 192 px 11.4 s, 256 px 11.3 s,
# 352 px 11.9 s, 512 px 13.2 s, 684 px 13.1 s, whole plane ~13-14 s.
_CPU_TILE = 256

_POINTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Dropout,
    nn.Identity,
    nn.BatchNorm2d,
)
_PADS = (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d)
_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
_GENERATORS = (ResnetGenerator, UnetGenerator, EncoderDecoderGenerator)

RegionReader = Callable[[int, int, int, int], np.ndarray]
RegionWriter = Callable[[int, int, int, int, np.ndarray], None]


# --------------------------------------------------------------------------------------
# Tile geometry and memory
# --------------------------------------------------------------------------------------


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
        ngf = max((m.out_channels for m in network.modules() if isinstance(m, _CONVS)), default=64)
    return 16 * int(ngf) + 64


def needs_tiling(network: nn.Module, height: int, width: int, budget: int) -> bool:
    """Whether a forward pass over a ``height`` × ``width`` plane exceeds ``budget`` bytes."""
    return forward_bytes_per_pixel(network) * height * width > budget


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


def has_instance_norm(network: nn.Module) -> bool:
    """Whether any layer normalises with per-image statistics (InstanceNorm without
    running statistics)."""
    return any(_is_instance_norm(m) for m in network.modules())


def _is_instance_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.InstanceNorm2d) and not module.track_running_stats


# --------------------------------------------------------------------------------------
# Per-channel moments and frozen normalisation
# --------------------------------------------------------------------------------------


class _Moments:
    """Running per-channel mean and (biased) variance, merged tile by tile (Chan et al.)."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)

    def merge(self, partial: tuple[int, np.ndarray, np.ndarray]) -> None:
        """Add the moments of more values, as :func:`_partial_moments` returns them."""
        n, mean, m2 = partial
        if n == 0:
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)


def _partial_moments(values: Tensor) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, per-channel mean and sum of squared deviations of ``(N, C, H, W)`` values."""
    n = values.shape[0] * values.shape[2] * values.shape[3]
    if n == 0:
        return 0, np.zeros(values.shape[1]), np.zeros(values.shape[1])
    if values.device.type in ("cpu", "cuda"):
        # batch norm's statistics kernel: 2-3x faster than var_mean on the CPU
        mean, var = torch.batch_norm_update_stats(values, None, None, 1.0)
    else:  # not implemented on Apple MPS
        var, mean = torch.var_mean(values, dim=(0, 2, 3), unbiased=False)
    return n, mean.double().cpu().numpy(), var.double().cpu().numpy() * n


class FrozenNorm(nn.Module):
    """Instance normalisation with fixed per-channel statistics (eps as the layer's)."""

    def __init__(self, mean: np.ndarray, var: np.ndarray, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("var", torch.as_tensor(var, dtype=torch.float32))
        # The same transform as x · scale + shift, for normalising into a given tensor.
        scale = (self.var + eps).rsqrt()
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", (-self.mean * scale).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Return ``(x - mean) / sqrt(var + eps)``."""
        return functional.batch_norm(x, self.mean, self.var, training=False, eps=self.eps)

    def normalize_into(self, x: Tensor, out: Tensor) -> None:
        """Write the normalised ``x`` into ``out`` (a view of the same shape): one pass,
        where copying and then normalising would take two. Channels are the second axis
        of any number of axes."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        torch.addcmul(self.shift.view(shape), x, self.scale.view(shape), out=out)


def with_frozen_norms(network: nn.Module, statistics: dict[nn.Module, FrozenNorm]) -> nn.Module:
    """A copy of ``network`` whose instance norms are replaced by frozen ones.

    The original network is not modified (it may be in use in another thread).
    """
    memo = {id(norm): frozen for norm, frozen in statistics.items()}
    return copy.deepcopy(network, memo)


# --------------------------------------------------------------------------------------
# Lazily evaluated whole-plane activations
# --------------------------------------------------------------------------------------


class _Node:
    """An activation of shape ``(N, C, H, W)`` whose regions can be read."""

    shape: tuple[int, int, int, int]
    cheap = True  # reading a region reads stored data only (no convolution)
    leaves = 1  # stored arrays touched by one read
    inputs: tuple[_Node, ...] = ()  # the nodes a read reads

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        """The region: a new tensor, or a view of one (never of stored data), so that
        callers may change it in place."""
        raise NotImplementedError

    def first_row_read(self, y: int) -> int:
        """The first row of the stored arrays below this node that reading rows from
        ``y`` on touches (for nodes that keep the geometry: ``y`` itself)."""
        return min((node.first_row_read(y) for node in self.inputs), default=y)

    def stored_leaves(self) -> list[_Stored]:
        """The stored arrays a read of this node reads."""
        return [leaf for node in self.inputs for leaf in node.stored_leaves()]

    def prefetch(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Start reading the stored data that reading the region will need (for nodes
        that keep the geometry: the same region of every input)."""
        for node in self.inputs:
            node.prefetch(y0, y1, x0, x1)


class _PlaneInput(_Node):
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
        rows = _source_index(np.arange(y0, y1) - self._offset[0], self._size[0])
        cols = _source_index(np.arange(x0, x1) - self._offset[1], self._size[1])
        r0, c0 = int(rows.min()), int(cols.min())
        block = self._read(r0, int(rows.max()) + 1, c0, int(cols.max()) + 1)
        block = block[:, rows - r0][:, :, cols - c0]
        return torch.from_numpy(np.ascontiguousarray(block))[None].to(self._device)


def _source_index(index: np.ndarray, size: int) -> np.ndarray:
    """Map padded coordinates to source pixels: reflection (as ``F.pad(mode="reflect")``)
    when the padding is smaller than the size, else replication."""
    if index.min() > -size and index.max() < 2 * size - 1:
        index = np.abs(index)
        return np.where(index >= size, 2 * (size - 1) - index, index)
    return np.clip(index, 0, size - 1)


class _Crops(_Node):
    """``N`` equally sized crops of another node, stacked along the batch axis."""

    def __init__(self, source: _Node, origins: list[tuple[int, int]], size: tuple[int, int]):
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


class _Store:
    """An ``(N, C, H, W)`` float32 activation, written once on a grid of ``tile`` ×
    ``tile`` cells and then read in any regions.

    When it fits the scratch budget whole, it keeps the written cells themselves (no
    copy); else each cell is copied into a buffer of the scratch's pool while the budget
    allows (unless not ``pooled``), and goes to a file in a scratch folder when it does
    not (see :mod:`.spill`): written whole, and never by two processes at once, so
    cluster workers can share the folder (with a shared scratch, every cell is a file).
    In one process the scratch's threads write the files while the next tile computes
    (:meth:`finish` waits for them) and read ahead what the next tile needs
    (:meth:`prefetch`). :meth:`release_rows_above` frees cells that no later read
    needs, so RAM and disk hold little beyond the data still to be read.
    """

    def __init__(
        self, shape: tuple[int, int, int, int], scratch: _Scratch, tile: int, pooled: bool = True
    ) -> None:
        self.shape, self.tile, self._pooled = shape, tile, pooled
        self._shared = scratch.shared
        # Cluster workers get a copy of the store: they need only the folder.
        self._scratch = None if scratch.shared else scratch
        self._spill = None if scratch.shared else scratch.spill
        # Whether the whole store fits the budget: then a cell is the written tensor.
        self._whole = False
        # Else a cell is a file's path or, in RAM, a flat buffer from the scratch's pool.
        self._cells: dict[tuple[int, int], Tensor | str] = {}
        self._folder: str | None = None
        self._pending: list[Future] = []
        self._freed_rows = 0
        # Bytes of the budget the whole store holds; shared with the finaliser.
        self._reserved = [0]
        nbytes = int(np.prod(shape)) * 4
        if scratch.shared:
            self._make_folder(scratch)
        elif scratch.reserve(nbytes):
            self._whole = True
            self._reserved[0] = nbytes
        # The finaliser gives the pool's buffers back (a whole store has none).
        pooled = {} if self._whole else self._cells
        weakref.finalize(self, _free_store, scratch, pooled, self._reserved)

    def _make_folder(self, scratch: _Scratch) -> None:
        self._folder = scratch.new_path()
        os.mkdir(self._folder)
        weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)

    def _path(self, row: int, column: int) -> str:
        return os.path.join(self._folder, f"{row}_{column}.cell")

    def _cell(self, row: int, column: int) -> Tensor | str:
        if self._shared:  # written by other processes: the file is the record
            return self._path(row, column)
        return self._cells[row, column]

    def read(self, y0: int, y1: int, x0: int, x1: int, norm: FrozenNorm | None = None) -> Tensor:
        """The region (a new tensor), normalised by ``norm`` on the way if given."""
        region = torch.empty((*self.shape[:2], y1 - y0, x1 - x0))
        for row, column, (r0, r1, c0, c1) in self._cells_in(y0, y1, x0, x1):
            cell = self._cell(row, column)
            top, left = row * self.tile, column * self.tile
            target = region[:, :, r0 - y0 : r1 - y0, c0 - x0 : c1 - x0]
            r0, r1, c0, c1 = r0 - top, r1 - top, c0 - left, c1 - left
            if isinstance(cell, str):
                layout, k0, k1 = self._bands_of(row, column, r0, r1)
                if self._spill is None:
                    bands = spill.load_bands(cell, layout, k0, k1)
                else:
                    bands = self._spill.bands(cell, layout, k0, k1)
                parts = spill.band_parts(bands, k0, r0, r1, c0, c1, target)
            else:
                if not self._whole:
                    cell = self._buffer_view(cell, top, left)
                parts = [(cell[:, :, r0:r1, c0:c1], target)]
            for part, into in parts:
                if norm is None:
                    into.copy_(part)
                else:
                    norm.normalize_into(part, into)
        return region

    def prefetch(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """Start reading the parts of the region that lie in files (in one process)."""
        if self._spill is None or self._whole:
            return
        for row, column, (r0, r1, _, _) in self._cells_in(y0, y1, x0, x1):
            cell = self._cells.get((row, column))
            if isinstance(cell, str):
                top = row * self.tile
                self._spill.prefetch(cell, *self._bands_of(row, column, r0 - top, r1 - top))

    def _bands_of(
        self, row: int, column: int, r0: int, r1: int
    ) -> tuple[spill.CellLayout, int, int]:
        """A file cell's layout and the bands ``[k0, k1)`` that hold its rows ``[r0, r1)``."""
        layout = spill.CellLayout(self._cell_shape(row * self.tile, column * self.tile))
        return layout, *layout.band_range(r0, r1)

    def _cells_in(
        self, y0: int, y1: int, x0: int, x1: int
    ) -> Iterator[tuple[int, int, tuple[int, int, int, int]]]:
        """Each cell the region touches: its row, column and the part of the region in it."""
        tile = self.tile
        for row in range(y0 // tile, (y1 - 1) // tile + 1):
            for column in range(x0 // tile, (x1 - 1) // tile + 1):
                top, left = row * tile, column * tile
                part = (max(y0, top), min(y1, top + tile), max(x0, left), min(x1, left + tile))
                yield row, column, part

    def write(self, y0: int, y1: int, x0: int, x1: int, values: Tensor) -> None:
        """Write one cell of the grid (``y0``, ``x0`` multiples of ``tile``); ``values``
        must not change afterwards."""
        row, column = y0 // self.tile, x0 // self.tile
        if self._whole:
            self._cells[row, column] = values
            return
        buffer = self._scratch.take(values.numel()) if self._pooled and not self._shared else None
        if buffer is not None:
            self._cells[row, column] = buffer
            self._buffer_view(buffer, y0, x0).copy_(values)
            return
        if self._folder is None:
            self._make_folder(self._scratch)
        path = self._cells[row, column] = self._path(row, column)
        if self._spill is None:
            spill.save_cell(path, values)
        else:
            self._pending.append(self._spill.save(path, values))

    def _cell_shape(self, top: int, left: int) -> tuple[int, int, int, int]:
        """The shape of the cell at ``top``, ``left``."""
        height = min(self.tile, self.shape[2] - top)
        width = min(self.tile, self.shape[3] - left)
        return (*self.shape[:2], height, width)

    def _buffer_view(self, buffer: Tensor, top: int, left: int) -> Tensor:
        """A cell's buffer as the ``(N, C, h, w)`` cell at ``top``, ``left``."""
        shape = self._cell_shape(top, left)
        return buffer[: math.prod(shape)].view(shape)

    def finish(self) -> None:
        """Wait until every cell written so far is in its file (errors raised here)."""
        for future in self._pending:
            future.result()
        self._pending.clear()

    def release_rows_above(self, y: int) -> None:
        """Free every cell that lies wholly above row ``y`` (all of them for a ``y`` at or
        beyond the bottom); reading there afterwards is an error."""
        total_rows = -(-self.shape[2] // self.tile)
        rows = total_rows if y >= self.shape[2] else y // self.tile
        columns = -(-self.shape[3] // self.tile)
        for row in range(self._freed_rows, rows):
            for column in range(columns):
                cell = (
                    self._path(row, column)
                    if self._shared
                    else self._cells.pop((row, column), None)
                )
                if isinstance(cell, str):
                    if self._spill is not None:
                        self._spill.forget(cell)
                    with contextlib.suppress(FileNotFoundError):  # a cell never written
                        os.remove(cell)
                elif cell is not None and not self._whole:
                    self._scratch.give_back(cell)
        self._freed_rows = max(self._freed_rows, rows)
        if rows == total_rows and self._reserved[0]:
            self._scratch.release(self._reserved[0])
            self._reserved[0] = 0


def _free_store(scratch: _Scratch, cells: dict, reserved: list[int]) -> None:
    scratch.release(reserved[0])
    for cell in cells.values():
        if not isinstance(cell, str):
            scratch.give_back(cell)


class _Scratch:
    """Where stored activations live: RAM up to ``budget`` bytes, then files in ``folder``;
    with ``shared``, every activation goes to ``folder``, which all workers of a cluster
    must be able to reach.

    RAM for single cells comes from a pool of flat buffers, each its own anonymous
    memory map, reused for any cell that fills at least half of one. Cells are freed and
    made in every pass; taken from the heap, between the tiles' temporaries, they kept
    freed memory resident (peaks of 1.83-1.89 GiB at 2048² for a 1 GiB budget, against
    1.29-1.55 GiB in most runs, for ~8 % more time: probably temporaries that the
    allocator now hands back and faults in again).
    """

    def __init__(self, budget: int, folder: str | os.PathLike | None, shared: bool) -> None:
        self._budget, self._used, self._folder = budget, 0, folder
        self.shared = shared
        self._directory: tempfile.TemporaryDirectory | None = None
        self._count = 0
        self._idle: list[Tensor] = []
        self.spill = spill.SpillFiles()

    def reserve(self, nbytes: int) -> bool:
        """Count ``nbytes`` against the budget (dropping idle buffers to make room)."""
        while self._used + nbytes > self._budget and self._idle:
            self._used -= self._idle.pop().nbytes
        if self._used + nbytes > self._budget:
            return False
        self._used += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self._used -= nbytes

    def take(self, numel: int) -> Tensor | None:
        """A flat float32 buffer of at least ``numel`` values within the budget, or None."""
        for index, buffer in enumerate(self._idle):
            if numel <= buffer.numel() <= 2 * numel:
                return self._idle.pop(index)
        # Rounded up, so that the cells of every level (about equally many values) fit
        # the same buffers.
        capacity = -(-numel // _BUFFER_GRANULE) * _BUFFER_GRANULE
        if not self.reserve(capacity * 4):
            return None
        return spill.aligned_buffer(capacity * 4).view(torch.float32)

    def give_back(self, buffer: Tensor) -> None:
        """Return a buffer from :meth:`take` for reuse (it stays counted in the budget)."""
        self._idle.append(buffer)

    def new_path(self) -> str:
        if self._directory is None:
            self._directory = tempfile.TemporaryDirectory(
                prefix="cyclestyle-", dir=self._folder, ignore_cleanup_errors=True
            )
        self._count += 1
        return os.path.join(self._directory.name, f"activation{self._count}")

    def close(self) -> None:
        self.spill.close()
        self._idle.clear()
        if self._directory is not None:
            self._directory.cleanup()


class _Stored(_Node):
    """A stored activation; ``serial`` numbers the stores of one layer-by-layer run."""

    def __init__(
        self,
        store: _Store | None,
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

    def stored_leaves(self) -> list[_Stored]:
        return [self]


class _Pointwise(_Node):
    def __init__(self, source: _Node, ops: list[nn.Module]) -> None:
        self.shape, self.cheap, self.leaves = source.shape, source.cheap, source.leaves
        self.source, self.ops = source, ops
        self.inputs = (source,)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        ops = self.ops
        if isinstance(self.source, _Stored) and isinstance(ops[0], FrozenNorm):
            x, ops = self.source.read(y0, y1, x0, x1, ops[0]), ops[1:]
        else:
            x = self.source.read(y0, y1, x0, x1)
        for op in ops:
            x = x.relu_() if type(op) is nn.ReLU else op(x)
        return x


class _Combine(_Node):
    """Sum (residual connection) or channel concatenation (U-Net skip) of nodes."""

    def __init__(self, parts: list[_Node], concat: bool) -> None:
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


class _Segment(_Node):
    """Modules with a spatial extent (padding, convolutions, with pointwise layers between)
    applied to a cheap source. A region is computed from the source region it depends on,
    widened by a halo that covers every module's reach, and cropped: exact wherever the
    halo is inside the plane, and at the plane's borders the modules pad as in a
    whole-plane forward."""

    cheap = False

    def __init__(self, source: _Node, modules: list[nn.Module]) -> None:
        self.source, self.modules = source, modules
        self.inputs = (source,)
        n, _, height, width = source.shape
        out_h, out_w, channels = height, width, source.shape[1]
        scale, align = Fraction(1), 1
        for module in modules:
            out_h, out_w = _output_size(module, out_h), _output_size(module, out_w)
            channels = getattr(module, "out_channels", channels)
            if isinstance(module, nn.Conv2d):
                scale /= module.stride[0]
                align *= module.stride[0]
            elif isinstance(module, nn.ConvTranspose2d):
                scale *= module.stride[0]
        # Source indices that output index o depends on: a·o + lo .. a·o + hi.
        a, lo, hi = Fraction(1), Fraction(0), Fraction(0)
        for module in reversed(modules):
            step, low, high = _input_span(module)
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
        return isinstance(self.source, _Stored)

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


def _output_size(module: nn.Module, size: int) -> int:
    if isinstance(module, _PADS):
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
    return size


def _input_span(module: nn.Module) -> tuple[Fraction, Fraction, Fraction]:
    """``(a, lo, hi)``: output index ``o`` of ``module`` depends on the input indices
    ``a·o + lo`` to ``a·o + hi`` (one axis; the module's own padding included)."""
    if isinstance(module, _PADS):
        shift = Fraction(-max(module.padding))
        return Fraction(1), shift, shift
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        k, s, p, d = module.kernel_size[0], module.stride[0], module.padding[0], module.dilation[0]
        if isinstance(module, nn.Conv2d):
            return Fraction(s), Fraction(-p), Fraction(d * (k - 1) - p)
        # o = i·s - p + j·d for a tap j: inputs (o + p - d(k-1))/s .. (o + p)/s
        return Fraction(1, s), Fraction(p - d * (k - 1), s), Fraction(p, s)
    return Fraction(1), Fraction(0), Fraction(0)


# --------------------------------------------------------------------------------------
# Layer-by-layer execution
# --------------------------------------------------------------------------------------


class _Layerwise:
    """Runs a generator over a whole plane layer by layer, one tile at a time.

    Every method that may compute is a generator yielding once per tile; ``dry`` counts
    the tiles without computing anything. ``tasks`` runs the tiles of each pass (here,
    or spread over a cluster). ``reads`` maps each store's serial to the last pass that
    read it, ``first_reads_seen`` to the first; given those of a dry run as
    ``last_reads`` and ``first_reads``, a run frees stored cells as soon as their last
    pass has consumed them, and keeps the stores read by the next pass in RAM first.
    """

    def __init__(
        self,
        tile: int,
        reference_channels: int,
        full_size: tuple[int, int],
        device: torch.device,
        scratch: _Scratch,
        tasks: LocalTasks | DaskTasks,
        dry: bool,
        boxes: list[tuple[int, int, int, int]] | None = None,
        last_reads: dict[int, int] | None = None,
        first_reads: dict[int, int] | None = None,
    ) -> None:
        self.tile, self.reference_channels, self.full_size = tile, reference_channels, full_size
        self.device, self.scratch, self.tasks, self.dry = device, scratch, tasks, dry
        self.boxes, self.last_reads, self.first_reads = boxes, last_reads, first_reads
        self.reads: dict[int, int] = {}
        self.first_reads_seen: dict[int, int] = {}
        self._passes = self._stores = 0
        self.statistics: dict[nn.Module, FrozenNorm] = {}
        # Sources to store while a stretch reading them is materialised (node -> stored).
        self._capture: dict[_Node, _Stored | None] = {}

    def run(self, module: nn.Module, node: _Node) -> Iterator[None]:
        """Apply ``module`` to ``node``; returns (via StopIteration) the output node."""
        if isinstance(module, _GENERATORS):
            return (yield from self.run(module.model, node))
        if isinstance(module, nn.Sequential):
            for child in module:
                node = yield from self.run(child, node)
            return node
        if isinstance(module, ResnetBlock):
            node = yield from self.shareable(node)
            # The block's first stretch reads its input anyway: store that read, so the
            # residual sum below reads one stored array instead of recomputing the input.
            self._capture[node] = None
            inner = yield from self.run(module.conv_block, node)
            node = self._capture.pop(node) or node
            return _Combine([node, inner], concat=False)
        if isinstance(module, UnetSkipBlock):
            if module.outermost:
                return (yield from self.run(module.model, node))
            node = yield from self.shareable(node)
            inner = yield from self.run(module.model, node)
            return _Combine([node, inner], concat=True)
        if _is_instance_norm(module):
            if module not in self.statistics:
                stored, moments = yield from self.materialize(node, with_moments=True)
                self.statistics[module] = FrozenNorm(moments.mean, moments.var, module.eps).to(
                    self.device
                )
                node = stored
            return _then(node, self.statistics[module])
        if isinstance(module, _POINTWISE) or isinstance(module, nn.InstanceNorm2d):
            return _then(node, module)
        if isinstance(module, (*_PADS, *_CONVS)):
            if isinstance(node, _Segment):
                return _Segment(node.source, [*node.modules, module])
            node = yield from self.shareable(node)
            return _Segment(node, [module])
        raise ValueError(
            f"Tiled translation does not know the layer {type(module).__name__}; "
            "translate without tiling (tile_size=None)."
        )

    def shareable(self, node: _Node) -> Iterator[None]:
        """``node`` itself if reading it is cheap, else a stored copy."""
        if node.cheap:
            return node
        stored, _ = yield from self.materialize(node, with_moments=False)
        return stored

    def level_tile(self, node: _Node) -> int:
        """Tile side at a node's level: as many values per tile as a full-resolution tile
        of ``reference_channels`` channels (so coarse, wide levels get fewer pixels)."""
        channels = max(node.shape[1], 1)
        return max(_MIN_LEVEL_TILE, int(self.tile * math.sqrt(self.reference_channels / channels)))

    def materialize(self, node: _Node, with_moments: bool) -> Iterator[None]:
        """Compute ``node`` tile by tile into a store; with ``with_moments`` also its
        per-channel moments (over ``boxes`` when sampling). Returns (stored, moments)."""
        n, channels, height, width = node.shape
        moments = _Moments(channels)
        tile = self.level_tile(node)
        source = node.source if isinstance(node, _Segment) else None
        capture = source in self._capture and not node.source_is_stored and node.scale == 1
        task = store = source_store = None
        if not self.dry:
            # Serials as _stored gives them below.
            store = self._new_store(node.shape, tile, self._stores + 1 + capture)
            source_store = (
                self._new_store(source.shape, tile, self._stores + 1) if capture else None
            )
            boxes = self._level_boxes(height, width) if with_moments else None
            task = _StoreTask(node, store, source_store, with_moments, boxes)
        regions = [
            (y0, min(y0 + tile, height), x0, min(x0 + tile, width))
            for y0 in range(0, height, tile)
            for x0 in range(0, width, tile)
        ]
        for partials in self.run_pass(node, task, regions):
            for partial in partials or ():
                moments.merge(partial)
            yield
        for written in (store, source_store):
            if written is not None:
                written.finish()
        if capture:
            self._capture[source] = self._stored(source_store, source.shape)
        return self._stored(store, node.shape), moments

    def _new_store(self, shape: tuple[int, int, int, int], tile: int, serial: int) -> _Store:
        """A store for the coming pass. If the pass after it does not read it (a residual
        input, a U-Net skip), its cells leave the budget's RAM to the stores that are read
        sooner, which then spill less: each GiB that goes to disk and back costs time."""
        next_pass = self._passes + 2
        read_soon = self.first_reads is None or self.first_reads.get(serial, 0) <= next_pass
        return _Store(shape, self.scratch, tile, pooled=read_soon)

    def _stored(self, store: _Store | None, shape: tuple[int, int, int, int]) -> _Stored:
        self._stores += 1
        return _Stored(store, shape, self.device, self._stores)

    def run_pass(
        self, node: _Node, task: Callable | None, regions: list[tuple], top: int = 0
    ) -> Iterator:
        """``task(region)`` for each region of ``node`` (row-major; ``top`` shifts their
        rows into the node's), yielded in order (None each when dry). Stored arrays whose
        last pass this is are freed row by row as the tiles move down."""
        self._passes += 1
        leaves = node.stored_leaves()
        for leaf in leaves:
            self.reads[leaf.serial] = self._passes
            self.first_reads_seen.setdefault(leaf.serial, self._passes)
        last = self.last_reads or {}
        consumed = [leaf.store for leaf in leaves if last.get(leaf.serial) == self._passes]
        if self.dry:
            results = (None for _ in regions)
        else:
            results = self.tasks.map(task, regions, functools.partial(self._prefetch, task))
        for result, region, following in zip(results, regions, [*regions[1:], None], strict=True):
            yield result
            if consumed and following is not None and following[0] > region[0]:
                row = node.first_row_read(following[0] + top)
                for store in consumed:
                    store.release_rows_above(row)
        for store in consumed:
            store.release_rows_above(store.shape[2])

    def _prefetch(self, task: _StoreTask | _WriteTask, region: tuple[int, int, int, int]) -> None:
        """Start reading the stored data the task needs for ``region`` (a new batch)."""
        self.scratch.spill.new_batch()
        task.prefetch(region)

    def _level_boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]] | None:
        if self.boxes is None:
            return None
        fy, fx = height / self.full_size[0], width / self.full_size[1]
        return [
            (math.floor(b0 * fy), math.ceil(b1 * fy), math.floor(c0 * fx), math.ceil(c1 * fx))
            for b0, b1, c0, c1 in self.boxes
        ]


def _planned(
    runner: Callable[..., _Layerwise], passes: Callable[[_Layerwise], Iterator[None]], dry: bool
) -> Iterator[None]:
    """Run ``passes`` with a runner made by ``runner(dry, last_reads=..., first_reads=...)``;
    unless ``dry``, a dry run first learns the first and last pass that read each stored
    array, so that the real run frees stored cells as soon as they are consumed. Returns
    what ``passes`` returns."""
    last_reads = first_reads = None
    if not dry:
        planner = runner(True)
        collections.deque(passes(planner), maxlen=0)
        last_reads, first_reads = planner.reads, planner.first_reads_seen
    return (yield from passes(runner(dry, last_reads=last_reads, first_reads=first_reads)))


def _then(node: _Node, module: nn.Module) -> _Node:
    if isinstance(node, _Segment):
        return _Segment(node.source, [*node.modules, module])
    if isinstance(node, _Pointwise):
        return _Pointwise(node.source, [*node.ops, module])
    return _Pointwise(node, [module])


class _StoreTask:
    """Computes a region of a node into its store (and, for a residual input captured on
    the way, the source region into ``source_store``); returns the region's moments."""

    def __init__(self, node: _Segment, store, source_store, with_moments: bool, boxes) -> None:
        self.node, self.store, self.source_store = node, store, source_store
        self.with_moments, self.boxes = with_moments, boxes

    def prefetch(self, region: tuple[int, int, int, int]) -> None:
        self.node.prefetch(*region)

    @exact_inference
    def __call__(self, region: tuple[int, int, int, int]) -> list:
        if self.source_store is not None:
            values, inputs = self.node.read_with_source(*region)
            self.source_store.write(*region, inputs.cpu())
        else:
            values = self.node.read(*region)
        self.store.write(*region, values.cpu())
        if not self.with_moments:
            return []
        if self.boxes is None:
            return [_partial_moments(values)]
        y0, _, x0, _ = region
        height, width = values.shape[-2:]
        partials = []
        for index, (b0, b1, c0, c1) in enumerate(self.boxes):
            r0, r1 = max(b0 - y0, 0), min(b1 - y0, height)
            s0, s1 = max(c0 - x0, 0), min(c1 - x0, width)
            if r1 > r0 and s1 > s0:
                partials.append(_partial_moments(values[index : index + 1, :, r0:r1, s0:s1]))
        return partials


# --------------------------------------------------------------------------------------
# The tiled translator
# --------------------------------------------------------------------------------------


class TiledTranslator:
    """Translate planes of one size in tiles, with global, estimated or per-tile statistics.

    Parameters
    ----------
    network : nn.Module
        A generator in eval mode (from :mod:`networks`), on ``device``.
    multiple : int
        The generator's size multiple (see :func:`networks.size_multiple`).
    height, width : int
        Plane size in pixels.
    in_channels : int
        Channels of the input planes.
    tile_size : int
        Tile side in full-resolution pixels (rounded up to a multiple of ``multiple``).
    overlap : int, optional
        Overlap of neighbouring tiles in the blended modes (``"estimate"``, ``"tile"``);
        default 64 (rounded up to a multiple of ``multiple``). Not used by ``"exact"``,
        whose tiles get exactly the context they need and are not blended.
    statistics : str
        ``"exact"``, ``"estimate"`` or ``"tile"`` (see the module docstring).
    sample_fraction : float
        Share of the plane sampled for ``"estimate"``.
    device : torch.device
        Where the network runs.
    budget : int
        Bytes of RAM that stored activations may take before spilling to ``scratch``.
    scratch : path, optional
        Folder for spilled activations (default: the system's temporary folder).

    Attributes
    ----------
    n_steps : int
        Steps (tiles, over all layers and passes) one plane takes; :meth:`steps` yields
        that many times.

    Raises
    ------
    ValueError
        On an unknown ``statistics`` mode, a non-positive ``tile_size``, a negative
        ``overlap`` or one not smaller than the tile, or a ``sample_fraction`` outside
        (0, 1].
    """

    def __init__(
        self,
        network: nn.Module,
        multiple: int,
        height: int,
        width: int,
        in_channels: int,
        *,
        tile_size: int,
        overlap: int | None = None,
        statistics: str = "exact",
        sample_fraction: float = DEFAULT_SAMPLE_FRACTION,
        device: torch.device,
        budget: int,
        scratch: str | os.PathLike | None = None,
    ) -> None:
        if statistics not in STATISTICS_MODES:
            raise ValueError(
                f"Unknown statistics mode {statistics!r}; choose one of {STATISTICS_MODES}."
            )
        if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
            raise ValueError(f"tile_size must be a positive number of pixels, got {tile_size!r}.")
        if not 0 < sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction!r}.")
        self.network, self.multiple, self.device = network, multiple, device
        self.size = (height, width)
        self.in_channels = in_channels
        pad_y, pad_x = -height % multiple, -width % multiple
        self.offset = (pad_y // 2, pad_x // 2)
        self.padded = (height + pad_y, width + pad_x)
        self.tile = -(-tile_size // multiple) * multiple
        if overlap is None:
            overlap = min(DEFAULT_OVERLAP, self.tile // 2)
        if overlap < 0 or overlap >= self.tile:
            raise ValueError(
                f"overlap must be at least 0 and smaller than the tile ({self.tile} px), "
                f"got {overlap}."
            )
        self.overlap = -(-overlap // multiple) * multiple
        if self.overlap >= self.tile:
            self.overlap = self.tile - multiple
        if not has_instance_norm(network) and statistics == "estimate":
            statistics = "exact"  # nothing to estimate: no statistics pass at all
        self.statistics = statistics
        self.sample_fraction = sample_fraction
        self.budget, self.scratch = budget, scratch
        self.reference_channels = int(getattr(network, "ngf", 64))
        self.n_steps = self.count_steps()

    def steps(
        self,
        read: RegionReader,
        write: RegionWriter,
        client=None,
        write_grid: tuple[int, int] | None = None,
    ) -> Iterator[None]:
        """Translate one plane, yielding after each tile (stop iterating to cancel).

        Parameters
        ----------
        read : callable
            ``read(y0, y1, x0, x1)`` returns the normalised input region as a float32
            ``(C, y1 - y0, x1 - x0)`` array.
        write : callable
            ``write(y0, y1, x0, x1, values)`` receives translated regions, float32
            ``(C_out, h, w)`` in [-1, 1]; together they cover the plane once.
        client : dask.distributed.Client, optional
            Spread the tiles of every pass (statistics passes included) over this
            client's workers. ``read`` and ``write`` then run on the workers (they must
            pickle, and ``write`` must be safe to call from several at once for regions
            on ``write_grid``); stored activations go to files in ``scratch``,
            which every worker must reach.
        write_grid : (int, int), optional
            Size of the regions passed to ``write`` in ``"exact"`` mode (default: the
            tile); with a client, a multiple of the output's chunks.
        """
        tasks = LocalTasks() if client is None else DaskTasks(client)
        return self._steps(read, write, tasks, write_grid, dry=False)

    def count_steps(self, write_grid: tuple[int, int] | None = None) -> int:
        """How many times :meth:`steps` yields for one plane with this ``write_grid``."""
        return sum(1 for _ in self._steps(None, None, LocalTasks(), write_grid, dry=True))

    def _steps(self, read, write, tasks, write_grid, dry: bool) -> Iterator[None]:
        scratch = _Scratch(self.budget, self.scratch, shared=isinstance(tasks, DaskTasks))
        try:
            plane = _PlaneInput(
                read, self.in_channels, self.size, self.padded, self.offset, self.device
            )
            with torch.inference_mode():
                if self.statistics == "exact":
                    grid = write_grid or (self.tile, self.tile)
                    yield from self._exact(plane, write, scratch, tasks, grid, dry)
                else:
                    frozen = self.network
                    if self.statistics == "estimate":
                        statistics = yield from self._estimate(plane, scratch, tasks, dry)
                        frozen = None if dry else with_frozen_norms(self.network, statistics)
                    yield from self._blended(frozen, plane, write, tasks, dry)
        finally:
            scratch.close()

    def _exact(self, plane, write, scratch, tasks, grid, dry: bool) -> Iterator[None]:
        (height, width), (grid_y, grid_x) = self.size, grid
        regions = [
            (y0, min(y0 + grid_y, height), x0, min(x0 + grid_x, width))
            for y0 in range(0, height, grid_y)
            for x0 in range(0, width, grid_x)
        ]

        def passes(runner: _Layerwise) -> Iterator[None]:
            result = yield from runner.run(self.network, plane)
            task = None if runner.dry else _WriteTask(result, self.offset, write)
            yield from runner.run_pass(result, task, regions, top=self.offset[0])

        runner = functools.partial(
            _Layerwise,
            self.tile,
            self.reference_channels,
            self.padded,
            self.device,
            scratch,
            tasks,
        )
        yield from _planned(runner, passes, dry)

    def _estimate(self, plane: _PlaneInput, scratch, tasks, dry: bool) -> Iterator[None]:
        """Statistics of every instance norm from a sample of tiles with context."""
        inner = -(-_SAMPLE_TILE // self.multiple) * self.multiple
        context = -(-_SAMPLE_CONTEXT // self.multiple) * self.multiple
        origins, boxes, size = _sample_crops(
            self.padded, inner, context, self.sample_fraction, self.multiple
        )
        # All crops go through each layer together: keep a tile of all of them in budget.
        per_crop = self.budget / (len(origins) * forward_bytes_per_pixel(self.network))
        tile = max(self.multiple, int(math.sqrt(per_crop)))

        def passes(runner: _Layerwise) -> Iterator[None]:
            yield from runner.run(self.network, _Crops(plane, origins, size))
            return runner.statistics

        runner = functools.partial(
            _Layerwise,
            tile,
            self.reference_channels,
            size,
            self.device,
            scratch,
            tasks,
            boxes=boxes,
        )
        return (yield from _planned(runner, passes, dry))

    def _blended(self, network, plane: _PlaneInput, write, tasks, dry: bool) -> Iterator[None]:
        """Overlapping tiles, blended with raised-cosine weights."""
        (height_p, width_p), tile, overlap = self.padded, self.tile, self.overlap
        tile_y, tile_x = min(tile, height_p), min(tile, width_p)
        origins = [
            (y0, x0)
            for y0 in tile_starts(height_p, tile_y, overlap, self.multiple)
            for x0 in tile_starts(width_p, tile_x, overlap, self.multiple)
        ]
        if dry:
            yield from (None for _ in origins)
            return
        total = weights = None
        outputs = tasks.map(_ForwardTask(network, plane, (tile_y, tile_x)), origins)
        for (y0, x0), y in zip(origins, outputs, strict=True):
            weight_y = blend_window(tile_y, overlap, y0 > 0, y0 + tile_y < height_p)
            weight_x = blend_window(tile_x, overlap, x0 > 0, x0 + tile_x < width_p)
            weight = np.outer(weight_y, weight_x)
            if total is None:
                total = np.zeros((y.shape[0], height_p, width_p), np.float32)
                weights = np.zeros((height_p, width_p), np.float32)
            total[:, y0 : y0 + tile_y, x0 : x0 + tile_x] += y * weight
            weights[y0 : y0 + tile_y, x0 : x0 + tile_x] += weight
            yield
        (height, width), (top, left) = self.size, self.offset
        total /= weights
        write(0, height, 0, width, total[:, top : top + height, left : left + width])


class _WriteTask:
    """Reads a region of the network's output node and passes it to ``write``."""

    def __init__(self, result: _Node, offset: tuple[int, int], write: RegionWriter) -> None:
        self.result, self.offset, self.write = result, offset, write

    def _node_region(self, region: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        (y0, y1, x0, x1), (top, left) = region, self.offset
        return top + y0, top + y1, left + x0, left + x1

    def prefetch(self, region: tuple[int, int, int, int]) -> None:
        self.result.prefetch(*self._node_region(region))

    @exact_inference
    def __call__(self, region: tuple[int, int, int, int]) -> None:
        y0, y1, x0, x1 = region
        values = self.result.read(*self._node_region(region))
        self.write(y0, y1, x0, x1, values[0].float().cpu().numpy())


class _ForwardTask:
    """One forward pass of a network over a tile of the padded plane."""

    def __init__(self, network: nn.Module, plane: _PlaneInput, size: tuple[int, int]) -> None:
        self.network, self.plane, self.size = network, plane, size

    @exact_inference
    def __call__(self, origin: tuple[int, int]) -> np.ndarray:
        (y0, x0), (height, width) = origin, self.size
        return (
            self.network(self.plane.read(y0, y0 + height, x0, x0 + width))[0].float().cpu().numpy()
        )


class LocalTasks:
    """Runs the tiles of a pass one after another, in this process."""

    def map(self, task: Callable, items: list, prefetch: Callable | None = None) -> Iterator:
        """``task(item)`` for each item, in order, each computed when it is taken; before
        each, ``prefetch(next item)`` if given, so that its data loads meanwhile."""
        for item, following in zip(items, [*items[1:], None], strict=True):
            if prefetch is not None and following is not None:
                prefetch(following)
            yield task(item)


class DaskTasks:
    """Spreads the tiles of a pass over the workers of a ``dask.distributed`` client.

    The task is sent to the cluster once per pass; results come back in order, and
    stopping the iteration cancels the tiles not yet done. Items are first placed on
    the workers in turn (the scheduler may move them): left to itself, it could run a
    few short tasks all on the worker that asked first.
    """

    def __init__(self, client) -> None:
        self.client = client

    def map(self, task: Callable, items: list, prefetch: Callable | None = None) -> Iterator:
        """``task(item)`` for each item, run on the workers, yielded in order (each worker
        reads its own data: ``prefetch`` is not used)."""
        # On every worker, so that where the task lies does not draw all tiles to one.
        shared = self.client.scatter(task, hash=False, broadcast=True)
        workers = list(self.client.nthreads())
        futures = [
            self.client.submit(
                _call,
                shared,
                item,
                pure=False,
                workers=workers[index % len(workers)] if workers else None,
                allow_other_workers=bool(workers),
            )
            for index, item in enumerate(items)
        ]
        try:
            for future in futures:
                yield future.result()
        finally:
            self.client.cancel([*futures, shared])


def _call(task: Callable, item):
    return task(item)


def _sample_crops(
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
