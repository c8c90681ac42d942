"""Whole planes or tiles on the CPU: which runs faster, timed on the first plane itself.

A ResNet generator's residual blocks hold most of its work. On some CPUs they run 1.3 to
1.7 times faster per pixel on a tile's activations, which stay in cache, than on a
whole plane's; on others the whole plane is as fast, and tiling only adds its own
bookkeeping. No constant holds on every CPU (benchmarks/README.md, "Whole planes or
tiles, timed"), so the first plane that could go either way starts as one whole-plane
forward, stage by stage, and its first residual block is timed on the whole plane and
on a crop of a sixteenth of a tile's area (the best of three runs). Tiles are chosen
only when the crop runs faster per pixel by ``FASTER_BY``; otherwise the forward goes
on, having spent only the crop's runs (three sixty-fourths of one block for a 1024²
plane, well under 1 % of the forward; less for larger planes). Tiles, once chosen, hold
for this process, for every later plane of that size and network. The whole plane holds
only once ``WHOLE_TIMINGS`` planes have been timed whole: a busy moment of a shared CPU
during the crop's runs can make the whole plane look faster, and timing again costs only
the crop's runs, where timing again after tiles would cost a whole block.

This module never imports napari or Qt.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
from torch import nn

from .devices import exact_inference
from .networks import ResnetBlock, ResnetGenerator
from .tiling import level_tile_size, reference_channels

# How much faster per pixel the crop's block must run for tiles to be chosen: tiling's
# own costs (stored activations, statistics passes, context read twice) take up to
# about a tenth, and the margin keeps a noisy timing from choosing tiles that lose.
FASTER_BY = 1.15
# Runs of the crop, of which the fastest counts, and its smallest side.
CROP_RUNS = 3
_MIN_CROP = 16
# Planes timed whole, one after another, before the whole plane holds for the process.
WHOLE_TIMINGS = 3
# Which planes run faster in tiles, by network, plane size and machine state: decided.
_tiles_faster: dict[tuple, bool] = {}
# How many planes were timed whole so far, where that is not decided yet.
_whole_timings: dict[tuple, int] = {}


def timed_choices() -> dict[tuple[int, int], bool]:
    """For each padded plane size timed in this process, whether tiles ran faster (a
    whole plane not yet decided counts as whole: the last plane went whole)."""
    choices = {key[1]: False for key in _whole_timings}
    choices.update({key[1]: faster for key, faster in _tiles_faster.items()})
    return choices


def forget_timings() -> None:
    """Forget every choice timed in this process: the next plane of each size is timed
    again (after the machine's load has changed, or to measure a first plane again)."""
    _tiles_faster.clear()
    _whole_timings.clear()


def forward_stages(network: nn.Module) -> list[nn.Module] | None:
    """A ResNet generator's forward as stages: the layers before the residual blocks,
    each block, and the layers after; None for any other generator (or fewer than two
    blocks: nothing left to gain once the first is timed)."""
    if not isinstance(network, ResnetGenerator):
        return None
    layers = list(network.model)
    blocks = [index for index, layer in enumerate(layers) if isinstance(layer, ResnetBlock)]
    if len(blocks) < 2 or blocks != list(range(blocks[0], blocks[-1] + 1)):
        return None
    first, last = blocks[0], blocks[-1]
    return [
        nn.Sequential(*layers[:first]),
        *layers[first : last + 1],
        nn.Sequential(*layers[last + 1 :]),
    ]


def choice_for(
    network: nn.Module, padded: tuple[int, int], multiple: int, tile: int, device: torch.device
) -> WholeOrTiles | None:
    """The choice for ``network``'s planes of ``padded`` size against ``tile``-px tiles,
    or None where there is none to make: not a ResNet generator (see
    :func:`forward_stages`), or a tile or two a side at the residual blocks' level, where
    tiling has nothing to gain. ``multiple`` is the generator's stride product."""
    stages = forward_stages(network)
    if stages is None:
        return None
    channels = stages[1].conv_block[1].in_channels
    level_tile = level_tile_size(tile, reference_channels(network), channels)
    if min(padded) // multiple < 2 * level_tile:
        return None
    return WholeOrTiles(network, stages, padded, level_tile, device)


class WholeOrTiles:
    """The choice between one whole-plane forward and tiles for planes of one size
    (made by :func:`choice_for`).

    Parameters
    ----------
    network : nn.Module
        A ResNet generator in eval mode.
    stages : list of nn.Module
        Its :func:`forward_stages`.
    padded : (int, int)
        The plane's size once padded to the generator's size multiple.
    level_tile : int
        Side of the tiles that tiled translation would use at the residual blocks' level
        (see :func:`tiling.level_tile_size`).
    device : torch.device
        Where the network runs.
    """

    def __init__(
        self,
        network: nn.Module,
        stages: list[nn.Module],
        padded: tuple[int, int],
        level_tile: int,
        device: torch.device,
    ) -> None:
        self.stages, self.level_tile = stages, level_tile
        self.key = (
            _architecture(network),
            tuple(padded),
            str(device),
            torch.get_num_threads(),
            torch.backends.cpu.get_cpu_capability(),
        )

    @property
    def tiles_faster(self) -> bool | None:
        """Whether tiles run faster here, or None until that is decided (tiles: the first
        plane timed so; the whole plane: ``WHOLE_TIMINGS`` planes in a row)."""
        return _tiles_faster.get(self.key)

    def forward_steps(self, batch: torch.Tensor) -> Iterator[None]:
        """The whole-plane forward of a padded ``(1, C, Y, X)`` batch, yielding after each
        stage but the last. While undecided, first times the first residual block against
        a tile-sized crop, and stops there (having yielded once) if tiles are faster.
        Returns (via StopIteration) the output, or None when tiles were found faster."""
        values = batch
        for index, stage in enumerate(self.stages):
            if index:
                yield
            timed = index == 1 and self.tiles_faster is None
            start = time.perf_counter()
            result = _apply(stage, values)
            if timed:
                whole_seconds = time.perf_counter() - start
                if self._crop_faster(stage, values, whole_seconds):
                    _whole_timings.pop(self.key, None)
                    _tiles_faster[self.key] = True
                    return None
                self._record_whole()
            values = result
        return values

    def _record_whole(self) -> None:
        """Count a plane timed whole; the ``WHOLE_TIMINGS``-th decides for the process."""
        count = _whole_timings.get(self.key, 0) + 1
        if count < WHOLE_TIMINGS:
            _whole_timings[self.key] = count
            return
        _whole_timings.pop(self.key, None)
        _tiles_faster[self.key] = False

    def _crop_faster(self, block: nn.Module, values: torch.Tensor, whole_seconds: float) -> bool:
        """Whether ``block`` runs ``FASTER_BY`` faster per pixel on a crop of a sixteenth
        of the tile's area than it just did (``whole_seconds``) on all of ``values``: the
        best of ``CROP_RUNS`` runs, so that neither the first run's set-up nor a moment
        of a busy CPU decides. (Crops of a sixteenth, a quarter and a whole tile ran
        1.48, 1.60 and 1.63 times faster per pixel than a 1024² plane's block with
        AVX-512 kernels, and 1.30, 1.36 and 1.15 with AVX2, where whole tiles ran 1.35
        times faster: the smallest crop errs, slightly, towards the whole plane.)"""
        side = max(self.level_tile // 4, _MIN_CROP)
        crop = values[..., :side, :side].contiguous()
        crop_seconds = math.inf
        for _ in range(CROP_RUNS):
            start = time.perf_counter()
            _apply(block, crop)
            crop_seconds = min(crop_seconds, time.perf_counter() - start)
        whole_pixels = values.shape[-2] * values.shape[-1]
        crop_pixels = crop.shape[-2] * crop.shape[-1]
        return whole_seconds / whole_pixels > FASTER_BY * crop_seconds / crop_pixels


@exact_inference
def _apply(stage: nn.Module, values: torch.Tensor) -> torch.Tensor:
    return stage(values)


def _architecture(network: nn.Module) -> tuple:
    """What sets a generator's speed: its class and every layer's shape."""
    return (
        type(network).__name__,
        tuple(tuple(parameter.shape) for parameter in network.parameters()),
        tuple(type(module).__name__ for module in network.modules()),
    )
