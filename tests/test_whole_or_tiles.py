"""tile_size="auto" on the CPU: whole planes or tiles, whichever was timed faster."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch

from napari_cyclestyle import whole_or_tiles
from napari_cyclestyle.inference import translate, translate_steps
from napari_cyclestyle.networks import build_generator
from napari_cyclestyle.whole_or_tiles import forward_stages

from .test_tiling import make_model, max_error, photo

# The smallest plane that can go either way: four 256-px tiles a side (two at the
# residual blocks' level, where tiles have half the side).
SIDE = 1024


@pytest.fixture(autouse=True)
def untimed(monkeypatch):
    """Each test starts with nothing timed."""
    monkeypatch.setattr(whole_or_tiles, "_tiles_faster", {})
    monkeypatch.setattr(whole_or_tiles, "_whole_timings", {})


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return photo(SIDE, SIDE, rgb=False)


@pytest.fixture(scope="module")
def model():
    return make_model("resnet_6blocks", 1, ngf=4)


@pytest.fixture(scope="module")
def whole(image, model) -> np.ndarray:
    return translate(image, model, device="cpu", tile_size=None)


def progress(image, model, **options) -> tuple[list[int], int, np.ndarray]:
    steps = list(translate_steps(image, model, device="cpu", tile_size="auto", **options))
    return [step.done for step in steps], steps[-1].total, steps[-1].result


def test_stages_run_the_forward_exactly():
    torch.manual_seed(0)
    network = build_generator("resnet_9blocks", 3, 3, 4).eval()
    stages = forward_stages(network)
    assert len(stages) == 11  # the layers before the blocks, nine blocks, the layers after
    x = torch.rand(1, 3, 64, 48) * 2 - 1
    values = x
    with torch.inference_mode():
        for stage in stages:
            values = stage(values)
        torch.testing.assert_close(values, network(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "generator", ["unet_128", "encoder_decoder", "resnet_1blocks"], ids=lambda name: name
)
def test_only_resnets_with_blocks_to_spare_are_timed(generator):
    if generator == "resnet_1blocks":
        from napari_cyclestyle.networks import ResnetGenerator

        network = ResnetGenerator(3, 3, ngf=4, n_blocks=1)
    else:
        network = build_generator(generator, 3, 3, 4)
    assert forward_stages(network) is None


@pytest.mark.numerics
def test_faster_tiles_are_chosen_and_remembered(monkeypatch, image, model, whole):
    monkeypatch.setattr(whole_or_tiles, "FASTER_BY", 0.0)  # any timing: tiles faster
    done, total, first = progress(image, model)
    assert total == 8  # whole-plane stages, the later ones filled by the tiles
    assert done == list(range(1, total + 1))
    assert max_error(first, whole) <= 1e-3  # exact tiles: the whole plane's statistics
    assert list(whole_or_tiles._tiles_faster.values()) == [True]

    done, total, again = progress(image, model)
    assert total > 8 and done == list(range(1, total + 1))  # straight to tiles, untimed
    np.testing.assert_array_equal(again, first)


def test_a_faster_whole_plane_goes_on_whole(monkeypatch, image, model, whole):
    monkeypatch.setattr(whole_or_tiles, "FASTER_BY", float("inf"))  # whole faster
    for _timing in range(whole_or_tiles.WHOLE_TIMINGS):
        assert whole_or_tiles._tiles_faster == {}  # not decided yet: timed again
        done, total, first = progress(image, model)
        assert done == list(range(1, 9))
        np.testing.assert_array_equal(first, whole)  # the same forward, stage by stage
    assert list(whole_or_tiles._tiles_faster.values()) == [False]

    done, total, again = progress(image, model)
    assert total == 1
    np.testing.assert_array_equal(again, whole)


def test_forgotten_timings_are_timed_again(monkeypatch, image, model, whole):
    monkeypatch.setattr(whole_or_tiles, "FASTER_BY", float("inf"))  # whole faster
    progress(image, model)
    assert whole_or_tiles.timed_choices() == {(SIDE, SIDE): False}
    whole_or_tiles.forget_timings()
    assert whole_or_tiles.timed_choices() == {}

    monkeypatch.setattr(whole_or_tiles, "FASTER_BY", 0.0)  # now tiles faster
    done, total, again = progress(image, model)
    assert total == 8  # timed again, on the way
    assert whole_or_tiles.timed_choices() == {(SIDE, SIDE): True}
    assert max_error(again, whole) <= 1e-3


def test_tiles_can_win_after_a_whole_plane(monkeypatch, image, model, whole):
    monkeypatch.setattr(whole_or_tiles, "FASTER_BY", float("inf"))  # a busy moment
    progress(image, model)
    assert whole_or_tiles.timed_choices() == {(SIDE, SIDE): False}
    assert whole_or_tiles._tiles_faster == {}  # but not decided

    monkeypatch.setattr(whole_or_tiles, "FASTER_BY", 0.0)  # tiles faster again
    done, total, again = progress(image, model)
    assert total == 8  # timed again, and tiles chosen on the way
    assert list(whole_or_tiles._tiles_faster.values()) == [True]
    assert whole_or_tiles._whole_timings == {}
    assert max_error(again, whole) <= 1e-3


@pytest.mark.parametrize(
    ("faster_by", "planes_timed"), [(0.0, 1), (float("inf"), 3)], ids=["tiles", "whole"]
)
def test_a_stack_is_timed_until_it_is_decided(monkeypatch, image, model, faster_by, planes_timed):
    monkeypatch.setattr(whole_or_tiles, "FASTER_BY", faster_by)
    timings = []
    crop_faster = whole_or_tiles.WholeOrTiles._crop_faster

    def counted(self, *args):
        timings.append(args)
        return crop_faster(self, *args)

    monkeypatch.setattr(whole_or_tiles.WholeOrTiles, "_crop_faster", counted)
    stack = np.stack([image, image[::-1], image[:, ::-1], image[::-1, ::-1]])
    done, total, _ = progress(stack, model)
    assert len(timings) == planes_timed
    assert done == list(range(1, total + 1)) and total == 4 * 8


def test_small_planes_lazy_and_explicit_tiles_are_not_timed(image, model):
    translate(image[:512, :512], model, device="cpu", tile_size="auto")
    translate(image[:, :600], model, device="cpu", tile_size="auto")  # too narrow
    lazy = translate(da.from_array(image, chunks=SIDE), model, device="cpu", tile_size="auto")
    lazy.compute()
    translate(image, model, device="cpu", tile_size=256)
    translate(image, model, device="cpu", tile_size="auto", memory_budget=2**20)  # won't fit
    assert whole_or_tiles._tiles_faster == {}
