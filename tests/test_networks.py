"""Tests of the generator / discriminator networks and the checkpoint layout helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_cyclestyle.choices import DISCRIMINATORS as DISCRIMINATOR_NAMES
from napari_cyclestyle.choices import GENERATORS as GENERATOR_NAMES
from napari_cyclestyle.choices import NORMS as NORM_NAMES
from napari_cyclestyle.networks import (
    EncoderDecoderGenerator,
    NLayerDiscriminator,
    PixelDiscriminator,
    ResnetBlock,
    ResnetGenerator,
    UnetGenerator,
    UnetSkipBlock,
    build_discriminator,
    build_generator,
    generator_from_spec,
    init_weights,
    size_multiple,
)
from napari_cyclestyle.reference import infer_generator_spec, strip_legacy_norm_keys

UNET_256_PREFIXES = ["model.model.1." + "model.3." * depth for depth in range(7)]


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def _n_params(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _add_legacy_instance_norm_keys(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return ``model``'s state dict plus the running statistics of old-format files."""
    state = dict(model.state_dict())
    for name, layer in model.named_modules():
        if isinstance(layer, nn.InstanceNorm2d):
            state[f"{name}.running_mean"] = torch.zeros(layer.num_features)
            state[f"{name}.running_var"] = torch.ones(layer.num_features)
            state[f"{name}.num_batches_tracked"] = torch.tensor(0)
    return state


# --------------------------------------------------------------------------------------
# Reference layout: key names, shapes and parameter counts (ngf/ndf 64, 3 channels)
# --------------------------------------------------------------------------------------

REFERENCE_LAYOUTS = {
    "resnet_9blocks": (lambda: build_generator("resnet_9blocks", 3, 3), 48, 11_378_179),
    "resnet_6blocks": (lambda: build_generator("resnet_6blocks", 3, 3), 36, 7_837_699),
    "unet_256": (lambda: build_generator("unet_256", 3, 3), 32, 54_409_603),
    "unet_128": (lambda: build_generator("unet_128", 3, 3), 28, 41_825_667),
    "patchgan": (lambda: build_discriminator("basic", 3), 10, 2_764_737),
    "pixel": (lambda: build_discriminator("pixel", 3), 6, 8_705),
    "resnet_9blocks_batch": (
        lambda: build_generator("resnet_9blocks", 3, 3, norm="batch"),
        140,
        11_383_427,
    ),
    "unet_256_batch": (lambda: build_generator("unet_256", 3, 3, norm="batch"), 82, 54_413_955),
    "resnet_9blocks_dropout": (
        lambda: build_generator("resnet_9blocks", 3, 3, dropout=True),
        48,
        11_378_179,
    ),
}

REFERENCE_KEY_SHAPES = {
    "resnet_9blocks": {
        "model.1.weight": (64, 3, 7, 7),
        "model.4.weight": (128, 64, 3, 3),
        "model.7.bias": (256,),
        "model.10.conv_block.1.weight": (256, 256, 3, 3),
        "model.18.conv_block.5.bias": (256,),
        "model.19.weight": (256, 128, 3, 3),
        "model.19.bias": (128,),
        "model.22.weight": (128, 64, 3, 3),
        "model.26.weight": (3, 64, 7, 7),
        "model.26.bias": (3,),
    },
    "resnet_6blocks": {
        "model.15.conv_block.5.weight": (256, 256, 3, 3),
        "model.16.weight": (256, 128, 3, 3),
        "model.19.bias": (64,),
        "model.23.weight": (3, 64, 7, 7),
    },
    "resnet_9blocks_dropout": {
        "model.10.conv_block.6.weight": (256, 256, 3, 3),
        "model.18.conv_block.6.bias": (256,),
        "model.26.bias": (3,),
    },
    "resnet_9blocks_batch": {
        "model.1.weight": (64, 3, 7, 7),
        "model.2.running_var": (64,),
        "model.2.num_batches_tracked": (),
        "model.10.conv_block.2.weight": (256,),
        "model.10.conv_block.5.weight": (256, 256, 3, 3),
        "model.10.conv_block.6.running_mean": (256,),
        "model.20.bias": (128,),
        "model.23.weight": (64,),
        "model.26.bias": (3,),
    },
    "unet_256": {
        "model.model.0.weight": (64, 3, 4, 4),
        "model.model.1.model.1.bias": (128,),
        "model.model.1.model.3.model.3.model.1.weight": (512, 256, 4, 4),
        UNET_256_PREFIXES[6] + "model.1.weight": (512, 512, 4, 4),
        UNET_256_PREFIXES[6] + "model.3.weight": (512, 512, 4, 4),
        "model.model.1.model.3.model.3.model.3.model.3.model.3.model.5.weight": (
            1024,
            512,
            4,
            4,
        ),
        "model.model.1.model.3.model.3.model.5.weight": (1024, 256, 4, 4),
        "model.model.1.model.5.bias": (64,),
        "model.model.3.weight": (128, 3, 4, 4),
        "model.model.3.bias": (3,),
    },
    "unet_128": {
        "model.model.1.model.3.model.3.model.3.model.3.model.3.model.3.weight": (512, 512, 4, 4),
        "model.model.1.model.3.model.3.model.3.model.3.model.5.weight": (1024, 512, 4, 4),
        "model.model.1.model.3.model.3.model.5.weight": (1024, 256, 4, 4),
        "model.model.3.weight": (128, 3, 4, 4),
    },
    "unet_256_batch": {
        "model.model.0.weight": (64, 3, 4, 4),
        "model.model.1.model.2.running_mean": (128,),
        UNET_256_PREFIXES[6] + "model.1.weight": (512, 512, 4, 4),
        UNET_256_PREFIXES[6] + "model.3.weight": (512, 512, 4, 4),
        UNET_256_PREFIXES[6] + "model.4.num_batches_tracked": (),
        UNET_256_PREFIXES[5] + "model.6.bias": (512,),
        "model.model.1.model.6.weight": (64,),
        "model.model.3.bias": (3,),
    },
    "patchgan": {
        "model.0.weight": (64, 3, 4, 4),
        "model.2.weight": (128, 64, 4, 4),
        "model.5.bias": (256,),
        "model.8.weight": (512, 256, 4, 4),
        "model.11.weight": (1, 512, 4, 4),
        "model.11.bias": (1,),
    },
    "pixel": {
        "net.0.weight": (64, 3, 1, 1),
        "net.2.bias": (128,),
        "net.5.weight": (1, 128, 1, 1),
        "net.5.bias": (1,),
    },
}

# Keys whose absence is part of the reference layout.
REFERENCE_ABSENT_KEYS = {
    "resnet_9blocks_batch": ["model.1.bias", "model.10.conv_block.1.bias", "model.19.bias"],
    "unet_256_batch": ["model.model.0.bias", UNET_256_PREFIXES[6] + "model.1.bias"],
    "resnet_9blocks_dropout": ["model.10.conv_block.5.weight"],
}


@pytest.mark.parametrize("layout", list(REFERENCE_LAYOUTS))
def test_reference_layout_key_and_parameter_counts(layout: str) -> None:
    build, n_keys, n_params = REFERENCE_LAYOUTS[layout]

    model = build()

    assert len(model.state_dict()) == n_keys
    assert _n_params(model) == n_params


@pytest.mark.parametrize("layout", list(REFERENCE_KEY_SHAPES))
def test_reference_layout_key_shapes(layout: str) -> None:
    shapes = _shapes(REFERENCE_LAYOUTS[layout][0]())

    for key, shape in REFERENCE_KEY_SHAPES[layout].items():
        assert shapes.get(key) == shape, key
    for key in REFERENCE_ABSENT_KEYS.get(layout, []):
        assert key not in shapes


def test_unet_256_keys_match_reference_listing() -> None:
    bottom = UNET_256_PREFIXES[6]
    expected = ["model.model.0"]
    expected += [prefix + "model.1" for prefix in UNET_256_PREFIXES]
    expected += [bottom + "model.3"]
    expected += [prefix + "model.5" for prefix in reversed(UNET_256_PREFIXES[:6])]
    expected += ["model.model.3"]
    expected = [f"{layer}.{kind}" for layer in expected for kind in ("weight", "bias")]

    keys = list(build_generator("unet_256", 3, 3).state_dict())

    assert keys == expected


def test_norm_none_keeps_reference_indices_with_identity_slots() -> None:
    plain = build_generator("resnet_9blocks", 3, 3, ngf=8, norm="none")
    instance = build_generator("resnet_9blocks", 3, 3, ngf=8, norm="instance")

    assert _shapes(plain) == _shapes(instance)
    assert isinstance(plain.model[2], nn.Identity)
    assert isinstance(plain.model[10].conv_block[6], nn.Identity)
    assert not any(isinstance(m, nn.InstanceNorm2d | nn.BatchNorm2d) for m in plain.modules())


def test_instance_norm_layers_use_per_image_statistics() -> None:
    model = build_generator("resnet_6blocks", 3, 3, ngf=8)

    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]

    assert len(norms) == 3 + 2 * 6 + 2
    assert all(not m.affine and not m.track_running_stats for m in norms)


def test_batch_norm_layers_are_affine_with_running_statistics() -> None:
    model = build_discriminator("basic", 3, ndf=8, norm="batch")

    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    assert len(norms) == 3
    assert all(m.affine and m.track_running_stats for m in norms)


def test_pixel_discriminator_with_batch_norm_has_no_last_bias_like_reference() -> None:
    keys = set(build_discriminator("pixel", 3, ndf=8, norm="batch").state_dict())

    assert "net.5.weight" in keys
    assert "net.5.bias" not in keys
    assert "net.2.bias" not in keys
    assert "net.3.running_mean" in keys


def test_classes_are_exported_with_expected_structure() -> None:
    generator = build_generator("resnet_6blocks", 1, 1, ngf=4)

    assert isinstance(generator, ResnetGenerator)
    assert all(isinstance(generator.model[i], ResnetBlock) for i in range(10, 16))
    assert isinstance(build_generator("unet_128", 1, 1, ngf=4), UnetGenerator)
    assert isinstance(build_generator("unet_128", 1, 1, ngf=4).model, UnetSkipBlock)
    assert isinstance(build_generator("encoder_decoder", 1, 1, ngf=4), EncoderDecoderGenerator)
    assert isinstance(build_discriminator("n_layers", 1, ndf=4), NLayerDiscriminator)
    assert isinstance(build_discriminator("pixel", 1, ndf=4), PixelDiscriminator)


# --------------------------------------------------------------------------------------
# Forward shapes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATOR_NAMES)
@pytest.mark.parametrize(("in_channels", "out_channels"), [(1, 3), (3, 1), (2, 2)])
@pytest.mark.parametrize("height_multiple", [1, 3])
def test_generator_output_matches_input_size(
    name: str, in_channels: int, out_channels: int, height_multiple: int
) -> None:
    multiple = size_multiple(name)
    if multiple < 8:
        multiple *= 4  # keep ResNet inputs big enough for the reflection padding
    height, width = multiple * height_multiple, multiple * 2
    model = build_generator(name, in_channels, out_channels, ngf=4).eval()

    with torch.no_grad():
        output = model(torch.randn(1, in_channels, height, width))

    assert output.shape == (1, out_channels, height, width)
    assert output.abs().max() <= 1


@pytest.mark.parametrize("name", GENERATOR_NAMES)
@pytest.mark.parametrize("norm", NORM_NAMES)
def test_generator_runs_with_every_norm_in_training_mode(name: str, norm: str) -> None:
    side = max(size_multiple(name), 16)
    model = build_generator(name, 2, 3, ngf=4, norm=norm, dropout=True).train()

    output = model(torch.randn(2, 2, side, side))
    output.mean().backward()

    assert output.shape == (2, 3, side, side)


def test_unet_skip_block_concatenates_input_and_output() -> None:
    block = UnetSkipBlock(4, 8, innermost=True)
    x = torch.randn(1, 4, 8, 8)

    output = block(x)

    assert output.shape == (1, 8, 8, 8)
    assert torch.equal(output[:, :4], x)


def test_patchgan_gives_30x30_scores_for_256_input() -> None:
    model = build_discriminator("basic", 3, ndf=8)

    with torch.no_grad():
        output = model(torch.randn(1, 3, 256, 256))

    assert output.shape == (1, 1, 30, 30)


@pytest.mark.parametrize(("n_layers", "side"), [(1, 126), (2, 62), (4, 14), (5, 6)])
def test_n_layers_discriminator_output_shape(n_layers: int, side: int) -> None:
    model = build_discriminator("n_layers", 2, ndf=4, n_layers=n_layers)

    with torch.no_grad():
        output = model(torch.randn(1, 2, 256, 256))

    assert output.shape == (1, 1, side, side)
    assert len([m for m in model.modules() if isinstance(m, nn.Conv2d)]) == n_layers + 2


def test_basic_discriminator_ignores_n_layers() -> None:
    model = build_discriminator("basic", 3, ndf=4, n_layers=5)

    assert len([m for m in model.modules() if isinstance(m, nn.Conv2d)]) == 5


def test_pixel_discriminator_scores_every_pixel() -> None:
    model = build_discriminator("pixel", 1, ndf=8)

    with torch.no_grad():
        output = model(torch.randn(2, 1, 17, 9))

    assert output.shape == (2, 1, 17, 9)


@pytest.mark.parametrize(
    ("name", "multiple"),
    [
        ("resnet_9blocks", 4),
        ("resnet_6blocks", 4),
        ("unet_256", 256),
        ("unet_128", 128),
        ("encoder_decoder", 8),
    ],
)
def test_size_multiple(name: str, multiple: int) -> None:
    assert size_multiple(name) == multiple


# --------------------------------------------------------------------------------------
# Name validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "bad", "valid"),
    [
        (lambda: build_generator("resnet_12blocks", 3, 3), "resnet_12blocks", GENERATOR_NAMES),
        (lambda: build_generator("unet_256", 3, 3, norm="group"), "group", NORM_NAMES),
        (lambda: build_discriminator("patch", 3), "patch", DISCRIMINATOR_NAMES),
        (lambda: build_discriminator("basic", 3, norm="layer"), "layer", NORM_NAMES),
        (lambda: size_multiple("unet_64"), "unet_64", GENERATOR_NAMES),
    ],
)
def test_unknown_names_raise_value_error_listing_valid_names(call, bad, valid) -> None:
    with pytest.raises(ValueError) as error:
        call()

    assert repr(bad) in str(error.value)
    assert all(name in str(error.value) for name in valid)


@pytest.mark.parametrize(
    "call",
    [
        lambda: build_generator("resnet_6blocks", 0, 3),
        lambda: build_generator("resnet_6blocks", 3, 3, ngf=0),
        lambda: build_generator("resnet_6blocks", 3.0, 3),
        lambda: build_discriminator("n_layers", 3, n_layers=0),
    ],
)
def test_bad_counts_raise_value_error(call) -> None:
    with pytest.raises(ValueError, match="integer"):
        call()


# --------------------------------------------------------------------------------------
# infer_generator_spec
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATOR_NAMES)
@pytest.mark.parametrize("norm", ["instance", "batch"])
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize(("in_channels", "out_channels"), [(3, 3), (1, 3), (2, 1)])
def test_infer_generator_spec_round_trip(
    name: str, norm: str, dropout: bool, in_channels: int, out_channels: int
) -> None:
    spec = {
        "generator": name,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "ngf": 8,
        "norm": norm,
        "dropout": dropout,
    }
    state = generator_from_spec(spec).state_dict()

    inferred = infer_generator_spec(state)

    # U-Net dropout has no parameters and sits last in its block: it leaves no trace.
    expected = {**spec, "dropout": dropout and not name.startswith("unet")}
    assert inferred == expected


@pytest.mark.parametrize("name", GENERATOR_NAMES)
def test_infer_reports_norm_none_as_instance(name: str) -> None:
    state = build_generator(name, 3, 3, ngf=4, norm="none").state_dict()

    assert infer_generator_spec(state)["norm"] == "instance"


def test_infer_reads_reference_size_resnet() -> None:
    state = build_generator("resnet_9blocks", 3, 3).state_dict()

    assert infer_generator_spec(state) == {
        "generator": "resnet_9blocks",
        "in_channels": 3,
        "out_channels": 3,
        "ngf": 64,
        "norm": "instance",
        "dropout": False,
    }


def test_infer_accepts_old_format_instance_norm_keys() -> None:
    model = build_generator("resnet_9blocks", 3, 3, ngf=8)
    state = _add_legacy_instance_norm_keys(model)

    spec = infer_generator_spec(state)

    assert len(state) - len(model.state_dict()) == 69
    assert spec["generator"] == "resnet_9blocks"
    assert spec["norm"] == "instance"


def _garbage_state_dicts() -> dict[str, dict[str, torch.Tensor]]:
    resnet = dict(build_generator("resnet_6blocks", 3, 3, ngf=4).state_dict())
    truncated = {k: v for k, v in resnet.items() if not k.startswith("model.23.")}
    reshaped = {**resnet, "model.4.weight": torch.zeros(8, 4, 5, 5)}
    extra = {**resnet, "model.99.weight": torch.zeros(1)}
    resnet_5 = {k: v for k, v in resnet.items() if not k.startswith("model.15.")}
    unet_6 = dict(UnetGenerator(3, 3, num_downs=6, ngf=4).state_dict())
    return {
        "empty": {},
        "unrelated": {"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)},
        "truncated": truncated,
        "reshaped": reshaped,
        "extra": extra,
        "five_blocks": resnet_5,
        "discriminator": dict(build_discriminator("basic", 3, ndf=4).state_dict()),
        "pixel_discriminator": dict(build_discriminator("pixel", 3, ndf=4).state_dict()),
        "data_parallel": {f"module.{k}": v for k, v in resnet.items()},
        "unet_cut": unet_6,
    }


@pytest.mark.parametrize("case", list(_garbage_state_dicts()))
def test_infer_rejects_unknown_layouts(case: str) -> None:
    state = _garbage_state_dicts()[case]

    with pytest.raises(ValueError, match="generator"):
        infer_generator_spec(state)


def test_infer_error_names_discriminators_and_data_parallel() -> None:
    cases = _garbage_state_dicts()

    with pytest.raises(ValueError, match="discriminator"):
        infer_generator_spec(cases["discriminator"])
    with pytest.raises(ValueError, match="discriminator"):
        infer_generator_spec(cases["pixel_discriminator"])
    with pytest.raises(ValueError, match="module."):
        infer_generator_spec(cases["data_parallel"])


def test_infer_error_explains_bias_free_norm_none_reference_layout() -> None:
    state = build_generator("resnet_6blocks", 3, 3, ngf=4, norm="none").state_dict()
    state = {k: v for k, v in state.items() if k == "model.23.bias" or k.endswith("weight")}

    with pytest.raises(ValueError, match="norm none"):
        infer_generator_spec(state)


# --------------------------------------------------------------------------------------
# Loading state dicts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATOR_NAMES)
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_state_dict_loaded_into_inferred_model_gives_identical_output(
    name: str, norm: str
) -> None:
    torch.manual_seed(0)
    side = max(size_multiple(name), 32)
    original = build_generator(name, 2, 3, ngf=4, norm=norm)
    init_weights(original)
    if norm == "batch":  # non-trivial running statistics
        original.train()
        with torch.no_grad():
            original(torch.randn(2, 2, side, side))
    original.eval()
    state = original.state_dict()

    rebuilt = generator_from_spec(infer_generator_spec(state))
    rebuilt.load_state_dict(state, strict=True)
    rebuilt.eval()
    x = torch.randn(1, 2, side, side * 2)
    with torch.no_grad():
        expected, actual = original(x), rebuilt(x)

    assert torch.equal(expected, actual)


def test_legacy_instance_norm_keys_are_stripped_then_load_strict() -> None:
    torch.manual_seed(0)
    original = build_generator("resnet_9blocks", 3, 3, ngf=8)
    init_weights(original)
    legacy = _add_legacy_instance_norm_keys(original)
    model = build_generator("resnet_9blocks", 3, 3, ngf=8)

    with pytest.raises(RuntimeError, match="running_mean"):
        model.load_state_dict(legacy, strict=True)
    stripped = strip_legacy_norm_keys(legacy, model)
    model.load_state_dict(stripped, strict=True)

    assert isinstance(stripped, dict)
    assert list(stripped) == list(original.state_dict())
    assert len(legacy) == len(stripped) + 69  # the original dict is left alone
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(original.eval()(x), model.eval()(x))


def test_strip_legacy_norm_keys_keeps_unrelated_and_batch_norm_keys() -> None:
    model = build_generator("resnet_6blocks", 3, 3, ngf=4, norm="batch")
    state = dict(model.state_dict())
    state["model.1.running_mean"] = torch.zeros(4)  # not a norm layer: keep
    state["model.3.running_var"] = torch.zeros(4)  # ReLU, not a norm: keep

    stripped = strip_legacy_norm_keys(state, model)

    assert stripped == state
    assert stripped is not state


# --------------------------------------------------------------------------------------
# init_weights
# --------------------------------------------------------------------------------------


def test_init_weights_draws_conv_weights_with_std_gain_and_zero_biases() -> None:
    torch.manual_seed(0)
    model = build_generator("resnet_6blocks", 3, 3, ngf=32)

    init_weights(model)

    big = model.model[10].conv_block[1].weight  # 128 * 128 * 9 values
    assert big.std().item() == pytest.approx(0.02, rel=0.02)
    assert big.mean().item() == pytest.approx(0.0, abs=1e-3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert all(torch.all(m.bias == 0) for m in convs)


def test_init_weights_sets_batch_norm_near_one_and_respects_gain() -> None:
    torch.manual_seed(0)
    model = build_generator("unet_128", 3, 3, ngf=16, norm="batch")

    init_weights(model, gain=0.05)

    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    weights = torch.cat([m.weight.detach() for m in norms])
    assert weights.mean().item() == pytest.approx(1.0, abs=0.01)
    assert weights.std().item() == pytest.approx(0.05, rel=0.15)
    assert all(torch.all(m.bias == 0) for m in norms)
    convs = torch.cat(
        [m.weight.detach().flatten() for m in model.modules() if isinstance(m, nn.Conv2d)]
    )
    assert convs.std().item() == pytest.approx(0.05, rel=0.02)
