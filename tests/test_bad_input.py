"""Odd images in, never garbage out: ``translate`` gives a finite array of the documented
shape and dtype, or a ValueError saying what to change."""

from __future__ import annotations

import functools
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cyclestyle.config import ModelConfig
from napari_cyclestyle.inference import translate
from napari_cyclestyle.intensity import IntensityNorm
from napari_cyclestyle.layout import infer_layout
from napari_cyclestyle.model import CycleStyleModel, build_generators
from napari_cyclestyle.networks import init_weights

DTYPES = ("uint8", "uint16", "int16", "float32", "float64", "bool")
# A ValueError must say what to do, not only what went wrong.
ADVICE = re.compile(r"\b(pass|use|replace|convert|choose|give|need|needs)\b", re.I)


@functools.cache
def _tiny_model(channels: int, with_norms: bool) -> CycleStyleModel:
    """ngf-4 resnet_6blocks generators mapping ``channels`` → ``channels``; with the
    normalisations of a trained model (A: uint16 percentiles, B: float32 in [0, 1]) or
    without (an imported model normalises each input from its own values)."""
    config = ModelConfig("resnet_6blocks", channels_a=channels, channels_b=channels, ngf=4)
    torch.manual_seed(channels)
    generator_ab, generator_ba = build_generators(config)
    for network in (generator_ab, generator_ba):
        init_weights(network)
        network.eval()
    norm_a = norm_b = None
    if with_norms:
        norm_a = IntensityNorm("percentile", (100.0,) * channels, (4000.0,) * channels, "uint16")
        norm_b = IntensityNorm("fixed", (0.0,) * channels, (1.0,) * channels, "float32")
    return CycleStyleModel(config, generator_ab, generator_ba, norm_a, norm_b)


@st.composite
def cases(draw) -> tuple[np.ndarray, int | None, int]:
    """A model's channel count and an image for it: mostly 2-4 axes (planes of 5-40
    pixels a side, 1-9 of them), sometimes fewer; a channel axis of the model's size, of
    another size, or none; given as ``channel_axis`` or left to be inferred, sometimes
    out of range; any of DTYPES; random, constant or NaN-holding values. Planes under 5
    pixels a side: see ``test_a_tiny_image_translates``."""
    channels = draw(st.sampled_from([1, 3]))
    n_spatial = draw(st.sampled_from([2] * 8 + [1, 0]))
    spatial = draw(st.lists(st.integers(1, 40), min_size=n_spatial, max_size=n_spatial))
    leading = draw(st.lists(st.integers(1, 3), max_size=2 if n_spatial == 2 else 0))
    shape = leading + spatial
    channel_axis = None
    layout = draw(st.sampled_from(["channels", "channels", "none", "out of range"]))
    if layout == "channels" and len(shape) < 4:
        position = draw(st.integers(0, len(shape)))
        shape.insert(position, draw(st.sampled_from([channels, channels, 1, 3, 4])))
        channel_axis = draw(st.sampled_from([None, position, position - len(shape)]))
    elif layout == "out of range":
        channel_axis = draw(st.sampled_from([len(shape), -len(shape) - 1]))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    values = draw(st.sampled_from(["random", "constant", "nan"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype == np.bool_:
        image = rng.random(shape) > 0.5
    elif dtype.kind == "f":
        image = (rng.standard_normal(shape) * 1000).astype(dtype)
    else:
        info = np.iinfo(dtype)
        image = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    if values == "constant" and image.size:
        image[...] = image.flat[0]
    elif values == "nan" and dtype.kind == "f" and image.size:
        image.flat[rng.integers(image.size)] = np.nan
    return image, channel_axis, channels


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    case=cases(),
    with_norms=st.booleans(),
    direction=st.sampled_from(["AtoB", "BtoA"]),
)
def test_translate_gives_a_finite_result_of_the_documented_form_or_advice(
    case, with_norms, direction
):
    image, channel_axis, channels = case
    model = _tiny_model(channels, with_norms)
    try:
        layout = infer_layout(image.shape, channel_axis, channels)
    except ValueError:
        expected_shape = None
    else:
        expected_shape = layout.output_shape(channels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "alpha channel ignored"
        try:
            result = translate(image, model, direction, device="cpu", channel_axis=channel_axis)
        except ValueError as error:
            assert ADVICE.search(str(error)), f"no advice in: {error}"
            return
    assert expected_shape is not None, "translated an image whose layout is refused"
    assert isinstance(result, np.ndarray)
    assert result.shape == expected_shape
    norm_out = model.norms(direction)[1]
    assert result.dtype == (np.dtype(norm_out.dtype) if norm_out else image.dtype)
    if result.dtype.kind == "f":
        assert np.isfinite(result).all()


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (4, 4), (1, 40), (40, 2), (3, 4, 5)])
def test_a_tiny_image_translates(shape):
    image = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    result = translate(image, _tiny_model(1, True), "AtoB", device="cpu")
    assert result.shape == image.shape and result.dtype == np.float32
    assert np.isfinite(result).all()


def test_an_image_holding_nan_is_refused_with_advice():
    image = np.ones((16, 16), np.float32)
    image[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf.*nan_to_num"):
        translate(image, _tiny_model(1, False), device="cpu")


@pytest.mark.parametrize("shape", [(0, 0), (5, 0), (0, 6, 6), (2, 8, 0, 3)])
def test_an_image_without_pixels_is_refused_naming_its_shape(shape):
    with pytest.raises(ValueError, match=re.escape(f"shape {shape}")) as raised:
        translate(np.zeros(shape, np.uint8), _tiny_model(1, False), device="cpu")
    assert ADVICE.search(str(raised.value))


@pytest.mark.parametrize("statistics", ["exact", "estimate", "tile"])
def test_a_tile_smaller_than_the_generator_takes_is_refused_with_the_smallest(statistics):
    image = np.arange(40 * 48, dtype=np.uint16).reshape(40, 48)
    model = _tiny_model(1, True)
    refusal = "gives 4-px tiles .* the smallest tile resnet_6blocks takes, 8 px"
    with pytest.raises(ValueError, match=refusal) as raised:
        translate(image, model, device="cpu", tile_size=3, statistics=statistics)
    assert "tile_size=8" in str(raised.value)
    result = translate(image, model, device="cpu", tile_size=8, statistics=statistics)
    assert result.shape == image.shape and np.isfinite(result).all()
