"""CUT's one-sided modes (``TrainConfig.mode`` cut and fastcut): G and D_B alone, with
PatchNCE instead of the cycle; a model that translates A to B only, and refuses B to A
with a reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_cyclestyle.checkpoint import TrainingCheckpoint
from napari_cyclestyle.config import Config, ConfigError
from napari_cyclestyle.cyclegan import CycleGAN
from napari_cyclestyle.distributed import DistributedContext
from napari_cyclestyle.inference import translate
from napari_cyclestyle.model_file import load_model
from napari_cyclestyle.presets import apply_preset
from napari_cyclestyle.trainer import Trainer

from .conftest import tiny_config, train_straight_and_resumed


def _one_sided(mode: str = "cut", **train_overrides) -> Config:
    """A tiny one-sided run: few PatchNCE patches keep it fast."""
    return tiny_config(mode=mode, nce_patches=16, **train_overrides)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every trained tensor: the networks, the weight averages and PatchNCE's heads."""
    cyclegan = trainer.cyclegan
    named = {
        **trainer.networks.named(),
        **{f"ema_{name}": average.network for name, average in cyclegan.averages.items()},
        **{f"nce_{name}": heads for name, heads in cyclegan.terms.patch_nce.items()},
    }
    return {
        f"{name}.{key}": value.clone()
        for name, network in named.items()
        for key, value in network.state_dict().items()
    }


# ---------------------------------------------------------------------- what a user gets
def test_a_cut_run_writes_a_model_that_translates_a_to_b_only(tmp_path, gray_domains):
    output = tmp_path / "cut.safetensors"
    config = _one_sided(validation_fraction=0.4, validation_every=3)
    events = list(Trainer(*gray_domains, config, output=output).run())

    # the default structure term applies to G alone
    assert set(events[-1].losses) == {"G_adversarial", "D_B", "NCE_A", "NCE_identity_B"} | {
        "structure_A"
    }
    assert set(events[-1].preview) == {"real_A", "fake_B"}  # G's preview alone
    # What needs F or D_A is not measured; the best model is the most realistic.
    assert set(events[-1].validation) == {"realism_B", "diversity_B", "structure_B"}
    model = load_model(output)
    assert model.generator_ba is None and model.directions == ["AtoB"]
    assert model.info["validation"]["best"]["metric"] == "realism"
    assert "not available: F (B → A): the model was trained one-sided" in model.describe()
    image = gray_domains[0][0]
    assert translate(image, model, "AtoB").shape == image.shape
    with pytest.raises(ValueError, match=r"no BtoA generator \(F\).*one-sided.*translate AtoB"):
        translate(image, model, "BtoA")


@pytest.mark.parametrize(
    ("mode", "nce"),
    [("cut", ("NCE_A", "NCE_identity_B")), ("fastcut", ("NCE_A",))],
)
def test_one_sided_modes_train_g_and_d_b_alone_with_their_terms(mode, nce):
    config = _one_sided(mode, lambda_structure=1.0, lambda_r1=1.0)
    cyclegan = CycleGAN(config, torch.device("cpu"), DistributedContext())
    assert set(cyclegan.networks.named()) == {"G", "D_B"}
    # G's structure term and D_B's R1; PatchNCE on A, and in mode cut on B (identity).
    assert cyclegan.loss_names == ("G_adversarial", "D_B", "structure_A", "R1_B", *nce)
    real_a, real_b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    losses = cyclegan.training_step(real_a, real_b, 2e-4)
    assert set(losses) == set(cyclegan.loss_names)
    assert all(torch.isfinite(value) and value > 0 for value in losses.values())


def test_patchnce_of_cut_trains_g_encoder_and_its_heads():
    config = _one_sided(lambda_structure=0.0)  # PatchNCE's gradients alone
    cyclegan = CycleGAN(config, torch.device("cpu"), DistributedContext())
    generator = cyclegan.networks.generator_ab
    real_a, real_b = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    # The outputs as constants: whatever gradient G gets comes through its encoder.
    out = {"fake_B": generator(real_a).detach(), "idt_B": generator(real_b).detach()}
    losses: dict[str, torch.Tensor] = {}
    names = cyclegan.terms.add_generator_terms(losses, cyclegan.networks, real_a, real_b, out)
    assert names == ("NCE_A", "NCE_identity_B")
    sum(losses.values()).backward()
    convs = [m for m in generator.model if isinstance(m, nn.Conv2d)]
    assert convs[0].weight.grad.abs().sum() > 0
    assert all(m.weight.grad is None for m in generator.model if isinstance(m, nn.ConvTranspose2d))
    heads = cyclegan.terms.patch_nce["G"].heads
    assert all(p.grad.abs().sum() > 0 for p in heads.parameters())
    trained = cyclegan.optimisers.generators.param_groups[0]["params"]
    assert trained[-1] is list(heads.parameters())[-1]


def test_lambda_nce_zero_means_the_modes_own_weight():
    assert Config().train.nce_weight == 0  # CycleGAN: PatchNCE off
    assert tiny_config(mode="cut").train.nce_weight == 1.0
    assert tiny_config(mode="fastcut").train.nce_weight == 10.0
    assert tiny_config(mode="fastcut", lambda_nce=2.0).train.nce_weight == 2.0
    # CUT averages its two terms, as the authors' code: each gets half the weight.
    cut = CycleGAN(_one_sided(), torch.device("cpu"), DistributedContext())
    assert cut.terms.nce_weight == 0.5


def test_old_configurations_are_cyclegan_and_the_presets_set_cuts_recipe():
    assert Config.from_dict({"train": {"n_steps": 3}}).train.mode == "cyclegan"
    assert apply_preset("paper", {"train": {"mode": "cut"}})["train"]["mode"] == "cyclegan"
    cut = Config.from_dict(apply_preset("cut", Config().to_dict())).train
    assert (cut.mode, cut.lambda_nce, cut.pool_size, cut.nce_patches) == ("cut", 1.0, 0, 256)
    fastcut = Config.from_dict(apply_preset("fastcut", Config().to_dict())).train
    assert (fastcut.mode, fastcut.nce_weight) == ("fastcut", 10.0)


# ---------------------------------------------------------------------- checkpoint, resume
@pytest.mark.numerics
def test_resume_from_a_one_sided_checkpoint_continues_exactly(tmp_path, gray_domains):
    config = _one_sided(n_steps=2, n_steps_decay=1, deterministic=True, pool_size=2, ema_decay=0.9)
    straight, resumed = train_straight_and_resumed(tmp_path, gray_domains, config, stop_at=2)
    checkpoint = TrainingCheckpoint.load(tmp_path / "resumed.checkpoint.pt")
    assert set(checkpoint.model["networks"]) == {"G", "D_B"}  # no F, no D_A
    assert set(checkpoint.model["ema"]) == set(checkpoint.model["nce_heads"]) == {"G"}
    expected, actual = _weights(straight), _weights(resumed)
    assert expected.keys() == actual.keys()
    assert any(key.startswith("ema_G") for key in expected)
    assert any(key.startswith("nce_G") for key in expected)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_resuming_in_another_mode_is_refused(tmp_path, gray_domains):
    output = tmp_path / "m.safetensors"
    list(Trainer(*gray_domains, _one_sided(n_steps=1, n_steps_decay=0), output=output).run())
    with pytest.raises(ValueError, match="trained in mode 'cut'.*resume in mode 'cut'"):
        Trainer(*gray_domains, tiny_config(), resume=tmp_path / "m.checkpoint.pt")


# ---------------------------------------------------------------------- refusals
def test_cut_between_unequal_channel_counts_is_refused_with_the_fix(tmp_path, gray_domains):
    rgb = np.stack([gray_domains[0]] * 3, axis=-1)
    with pytest.raises(ConfigError, match=r"mode='cut'.*lambda_nce.*\(A has 3, B 1\)"):
        Trainer(rgb, gray_domains[1], _one_sided(), output=tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "cut", "best_metric": "cycle"}, "best_metric='cycle' needs F"),
        ({"mode": "one-sided"}, "mode='one-sided' is not valid; choose one of cyclegan, cut"),
    ],
)
def test_impossible_one_sided_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"train": settings})


def test_one_sided_modes_refuse_a_generator_patchnce_cannot_read():
    config = _one_sided("fastcut")
    config.model.generator = "unet_128"
    with pytest.raises(ConfigError, match="not a U-Net"):
        CycleGAN(config, torch.device("cpu"), DistributedContext())
