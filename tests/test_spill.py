"""Spilled activation cells: banded files, direct I/O and its fallback, read-ahead."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from napari_cyclestyle import spill
from napari_cyclestyle.inference import translate

from .test_tiling import make_model, max_error, photo

# Odd shapes: partial last bands, sizes that are no multiple of a disk block.
SHAPES = [(1, 3, 37, 29), (2, 5, 4, 1), (1, 64, 9, 13), (1, 1, 1, 1)]


def regions(shape: tuple[int, int, int, int]):
    """Row and column ranges of a cell: whole, single rows, halos, band-crossing."""
    height, width = shape[2:]
    rows = {(0, height), (0, 1), (height - 1, height), (min(3, height - 1), height)}
    rows |= {(1, min(6, height)), (min(2, height - 1), min(11, height))}
    columns = {(0, width), (width // 2, width), (0, 1)}
    return [(r0, r1, c0, c1) for r0, r1 in rows if r0 < r1 for c0, c1 in columns if c0 < c1]


def read_region(files: spill.SpillFiles, path: str, shape, r0, r1, c0, c1) -> torch.Tensor:
    layout = spill.CellLayout(shape)
    k0, k1 = layout.band_range(r0, r1)
    bands = files.bands(path, layout, k0, k1)
    target = torch.full((*shape[:2], r1 - r0, c1 - c0), float("nan"))
    for part, into in spill.band_parts(bands, k0, r0, r1, c0, c1, target):
        into.copy_(part)
    return target


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prefetched", [False, True])
def test_any_rows_and_columns_of_a_spilled_cell_read_back_exactly(tmp_path, shape, prefetched):
    values = torch.randn(shape)
    files = spill.SpillFiles()
    path = str(tmp_path / "cell")
    files.save(path, values).result()
    try:
        for r0, r1, c0, c1 in regions(shape):
            if prefetched:
                layout = spill.CellLayout(shape)
                files.prefetch(path, layout, *layout.band_range(r0, r1))
            region = read_region(files, path, shape, r0, r1, c0, c1)
            assert torch.equal(region, values[:, :, r0:r1, c0:c1]), (r0, r1, c0, c1)
            files.new_batch()
    finally:
        files.close()


def test_a_cell_read_in_another_process_equals_the_written_one(tmp_path):
    # Cluster workers write and read cells without the scratch's threads.
    values = torch.randn(1, 6, 23, 17)
    path = str(tmp_path / "cell")
    spill.save_cell(path, values)
    layout = spill.CellLayout(tuple(values.shape))
    bands = spill.load_bands(path, layout, 0, layout.bands)
    target = torch.empty_like(values)
    for part, into in spill.band_parts(bands, 0, 0, 23, 0, 17, target):
        into.copy_(part)
    assert torch.equal(target, values)


def refuse_direct_io(monkeypatch) -> list[int]:
    """Make every transfer with O_DIRECT fail as tmpfs does; returns the refused flags."""
    refused = []
    real_transfer = spill._transfer

    def transfer(path, flags, offset, view):
        if flags & getattr(os, "O_DIRECT", 0):
            refused.append(flags)
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real_transfer(path, flags, offset, view)

    monkeypatch.setattr(spill, "_transfer", transfer)
    return refused


def test_cells_go_through_the_page_cache_where_direct_io_is_refused(tmp_path, monkeypatch):
    refused = refuse_direct_io(monkeypatch)
    values = torch.randn(1, 4, 10, 7)
    files = spill.SpillFiles()
    try:
        files.save(str(tmp_path / "cell"), values).result()
        files.save(str(tmp_path / "other"), values + 1).result()
        region = read_region(files, str(tmp_path / "other"), tuple(values.shape), 2, 9, 1, 7)
    finally:
        files.close()
    assert torch.equal(region, values[:, :, 2:9, 1:7] + 1)
    assert len(refused) <= 1  # asked once, then remembered


@pytest.mark.numerics
def test_exact_tiles_spill_without_direct_io_and_stay_exact(tmp_path, monkeypatch):
    model = make_model("resnet_6blocks", 1)
    image = photo(192, 256, rgb=False)
    whole = translate(image, model, device="cpu", tile_size=None)
    refuse_direct_io(monkeypatch)
    tiled = translate(
        image, model, device="cpu", tile_size=64, memory_budget=2**16, scratch=tmp_path
    )
    assert max_error(tiled, whole) <= 1e-3


def test_a_cut_short_scratch_file_is_an_error_that_says_so(tmp_path: Path):
    values = torch.randn(1, 64, 40, 40)
    path = str(tmp_path / "cell")
    spill.save_cell(path, values)
    os.truncate(path, 4096)
    files = spill.SpillFiles()
    try:
        with pytest.raises(EOFError, match="cut short"):
            read_region(files, path, tuple(values.shape), 30, 40, 0, 40)
    finally:
        files.close()


def test_a_failed_write_is_raised_to_the_caller(tmp_path: Path):
    files = spill.SpillFiles()
    try:
        future = files.save(str(tmp_path / "missing" / "cell"), torch.zeros(1, 1, 4, 4))
        with pytest.raises(FileNotFoundError):
            future.result()
    finally:
        files.close()


def test_cached_bands_are_dropped_two_tiles_after_their_last_request(tmp_path):
    # Read-ahead memory stays bounded: what neither this tile nor the last asked for goes.
    files = spill.SpillFiles()
    shape = (1, 2, 8, 8)
    layout = spill.CellLayout(shape)
    paths = {name: str(tmp_path / name) for name in "abc"}
    try:
        for path in paths.values():
            files.save(path, torch.zeros(shape)).result()

        def cached():
            return sorted(Path(path).name for path in files._cache)

        files.prefetch(paths["a"], layout, 0, 2)
        files.prefetch(paths["b"], layout, 0, 2)
        files.new_batch()
        files.bands(paths["a"], layout, 0, 1)  # within a's cached bands: asked again
        files.prefetch(paths["c"], layout, 0, 1)
        assert cached() == ["a", "b", "c"]
        files.new_batch()
        assert cached() == ["a", "c"]
        files.forget(paths["c"])
        assert cached() == ["a"]
        files.new_batch()
        assert cached() == []
    finally:
        files.close()
