"""Lazy translation: dask in, dask out; zarr to zarr with bounded memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_cyclestyle.config import ModelConfig
from napari_cyclestyle.inference import translate
from napari_cyclestyle.intensity import IntensityNorm
from napari_cyclestyle.model import CycleStyleModel, build_generators


def make_model(channels: int = 1) -> CycleStyleModel:
    torch.manual_seed(0)
    config = ModelConfig(
        generator="resnet_6blocks", channels_a=channels, channels_b=channels, ngf=4
    )
    generator_ab, generator_ba = build_generators(config)
    norm = IntensityNorm("fixed", (0.0,) * channels, (65535.0,) * channels, "uint16")
    return CycleStyleModel(config, generator_ab, generator_ba, norm, norm)


def counted_stack(planes: np.ndarray) -> tuple[da.Array, list[int]]:
    """A dask stack whose planes are loaded on demand; the list records which."""
    loaded: list[int] = []

    def load(index: int) -> np.ndarray:
        loaded.append(index)
        return planes[index]

    stack = da.stack(
        [
            da.from_delayed(dask.delayed(load)(i), planes.shape[1:], planes.dtype)
            for i in range(len(planes))
        ]
    )
    return stack, loaded


def test_dask_stack_translates_lazily_plane_by_plane():
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 65535, (5, 64, 80), dtype=np.uint16)
    stack, loaded = counted_stack(planes)
    model = make_model()

    result = translate(stack, model, device="cpu")

    assert isinstance(result, da.Array)
    assert result.shape == planes.shape and result.dtype == np.uint16
    assert loaded == []  # nothing computed yet
    plane = result[3].compute()
    assert loaded == [3]  # only the plane that was viewed
    np.testing.assert_array_equal(plane, translate(planes[3], model, device="cpu"))


def test_dask_rgb_stack_keeps_channels_last():
    rng = np.random.default_rng(1)
    planes = rng.integers(0, 65535, (3, 48, 64, 3), dtype=np.uint16)
    model = make_model(channels=3)
    result = translate(da.from_array(planes, chunks=(1, 48, 64, 3)), model, device="cpu")
    assert isinstance(result, da.Array) and result.shape == planes.shape
    np.testing.assert_array_equal(result[1].compute(), translate(planes[1], model, device="cpu"))


def test_zarr_to_zarr_translates_with_bounded_memory(tmp_path: Path):
    """A 1024x1536 uint16 zarr image through tiled, exact translation into a zarr store.

    Bounded: the Python/numpy memory the translation allocates (tracemalloc: input
    reads, output writes, reads of spilled activations) stays below 2 MiB, less than the
    input (3 MiB), the output (3 MiB) or one stored activation (24 MiB, 4 channels at
    full resolution); activations beyond ``memory_budget`` (256 KiB) go to scratch
    files. torch's per-tile tensors are bounded by the tile size (not traced here).
    """
    rng = np.random.default_rng(2)
    image = rng.integers(0, 65535, (1024, 1536), dtype=np.uint16)
    source = zarr.open_array(
        str(tmp_path / "in.zarr"),
        mode="w",
        shape=image.shape,
        dtype=image.dtype,
        chunks=(256, 256),
    )
    source[:] = image
    model = make_model()
    options = {"device": "cpu", "tile_size": 128, "memory_budget": 2**18, "scratch": tmp_path}
    # Warm up: modules imported on first use would count as allocations.
    translate(source[:64, :64], model, output=tmp_path / "warm.zarr", **options)

    tracemalloc.start()
    result = translate(source, model, output=tmp_path / "out.zarr", **options)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert peak < 2 * 2**20 < image.nbytes
    written = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert written.shape == image.shape and written.dtype == np.uint16
    assert isinstance(result, zarr.Array)
    whole = translate(image, model, device="cpu", tile_size=None)
    assert np.abs(written[:].astype(int) - whole).max() <= 1  # uint16 rounding


def test_output_array_of_wrong_shape_is_refused():
    model = make_model()
    with pytest.raises(ValueError, match="shape"):
        translate(np.zeros((32, 32), np.uint16), model, device="cpu", output=np.zeros((8, 8)))


@pytest.mark.gui
def test_napari_shows_translated_stack_computing_only_viewed_planes(make_napari_viewer):
    rng = np.random.default_rng(3)
    planes = rng.integers(0, 65535, (6, 64, 64), dtype=np.uint16)
    stack, loaded = counted_stack(planes)
    result = translate(stack, make_model(), device="cpu")
    viewer = make_napari_viewer()
    viewer.add_image(result, contrast_limits=(0, 65535))
    shown = viewer.dims.current_step[0]
    # The plane on screen, and at most one more that napari reads to check the layer.
    assert shown in loaded and len(set(loaded)) <= 2
