"""Running a generator over a whole plane layer by layer, one tile at a time."""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..devices import exact_inference
from ..networks import (
    EncoderDecoderGenerator,
    ResnetBlock,
    ResnetGenerator,
    UnetGenerator,
    UnetSkipBlock,
)
from .geometry import CONVS, PADS, UPSAMPLES, RegionWriter
from .nodes import Combine, Node, Segment, Stored, then
from .statistics import FrozenNorm, Moments, is_instance_norm, partial_moments
from .store import Scratch, Store
from .tasks import Tasks

_MIN_LEVEL_TILE = 16


_POINTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Dropout,
    nn.Identity,
    nn.BatchNorm2d,
)
_GENERATORS = (ResnetGenerator, UnetGenerator, EncoderDecoderGenerator)


def reference_channels(network: nn.Module) -> int:
    """The channels a full-resolution tile of a network is sized for: its ``ngf``."""
    return int(getattr(network, "ngf", 64))


def level_tile_size(tile: int, reference_channels: int, channels: int) -> int:
    """Tile side at a level of ``channels`` channels, for ``tile``-px tiles at full
    resolution with ``reference_channels``: the same number of values per tile."""
    return max(_MIN_LEVEL_TILE, int(tile * math.sqrt(reference_channels / max(channels, 1))))


class Layerwise:
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
        scratch: Scratch,
        tasks: Tasks,
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
        self._capture: dict[Node, Stored | None] = {}

    def run(self, module: nn.Module, node: Node) -> Iterator[None]:
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
            return Combine([node, inner], concat=False)
        if isinstance(module, UnetSkipBlock):
            if module.outermost:
                return (yield from self.run(module.model, node))
            node = yield from self.shareable(node)
            inner = yield from self.run(module.model, node)
            return Combine([node, inner], concat=True)
        if is_instance_norm(module):
            if module not in self.statistics:
                stored, moments = yield from self.materialize(node, with_moments=True)
                self.statistics[module] = FrozenNorm(moments.mean, moments.var, module.eps).to(
                    self.device
                )
                node = stored
            return then(node, self.statistics[module])
        if isinstance(module, _POINTWISE) or isinstance(module, nn.InstanceNorm2d):
            return then(node, module)
        if isinstance(module, (*PADS, *CONVS, *UPSAMPLES)):
            if isinstance(node, Segment):
                return Segment(node.source, [*node.modules, module])
            node = yield from self.shareable(node)
            return Segment(node, [module])
        raise ValueError(
            f"Tiled translation does not know the layer {type(module).__name__}; "
            "translate without tiling (tile_size=None)."
        )

    def shareable(self, node: Node) -> Iterator[None]:
        """``node`` itself if reading it is cheap, else a stored copy."""
        if node.cheap:
            return node
        stored, _ = yield from self.materialize(node, with_moments=False)
        return stored

    def level_tile(self, node: Node) -> int:
        """Tile side at a node's level: as many values per tile as a full-resolution tile
        of ``reference_channels`` channels (so coarse, wide levels get fewer pixels)."""
        return level_tile_size(self.tile, self.reference_channels, node.shape[1])

    def materialize(self, node: Node, with_moments: bool) -> Iterator[None]:
        """Compute ``node`` tile by tile into a store; with ``with_moments`` also its
        per-channel moments (over ``boxes`` when sampling). Returns (stored, moments)."""
        n, channels, height, width = node.shape
        moments = Moments(channels)
        tile = self.level_tile(node)
        source = node.source if isinstance(node, Segment) else None
        capture = source in self._capture and not node.source_is_stored and node.scale == 1
        task = store = source_store = None
        if not self.dry:
            # Serials as _stored gives them below.
            store = self._new_store(node.shape, tile, self._stores + 1 + capture)
            source_store = (
                self._new_store(source.shape, tile, self._stores + 1) if capture else None
            )
            boxes = self._level_boxes(height, width) if with_moments else None
            task = StoreTask(node, store, source_store, with_moments, boxes)
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

    def _new_store(self, shape: tuple[int, int, int, int], tile: int, serial: int) -> Store:
        """A store for the coming pass. If the pass after it does not read it (a residual
        input, a U-Net skip), its cells leave the budget's RAM to the stores that are read
        sooner, which then spill less: each GiB that goes to disk and back costs time."""
        next_pass = self._passes + 2
        read_soon = self.first_reads is None or self.first_reads.get(serial, 0) <= next_pass
        return Store(shape, self.scratch, tile, pooled=read_soon)

    def _stored(self, store: Store | None, shape: tuple[int, int, int, int]) -> Stored:
        self._stores += 1
        return Stored(store, shape, self.device, self._stores)

    def run_pass(
        self, node: Node, task: Callable | None, regions: list[tuple], top: int = 0
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

    def _prefetch(self, task: StoreTask | WriteTask, region: tuple[int, int, int, int]) -> None:
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


def planned(
    runner: Callable[..., Layerwise], passes: Callable[[Layerwise], Iterator[None]], dry: bool
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


class StoreTask:
    """Computes a region of a node into its store (and, for a residual input captured on
    the way, the source region into ``source_store``); returns the region's moments."""

    def __init__(self, node: Segment, store, source_store, with_moments: bool, boxes) -> None:
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
            return [partial_moments(values)]
        y0, _, x0, _ = region
        height, width = values.shape[-2:]
        partials = []
        for index, (b0, b1, c0, c1) in enumerate(self.boxes):
            r0, r1 = max(b0 - y0, 0), min(b1 - y0, height)
            s0, s1 = max(c0 - x0, 0), min(c1 - x0, width)
            if r1 > r0 and s1 > s0:
                partials.append(partial_moments(values[index : index + 1, :, r0:r1, s0:s1]))
        return partials


class WriteTask:
    """Reads a region of the network's output node and passes it to ``write``."""

    def __init__(self, result: Node, offset: tuple[int, int], write: RegionWriter) -> None:
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
