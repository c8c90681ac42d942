"""The tiled translator: one plane in tiles, with exact, estimated or per-tile statistics."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ..choices import STATISTICS_MODES
from ..devices import exact_inference
from .budget import forward_bytes_per_pixel
from .geometry import RegionReader, RegionWriter, blend_window, sample_crops, tile_starts
from .layerwise import Layerwise, WriteTask, planned, reference_channels
from .nodes import Crops, PlaneInput
from .statistics import has_instance_norm, with_frozen_norms
from .store import Scratch
from .tasks import DaskTasks, LocalTasks

DEFAULT_OVERLAP = 64


DEFAULT_SAMPLE_FRACTION = 0.25
# Side of the sampled tiles in "estimate" mode, and the context kept around each
# (full-resolution pixels): many small tiles spread over the plane sample it best.
_SAMPLE_TILE = 64


_SAMPLE_CONTEXT = 32


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
        ``"exact"``, ``"estimate"`` or ``"tile"`` (see :mod:`napari_cyclestyle.tiling`).
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
        self.reference_channels = reference_channels(network)
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
        scratch = Scratch(self.budget, self.scratch, shared=tasks.shared)
        try:
            plane = PlaneInput(
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

        def passes(runner: Layerwise) -> Iterator[None]:
            result = yield from runner.run(self.network, plane)
            task = None if runner.dry else WriteTask(result, self.offset, write)
            yield from runner.run_pass(result, task, regions, top=self.offset[0])

        runner = functools.partial(
            Layerwise,
            self.tile,
            self.reference_channels,
            self.padded,
            self.device,
            scratch,
            tasks,
        )
        yield from planned(runner, passes, dry)

    def _estimate(self, plane: PlaneInput, scratch, tasks, dry: bool) -> Iterator[None]:
        """Statistics of every instance norm from a sample of tiles with context."""
        inner = -(-_SAMPLE_TILE // self.multiple) * self.multiple
        context = -(-_SAMPLE_CONTEXT // self.multiple) * self.multiple
        origins, boxes, size = sample_crops(
            self.padded, inner, context, self.sample_fraction, self.multiple
        )
        # All crops go through each layer together: keep a tile of all of them in budget.
        per_crop = self.budget / (len(origins) * forward_bytes_per_pixel(self.network))
        tile = max(self.multiple, int(math.sqrt(per_crop)))

        def passes(runner: Layerwise) -> Iterator[None]:
            yield from runner.run(self.network, Crops(plane, origins, size))
            return runner.statistics

        runner = functools.partial(
            Layerwise,
            tile,
            self.reference_channels,
            size,
            self.device,
            scratch,
            tasks,
            boxes=boxes,
        )
        return (yield from planned(runner, passes, dry))

    def _blended(self, network, plane: PlaneInput, write, tasks, dry: bool) -> Iterator[None]:
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


class _ForwardTask:
    """One forward pass of a network over a tile of the padded plane."""

    def __init__(self, network: nn.Module, plane: PlaneInput, size: tuple[int, int]) -> None:
        self.network, self.plane, self.size = network, plane, size

    @exact_inference
    def __call__(self, origin: tuple[int, int]) -> np.ndarray:
        (y0, x0), (height, width) = origin, self.size
        return (
            self.network(self.plane.read(y0, y0 + height, x0, x0 + width))[0].float().cpu().numpy()
        )
