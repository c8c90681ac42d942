"""Stored activations: cells in RAM up to a budget, then in scratch files (see
:mod:`.spill`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np
import torch
from torch import Tensor

from . import spill
from .statistics import FrozenNorm

_BUFFER_GRANULE = 2**16  # values


class Store:
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
        self, shape: tuple[int, int, int, int], scratch: Scratch, tile: int, pooled: bool = True
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

    def _make_folder(self, scratch: Scratch) -> None:
        self._folder = scratch.new_path()
        os.mkdir(self._folder)
        weakref.finalize(self, _remove_folder, self._folder)

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


def _free_store(scratch: Scratch, cells: dict, reserved: list[int]) -> None:
    scratch.release(reserved[0])
    for cell in cells.values():
        if not isinstance(cell, str):
            scratch.give_back(cell)


class Scratch:
    """Where stored activations live: RAM up to ``budget`` bytes, then files in ``folder``;
    with ``shared``, every activation goes to ``folder``, which all workers of a cluster
    must be able to reach.

    RAM for single cells comes from a pool of flat buffers, each its own anonymous
    memory map, reused for any cell that fills at least half of one: cells are freed and
    made in every pass, and taken from the heap they kept freed memory resident (figures:
    benchmarks/README.md).
    """

    def __init__(self, budget: int, folder: str | os.PathLike | None, shared: bool) -> None:
        self._budget, self._used, self._folder = budget, 0, folder
        self.shared = shared
        self._directory = ""
        self._remove_directory: weakref.finalize | None = None
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
        if self._remove_directory is None:
            self._directory = tempfile.mkdtemp(prefix="cyclestyle-", dir=self._folder)
            self._remove_directory = weakref.finalize(self, _remove_folder, self._directory)
        self._count += 1
        return os.path.join(self._directory, f"activation{self._count}")

    def close(self) -> None:
        self.spill.close()
        self._idle.clear()
        if self._remove_directory is not None:
            self._remove_directory()


_REMOVAL_TRIES = 10


def _remove_folder(path: str) -> None:
    """Remove the folder ``path`` and all in it, again while it is still there: workers
    of a cluster still finishing a cancelled tile may write a cell into it between
    ``rmtree`` listing a folder and removing it (once it is gone, they cannot). Other
    errors leave what could not be removed, after a few tries."""
    for _ in range(_REMOVAL_TRIES):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
