"""Apply G (A→B) or F (B→A) to images of any size, dtype, channel layout and dimension.

The image is split into 2D planes (every Z, T, ... position), each plane is normalised
with the source domain's intensity normalisation, run through the generator (padded to
the size the architecture needs, and cropped back), and mapped into the target domain's
values and dtype. The result has the input's shape, with the channel axis resized to
the model's output channels.

Planes too large for one forward pass are translated in tiles (see :mod:`.tiling`); by
default every InstanceNorm layer then still uses the whole plane's statistics, so the
result equals whole-plane inference. A dask array in gives a dask array out, computed
plane by plane on demand; ``output=`` writes into a zarr array (or any array) tile by
tile, so images larger than RAM translate with bounded memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from . import tiling
from .devices import exact_inference, is_out_of_memory, resolve_device
from .errors import OutOfMemory
from .intensity import IntensityNorm, check_finite, fit_intensity
from .layout import ImageLayout, from_planes, infer_layout, to_planes
from .model import CycleStyleModel, parse_direction
from .networks import minimum_size, size_multiple

# Pixels per plane read when fitting the input range of an imported model.
_FIT_PIXELS = 1_000_000
# Spatial chunk of zarr outputs created here when the plane is not tiled.
_OUTPUT_CHUNK = 1024


@dataclass
class TranslateProgress:
    """Progress of a translation: ``done`` of ``total`` steps; ``result`` at the end.

    A step is one plane when planes go through the network whole, and one tile (of a
    layer pass) when they are tiled, so ``done / total`` advances smoothly either way.
    ``plane`` is the index of the plane the step belongs to, of ``n_planes``.
    """

    done: int
    total: int
    result: Any = None
    plane: int = 0
    n_planes: int = 1


def translate(
    image,
    model: CycleStyleModel | str | os.PathLike,
    direction: str = "AtoB",
    *,
    device: str | torch.device = "auto",
    channel_axis: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    tile_size: int | str | None = "auto",
    overlap: int | None = None,
    statistics: str = "exact",
    sample_fraction: float = tiling.DEFAULT_SAMPLE_FRACTION,
    output=None,
    memory_budget: int | None = None,
    scratch: str | os.PathLike | None = None,
):
    """Translate ``image`` with the model's G (``"AtoB"``/``"G"``) or F (``"BtoA"``/``"F"``).

    Parameters
    ----------
    image : array-like
        ``(Y, X)``, ``(..., Y, X, 3|4)`` RGB(A), ``(..., C, Y, X)`` or ``(..., Y, X, C)``
        multichannel, with any leading axes (Z, T, ...). Any integer, boolean or float
        dtype; NaN and Inf are refused. numpy, dask, zarr or any sliceable array.
    model : CycleStyleModel or path
        A loaded model, or a model file / reference checkpoint to load.
    direction : str
        ``"AtoB"`` (alias ``"G"``) or ``"BtoA"`` (alias ``"F"``).
    device : str or torch.device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cuda"``, ``"mps"`` or ``"cpu"``.
    channel_axis : int, optional
        The image's channel axis when it cannot be inferred.
    progress : callable, optional
        Called as ``progress(done, total)`` after each step (plane, or tile when tiled).
    tile_size : int, "auto" or None
        ``"auto"``: tile only planes whose forward pass would not fit ``memory_budget``,
        with the largest tile that fits (on the CPU at most 256 px, which runs faster
        there). An int: always tile, with tiles of that side (pixels), rounded up to the
        generator's size multiple (4 for the ResNets, 8 for encoder_decoder, 128 and
        256 for the U-Nets); a tile smaller than the generator takes (twice the
        multiple for the ResNets and encoder_decoder) is refused. None: never tile.
    overlap : int, optional
        Overlap between tiles in the blended modes (``statistics="estimate"`` or
        ``"tile"``); default 64 px. The exact mode needs none.
    statistics : str
        How InstanceNorm layers are normalised in tiles: ``"exact"`` (the whole plane's
        statistics; equals whole-plane inference), ``"estimate"`` (statistics from a
        sample of tiles, no scratch storage) or ``"tile"`` (each tile its own: visible
        seams; for comparison). See :mod:`napari_cyclestyle.tiling`.
    sample_fraction : float
        Share of the plane sampled by ``statistics="estimate"``.
    output : array, zarr array or path, optional
        Where to write the result, plane by plane and tile by tile: an array of the
        result's shape (numpy, memmap, zarr) or a path, where a zarr array is created.
        The result is then that array. When a ``dask.distributed`` client is active and
        ``output`` is a zarr path or array, the work is spread over its workers: the
        tiles of every pass of a tiled plane (statistics passes included), or whole
        planes when they need no tiling. The workers read the image and write
        ``output`` themselves, so both must be reachable from them.
    memory_budget : int, optional
        Bytes the translation may use for activations: a tile's working set (at most
        half, when the tile is chosen automatically) and, in the rest but at least half,
        stored activations kept in RAM before they spill to ``scratch``; default from
        the device's free memory (see :func:`tiling.memory_budget`). Spilling adds its
        file buffers on top: the reads of two tiles, two queued writes and up to
        128 MiB kept for reuse.
    scratch : path, optional
        Folder for activations that do not fit in RAM (exact tiled mode); default the
        system's temporary folder, or, on a dask cluster (where every activation goes
        there), the folder holding ``output``: it must be shared by all workers.
        Deleted when the translation ends.

    Returns
    -------
    numpy.ndarray, dask.array.Array or the ``output`` array
        The translated image: the input's shape with the channel axis sized to the
        model's output channels (see :meth:`ImageLayout.output_shape`), in the target
        domain's dtype and value range. A dask input without ``output`` gives a lazy
        dask array, computed plane by plane when read (``progress`` is then not called).

    Raises
    ------
    ValueError
        If the image's channels, shape or values do not fit the model (an image with no
        pixels included), or an option is out of range (a tile smaller than the
        generator takes included).
    TranslationOutOfMemory
        If the device runs out of memory; the message says what to make smaller.
    """
    options = {
        "device": device,
        "channel_axis": channel_axis,
        "tile_size": tile_size,
        "overlap": overlap,
        "statistics": statistics,
        "sample_fraction": sample_fraction,
        "memory_budget": memory_budget,
        "scratch": scratch,
    }
    if output is None and _is_dask(image):
        return _translate_lazy(image, model, direction, **options)
    result = None
    for step in translate_steps(image, model, direction, output=output, **options):
        if progress is not None:
            progress(step.done, step.total)
        result = step.result
    return result


def translate_steps(
    image,
    model: CycleStyleModel | str | os.PathLike,
    direction: str = "AtoB",
    *,
    device: str | torch.device = "auto",
    channel_axis: int | None = None,
    tile_size: int | str | None = "auto",
    overlap: int | None = None,
    statistics: str = "exact",
    sample_fraction: float = tiling.DEFAULT_SAMPLE_FRACTION,
    output=None,
    memory_budget: int | None = None,
    scratch: str | os.PathLike | None = None,
) -> Iterator[TranslateProgress]:
    """Like :func:`translate`, but yield a :class:`TranslateProgress` after each step
    (plane, or tile when tiled); stop iterating to cancel (scratch files are removed).
    The last item carries the ``result``; a dask input is computed, not returned lazily.
    """
    job = _Job(
        image,
        model,
        direction,
        device=device,
        channel_axis=channel_axis,
        tile_size=tile_size,
        overlap=overlap,
        statistics=statistics,
        sample_fraction=sample_fraction,
        memory_budget=memory_budget,
        scratch=scratch,
    )
    result = _open_output(output, job)
    client = _cluster_client(output)
    if client is not None:
        yield from _translate_on_cluster(job, result, client, output)
        return
    total = job.n_planes * job.steps_per_plane
    done = 0
    for plane in range(job.n_planes):
        with _out_of_memory_advice(job):
            for _ in job.plane_steps(job.planes[plane], _PlaneWriter(job, result, plane)):
                done += 1
                yield TranslateProgress(
                    done, total, result if done == total else None, plane, job.n_planes
                )


def _translate_on_cluster(job: _Job, result, client, output) -> Iterator[TranslateProgress]:
    """Spread the translation over a dask cluster: the tiles of each plane's passes, or
    whole planes when they need no tiling. Workers read the input and write ``result``."""
    leading_axes, _, y_axis, x_axis = _output_axes(job.layout, job.out_channels)
    chunks = result.chunks
    if job.translator is None:
        if job.n_planes > 1 and any(chunks[a] != 1 for a in leading_axes):
            raise ValueError(
                f"The output's chunks {chunks} hold several planes, which workers would "
                "write at once; use one plane per chunk, or pass a path to create it."
            )
        total = job.n_planes
        planes = tiling.DaskTasks(client).map(_PlaneTask(job, result), list(range(total)))
        for plane, _ in enumerate(planes):
            done = plane + 1
            yield TranslateProgress(done, total, result if done == total else None, plane, total)
        return
    tile = job.translator.tile
    grid = tuple(max(1, round(tile / chunks[a])) * chunks[a] for a in (y_axis, x_axis))
    per_plane = job.translator.count_steps(grid)
    total, done = job.n_planes * per_plane, 0
    scratch = job.translator.scratch
    if scratch is None and isinstance(output, (str, os.PathLike)):
        job.translator.scratch = os.path.dirname(os.path.abspath(output))
    for plane in range(job.n_planes):
        write = _PlaneWriter(job, result, plane)
        read = _PlaneReader(job.planes[plane], job.norm_in)
        for _ in job.translator.steps(read, write, client, grid):
            done += 1
            yield TranslateProgress(
                done, total, result if done == total else None, plane, job.n_planes
            )


class _PlaneReader:
    """Reads normalised regions of one ``(C, Y, X)`` plane (numpy, dask or zarr-like).

    Dask regions are computed in the calling thread: on a dask worker that reads the
    image's chunks directly instead of asking the cluster from inside a task.
    """

    def __init__(self, plane, norm_in: IntensityNorm) -> None:
        self.plane, self.norm_in = plane, norm_in

    def __call__(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        values = self.plane[:, y0:y1, x0:x1]
        values = values.compute(scheduler="sync") if _is_dask(values) else np.asarray(values)
        check_finite(values)
        return self.norm_in.normalize(values)


class _PlaneWriter:
    """Writes translated regions of one plane into ``result``, in the target domain's
    values and dtype."""

    def __init__(self, job: _Job, result, plane: int) -> None:
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


class _PlaneTask:
    """Translates one whole plane into ``result`` (a task for a dask worker)."""

    def __init__(self, job: _Job, result) -> None:
        self.job, self.result = job, result

    def __call__(self, plane: int) -> None:
        write = _PlaneWriter(self.job, self.result, plane)
        for _ in self.job.plane_steps(self.job.planes[plane], write):
            pass


def _cluster_client(output):
    """The active ``dask.distributed`` client when ``output`` is something its workers
    can write (a zarr path or array); else None."""
    shared = isinstance(output, (str, os.PathLike)) or type(output).__module__.startswith("zarr")
    if not shared:
        return None
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client
        return None


class TranslationOutOfMemory(OutOfMemory):
    """The device ran out of memory while translating; the message says what to change."""


@contextmanager
def _out_of_memory_advice(job: _Job):
    try:
        yield
    except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(error):
            raise
        if job.device.type == "cuda":
            torch.cuda.empty_cache()
        smaller = max(job.multiple, (job.tile_size or 1024) // 2)
        raise TranslationOutOfMemory(
            f"Out of memory on {job.device} while translating"
            + (f" with {job.tile_size}-pixel tiles" if job.tile_size else " a whole plane")
            + f". Pass a smaller tile_size= (e.g. {smaller}), or device='cpu'."
        ) from error


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
    height, width = batch.shape[-2:]
    pad_y = max(-height % multiple, minimum - height)
    pad_x = max(-width % multiple, minimum - width)
    if pad_y or pad_x:
        # Reflection needs the pad to be smaller than the size; replicate tiny images.
        mode = "reflect" if pad_y < height and pad_x < width else "replicate"
        top, left = pad_y // 2, pad_x // 2
        batch = functional.pad(batch, (left, pad_x - left, top, pad_y - top), mode=mode)
        return network(batch)[..., top : top + height, left : left + width]
    return network(batch)


class _Job:
    """Everything a translation needs, worked out once: model, layout, intensity maps,
    device and, for large planes, the tiled translator."""

    def __init__(
        self,
        image,
        model: CycleStyleModel | str | os.PathLike,
        direction: str,
        *,
        device: str | torch.device,
        channel_axis: int | None,
        tile_size: int | str | None,
        overlap: int | None,
        statistics: str,
        sample_fraction: float,
        memory_budget: int | None,
        scratch: str | os.PathLike | None,
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
        self.layout = infer_layout(image.shape, channel_axis, expected_channels=in_channels)
        self.planes = to_planes(image, self.layout)
        self.n_planes = self.layout.n_planes
        self.norm_in, self.norm_out = _norms(
            model, direction, self.planes, image.dtype, self.out_channels
        )
        self.dtype = np.dtype(self.norm_out.dtype)
        self.device = resolve_device(device)
        self.network.to(self.device).eval()
        self.multiple = size_multiple(model.config.generator)
        self.minimum = minimum_size(model.config.generator)
        height, width = self.layout.spatial_shape
        budget = memory_budget or tiling.memory_budget(self.device)
        self.translator = None
        if tile_size == "auto":
            padded = (height + -height % self.multiple, width + -width % self.multiple)
            if tiling.needs_tiling(self.network, *padded, budget):
                # At most half the budget for a tile's forward (see below for the rest).
                tile_size = tiling.auto_tile_size(
                    self.network, self.multiple, budget // 2, self.device
                )
            else:
                tile_size = None
        if tile_size is not None:
            self._check_tile_size(tile_size, model.config.generator)
            # Stored activations get what the tile's forward leaves, and at least half:
            # the more of them stay in RAM, the less goes through scratch files.
            tile_bytes = tiling.forward_bytes_per_pixel(self.network) * tile_size**2
            store_budget = max(budget // 2, budget - tile_bytes)
            self.translator = tiling.TiledTranslator(
                self.network,
                self.multiple,
                height,
                width,
                in_channels,
                tile_size=tile_size,
                overlap=overlap,
                statistics=statistics,
                sample_fraction=sample_fraction,
                device=self.device,
                budget=store_budget,
                scratch=scratch,
            )
        elif statistics not in tiling.STATISTICS_MODES:
            raise ValueError(
                f"Unknown statistics mode {statistics!r}; choose one of {tiling.STATISTICS_MODES}."
            )
        self.steps_per_plane = 1 if self.translator is None else self.translator.n_steps
        self.output_shape = self.layout.output_shape(self.out_channels)

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
        in [-1, 1] to ``write``; yields after each step."""
        if self.translator is None:
            values = np.asarray(plane)
            check_finite(values)
            x = torch.from_numpy(self.norm_in.normalize(values)).to(self.device)
            y = run_generator(self.network, x[None], self.multiple, self.minimum)[0]
            y = y.float().cpu().numpy()
            write(0, y.shape[-2], 0, y.shape[-1], y)
            yield
            return

        yield from self.translator.steps(_PlaneReader(plane, self.norm_in), write)

    def output_index(
        self, plane: int, y0: int, y1: int, x0: int, x1: int
    ) -> tuple[tuple, int | None]:
        """Index of a plane region in the output, and where the region's channel axis goes
        among the indexed result's axes (None for a single-channel output)."""
        return _output_index(self.layout, self.out_channels, plane, (y0, y1, x0, x1))


def _output_axes(layout: ImageLayout, out_channels: int) -> tuple[list[int], int | None, int, int]:
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
    leading_axes, channel_axis, y_axis, x_axis = _output_axes(layout, out_channels)
    leading = np.unravel_index(plane, layout.leading_shape) if layout.leading_shape else ()
    index: list = [slice(None)] * len(layout.output_shape(out_channels))
    for axis, position in zip(leading_axes, leading, strict=True):
        index[axis] = int(position)
    index[y_axis] = slice(region[0], region[1])
    index[x_axis] = slice(region[2], region[3])
    if channel_axis is None:
        return tuple(index), None
    return tuple(index), sum(1 for a in (y_axis, x_axis) if a < channel_axis)


def _open_output(output, job: _Job):
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


def _output_chunks(job: _Job, spatial: int) -> tuple[int, ...]:
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


def _translate_lazy(image, model, direction: str, **options):
    """A dask array whose planes are translated when (and only when) they are computed."""
    job = _Job(image, model, direction, **options)
    planes = job.planes.rechunk({0: 1, 1: -1, 2: -1, 3: -1})
    height, width = job.layout.spatial_shape
    chunks = ((1,) * job.n_planes, (job.out_channels,), (height,), (width,))

    def translate_block(block: np.ndarray) -> np.ndarray:
        out = np.empty((1, job.out_channels, height, width), job.dtype)

        def write(y0: int, y1: int, x0: int, x1: int, values: np.ndarray) -> None:
            out[0, :, y0:y1, x0:x1] = job.norm_out.denormalize(values)

        for _ in job.plane_steps(block[0], write):
            pass
        return out

    translated = planes.map_blocks(
        translate_block, dtype=job.dtype, chunks=chunks, meta=np.empty((0, 0, 0, 0), job.dtype)
    )
    return from_planes(translated, job.layout)


def _is_dask(image) -> bool:
    return type(image).__module__.startswith("dask.")


def _as_array(image):
    """numpy and dask arrays as they are; other sliceable arrays (zarr, h5py) as dask
    arrays, so that they are read lazily; anything else through ``numpy.asarray``."""
    if isinstance(image, np.ndarray) or _is_dask(image):
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
