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

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from . import tiling
from .devices import is_out_of_memory
from .errors import OutOfMemory
from .job import (
    PlaneReader,
    PlaneTask,
    PlaneWriter,
    TranslationJob,
    is_dask,
    open_output,
    output_axes,
)
from .layout import from_planes
from .model import CycleStyleModel


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


@dataclass(frozen=True)
class TranslateOptions:
    """How to translate: the device, the image's layout, and tiling.

    :func:`translate` and :func:`translate_steps` take these as keywords, or as one
    ``options=`` object; the command line and the widgets build one.

    Attributes
    ----------
    device : str or torch.device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cuda"``, ``"mps"`` or ``"cpu"``.
    channel_axis : int, optional
        The image's channel axis when it cannot be inferred.
    tile_size : int, "auto" or None
        ``"auto"``: tile only planes whose forward pass would not fit ``memory_budget``,
        with the largest tile that fits (on the CPU at most 256 px). On the CPU, a ResNet
        generator's planes that fit in half the available RAM (or ``memory_budget``,
        when given) and span at least four tiles a side go whole or in tiles,
        whichever this machine runs faster: such planes start whole and are timed on
        the way until the answer holds for the process, tiles at once, the whole
        plane after three planes (:mod:`~napari_cyclestyle.whole_or_tiles`; not in
        lazy or cluster runs, which use an earlier timing when there is one). An
        int: always tile, with tiles of that side (pixels), rounded up to the
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
    """

    device: str | torch.device = "auto"
    channel_axis: int | None = None
    tile_size: int | str | None = "auto"
    overlap: int | None = None
    statistics: str = "exact"
    sample_fraction: float = tiling.DEFAULT_SAMPLE_FRACTION
    memory_budget: int | None = None
    scratch: str | os.PathLike | None = None

    @classmethod
    def of(cls, options: TranslateOptions | None = None, **settings) -> TranslateOptions:
        """``options`` (default: every default) with the fields in ``settings`` replaced.

        Raises
        ------
        TypeError
            For a keyword that is not a field.
        """
        return replace(options or cls(), **settings)


def translate(
    image,
    model: CycleStyleModel | str | os.PathLike,
    direction: str = "AtoB",
    *,
    progress: Callable[[int, int], None] | None = None,
    output=None,
    options: TranslateOptions | None = None,
    **settings,
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
    progress : callable, optional
        Called as ``progress(done, total)`` after each step (plane, or tile when tiled).
    output : array, zarr array or path, optional
        Where to write the result, plane by plane and tile by tile: an array of the
        result's shape (numpy, memmap, zarr) or a path, where a zarr array is created.
        The result is then that array. When a ``dask.distributed`` client is active and
        ``output`` is a zarr path or array, the work is spread over its workers: the
        tiles of every pass of a tiled plane (statistics passes included), or whole
        planes when they need no tiling. The workers read the image and write
        ``output`` themselves, so both must be reachable from them.
    options : TranslateOptions, optional
        The device, layout and tiling settings as one object.
    **settings
        Any field of :class:`TranslateOptions` (``device``, ``channel_axis``,
        ``tile_size``, ``overlap``, ``statistics``, ``sample_fraction``,
        ``memory_budget``, ``scratch``), replacing the one in ``options``.

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
    options = TranslateOptions.of(options, **settings)
    if output is None and is_dask(image):
        return _translate_lazy(image, model, direction, options)
    result = None
    for step in translate_steps(image, model, direction, output=output, options=options):
        if progress is not None:
            progress(step.done, step.total)
        result = step.result
    return result


def translate_steps(
    image,
    model: CycleStyleModel | str | os.PathLike,
    direction: str = "AtoB",
    *,
    output=None,
    options: TranslateOptions | None = None,
    **settings,
) -> Iterator[TranslateProgress]:
    """Like :func:`translate`, but yield a :class:`TranslateProgress` after each step
    (plane, or tile when tiled); stop iterating to cancel (scratch files are removed).
    The last item carries the ``result``; a dask input is computed, not returned lazily.
    """
    client = _cluster_client(output)
    # Whole planes and tiles are timed against each other here, with nothing else running.
    options = TranslateOptions.of(options, **settings)
    job = TranslationJob(image, model, direction, options, timed=client is None)
    result = open_output(output, job)
    if client is not None:
        yield from _translate_on_cluster(job, result, client, output)
        return
    total = job.n_planes * job.steps_per_plane
    done = 0
    for plane in range(job.n_planes):
        with _out_of_memory_advice(job):
            for _ in job.plane_steps(job.planes[plane], PlaneWriter(job, result, plane)):
                done += 1
                yield TranslateProgress(
                    done, total, result if done == total else None, plane, job.n_planes
                )


def _translate_on_cluster(
    job: TranslationJob, result, client, output
) -> Iterator[TranslateProgress]:
    """Spread the translation over a dask cluster: the tiles of each plane's passes, or
    whole planes when they need no tiling. Workers read the input and write ``result``."""
    leading_axes, _, y_axis, x_axis = output_axes(job.layout, job.out_channels)
    chunks = result.chunks
    if job.translator is None:
        if job.n_planes > 1 and any(chunks[a] != 1 for a in leading_axes):
            raise ValueError(
                f"The output's chunks {chunks} hold several planes, which workers would "
                "write at once; use one plane per chunk, or pass a path to create it."
            )
        total = job.n_planes
        planes = tiling.DaskTasks(client).map(PlaneTask(job, result), list(range(total)))
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
        write = PlaneWriter(job, result, plane)
        read = PlaneReader(job.planes[plane], job.norm_in)
        for _ in job.translator.steps(read, write, client, grid):
            done += 1
            yield TranslateProgress(
                done, total, result if done == total else None, plane, job.n_planes
            )


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
def _out_of_memory_advice(job: TranslationJob):
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


def _translate_lazy(image, model, direction: str, options: TranslateOptions):
    """A dask array whose planes are translated when (and only when) they are computed."""
    job = TranslationJob(image, model, direction, options)
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
