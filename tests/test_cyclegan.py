"""The model being trained (cyclegan.py), the checkpoint type, and the trainer's seams."""

from __future__ import annotations

import torch

from napari_cyclestyle.checkpoint import TrainingCheckpoint
from napari_cyclestyle.cyclegan import LOSS_NAMES, STRUCTURE_LOSS_NAMES, CycleGAN
from napari_cyclestyle.distributed import DistributedContext
from napari_cyclestyle.trainer import Trainer

from .conftest import tiny_config


def test_a_training_step_returns_every_loss_and_moves_the_weights():
    config = tiny_config()
    config.model.channels_a = config.model.channels_b = 1
    torch.manual_seed(0)
    cyclegan = CycleGAN(config, torch.device("cpu"), DistributedContext())
    before = {k: v.clone() for k, v in cyclegan.networks.generator_ab.state_dict().items()}
    batch = torch.rand(1, 1, 32, 32) * 2 - 1
    losses = cyclegan.training_step(batch, batch.flip(-1), learning_rate=1e-3)
    assert set(losses) == {*LOSS_NAMES, *STRUCTURE_LOSS_NAMES}  # structure: on by default
    after = cyclegan.networks.generator_ab.state_dict()
    assert any(not torch.equal(before[key], after[key]) for key in before)
    state = set(cyclegan.state_dict())
    assert state == {
        "networks",
        "optimizer_g",
        "optimizer_d",
        "grad_scaler",
        "ema",
    }  # EMA: default


def test_the_trainer_leaves_the_callers_config_as_it_was(tmp_path, gray_domains):
    config = tiny_config()
    before = config.to_dict()
    trainer = Trainer(*gray_domains, config, output=tmp_path / "m.safetensors")
    assert config.to_dict() == before  # channels 3 as given; the data has 1
    assert (trainer.config.model.channels_a, trainer.config.model.channels_b) == (1, 1)


def test_the_model_is_built_again_only_when_the_weights_changed(tmp_path, gray_domains):
    trainer = Trainer(*gray_domains, tiny_config(), output=tmp_path / "m.safetensors")
    first = trainer.model
    assert trainer.model is first
    run = trainer.run()
    next(run)
    trained = trainer.model
    assert trained is not first and trained is trainer.model
    assert trained.info["steps"] == 1 and first.info["steps"] == 0
    run.close()


def test_a_cheap_read_gives_the_step_and_settings_of_a_checkpoint(tmp_path, gray_domains):
    config = tiny_config(n_steps=3, n_steps_decay=0)
    trainer = Trainer(*gray_domains, config, output=tmp_path / "m.safetensors")
    list(trainer.run())
    step, settings = TrainingCheckpoint.read_settings(trainer.checkpoint_path)
    assert step == 3 and settings == trainer.config
    assert TrainingCheckpoint.load(trainer.checkpoint_path).config == trainer.config
