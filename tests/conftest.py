"""Shared fixtures: tiny configurations and small unpaired domains."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cyclestyle.config import Config, ModelConfig, TrainConfig


def tiny_config(**train_overrides) -> Config:
    """A configuration that trains in well under a second per step on a CPU."""
    train = {
        "n_steps": 4,
        "n_steps_decay": 2,
        "crop_size": 32,
        "batch_size": 1,
        "preview_every": 2,
        "checkpoint_every": 0,
        "log_every": 1,
        "device": "cpu",
    }
    train.update(train_overrides)
    return Config(
        model=ModelConfig(generator="resnet_6blocks", ngf=4, ndf=4),
        train=TrainConfig(**train),
    )


@pytest.fixture
def gray_domains() -> tuple[np.ndarray, np.ndarray]:
    """Two small unpaired uint8 grayscale domains (B is brighter and smoother)."""
    rng = np.random.default_rng(0)
    domain_a = rng.integers(0, 200, (3, 48, 56), dtype=np.uint8)
    domain_b = (rng.integers(0, 55, (2, 40, 64)) + 200).astype(np.uint8)
    return domain_a, domain_b
