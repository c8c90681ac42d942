"""One translation worked out: the job (model, layout, intensity maps, device, tiles),
how it reads and writes plane regions, and the array the result goes into.

:mod:`napari_cyclestyle.inference` drives a :class:`TranslationJob` here, in this
process, lazily through dask, or on a dask cluster.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from . import tiling
from .choices import STATISTICS_MODES
from .devices import exact_inference, resolve_device
from .intensity import IntensityNorm, check_finite, fit_intensity
from .layout import ImageLayout, infer_layout, to_planes
from .model import CycleStyleModel, parse_direction
from .networks import minimum_size, size_multiple
from .whole_or_tiles import WholeOrTiles, choice_for

if TYPE_CHECKING:
    from .inference import TranslateOptions

# Pixels per plane read when fitting the input range of an imported model.
_FIT_PIXELS = 1_000_000
# Spatial chunk of zarr outputs created here when the plane is not tiled.
_OUTPUT_CHUNK = 1024


@exact_inference
def run_generator(
    network: nn.Module, batch: torch.Tensor, multiple: int, minimum: int = 0
) -> torch.Tensor:
    """Run ``network`` on a ``(N, C, Y, X)`` batch in [-1, 1] of any spatial size.

    The batch is reflect-padded up to a multiple of ``multiple`` (the architecture's
    stride product, :func:`~napari_cyclestyle.networks.size_multiple`) and to at least
    ``minimum`` pixels (:func:`~napari_cyclestyle.networks.minimum_size`), and the output
    cropped back, so the output has the input's size.
    """
    padded, crop = pad_batch(batch, multiple, minimum)
    return network(padded)[crop]


def pad_batch(
    batch: torch.Tensor, multiple: int, minimum: int = 0
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``batch`` padded as :func:`run_generator` pads it, and the index that crops a
    network's output back to the batch's size."""
    height, width = batch.shape[-2:]
    pad_y = max(-height % multiple, minimum - height)
    pad_x = max(-width % multiple, minimum - width)
    if not (pad_y or pad_x):
        return batch, (...,)
    # Reflection needs the pad to be smaller than the size; replicate tiny images.
    mode = "reflect" if pad_y < height and pad_x < width else "replicate"
    top, left = pad_y // 2, pad_x // 2
    batch = functional.pad(batch, (left, pad_x - left, top, pad_y - top), mode=mode)
    return batch, (..., slice(top, top + height), slice(left, left + width))


class TranslationJob:
    """Everything a translation needs, worked out once: model, layout, intensity maps,
    device and, for large planes, the tiled translator."""

    def __init__(
        self,
        image,
        model: CycleStyleModel | str | os.PathLike,
        direction: str,
        options: TranslateOptions,
        timed: bool = False,
    ) -> None:
        if not isinstance(model, CycleStyleModel):
            from .model_file import load_model

            model = load_model(model)
        direction = parse_direction(direction)
        self.network = model.generator(direction)
        in_channels, self.out_channels = model.channels(direction)
        image = _as_array(image)
        if 0 in image.shape:
            raise ValueError(
                f"The image has shape {tuple(image.shape)}, with no pixels to translate; "
                "give an image with at least one pixel along every axis."
            )
        self.layout = infer_layout(
            image.shape, options.channel_axis, expected_channels=in_channels
        )
        self.planes = to_planes(image, self.layout)
        self.n_planes = self.layout.n_planes
        self.norm_in, self.norm_out = _norms(
            model, direction, self.planes, image.dtype, self.out_channels
        )
        self.dtype = np.dtype(self.norm_out.dtype)
        self.device = resolve_device(options.device)
        self.network.to(self.device).eval()
        self.multiple = size_multiple(model.config.generator)
        self.minimum = minimum_size(model.config.generator)
        # Set while whole planes and tiles are still to be timed against each other.
        self.choice: WholeOrTiles | None = None
        self._tiles: tiling.TiledTranslator | None = None
        self.translator = self._tiled_translator(
            options, in_channels, model.config.generator, timed
        )
        if self.choice is not None:
            self.steps_per_plane = len(self.choice.stages)
        else:
            self.steps_per_plane = 1 if self.translator is None else self.translator.n_steps
        self.output_shape = self.layout.output_shape(self.out_channels)

    def _tiled_translator(
        self, options: TranslateOptions, in_channels: int, generator: str, timed: bool
    ) -> tiling.TiledTranslator | None:
        """The tiled translator for this job's planes, or None if they go through whole
        (or, with :attr:`choice`, start whole until timed)."""
        if options.statistics not in STATISTICS_MODES:
            raise ValueError(
                f"Unknown statistics mode {options.statistics!r}; choose one of "
                f"{STATISTICS_MODES}."
            )
        budget = options.memory_budget or tiling.memory_budget(self.device)
        if options.tile_size != "auto":
            if options.tile_size is None:
                return None
            self._check_tile_size(options.tile_size, generator)
            return self._new_translator(options, options.tile_size, budget, in_channels)
        height, width = self.layout.spatial_shape
        padded = (height + -height % self.multiple, width + -width % self.multiple)
        # At most half the budget for a tile's forward (see _new_translator for the rest).
        tile = tiling.auto_tile_size(self.network, self.multiple, budget // 2, self.device)
        choice = self._whole_or_tiles(options, padded, tile)
        if choice is not None and choice.tiles_faster is None and timed:
            # Start whole and time the first plane, with tiles ready in case they win.
            self.choice = choice
            self._tiles = self._new_translator(options, tile, budget, in_channels)
            return None
        if choice is not None and choice.tiles_faster is not None:
            tiled = choice.tiles_faster
        else:
            tiled = tiling.needs_tiling(self.network, *padded, budget)
        return self._new_translator(options, tile, budget, in_channels) if tiled else None

    def _new_translator(
        self, options: TranslateOptions, tile_size: int, budget: int, in_channels: int
    ) -> tiling.TiledTranslator:
        height, width = self.layout.spatial_shape
        # Stored activations get what the tile's forward leaves, and at least half:
        # the more of them stay in RAM, the less goes through scratch files.
        tile_bytes = tiling.forward_bytes_per_pixel(self.network) * tile_size**2
        return tiling.TiledTranslator(
            self.network,
            self.multiple,
            height,
            width,
            in_channels,
            tile_size=tile_size,
            overlap=options.overlap,
            statistics=options.statistics,
            sample_fraction=options.sample_fraction,
            device=self.device,
            budget=max(budget // 2, budget - tile_bytes),
            scratch=options.scratch,
        )

    def _whole_or_tiles(
        self, options: TranslateOptions, padded: tuple[int, int], tile: int
    ) -> WholeOrTiles | None:
        """On the CPU, the timed choice between whole planes and ``tile``-px tiles for
        planes that fit in memory whole (``memory_budget``, or half the available RAM);
        None where there is nothing to time (see :func:`whole_or_tiles.choice_for`)."""
        if self.device.type != "cpu":
            return None
        if not tiling.whole_plane_fits(self.network, *padded, options.memory_budget):
            return None
        return choice_for(self.network, padded, self.multiple, tile, self.device)

    def _check_tile_size(self, tile_size: object, generator: str) -> None:
        """Refuse a tile the generator cannot take (its blended modes would fail on it)."""
        if isinstance(tile_size, bool) or not isinstance(tile_size, int):
            raise ValueError(
                f"tile_size must be 'auto', a number of pixels or None, got {tile_size!r}."
            )
        rounded = -(-tile_size // self.multiple) * self.multiple
        if rounded < self.minimum:
            raise ValueError(
                f"tile_size={tile_size} gives {rounded}-px tiles (a multiple of "
                f"{self.multiple}), smaller than the smallest tile {generator} takes, "
                f"{self.minimum} px; pass tile_size={self.minimum} or more, or None to "
                "translate whole planes."
            )

    @property
    def tile_size(self) -> int | None:
        """Tile side used, or None when planes go through whole."""
        return None if self.translator is None else self.translator.tile

    def plane_steps(self, plane, write: tiling.RegionWriter) -> Iterator[None]:
        """Translate one ``(C, Y, X)`` plane (numpy or dask), passing translated regions
        in [-1, 1] to ``write``; yields :attr:`steps_per_plane` times, the last time
        after the last region is written."""
        if self.choice is not None:
            yield from self._chosen_steps(plane, write)
            return
        if self.translator is None:
            y = run_generator(self.network, self._whole_batch(plane), self.multiple, self.minimum)
            self._write_whole(y, write)
            yield
            return

        yield from self.translator.steps(PlaneReader(plane, self.norm_in), write)

    def _chosen_steps(self, plane, write: tiling.RegionWriter) -> Iterator[None]:
        """A plane whole or in tiles, whichever :attr:`choice` times faster (while
        untimed, a whole plane is begun and timed on the way)."""
        done = 0
        if not self.choice.tiles_faster:
            batch, crop = pad_batch(self._whole_batch(plane), self.multiple, self.minimum)
            y = yield from self.choice.forward_steps(batch)
            if y is not None:
                self._write_whole(y[crop], write)
                yield
                return
            done = 1  # forward_steps stopped after one step, timing tiles faster
        # Tiles: their steps spread over the plane's remaining ones.
        left, total = self.steps_per_plane - done, self._tiles.n_steps
        shown = 0
        steps = self._tiles.steps(PlaneReader(plane, self.norm_in), write)
        for step, _ in enumerate(steps, 1):
            while shown < step * left // total:
                shown += 1
                yield

    def _whole_batch(self, plane) -> torch.Tensor:
        values = np.asarray(plane)
        check_finite(values)
        return torch.from_numpy(self.norm_in.normalize(values)).to(self.device)[None]

    @staticmethod
    def _write_whole(y: torch.Tensor, write: tiling.RegionWriter) -> None:
        y = y[0].float().cpu().numpy()
        write(0, y.shape[-2], 0, y.shape[-1], y)

    def output_index(
        self, plane: int, y0: int, y1: int, x0: int, x1: int
    ) -> tuple[tuple, int | None]:
        """Index of a plane region in the output, and where the region's channel axis goes
        among the indexed result's axes (None for a single-channel output)."""
        return _output_index(self.layout, self.out_channels, plane, (y0, y1, x0, x1))


class PlaneReader:
    """Reads normalised regions of one ``(C, Y, X)`` plane (numpy, dask or zarr-like).

    Dask regions are computed in the calling thread: on a dask worker that reads the
    image's chunks directly instead of asking the cluster from inside a task.
    """

    def __init__(self, plane, norm_in: IntensityNorm) -> None:
        self.plane, self.norm_in = plane, norm_in

    def __call__(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        values = self.plane[:, y0:y1, x0:x1]
        values = values.compute(scheduler="sync") if is_dask(values) else np.asarray(values)
        check_finite(values)
        return self.norm_in.normalize(values)


class PlaneWriter:
    """Writes translated regions of one plane into ``result``, in the target domain's
    values and dtype."""

    def __init__(self, job: TranslationJob, result, plane: int) -> None:
        self.result, self.plane = result, plane
        self.norm_out, self.layout, self.out_channels = job.norm_out, job.layout, job.out_channels

    def __call__(self, y0: int, y1: int, x0: int, x1: int, values: np.ndarray) -> None:
        block = self.norm_out.denormalize(values)
        region = (y0, y1, x0, x1)
        index, channel_position = _output_index(self.layout, self.out_channels, self.plane, region)
        if channel_position is None:
            self.result[index] = block[0]
        else:
            self.result[index] = np.moveaxis(block, 0, channel_position)


class PlaneTask:
    """Translates one whole plane into ``result`` (a task for a dask worker)."""

    def __init__(self, job: TranslationJob, result) -> None:
        self.job, self.result = job, result

    def __call__(self, plane: int) -> None:
        write = PlaneWriter(self.job, self.result, plane)
        for _ in self.job.plane_steps(self.job.planes[plane], write):
            pass


def output_axes(layout: ImageLayout, out_channels: int) -> tuple[list[int], int | None, int, int]:
    """The output's leading (plane) axes, its channel axis (None for a single channel),
    and its Y and X axes."""
    ndim = len(layout.output_shape(out_channels))
    if out_channels == 1:
        channel_axis = None
    elif layout.channel_axis is None:
        channel_axis = ndim - 1
    else:
        channel_axis = layout.channel_axis
    other_axes = [a for a in range(ndim) if a != channel_axis]
    return other_axes[:-2], channel_axis, other_axes[-2], other_axes[-1]


def _output_index(
    layout: ImageLayout, out_channels: int, plane: int, region: tuple[int, int, int, int]
) -> tuple[tuple, int | None]:
    leading_axes, channel_axis, y_axis, x_axis = output_axes(layout, out_channels)
    leading = np.unravel_index(plane, layout.leading_shape) if layout.leading_shape else ()
    index: list = [slice(None)] * len(layout.output_shape(out_channels))
    for axis, position in zip(leading_axes, leading, strict=True):
        index[axis] = int(position)
    index[y_axis] = slice(region[0], region[1])
    index[x_axis] = slice(region[2], region[3])
    if channel_axis is None:
        return tuple(index), None
    return tuple(index), sum(1 for a in (y_axis, x_axis) if a < channel_axis)


def open_output(output, job: TranslationJob):
    """The array the result is written into: a new numpy array, a new zarr array at a
    path, or the given array once its shape is checked."""
    shape = job.output_shape
    if output is None:
        return np.empty(shape, job.dtype)
    if isinstance(output, (str, os.PathLike)):
        import zarr

        spatial = min(job.tile_size or _OUTPUT_CHUNK, _OUTPUT_CHUNK * 4)
        chunks = _output_chunks(job, spatial)
        return zarr.open_array(
            store=str(output), mode="w", shape=shape, dtype=job.dtype, chunks=chunks
        )
    if tuple(output.shape) != tuple(shape):
        raise ValueError(
            f"The output array has shape {tuple(output.shape)} but the result has shape "
            f"{tuple(shape)}; pass an array of that shape, or a path to create one."
        )
    return output


def _output_chunks(job: TranslationJob, spatial: int) -> tuple[int, ...]:
    """One plane (or a tile of it) per chunk, channels together."""
    index, _ = job.output_index(0, 0, 1, 0, 1)
    chunks = []
    for size, item in zip(job.output_shape, index, strict=True):
        if isinstance(item, int):
            chunks.append(1)
        elif item == slice(None):
            chunks.append(size)
        else:
            chunks.append(min(size, spatial))
    return tuple(chunks)


def is_dask(image) -> bool:
    return type(image).__module__.startswith("dask.")


def _as_array(image):
    """numpy and dask arrays as they are; other sliceable arrays (zarr, h5py) as dask
    arrays, so that they are read lazily; anything else through ``numpy.asarray``."""
    if isinstance(image, np.ndarray) or is_dask(image):
        return image
    if hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__"):
        import dask.array as da

        return da.from_array(image, chunks=getattr(image, "chunks", "auto"))
    return np.asarray(image)


def _norms(
    model: CycleStyleModel, direction: str, planes, dtype, out_channels: int
) -> tuple[IntensityNorm, IntensityNorm]:
    """Source and target normalisations; imported models derive them from the input
    (from up to four planes, read with a stride keeping about a million pixels each)."""
    norm_in, norm_out = model.norms(direction)
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"Images of dtype {dtype} cannot be translated; use numbers.")
    if norm_in is None:
        stride = max(1, math.ceil(math.sqrt(planes.shape[-2] * planes.shape[-1] / _FIT_PIXELS)))
        sample = np.asarray(planes[: min(len(planes), 4), :, ::stride, ::stride])
        check_finite(sample)
        in_unit_range = dtype.kind == "f" and sample.min() >= 0 and sample.max() <= 1
        norm_in = fit_intensity(
            [sample],
            dtype,
            mode="fixed" if in_unit_range else "auto",
            value_range=(0.0, 1.0) if in_unit_range else None,
        )
    if norm_out is None:
        low, high = norm_in.low, norm_in.high
        if len(low) != out_channels:
            low, high = (float(np.mean(low)),), (float(np.mean(high)),)
        norm_out = IntensityNorm(norm_in.mode, low, high, norm_in.dtype)
    return norm_in, norm_out
