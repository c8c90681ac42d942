"""Translation keeps what users care about: dtype, shape, channels, value range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_cyclestyle.config import ModelConfig
from napari_cyclestyle.inference import translate
from napari_cyclestyle.intensity import IntensityNorm, fit_intensity
from napari_cyclestyle.model import CycleStyleModel, build_generators


class ChannelIdentity(nn.Module):
    """An "identity-like" generator: copies (or repeats/averages) the input channels."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.out_channels:
            return x
        return x.mean(1, keepdim=True).expand(-1, self.out_channels, -1, -1)


def identity_model(channels_a: int, channels_b: int, norm_a=None, norm_b=None):
    config = ModelConfig(generator="resnet_6blocks", channels_a=channels_a, channels_b=channels_b)
    return CycleStyleModel(
        config, ChannelIdentity(channels_b), ChannelIdentity(channels_a), norm_a, norm_b
    )


def fixed(dtype: str, low: float, high: float, channels: int = 1) -> IntensityNorm:
    return IntensityNorm("fixed", (low,) * channels, (high,) * channels, dtype)


def test_uint8_rgb_stays_uint8_rgb():
    image = np.random.default_rng(0).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    model = identity_model(3, 3, fixed("uint8", 0, 255, 3), fixed("uint8", 0, 255, 3))
    out = translate(image, model, "AtoB")
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, image)


def test_rgba_drops_alpha_and_says_so():
    image = np.random.default_rng(0).integers(0, 256, (20, 24, 4), dtype=np.uint8)
    model = identity_model(3, 3, fixed("uint8", 0, 255, 3), fixed("uint8", 0, 255, 3))
    with pytest.warns(UserWarning, match="alpha"):
        out = translate(image, model, "G")
    assert out.shape == (20, 24, 3)
    np.testing.assert_array_equal(out, image[..., :3])


def test_uint16_single_channel_keeps_dtype_and_a_plausible_range():
    rng = np.random.default_rng(1)
    image = rng.integers(200, 3000, (64, 80)).astype(np.uint16)
    image[5, 5] = 65000  # a hot pixel must not set the range
    norm = fit_intensity([image[None, None]], np.uint16)
    assert norm.mode == "percentile" and norm.high[0] < 3100
    model = identity_model(1, 1, norm, norm)
    out = translate(image, model, "AtoB")
    assert out.dtype == np.uint16 and out.shape == image.shape
    assert norm.low[0] - 1 <= out.min() and out.max() <= norm.high[0] + 1
    inside = (image >= norm.low[0]) & (image <= norm.high[0])
    assert np.abs(out[inside].astype(int) - image[inside]).max() <= 1


def test_float32_two_channel_image_with_channels_first():
    image = np.random.default_rng(2).normal(5, 2, (2, 40, 36)).astype(np.float32)
    norm = fit_intensity([image[None]], np.float32)
    model = identity_model(2, 2, norm, norm)
    out = translate(image, model, "AtoB")
    assert out.dtype == np.float32 and out.shape == (2, 40, 36)
    inside = (image > np.array(norm.low)[:, None, None]) & (
        image < np.array(norm.high)[:, None, None]
    )
    np.testing.assert_allclose(out[inside], image[inside], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(5, 24, 28), (3, 4, 24, 28)])
def test_stacks_are_translated_plane_by_plane(shape):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 1000, shape).astype(np.uint16)
    norm = fixed("uint16", 0, 1000)
    model = identity_model(1, 1, norm, norm)
    planes_seen = []
    out = translate(image, model, "AtoB", progress=lambda done, total: planes_seen.append(done))
    assert out.shape == shape and out.dtype == np.uint16
    np.testing.assert_array_equal(out, image)
    assert planes_seen[-1] == int(np.prod(shape[:-2]))


def test_a_constant_offset_in_gives_the_same_offset_out():
    image = np.random.default_rng(4).integers(100, 800, (32, 32)).astype(np.uint16)
    norm = fixed("uint16", 0, 1000)
    model = identity_model(1, 1, norm, norm)
    base = translate(image, model, "AtoB").astype(int)
    shifted = translate(image + 50, model, "AtoB").astype(int)
    np.testing.assert_array_equal(shifted - base, 50)


def test_gray_to_rgb_model_puts_channels_last():
    image = np.random.default_rng(5).integers(0, 256, (3, 20, 22), dtype=np.uint8)
    model = identity_model(1, 3, fixed("uint8", 0, 255), fixed("uint8", 0, 255, 3))
    out = translate(image, model, "AtoB")
    assert out.shape == (3, 20, 22, 3)
    back = translate(out, model, "BtoA")
    assert back.shape == (3, 20, 22)


def test_output_takes_the_target_domains_dtype():
    image = np.random.default_rng(6).integers(0, 4000, (16, 16)).astype(np.uint16)
    model = identity_model(1, 1, fixed("uint16", 0, 4000), fixed("uint8", 0, 255))
    assert translate(image, model, "AtoB").dtype == np.uint8


def test_channel_mismatch_names_both_counts():
    image = np.zeros((2, 16, 16), np.float32)
    model = identity_model(3, 3)
    with pytest.raises(ValueError, match=r"has 1 channel\(s\).*expects 3"):
        translate(image, model, "AtoB")


def test_nan_input_is_a_clear_error():
    image = np.ones((16, 16), np.float32)
    image[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        translate(image, identity_model(1, 1), "AtoB")


def test_unknown_direction_lists_the_valid_ones():
    with pytest.raises(ValueError, match="AtoB"):
        translate(np.zeros((8, 8)), identity_model(1, 1), "sideways")


@pytest.mark.parametrize("generator", ["resnet_6blocks", "unet_128", "encoder_decoder"])
@pytest.mark.parametrize("size", [(37, 53), (64, 64), (5, 9)])
def test_real_networks_keep_any_size(generator, size):
    config = ModelConfig(generator=generator, channels_a=1, channels_b=1, ngf=4)
    generator_ab, generator_ba = build_generators(config)
    norm = fixed("uint8", 0, 255)
    model = CycleStyleModel(config, generator_ab, generator_ba, norm, norm)
    image = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8)
    out = translate(image, model, "AtoB", device="cpu")
    assert out.shape == size and out.dtype == np.uint8


def test_rgb_image_into_a_gray_model_is_a_channel_mismatch_not_a_crash():
    image = np.zeros((20, 24, 3), np.uint8)
    with pytest.raises(ValueError, match=r"has 3 channel\(s\).*expects 1"):
        translate(image, identity_model(1, 1), "AtoB")


class PrecisionSpy(ChannelIdentity):
    """Records cuDNN's float32 convolution precision at each forward."""

    def __init__(self, out_channels: int):
        super().__init__(out_channels)
        self.seen: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.backends.cudnn.conv.fp32_precision)
        return super().forward(x)


def test_translation_convolves_in_ieee_float32_and_restores_the_users_setting(
    tf32_convolutions,
):
    # cuDNN's default TF32 rounding would make tiles differ from the whole image.
    spy = PrecisionSpy(1)
    config = ModelConfig(generator="resnet_6blocks", channels_a=1, channels_b=1)
    model = CycleStyleModel(config, spy, ChannelIdentity(1), None, None)
    translate(np.zeros((2, 16, 16), np.float32), model, device="cpu", tile_size=None)
    assert spy.seen == ["ieee", "ieee"]
    assert tf32_convolutions.fp32_precision == "tf32"


def test_options_as_one_object_or_as_keywords_translate_alike():
    from napari_cyclestyle.inference import TranslateOptions

    image = np.random.default_rng(2).integers(0, 256, (40, 36), dtype=np.uint8)
    config = ModelConfig(generator="resnet_6blocks", channels_a=1, channels_b=1, ngf=4)
    torch.manual_seed(0)
    model = CycleStyleModel(config, *build_generators(config))
    options = TranslateOptions(device="cpu", tile_size=16, statistics="tile")
    by_object = translate(image, model, options=options)
    by_keywords = translate(image, model, device="cpu", tile_size=16, statistics="tile")
    np.testing.assert_array_equal(by_object, by_keywords)
    # a keyword replaces the object's field
    whole = translate(image, model, options=options, tile_size=None)
    np.testing.assert_array_equal(whole, translate(image, model, device="cpu", tile_size=None))
    with pytest.raises(TypeError, match="tile_sise"):
        translate(image, model, tile_sise=16)
