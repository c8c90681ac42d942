"""Tiled translation: exact global statistics, estimated statistics, naive tiles."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data, transform

from napari_cyclestyle.config import ModelConfig
from napari_cyclestyle.inference import translate, translate_steps
from napari_cyclestyle.intensity import IntensityNorm
from napari_cyclestyle.model import CycleStyleModel, build_generators
from napari_cyclestyle.tiling import auto_tile_size, blend_window, tile_starts

from .conftest import DEVICES, needs_cuda


def make_model(generator: str, channels: int, norm: str = "instance", ngf: int = 8):
    """A randomly initialised model (PyTorch's default init: statistics matter) whose
    domains are float images in [0, 1], so output differences * 2 are in network units."""
    torch.manual_seed(0)
    config = ModelConfig(
        generator=generator, channels_a=channels, channels_b=channels, ngf=ngf, norm=norm
    )
    generator_ab, generator_ba = build_generators(config)
    if norm == "batch":  # non-trivial running statistics
        for module in generator_ab.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    unit = IntensityNorm("fixed", (0.0,) * channels, (1.0,) * channels, "float32")
    return CycleStyleModel(config, generator_ab, generator_ba, unit, unit)


def photo(height: int, width: int, rgb: bool) -> np.ndarray:
    """A natural photograph (very uneven content) as float32 in [0, 1]."""
    image = transform.resize(data.astronaut(), (height, width), anti_aliasing=True)
    return (image if rgb else image.mean(axis=-1)).astype(np.float32)


def texture(height: int, width: int) -> np.ndarray:
    """A gray texture mosaic (even content, like microscopy mosaics) in [0, 1]."""
    return (np.tile(data.gravel(), (3, 3))[:height, :width] / 255).astype(np.float32)


def max_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() * 2)  # [0, 1] -> [-1, 1] units


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean(((a.astype(np.float64) - b) * 2) ** 2)
    return float(10 * np.log10(4 / mse))


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("generator", "rgb", "shape", "tile_sizes"),
    [
        ("resnet_9blocks", True, (200, 264), (96, 132)),
        ("resnet_6blocks", False, (190, 250), (64, 100)),  # padded to a multiple of 4
        ("unet_128", True, (256, 384), (128, 200)),
        ("unet_256", False, (256, 512), (256,)),
        ("encoder_decoder", False, (200, 264), (48, 100)),
    ],
)
def test_exact_tiles_equal_whole_image(generator, rgb, shape, tile_sizes):
    model = make_model(generator, 3 if rgb else 1)
    image = photo(*shape, rgb)
    whole = translate(image, model, device="cpu", tile_size=None)
    for tile_size in tile_sizes:
        tiled = translate(image, model, device="cpu", tile_size=tile_size, statistics="exact")
        assert tiled.shape == whole.shape
        assert max_error(tiled, whole) <= 1e-3, (generator, tile_size)


@pytest.mark.numerics
@pytest.mark.parametrize("device", DEVICES)
def test_exact_tiles_equal_whole_image_768x1024(device):
    model = make_model("resnet_6blocks", 3)
    image = photo(768, 1024, rgb=True)
    whole = translate(image, model, device=device, tile_size=None)
    tiled = translate(image, model, device=device, tile_size=300, statistics="exact")
    assert max_error(tiled, whole) <= 1e-3


@needs_cuda
@pytest.mark.parametrize("generator", ["resnet_9blocks", "unet_128"])
def test_cuda_translates_like_the_cpu(generator):
    model = make_model(generator, 3)
    image = photo(256, 384, rgb=True)
    on_cpu = translate(image, model, device="cpu", tile_size=None)
    on_cuda = translate(image, model, device="cuda", tile_size=128, statistics="exact")
    assert max_error(on_cuda, on_cpu) <= 1e-3


@pytest.mark.numerics
@pytest.mark.slow
@pytest.mark.parametrize("generator", ["resnet_9blocks", "unet_256"])
@pytest.mark.parametrize("rgb", [True, False])
def test_exact_tiles_equal_whole_image_768x1024_all(generator, rgb):
    model = make_model(generator, 3 if rgb else 1)
    image = photo(768, 1024, rgb)
    whole = translate(image, model, device="cpu", tile_size=None)
    for tile_size in (256, 384 if generator.startswith("unet") else 333):
        tiled = translate(image, model, device="cpu", tile_size=tile_size)
        assert max_error(tiled, whole) <= 1e-3


def test_naive_tiles_differ_from_whole_image():
    model = make_model("resnet_9blocks", 3)
    image = photo(256, 320, rgb=True)
    whole = translate(image, model, device="cpu", tile_size=None)
    naive = translate(image, model, device="cpu", tile_size=128, overlap=32, statistics="tile")
    exact = translate(image, model, device="cpu", tile_size=128, statistics="exact")
    assert max_error(naive, whole) > 0.1
    assert psnr(naive, whole) < 35
    assert max_error(naive, whole) > 100 * max_error(exact, whole)


@pytest.mark.numerics
def test_estimated_statistics_reach_40_db():
    model = make_model("resnet_9blocks", 1)
    image = texture(384, 512)
    whole = translate(image, model, device="cpu", tile_size=None)
    estimated = translate(
        image,
        model,
        device="cpu",
        tile_size=192,
        overlap=96,
        statistics="estimate",
        sample_fraction=0.5,
    )
    assert psnr(estimated, whole) >= 40


@pytest.mark.numerics
def test_networks_without_instance_norm_tile_exactly():
    for norm in ("batch", "none"):
        model = make_model("resnet_6blocks", 1, norm=norm)
        image = photo(160, 200, rgb=False)
        whole = translate(image, model, device="cpu", tile_size=None)
        for statistics in ("exact", "estimate"):
            tiled = translate(image, model, device="cpu", tile_size=64, statistics=statistics)
            assert max_error(tiled, whole) <= 1e-3, (norm, statistics)


def test_large_planes_are_tiled_automatically():
    model = make_model("resnet_6blocks", 1)
    image = photo(160, 200, rgb=False)
    whole = translate(image, model, device="cpu", tile_size=None)
    steps = list(translate_steps(image, model, device="cpu", memory_budget=2**20))
    assert steps[-1].total > 1  # tiles, not one plane
    assert max_error(steps[-1].result, whole) <= 1e-3
    untiled = list(translate_steps(image, model, device="cpu"))
    assert untiled[-1].total == 1


def test_automatic_tiles_stay_cache_sized_on_the_cpu_only():
    network = make_model("resnet_9blocks", 1).generator("AtoB")
    budget = 2**30  # room for ~2900 px tiles at ngf 4
    assert auto_tile_size(network, 4, budget, torch.device("cpu")) == 256
    assert auto_tile_size(network, 4, budget, torch.device("cuda")) > 256
    assert auto_tile_size(network, 4, 2**16, torch.device("cpu")) == 64  # the floor


def test_progress_counts_tiles_and_result_comes_last():
    model = make_model("resnet_6blocks", 1)
    stack = np.stack([photo(96, 128, rgb=False)] * 2)
    steps = list(translate_steps(stack, model, device="cpu", tile_size=48))
    total = steps[0].total
    assert [s.done for s in steps] == list(range(1, total + 1))
    assert total % 2 == 0 and total > 2
    assert all(s.result is None for s in steps[:-1])
    assert steps[-1].result.shape == stack.shape
    assert [s.plane for s in steps] == [0] * (total // 2) + [1] * (total // 2)


def test_activations_spill_to_scratch_and_are_removed(tmp_path: Path):
    model = make_model("resnet_6blocks", 1)
    image = photo(192, 256, rgb=False)
    whole = translate(image, model, device="cpu", tile_size=None)
    seen = set()
    result = None
    for step in translate_steps(
        image, model, device="cpu", tile_size=64, memory_budget=2**16, scratch=tmp_path
    ):
        seen.update(p.name for p in tmp_path.rglob("*.cell"))
        result = step.result
    assert seen  # activations went to disk
    assert not list(tmp_path.rglob("*.cell"))  # and are gone afterwards
    assert max_error(result, whole) <= 1e-3


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("generator", "shape", "rgb"),
    [("resnet_6blocks", (192, 256), False), ("unet_128", (256, 384), True)],
)
def test_activations_split_between_ram_and_scratch_stay_exact(generator, shape, rgb, tmp_path):
    # A budget that holds a third of the largest activation: some cells of a stored
    # activation stay in RAM, the others go to files (U-Net skips are read twice).
    model = make_model(generator, 3 if rgb else 1)
    image = photo(*shape, rgb=rgb)
    whole = translate(image, model, device="cpu", tile_size=None)
    seen = False
    result = None
    for step in translate_steps(
        image, model, device="cpu", tile_size=64, memory_budget=2**20, scratch=tmp_path
    ):
        seen = seen or bool(list(tmp_path.rglob("*.cell")))
        result = step.result
    assert seen
    assert max_error(result, whole) <= 1e-3


def test_scratch_holds_little_beyond_the_data_still_to_be_read(tmp_path: Path):
    # Stored cells are deleted as soon as the pass reading them has moved past: the
    # scratch never holds both whole activations around a norm layer (1.5x the largest).
    model = make_model("resnet_6blocks", 1)
    image = photo(192, 256, rgb=False)
    largest = 8 * 192 * 256 * 4  # ngf channels at full resolution, float32
    peak = 0
    for _ in translate_steps(
        image, model, device="cpu", tile_size=64, memory_budget=2**16, scratch=tmp_path
    ):
        peak = max(peak, sum(p.stat().st_size for p in tmp_path.rglob("*.cell")))
    assert largest <= peak <= 1.3 * largest


def test_cancelling_removes_scratch_files(tmp_path: Path):
    model = make_model("resnet_6blocks", 1)
    image = photo(192, 256, rgb=False)
    steps = translate_steps(
        image, model, device="cpu", tile_size=64, memory_budget=2**16, scratch=tmp_path
    )
    for step in steps:
        if step.done == step.total // 2:
            break
    assert list(tmp_path.rglob("*.cell"))
    steps.close()
    assert not list(tmp_path.rglob("*.cell"))


def test_cells_written_while_the_scratch_is_removed_go_too(tmp_path: Path, monkeypatch):
    # On a cluster, the workers still finishing a cancelled tile (two here) can each
    # write a cell into a folder after its removal has listed it and before it goes.
    model = make_model("resnet_6blocks", 1)
    steps = translate_steps(
        photo(192, 256, rgb=False), model, device="cpu", tile_size=64,
        memory_budget=2**16, scratch=tmp_path,
    )  # fmt: skip
    for step in steps:
        if step.done == step.total // 2:
            break
    rmdir, late = os.rmdir, []

    def rmdir_after_late_cells(path, *, dir_fd=None):
        name = os.path.basename(path)
        if name.startswith("activation") and late.count(name) < 2:
            late.append(name)
            cell = os.path.join(path, f"late{len(late)}.cell")
            os.close(os.open(cell, os.O_CREAT | os.O_WRONLY, dir_fd=dir_fd))
        rmdir(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "rmdir", rmdir_after_late_cells)
    steps.close()
    assert late and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"statistics": "global"}, "statistics"),
        ({"tile_size": "big"}, "tile_size"),
        ({"tile_size": 0}, "tile_size"),
        ({"tile_size": 64, "overlap": 64}, "overlap"),
        ({"tile_size": 64, "statistics": "estimate", "sample_fraction": 0}, "sample_fraction"),
    ],
)
def test_bad_tiling_options_are_refused(options, message):
    model = make_model("resnet_6blocks", 1)
    with pytest.raises(ValueError, match=message):
        translate(np.zeros((64, 64), np.float32), model, device="cpu", **options)


def test_tile_starts_cover_the_image_with_overlap():
    starts = tile_starts(1000, 256, 64, align=4)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:], strict=False))
    assert all(s % 4 == 0 for s in starts)
    assert tile_starts(100, 256, 64) == [0]


def test_blend_window_tapers_inner_edges_only():
    window = blend_window(128, 32, taper_start=True, taper_end=False)
    assert window[0] < 0.01 and window[-1] == 1.0
    assert np.all(np.diff(window[:32]) > 0) and np.all(window > 0)
    # Two overlapping ramps sum to one: blending equal tiles changes nothing.
    falling = blend_window(128, 32, taper_start=False, taper_end=True)
    np.testing.assert_allclose(falling[-32:] + window[:32], 1.0, atol=1e-6)
