"""Tiled translation of planes too large for one pass through a generator.

Three ways to normalise, chosen with ``statistics``:

``"exact"`` (default)
    Every InstanceNorm layer uses the statistics of the whole (padded) plane, so the
    result equals whole-plane inference up to float rounding. The network runs layer by
    layer over the whole plane: each stretch of convolutions between two norm layers is
    computed tile by tile, each tile read with exactly the context (halo) its
    convolutions need, and its output is stored (in RAM, or in scratch files on disk when
    it does not fit the memory budget) while the moments of the next norm layer
    accumulate. Every convolution therefore runs about once per pixel, as in one
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

import copy
import math
import os
import tempfile
import weakref
from collections.abc import Callable, Iterator
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from .networks import (
    EncoderDecoderGenerator,
    ResnetBlock,
    ResnetGenerator,
    UnetGenerator,
    UnetSkipBlock,
)

STATISTICS_MODES: tuple[str, ...] = ("exact", "estimate", "tile")
DEFAULT_OVERLAP = 64
DEFAULT_SAMPLE_FRACTION = 0.25
# Side of the sampled tiles in "estimate" mode, and the context kept around each
# (full-resolution pixels): many small tiles spread over the plane sample it best.
_SAMPLE_TILE = 64
_SAMPLE_CONTEXT = 32
_MIN_LEVEL_TILE = 16
_CPU_BUDGET_CAP = 2**30

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


def auto_tile_size(network: nn.Module, multiple: int, budget: int) -> int:
    """The largest square tile (a multiple of ``multiple``, at least 64 px) whose forward
    pass fits ``budget`` bytes."""
    side = int(math.sqrt(budget / forward_bytes_per_pixel(network)))
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

    def update(self, values: Tensor) -> None:
        n = values.shape[0] * values.shape[2] * values.shape[3]
        if n == 0:
            return
        var, mean = torch.var_mean(values, dim=(0, 2, 3), unbiased=False)
        mean = mean.double().cpu().numpy()
        m2 = var.double().cpu().numpy() * n
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)


class FrozenNorm(nn.Module):
    """Instance normalisation with fixed per-channel statistics (eps as the layer's)."""

    def __init__(self, mean: np.ndarray, var: np.ndarray, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("var", torch.as_tensor(var, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        """Return ``(x - mean) / sqrt(var + eps)``."""
        return functional.batch_norm(x, self.mean, self.var, training=False, eps=self.eps)


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

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        raise NotImplementedError


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

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        return torch.cat(
            [self._source.read(cy + y0, cy + y1, cx + x0, cx + x1) for cy, cx in self._origins]
        )


class _Store:
    """An ``(N, C, H, W)`` float32 activation in RAM, or in a scratch file when the RAM
    budget is spent (there channels last, so that a region is a few long runs)."""

    def __init__(self, shape: tuple[int, int, int, int], scratch: _Scratch | None) -> None:
        self.shape = shape
        self._path = None
        self._array = None
        if scratch is None:  # dry run: nothing is stored
            return
        nbytes = int(np.prod(shape)) * 4
        if scratch.reserve(nbytes):
            self._array = torch.empty(shape)
            weakref.finalize(self, scratch.release, nbytes)
        else:
            n, c, h, w = shape
            self._path = scratch.new_file()
            np.lib.format.open_memmap(self._path, "w+", np.float32, (n, h, w, c))._mmap.close()
            weakref.finalize(self, _remove, self._path)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        """The region, a view when in RAM (callers must not modify it)."""
        if self._array is not None:
            return self._array[:, :, y0:y1, x0:x1]
        # A fresh mapping per access keeps the mapped (resident) pages to one region.
        block = np.array(np.load(self._path, mmap_mode="r")[:, y0:y1, x0:x1, :])
        return torch.from_numpy(block).permute(0, 3, 1, 2)

    def write(self, y0: int, y1: int, x0: int, x1: int, values: Tensor) -> None:
        if self._array is not None:
            self._array[:, :, y0:y1, x0:x1] = values
            return
        array = np.load(self._path, mmap_mode="r+")
        array[:, y0:y1, x0:x1, :] = values.permute(0, 2, 3, 1).numpy()
        array.flush()


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class _Scratch:
    """Where stored activations live: RAM up to ``budget`` bytes, then files in ``folder``."""

    def __init__(self, budget: int, folder: str | os.PathLike | None) -> None:
        self._budget, self._used, self._folder = budget, 0, folder
        self._directory: tempfile.TemporaryDirectory | None = None
        self._count = 0

    def reserve(self, nbytes: int) -> bool:
        if self._used + nbytes > self._budget:
            return False
        self._used += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self._used -= nbytes

    def new_file(self) -> str:
        if self._directory is None:
            self._directory = tempfile.TemporaryDirectory(
                prefix="cyclestyle-", dir=self._folder, ignore_cleanup_errors=True
            )
        self._count += 1
        return os.path.join(self._directory.name, f"activation{self._count}.npy")

    def close(self) -> None:
        if self._directory is not None:
            self._directory.cleanup()


class _Stored(_Node):
    def __init__(self, store: _Store, device: torch.device) -> None:
        self.shape = store.shape
        self._store, self._device = store, device

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        return self._store.read(y0, y1, x0, x1).to(self._device)


class _Pointwise(_Node):
    def __init__(self, source: _Node, ops: list[nn.Module]) -> None:
        self.shape, self.cheap, self.leaves = source.shape, source.cheap, source.leaves
        self.source, self.ops = source, ops

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        x = self.source.read(y0, y1, x0, x1)
        fresh = False  # x may be a view of stored data until an op makes a new tensor
        for op in self.ops:
            if fresh and type(op) is nn.ReLU:
                x = x.relu_()
            else:
                x, fresh = op(x), True
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
        n, _, height, width = source.shape
        out_h, out_w, channels = height, width, source.shape[1]
        scale, align, halo = Fraction(1), 1, 0
        for module in modules:
            out_h, out_w = _output_size(module, out_h), _output_size(module, out_w)
            channels = getattr(module, "out_channels", channels)
            if isinstance(module, nn.Conv2d):
                scale /= module.stride[0]
                align *= module.stride[0]
            elif isinstance(module, nn.ConvTranspose2d):
                scale *= module.stride[0]
        for module in reversed(modules):
            halo = _input_reach(module, halo)
        self.shape = (n, channels, out_h, out_w)
        self.scale, self.align, self.halo = scale, align, -(-halo // align) * align

    def source_region(self, start: int, stop: int, size: int) -> tuple[int, int]:
        """Source interval ``[i0, i1)`` needed for output interval ``[start, stop)``."""
        first = math.floor(start / self.scale) - self.halo
        last = math.ceil(stop / self.scale) + self.halo
        first = max(0, first // self.align * self.align)
        last = min(size, -(-last // self.align) * self.align)
        return first, last

    def read(self, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        _, _, height, width = self.source.shape
        sy0, sy1 = self.source_region(y0, y1, height)
        sx0, sx1 = self.source_region(x0, x1, width)
        x = self.source.read(sy0, sy1, sx0, sx1)
        for module in self.modules:
            x = module(x)
        oy, ox = int(sy0 * self.scale), int(sx0 * self.scale)
        expected = (int((sy1 - sy0) * self.scale), int((sx1 - sx0) * self.scale))
        if tuple(x.shape[-2:]) != expected:
            raise ValueError(f"Tiled layers gave {tuple(x.shape[-2:])}, expected {expected}.")
        return x[..., y0 - oy : y1 - oy, x0 - ox : x1 - ox]


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


def _input_reach(module: nn.Module, reach: int) -> int:
    """Input pixels from a region's edge that can affect output pixels within ``reach``
    of the edge (a generous bound)."""
    if isinstance(module, _PADS):
        return reach + max(module.padding)
    if isinstance(module, nn.Conv2d):
        return reach * module.stride[0] + module.dilation[0] * module.kernel_size[0]
    if isinstance(module, nn.ConvTranspose2d):
        return -(-reach // module.stride[0]) + module.kernel_size[0]
    return reach


# --------------------------------------------------------------------------------------
# Layer-by-layer execution
# --------------------------------------------------------------------------------------


class _Layerwise:
    """Runs a generator over a whole plane layer by layer, one tile at a time.

    Every method that may compute is a generator yielding once per tile; ``dry`` counts
    the tiles without computing anything.
    """

    def __init__(
        self,
        tile: int,
        reference_channels: int,
        full_size: tuple[int, int],
        device: torch.device,
        scratch: _Scratch | None,
        boxes: list[tuple[int, int, int, int]] | None = None,
        preset: dict[nn.Module, FrozenNorm] | None = None,
    ) -> None:
        self.tile, self.reference_channels, self.full_size = tile, reference_channels, full_size
        self.device, self.scratch, self.boxes = device, scratch, boxes
        self.statistics: dict[nn.Module, FrozenNorm] = dict(preset or {})

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
            inner = yield from self.run(module.conv_block, node)
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
        store = _Store(node.shape, self.scratch)
        moments = _Moments(channels)
        tile = self.level_tile(node)
        boxes = self._level_boxes(height, width)
        for y0 in range(0, height, tile):
            for x0 in range(0, width, tile):
                y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
                if self.scratch is not None:
                    values = node.read(y0, y1, x0, x1)
                    store.write(y0, y1, x0, x1, values.cpu())
                    if with_moments:
                        _update_moments(moments, values, boxes, y0, x0)
                yield
        return _Stored(store, self.device), moments

    def _level_boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]] | None:
        if self.boxes is None:
            return None
        fy, fx = height / self.full_size[0], width / self.full_size[1]
        return [
            (math.floor(b0 * fy), math.ceil(b1 * fy), math.floor(c0 * fx), math.ceil(c1 * fx))
            for b0, b1, c0, c1 in self.boxes
        ]


def _then(node: _Node, module: nn.Module) -> _Node:
    if isinstance(node, _Segment):
        return _Segment(node.source, [*node.modules, module])
    if isinstance(node, _Pointwise):
        return _Pointwise(node.source, [*node.ops, module])
    return _Pointwise(node, [module])


def _update_moments(
    moments: _Moments, values: Tensor, boxes: list | None, y0: int, x0: int
) -> None:
    if boxes is None:
        moments.update(values)
        return
    height, width = values.shape[-2:]
    for index, (b0, b1, c0, c1) in enumerate(boxes):
        r0, r1 = max(b0 - y0, 0), min(b1 - y0, height)
        s0, s1 = max(c0 - x0, 0), min(c1 - x0, width)
        if r1 > r0 and s1 > s0:
            moments.update(values[index : index + 1, :, r0:r1, s0:s1])


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
        self.n_steps = sum(1 for _ in self._steps(None, None, dry=True))

    def steps(self, read: RegionReader, write: RegionWriter) -> Iterator[None]:
        """Translate one plane, yielding after each tile (stop iterating to cancel).

        Parameters
        ----------
        read : callable
            ``read(y0, y1, x0, x1)`` returns the normalised input region as a float32
            ``(C, y1 - y0, x1 - x0)`` array.
        write : callable
            ``write(y0, y1, x0, x1, values)`` receives translated regions, float32
            ``(C_out, h, w)`` in [-1, 1]; together they cover the plane once.
        """
        return self._steps(read, write, dry=False)

    def _steps(self, read, write, dry: bool) -> Iterator[None]:
        scratch = None if dry else _Scratch(self.budget, self.scratch)
        try:
            plane = _PlaneInput(
                read, self.in_channels, self.size, self.padded, self.offset, self.device
            )
            with torch.inference_mode():
                if self.statistics == "exact":
                    yield from self._exact(plane, write, scratch)
                else:
                    frozen = self.network
                    if self.statistics == "estimate":
                        statistics = yield from self._estimate(plane, scratch)
                        frozen = None if dry else with_frozen_norms(self.network, statistics)
                    yield from self._blended(frozen, plane, write, dry)
        finally:
            if scratch is not None:
                scratch.close()

    def _exact(self, plane: _PlaneInput, write, scratch) -> Iterator[None]:
        runner = _Layerwise(self.tile, self.reference_channels, self.padded, self.device, scratch)
        result = yield from runner.run(self.network, plane)
        (height, width), (top, left) = self.size, self.offset
        for y0 in range(0, height, self.tile):
            for x0 in range(0, width, self.tile):
                y1, x1 = min(y0 + self.tile, height), min(x0 + self.tile, width)
                if scratch is not None:
                    values = result.read(top + y0, top + y1, left + x0, left + x1)
                    write(y0, y1, x0, x1, values[0].float().cpu().numpy())
                yield

    def _estimate(self, plane: _PlaneInput, scratch) -> Iterator[None]:
        """Statistics of every instance norm from a sample of tiles with context."""
        inner = -(-_SAMPLE_TILE // self.multiple) * self.multiple
        context = -(-_SAMPLE_CONTEXT // self.multiple) * self.multiple
        origins, boxes, size = _sample_crops(
            self.padded, inner, context, self.sample_fraction, self.multiple
        )
        # All crops go through each layer together: keep a tile of all of them in budget.
        per_crop = self.budget / (len(origins) * forward_bytes_per_pixel(self.network))
        tile = max(self.multiple, int(math.sqrt(per_crop)))
        runner = _Layerwise(tile, self.reference_channels, size, self.device, scratch, boxes=boxes)
        yield from runner.run(self.network, _Crops(plane, origins, size))
        return runner.statistics

    def _blended(self, network, plane: _PlaneInput, write, dry: bool) -> Iterator[None]:
        """Overlapping tiles, blended with raised-cosine weights."""
        (height_p, width_p), tile, overlap = self.padded, self.tile, self.overlap
        tile_y, tile_x = min(tile, height_p), min(tile, width_p)
        rows = tile_starts(height_p, tile_y, overlap, self.multiple)
        cols = tile_starts(width_p, tile_x, overlap, self.multiple)
        total = weights = None
        for y0 in rows:
            for x0 in cols:
                if not dry:
                    y = network(plane.read(y0, y0 + tile_y, x0, x0 + tile_x))[0].float().cpu()
                    weight_y = blend_window(tile_y, overlap, y0 > 0, y0 + tile_y < height_p)
                    weight_x = blend_window(tile_x, overlap, x0 > 0, x0 + tile_x < width_p)
                    weight = np.outer(weight_y, weight_x)
                    if total is None:
                        total = np.zeros((y.shape[0], height_p, width_p), np.float32)
                        weights = np.zeros((height_p, width_p), np.float32)
                    total[:, y0 : y0 + tile_y, x0 : x0 + tile_x] += y.numpy() * weight
                    weights[y0 : y0 + tile_y, x0 : x0 + tile_x] += weight
                yield
        if not dry:
            (height, width), (top, left) = self.size, self.offset
            total /= weights
            write(0, height, 0, width, total[:, top : top + height, left : left + width])


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
