"""The optional training methods of issue 19: each does what its option says, and off
they change nothing (the existing tests of the paper's recipe cover that)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from napari_cyclestyle.augment import diff_augment
from napari_cyclestyle.checkpoint import TrainingCheckpoint
from napari_cyclestyle.config import Config, ConfigError, ModelConfig, TrainConfig
from napari_cyclestyle.inference import translate
from napari_cyclestyle.intensity import IntensityNorm
from napari_cyclestyle.losses import GANLoss, r1_penalty, structure_loss
from napari_cyclestyle.model import CycleStyleModel, build_generators
from napari_cyclestyle.model_file import load_model, save_model
from napari_cyclestyle.networks import build_discriminator, build_generator, init_weights
from napari_cyclestyle.patchnce import PatchNCE, choose_layers, patch_nce_loss
from napari_cyclestyle.presets import apply_preset
from napari_cyclestyle.trainer import Trainer, train

from .conftest import tiny_config, train_straight_and_resumed
from .test_model_file import _reference_pair
from .test_tiling import max_error, photo


def _state(network: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in network.state_dict().items()}


def _all_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    named = {**trainer.networks.__dict__}
    named.update({f"ema_{k}": v.network for k, v in trainer.cyclegan.averages.items()})
    return {f"{n}.{k}": v for n, net in named.items() for k, v in _state(net).items()}


# ---------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("section", "settings", "message"),
    [
        ("train", {"ema_decay": 1.0}, "ema_decay"),
        ("train", {"lambda_r1": -1.0}, "lambda_r1"),
        ("train", {"r1_every": 0}, "r1_every"),
        ("train", {"lambda_structure": -0.5}, "lambda_structure"),
        ("train", {"diff_augment": "color,zoom"}, "diff_augment"),
        ("train", {"gan_mode": "wgan"}, "gan_mode"),
        ("train", {"lambda_nce": -1.0}, "lambda_nce"),
        ("train", {"nce_layers": "0,a"}, "nce_layers"),
        ("train", {"nce_patches": 0}, "nce_patches"),
        ("model", {"upsampling": "bilinear"}, "upsampling"),
        ("model", {"spectral_norm": "yes"}, "spectral_norm"),
    ],
)
def test_impossible_method_settings_are_refused(section, settings, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({section: settings})


def test_defaults_are_the_benchmarks_choice_and_the_paper_preset_turns_it_off():
    model, train_config = ModelConfig(), TrainConfig()
    # benchmarks/README.md, "Translation quality": EMA, resize, structure, Adam 5e-4
    assert (model.upsampling, model.spectral_norm) == ("resize", False)
    assert (train_config.ema_decay, train_config.lambda_structure) == (0.995, 1.0)
    assert train_config.learning_rate == 5e-4
    assert train_config.lambda_r1 == train_config.lambda_nce == 0
    assert train_config.augment_policies == ()
    paper = Config.from_dict(apply_preset("paper", Config().to_dict()))
    assert (paper.model.upsampling, paper.model.spectral_norm) == ("transposed", False)
    assert paper.train.ema_decay == paper.train.lambda_structure == paper.train.lambda_nce == 0
    assert paper.train.learning_rate == 2e-4


def test_stored_settings_that_predate_a_method_read_as_off():
    stored = Config.from_dict({"model": {"ngf": 8}, "train": {"n_steps": 3}}, stored=True)
    assert stored.model.upsampling == "transposed" and stored.train.ema_decay == 0
    assert stored.train.lambda_structure == 0 and stored.model.ngf == 8
    assert Config.from_dict({"model": {"ngf": 8}}).model.upsampling == "resize"


# ---------------------------------------------------------------------- EMA
def test_ema_weights_differ_from_raw_and_are_the_ones_saved(tmp_path, gray_domains):
    output = tmp_path / "m.safetensors"
    trainer = Trainer(*gray_domains, tiny_config(ema_decay=0.9), output=output)
    list(trainer.run())
    average = trainer.cyclegan.averages["G"].network
    raw, saved = _state(trainer.networks.generator_ab), _state(load_model(output).generator_ab)
    assert trainer.cyclegan.shown_generators()[0] is average  # what previews show
    assert any(not torch.equal(raw[key], value) for key, value in _state(average).items())
    for key, value in _state(average).items():
        assert torch.equal(saved[key], value), key


@pytest.mark.numerics
def test_resume_with_every_method_on_continues_exactly(tmp_path, gray_domains):
    config = tiny_config(
        n_steps=3,
        n_steps_decay=3,
        deterministic=True,
        pool_size=2,
        ema_decay=0.9,
        gan_mode="hinge",
        lambda_r1=1.0,
        r1_every=2,
        lambda_structure=1.0,
        diff_augment="color,translation,cutout",  # draws from torch's RNG
        lambda_nce=1.0,  # so do its patch positions; its heads are training state
        nce_patches=16,
    )
    config.model.spectral_norm = True  # its power iteration's vectors must resume too
    config.model.upsampling = "resize"
    straight, resumed = train_straight_and_resumed(tmp_path, gray_domains, config)
    checkpoint = TrainingCheckpoint.load(tmp_path / "resumed.checkpoint.pt")
    assert set(checkpoint.model["ema"]) == set(checkpoint.model["nce_heads"]) == {"G", "F"}
    expected, actual = _all_weights(straight), _all_weights(resumed)
    assert expected.keys() == actual.keys() and any("ema_G" in key for key in expected)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


# ---------------------------------------------------------------------- resize-conv
@pytest.mark.parametrize("generator", ["resnet_6blocks", "encoder_decoder"])
def test_resize_upsampling_has_no_checkerboard_on_a_constant_image(generator):
    spreads = {}
    for upsampling in ("transposed", "resize"):
        torch.manual_seed(0)
        network = build_generator(generator, 1, 1, ngf=8, upsampling=upsampling).eval()
        with torch.no_grad():
            out = network(torch.full((1, 1, 128, 128), 0.3))[0, 0, 32:-32, 32:-32]
        phases = torch.stack([out[i::2, j::2].mean() for i in range(2) for j in range(2)])
        spreads[upsampling] = float(phases.max() - phases.min())  # period-2 artefact
    assert spreads["transposed"] > 0.05
    assert spreads["resize"] < 0.005


@pytest.mark.numerics
@pytest.mark.parametrize(("generator", "tile_size"), [("resnet_6blocks", 64), ("unet_128", 128)])
def test_resize_generators_tile_exactly(generator, tile_size):
    torch.manual_seed(0)
    config = ModelConfig(
        generator=generator, channels_a=1, channels_b=1, ngf=4, upsampling="resize"
    )
    unit = IntensityNorm("fixed", (0.0,), (1.0,), "float32")
    model = CycleStyleModel(config, *build_generators(config), unit, unit)
    image = photo(256, 200, rgb=False)
    whole = translate(image, model, device="cpu", tile_size=None)
    tiled = translate(image, model, device="cpu", tile_size=tile_size, statistics="exact")
    assert max_error(tiled, whole) <= 1e-3
    assert "resize up-sampling" in model.describe()


def test_old_model_files_and_reference_checkpoints_load_as_transposed(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    torch.manual_seed(0)
    config = ModelConfig(
        generator="resnet_6blocks", channels_a=1, channels_b=1, ngf=4, upsampling="transposed"
    )  # as every model file written before the option existed
    unit = IntensityNorm("fixed", (0.0,), (1.0,), "float32")
    path = save_model(
        CycleStyleModel(config, *build_generators(config), unit, unit), tmp_path / "m.safetensors"
    )
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    header = json.loads(metadata["napari-cyclestyle"])
    for key in ("upsampling", "spectral_norm"):  # what files written before them lack
        del header["model"][key]
    old = tmp_path / "old.safetensors"
    old.write_bytes(save(load_file(path), metadata={"napari-cyclestyle": json.dumps(header)}))
    image = photo(64, 64, rgb=False)
    assert load_model(old).config.upsampling == "transposed"
    assert np.array_equal(
        translate(image, old, device="cpu"), translate(image, path, device="cpu")
    )
    _reference_pair(tmp_path)
    assert load_model(tmp_path / "latest_net_G_A.pth").config.upsampling == "transposed"


# ---------------------------------------------------------------------- discriminator
def test_spectral_norm_keeps_the_largest_singular_value_near_one():
    torch.manual_seed(0)
    network = build_discriminator("basic", 3, ndf=4, norm="none", spectral_norm=True)
    init_weights(network)
    for _ in range(30):  # one power iteration per training forward
        network(torch.randn(1, 3, 32, 32))
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)


def test_hinge_loss_values_on_known_predictions():
    prediction = torch.tensor([-2.0, 0.5, 2.0])
    hinge = GANLoss("hinge")
    assert hinge(prediction, True).item() == pytest.approx((3 + 0.5 + 0) / 3)
    assert hinge(prediction, False).item() == pytest.approx((0 + 1.5 + 3) / 3)
    assert hinge(prediction, True, for_discriminator=False).item() == pytest.approx(-0.5 / 3)


def test_r1_is_zero_for_a_constant_discriminator_and_positive_otherwise():
    real = torch.randn(2, 1, 16, 16, requires_grad=True)
    constant = nn.Conv2d(1, 1, 3)
    nn.init.zeros_(constant.weight)
    assert r1_penalty(constant(real), real).item() == 0
    varying = nn.Conv2d(1, 1, 3)
    penalty = r1_penalty(varying(real), real)
    assert penalty.item() > 0
    penalty.backward()  # differentiable in the discriminator's weights
    assert varying.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------- structure
def test_structure_loss_allows_gain_and_offset_and_punishes_inversion():
    image = torch.from_numpy(photo(64, 64, rgb=False))[None, None] * 2 - 1
    assert structure_loss(image, 2 * image + 0.3).item() < 0.01
    assert structure_loss(image, -image).item() > 1.5
    rgb = (2 * image + 0.3).expand(1, 3, 64, 64)  # channel counts may differ
    assert structure_loss(image, rgb).item() < 0.01


def test_structure_term_trains_a_one_to_three_channel_pair(tmp_path, gray_domains):
    rgb = np.stack([gray_domains[1]] * 3, axis=-1)
    output = tmp_path / "m.safetensors"
    events = list(train(gray_domains[0], rgb, tiny_config(lambda_structure=2.0), output=output))
    losses = events[-1].losses
    assert losses["structure_A"] > 0 and losses["structure_B"] > 0
    assert losses["identity_A"] == 0  # identity cannot apply between 1 and 3 channels
    assert load_model(output).config.channels_b == 3


# ---------------------------------------------------------------------- DiffAugment
def test_diff_augment_passes_gradients_to_the_generator():
    torch.manual_seed(0)
    generator = build_generator("encoder_decoder", 1, 1, ngf=4)
    discriminator = build_discriminator("basic", 1, ndf=4)
    fake = generator(torch.randn(2, 1, 32, 32))
    augmented = diff_augment(fake, ("color", "translation", "cutout"))
    assert not torch.equal(augmented, fake)
    discriminator(augmented).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())
    assert diff_augment(fake, ()) is fake  # off: the images themselves


def test_r1_is_lazy_and_every_method_reports_its_losses(tmp_path, gray_domains):
    config = tiny_config(
        lambda_r1=1.0, r1_every=2, gan_mode="hinge", diff_augment="translation", lambda_structure=0
    )
    config.model.spectral_norm = True
    events = list(train(*gray_domains, config, output=tmp_path / "m.safetensors"))
    r1 = [event.losses["R1_A"] for event in events]
    assert r1[0::2] == [0.0] * 3 and all(value > 0 for value in r1[1::2])
    assert "structure_A" not in events[-1].losses  # only the terms in use


# ---------------------------------------------------------------------- PatchNCE
def test_patchnce_gradients_reach_the_encoder():
    torch.manual_seed(0)
    generator = build_generator("resnet_6blocks", 1, 1, ngf=4)
    patch_nce = PatchNCE(generator, choose_layers(generator, ()), n_patches=16)
    assert patch_nce.layers == (0, 4, 8, 12)  # CUT's layers that resnet_6blocks has
    source = torch.randn(2, 1, 32, 32)
    patch_nce(generator, source, generator(source).detach()).backward()
    convs = [m for m in generator.model if isinstance(m, nn.Conv2d)]
    assert convs[0].weight.grad.abs().sum() > 0  # the encoder, not through the output
    up = [m for m in generator.model if isinstance(m, nn.ConvTranspose2d)]
    assert all(m.weight.grad is None for m in up)  # the decoder is not read
    assert all(p.grad.abs().sum() > 0 for p in patch_nce.heads.parameters())


def test_patchnce_loss_is_low_for_matching_patches_and_high_for_shuffled_ones():
    keys = torch.eye(8)[None]  # 8 patches, orthogonal unit features
    assert patch_nce_loss(keys, keys).item() < 1e-3
    assert patch_nce_loss(keys.roll(1, dims=1), keys).item() > 10


@pytest.mark.parametrize(
    ("generator", "channels_b", "nce_layers", "message"),
    [
        ("resnet_6blocks", 3, "", "same channel count"),
        ("unet_128", 1, "", "not a U-Net"),
        ("resnet_6blocks", 1, "0,40", "not layers of the generator's encoder"),
    ],
)
def test_patchnce_refuses_what_it_cannot_read(generator, channels_b, nce_layers, message):
    from napari_cyclestyle.cyclegan import CycleGAN
    from napari_cyclestyle.distributed import DistributedContext

    config = tiny_config(lambda_nce=1.0, nce_layers=nce_layers)
    config.model.generator, config.model.channels_a = generator, 1
    config.model.channels_b = channels_b
    with pytest.raises(ValueError, match=message):
        CycleGAN(config, torch.device("cpu"), DistributedContext())


def test_patchnce_trains_beside_the_cycle_loss(tmp_path, gray_domains):
    config = tiny_config(lambda_nce=1.0, nce_patches=32, nce_layers="0,4")
    trainer = Trainer(*gray_domains, config, output=tmp_path / "m.safetensors")
    events = list(trainer.run())
    assert events[-1].losses["NCE_A"] > 0 and events[-1].losses["NCE_B"] > 0
    heads = TrainingCheckpoint.load(tmp_path / "m.checkpoint.pt").model["nce_heads"]
    assert set(heads) == {"G", "F"}  # training state: in the checkpoint...
    assert not any(
        "heads" in key for key in _state(load_model(tmp_path / "m.safetensors").generator_ab)
    )


def test_r1_keeps_the_discriminators_uncompiled():
    from napari_cyclestyle.cyclegan import CycleGAN
    from napari_cyclestyle.distributed import DistributedContext
    from napari_cyclestyle.training_networks import CompiledOrEager

    config = tiny_config(compile=True, lambda_r1=1.0)  # torch.compile is lazy: cheap here
    called = CycleGAN(config, torch.device("cpu"), DistributedContext())._called
    assert isinstance(called.generator_ab, CompiledOrEager)
    assert not isinstance(called.discriminator_a, CompiledOrEager)
