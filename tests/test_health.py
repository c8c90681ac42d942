"""The health watch: each warning fires on a run rigged to show it, and only once."""

from __future__ import annotations

import numpy as np
import torch

from napari_cyclestyle._sample_data import sample_domains
from napari_cyclestyle.config import Config, ModelConfig, TrainConfig
from napari_cyclestyle.health import HealthWatch
from napari_cyclestyle.trainer import Trainer

from .conftest import tiny_config

HEALTHY = {"G_adversarial": 0.5, "F_adversarial": 0.5, "D_A": 0.25, "D_B": 0.25}
HEALTHY |= {"cycle_A": 1.0, "cycle_B": 1.0, "identity_A": 0.3, "identity_B": 0.3}


def _rigged_run(tmp_path, domains, losses_at=None, generator=None, **settings) -> list:
    """Run with a stand-in step returning ``losses_at(step)`` (no training), and G's
    forward replaced by ``generator``; return every warning the events carry."""
    config = tiny_config(log_every=1, preview_every=0, **settings)
    trainer = Trainer(*domains, config, output=tmp_path / "rigged.safetensors")

    def step(real_a, real_b, learning_rate):
        values = (losses_at or (lambda _: HEALTHY))(trainer.step + 1)
        # the methods' terms (structure, on by default) stay at a healthy constant
        return {name: torch.tensor(values.get(name, 0.1)) for name in trainer.cyclegan.loss_names}

    trainer.cyclegan.training_step = step
    if generator is not None:  # G as validation sees it: its weight average by default
        trainer.cyclegan.shown_generators()[0].forward = generator
    return [warning for event in trainer.run() for warning in event.warnings]


def test_a_discriminator_that_wins_outright_is_reported_once(tmp_path, gray_domains):
    def losses(step):  # D_B near 0 from step 10 on while G's adversarial loss climbs
        if step < 10:
            return HEALTHY
        return HEALTHY | {"D_B": 0.001, "G_adversarial": 0.5 + 0.005 * step}

    warnings = _rigged_run(tmp_path, gray_domains, losses, n_steps=90, n_steps_decay=0)
    assert [w.kind for w in warnings] == ["discriminator_wins"]
    assert warnings[0].step >= 60 and "D_B" in warnings[0].problem
    assert "learning rate" in warnings[0].advice and "Try:" in str(warnings[0])


def test_cycle_loss_spikes_that_keep_growing_are_reported(tmp_path, gray_domains):
    spikes = {10: 6.0, 20: 9.0, 30: 13.0, 40: 18.0}  # cycle_B adds 1

    def losses(step):
        return HEALTHY | {"cycle_A": spikes.get(step, 1.0)}

    warnings = _rigged_run(tmp_path, gray_domains, losses, n_steps=50, n_steps_decay=0)
    assert [(w.kind, w.step) for w in warnings] == [("cycle_spikes", 40)]


def test_spikes_that_do_not_grow_are_not_reported():
    watch = HealthWatch(total_steps=200)
    for step in range(1, 200):
        cycle = 8.0 if step % 10 == 0 else 1.0 + 0.1 * np.sin(step)
        assert watch.observe(step, HEALTHY | {"cycle_A": cycle}) == []


def test_a_generator_forced_to_a_constant_is_reported_as_mode_collapse(tmp_path, gray_domains):
    def constant(batch):
        return torch.zeros_like(batch)

    warnings = _rigged_run(
        tmp_path, gray_domains, generator=constant, validation_every=2, validation_fraction=0.4
    )
    assert [w.kind for w in warnings] == ["mode_collapse"]
    assert "G's outputs" in warnings[0].problem


def test_an_inverted_generator_is_reported_as_content_inversion(tmp_path, gray_domains):
    def inverted(batch):
        return -batch

    # Without held-out data the watch measures on fixed training patches.
    warnings = _rigged_run(tmp_path, gray_domains, generator=inverted, validation_every=2)
    assert [w.kind for w in warnings] == ["content_inversion"]
    assert "anti-correlated" in warnings[0].problem


def test_each_kind_of_warning_is_given_once():
    watch = HealthWatch(total_steps=10)
    collapsed = {"diversity_B": 0.0, "structure_B": 0.5}
    given = [watch.observe(step, measures=collapsed) for step in range(1, 10)]
    assert [len(found) for found in given] == [0, 1, 0, 0, 0, 0, 0, 0, 0]


def test_a_healthy_run_on_the_sample_data_raises_no_warning(tmp_path):
    domain_a, domain_b = sample_domains(size=96)
    config = Config(
        model=ModelConfig(generator="resnet_6blocks", ngf=8, ndf=8),
        train=TrainConfig(
            n_steps=20, n_steps_decay=20, crop_size=32, log_every=1, preview_every=0,
            checkpoint_every=0, device="cpu", validation_fraction=0.25, validation_every=10,
        ),
    )  # fmt: skip
    trainer = Trainer(domain_a, domain_b, config, output=tmp_path / "sample.safetensors")
    events = list(trainer.run())
    assert [str(w) for e in events for w in e.warnings] == []
    assert sum(e.validation is not None for e in events) == 4
