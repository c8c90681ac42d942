"""Activation cells spilled to disk: banded files, moved by direct I/O in background
threads.

A cell of shape ``(N, C, h, w)`` goes to its file as bands of :data:`BAND_ROWS` rows,
each band ``(N, C, b, w)`` contiguous, so that any range of rows (a tile's halo from the
cell below, say) is one contiguous read, while a band costs no more to lay out than a
plain copy.

Files are opened with ``O_DIRECT`` where the file system allows it: the disk then moves
the data straight from and into our own reused buffers, and the kernel spends no CPU
time, taken from the threads that compute the tiles, on copying through the page cache
(figures: benchmarks/README.md). Where ``O_DIRECT`` is refused (tmpfs on older kernels,
macOS, Windows), the same files go through the page cache.

This module never imports napari or Qt.
"""

from __future__ import annotations

import collections
import errno
import mmap
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor

#: Rows per band: a halo read from a neighbouring cell reads at most a few bands.
BAND_ROWS = 4
_ALIGN = 4096  # file offsets, lengths and buffer addresses of direct I/O
_IDLE_BYTES = 2**27  # idle buffers kept for reuse, at most


class CellLayout:
    """Where the rows of an ``(N, C, h, w)`` float32 cell lie in its file."""

    def __init__(self, shape: tuple[int, int, int, int]) -> None:
        n, channels, height, width = shape
        self.shape = shape
        self.bands = -(-height // BAND_ROWS)
        self.band_values = n * channels * BAND_ROWS * width
        self.file_bytes = _aligned(self.bands * self.band_values * 4)

    def band_range(self, r0: int, r1: int) -> tuple[int, int]:
        """The bands ``[k0, k1)`` that hold rows ``[r0, r1)``."""
        return r0 // BAND_ROWS, -(-r1 // BAND_ROWS)

    def byte_span(self, k0: int, k1: int) -> tuple[int, int]:
        """The aligned byte range ``[start, stop)`` of the file that holds bands ``[k0, k1)``."""
        start = k0 * self.band_values * 4 // _ALIGN * _ALIGN
        return start, min(_aligned(k1 * self.band_values * 4), self.file_bytes)

    def bands_view(self, buffer: Tensor, k0: int, k1: int) -> Tensor:
        """Bands ``[k0, k1)`` in ``buffer`` (read from :meth:`byte_span`) as a
        ``(k1 - k0, N, C, b, w)`` float32 tensor."""
        n, channels, _, width = self.shape
        skip = k0 * self.band_values * 4 - self.byte_span(k0, k1)[0]
        values = buffer[skip : skip + (k1 - k0) * self.band_values * 4].view(torch.float32)
        return values.view(k1 - k0, n, channels, BAND_ROWS, width)

    def fill(self, buffer: Tensor, values: Tensor) -> None:
        """Lay ``values`` (the whole cell) out in ``buffer`` as the file holds it."""
        bands = self.bands_view(buffer, 0, self.bands)
        whole = self.shape[2] // BAND_ROWS
        split = whole * BAND_ROWS
        bands[:whole].copy_(
            values[:, :, :split].unflatten(2, (whole, BAND_ROWS)).permute(2, 0, 1, 3, 4)
        )
        if whole < self.bands:
            bands[whole, :, :, : self.shape[2] - split].copy_(values[:, :, split:])


def band_parts(
    bands: Tensor, k0: int, r0: int, r1: int, c0: int, c1: int, target: Tensor
) -> Iterator[tuple[Tensor, Tensor]]:
    """Pairs (stored part, part of ``target``) that together fill ``target`` with rows
    ``[r0, r1)`` and columns ``[c0, c1)`` of a cell, from its bands ``k0, k0 + 1, ...``
    in ``bands`` (``(k, N, C, b, w)``); ``target`` is ``(N, C, r1 - r0, c1 - c0)``."""
    # The whole bands within the rows go in one piece (the target's rows split into
    # bands), the partial bands at either end one by one.
    whole0, whole1 = -(-r0 // BAND_ROWS), r1 // BAND_ROWS
    pieces = [(r0, r1)]
    if whole0 < whole1:
        middle = bands[whole0 - k0 : whole1 - k0, ..., c0:c1].permute(1, 2, 0, 3, 4)
        rows = target[:, :, whole0 * BAND_ROWS - r0 : whole1 * BAND_ROWS - r0]
        yield middle, rows.unflatten(2, (whole1 - whole0, BAND_ROWS))
        pieces = [(r0, whole0 * BAND_ROWS), (whole1 * BAND_ROWS, r1)]
    for start, stop in pieces:
        while start < stop:
            band, offset = divmod(start, BAND_ROWS)
            end = min(stop, (band + 1) * BAND_ROWS)
            part = bands[band - k0, :, :, offset : offset + end - start, c0:c1]
            yield part, target[:, :, start - r0 : end - r0]
            start = end


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def aligned_buffer(nbytes: int) -> Tensor:
    """A new page-aligned ``uint8`` buffer of ``nbytes`` (a private anonymous map)."""
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=torch.uint8)


class _Buffers:
    """Page-aligned buffers, kept for reuse when given back: fresh memory costs far more
    than a copy into memory in use (every page is faulted in, here by the hypervisor)."""

    def __init__(self) -> None:
        self._idle: list[Tensor] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> Tensor:
        with self._lock:
            fitting = [
                (buffer.numel(), index)
                for index, buffer in enumerate(self._idle)
                if nbytes <= buffer.numel() <= max(2 * nbytes, 2**20)
            ]
            if fitting:
                return self._idle.pop(min(fitting)[1])
        return aligned_buffer(max(_aligned(nbytes), 2**16))

    def give_back(self, buffer: Tensor) -> None:
        with self._lock:
            self._idle.append(buffer)
            while sum(b.numel() for b in self._idle) > _IDLE_BYTES:
                self._idle.pop(0)

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()


class _Direct:
    """Moves whole buffers between files and memory with ``O_DIRECT`` until a file system
    refuses it (at ``open``, as tmpfs does, or at the first transfer), then through the
    page cache."""

    def __init__(self) -> None:
        self.enabled = hasattr(os, "O_DIRECT")

    def write(self, path: str, view: memoryview) -> None:
        """Write ``view`` as the whole file ``path``."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        self._transfer(path, flags, 0, view)

    def read(self, path: str, offset: int, view: memoryview) -> None:
        """Fill ``view`` from ``path`` at ``offset``."""
        self._transfer(path, os.O_RDONLY | getattr(os, "O_BINARY", 0), offset, view)

    def _transfer(self, path: str, flags: int, offset: int, view: memoryview) -> None:
        if self.enabled:
            try:
                return _transfer(path, flags | os.O_DIRECT, offset, view)
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                self.enabled = False
        _transfer(path, flags, offset, view)


def _transfer(path: str, flags: int, offset: int, view: memoryview) -> None:
    writing = bool(flags & os.O_WRONLY)
    with open(os.open(path, flags, 0o600), "wb" if writing else "rb", buffering=0) as file:
        file.seek(offset)
        while view:
            count = file.write(view) if writing else file.readinto(view)
            if not count:
                raise EOFError(f"{path} ends early: the scratch file was cut short.")
            view = view[count:]


def write_cell(path: str, layout: CellLayout, buffer: Tensor, direct: _Direct) -> None:
    """Write a cell laid out in ``buffer`` (by :meth:`CellLayout.fill`) to ``path``."""
    direct.write(path, memoryview(buffer.numpy())[: layout.file_bytes])


def read_bands(
    path: str, layout: CellLayout, k0: int, k1: int, buffer: Tensor, direct: _Direct
) -> Tensor:
    """Bands ``[k0, k1)`` of the cell in ``path``, read into ``buffer`` (see
    :meth:`CellLayout.bands_view`)."""
    start, stop = layout.byte_span(k0, k1)
    direct.read(path, start, memoryview(buffer.numpy())[: stop - start])
    return layout.bands_view(buffer, k0, k1)


def save_cell(path: str, values: Tensor) -> None:
    """Write the cell ``values`` to ``path`` now (for processes without :class:`SpillFiles`)."""
    layout = CellLayout(tuple(values.shape))
    buffer = aligned_buffer(layout.file_bytes)
    layout.fill(buffer, values)
    write_cell(path, layout, buffer, _Direct())


def load_bands(path: str, layout: CellLayout, k0: int, k1: int) -> Tensor:
    """Bands ``[k0, k1)`` of the cell in ``path``, read now into a new buffer."""
    start, stop = layout.byte_span(k0, k1)
    return read_bands(path, layout, k0, k1, aligned_buffer(stop - start), _Direct())


class SpillFiles:
    """Writes cells to files and reads bands of them back, each in a background thread.

    Writes queue at most ``queued`` cells (each copied into a buffer first, so the caller
    may reuse its tensor). Reads go through a cache: :meth:`prefetch` starts reading what
    the next tile will need while this one computes, and :meth:`new_batch` marks a new
    tile's requests, dropping bands that neither of the last two batches asked for.
    """

    def __init__(self, queued: int = 2) -> None:
        self._buffers = _Buffers()
        self._direct = _Direct()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="cyclestyle-spill-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="cyclestyle-spill-reader")
        self._slots = threading.BoundedSemaphore(queued)
        # path -> {(k0, k1): (future of the bands, buffer)}
        self._cache: dict[str, dict[tuple[int, int], tuple[Future, Tensor]]] = {}
        self._batches: collections.deque[set[tuple[str, int, int]]] = collections.deque(
            [set(), set()], maxlen=2
        )

    def save(self, path: str, values: Tensor) -> Future:
        """Write the cell ``values`` to ``path`` in the background; the future's result
        tells when it is on disk (or raises the error)."""
        layout = CellLayout(tuple(values.shape))
        self._slots.acquire()
        try:
            buffer = self._buffers.take(layout.file_bytes)
            layout.fill(buffer, values)
            future = self._writer.submit(write_cell, path, layout, buffer, self._direct)
        except BaseException:
            self._slots.release()
            raise

        def done(_: Future) -> None:
            self._buffers.give_back(buffer)
            self._slots.release()

        future.add_done_callback(done)
        return future

    def new_batch(self) -> None:
        """Start the requests of a new tile; bands only the batch before last asked for
        are dropped."""
        keep = set().union(*self._batches)
        self._batches.append(set())
        for key in keep - set().union(*self._batches):
            self._drop(*key)

    def prefetch(self, path: str, layout: CellLayout, k0: int, k1: int) -> None:
        """Start reading bands ``[k0, k1)`` of ``path`` unless they are read already."""
        self._entry(path, layout, k0, k1)

    def bands(self, path: str, layout: CellLayout, k0: int, k1: int) -> Tensor:
        """Bands ``[k0, k1)`` of ``path`` as :meth:`CellLayout.bands_view` gives them
        (errors of the read raised here)."""
        future, first = self._entry(path, layout, k0, k1)
        return future.result()[k0 - first : k1 - first]

    def _entry(self, path: str, layout: CellLayout, k0: int, k1: int) -> tuple[Future, int]:
        """The read that holds bands ``[k0, k1)`` of ``path``, and its first band."""
        entries = self._cache.setdefault(path, {})
        held = [(j0, j1) for j0, j1 in entries if j0 <= k0 and k1 <= j1]
        j0, j1 = held[0] if held else (k0, k1)
        if not held:
            start, stop = layout.byte_span(k0, k1)
            buffer = self._buffers.take(stop - start)
            future = self._reader.submit(read_bands, path, layout, k0, k1, buffer, self._direct)
            entries[k0, k1] = (future, buffer)
        self._batches[-1].add((path, j0, j1))
        return entries[j0, j1][0], j0

    def forget(self, path: str) -> None:
        """Drop every band of ``path`` (its file is gone)."""
        for k0, k1 in list(self._cache.get(path, ())):
            self._drop(path, k0, k1)

    def _drop(self, path: str, k0: int, k1: int) -> None:
        entries = self._cache.get(path, {})
        if (k0, k1) not in entries:
            return
        future, buffer = entries.pop((k0, k1))
        if not entries:
            del self._cache[path]
        # The reader may still be filling the buffer: give it back once it is done.
        future.add_done_callback(lambda _: self._buffers.give_back(buffer))

    def close(self) -> None:
        """Wait for the threads, drop the cache and free the buffers."""
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self._cache.clear()
        self._buffers.clear()
