"""Tiled translation of planes too large for one pass through a generator.

Words the code uses:

tile
    A square piece of a plane computed in one go: ``tile_size`` pixels a side at full
    resolution, fewer at coarse, wide levels (the same number of values per tile).
region
    Any box ``(y0, y1, x0, x1)`` of a plane or an activation that is read or written;
    a tile's region read from its source is widened by the *halo* its layers need.
pass
    One sweep over all tiles of an activation, in rows: computing it into a store, or
    writing the output. A translation is a sequence of passes (:mod:`.layerwise`).
store
    An activation kept between passes (:class:`~.store.Store`), written once on a grid
    of cells and then read in any regions; a *scratch* holds the stores of one
    translation within a memory budget.
cell
    One tile-sized piece of a store: what is written, kept in RAM or spilled to a file,
    and freed once no later pass reads it.
band
    A few rows of a spilled cell, laid out contiguously in its file, so that a range of
    rows is one contiguous read (:mod:`.spill`).

The modules: :mod:`.geometry` (tile starts, blending windows, layers' reach),
:mod:`.budget` (memory budgets and automatic tile sizes), :mod:`.statistics` (moments
and frozen norms), :mod:`.nodes` (the graph of lazily read activations), :mod:`.store`
and :mod:`.spill` (stored activations in RAM and on disk), :mod:`.layerwise` (running a
network pass by pass), :mod:`.tasks` (running a pass's tiles here or on a dask cluster)
and :mod:`.translator` (:class:`TiledTranslator`, which puts them together).

Tiled translation of planes too large for one pass through a generator.

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

This package never imports napari or Qt.
"""

from __future__ import annotations

from ..choices import STATISTICS_MODES
from .budget import (
    auto_tile_size,
    forward_bytes_per_pixel,
    memory_budget,
    needs_tiling,
    whole_plane_fits,
)
from .geometry import RegionReader, RegionWriter, blend_window, tile_starts
from .layerwise import level_tile_size, reference_channels
from .statistics import FrozenNorm, has_instance_norm, with_frozen_norms
from .tasks import DaskTasks, LocalTasks, Tasks
from .translator import DEFAULT_OVERLAP, DEFAULT_SAMPLE_FRACTION, TiledTranslator

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_SAMPLE_FRACTION",
    "STATISTICS_MODES",
    "DaskTasks",
    "FrozenNorm",
    "LocalTasks",
    "RegionReader",
    "RegionWriter",
    "Tasks",
    "TiledTranslator",
    "auto_tile_size",
    "blend_window",
    "forward_bytes_per_pixel",
    "has_instance_norm",
    "level_tile_size",
    "memory_budget",
    "needs_tiling",
    "reference_channels",
    "tile_starts",
    "whole_plane_fits",
    "with_frozen_norms",
]
