"""Shared fixtures: tiny configurations and small unpaired domains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cyclestyle.config import Config, ModelConfig, TrainConfig

# The tests' networks are tiny: one thread is as fast, and never oversubscribes the
# CPU when other processes (torchrun ranks, CLI subprocesses) run beside the tests.
torch.set_num_threads(1)

# A test parametrised over DEVICES also runs on a CUDA GPU where there is one (the
# device checks of a GPU machine); elsewhere its CUDA case is skipped.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


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


def assert_trained_alike(expected: dict, actual: dict, learning_rate: float, steps: int) -> None:
    """Assert two runs' weights agree within float tolerance *as Adam sees it*.

    Adam moves every parameter by about ±learning_rate per step whatever the size of
    its gradient, so a gradient that is zero up to rounding (the bias of a conv before
    an instance norm, which the norm removes) takes a random sign and a full step.
    Hence: every weight agrees within 2·lr per step, and all but a tiny fraction of
    the conv weights (not biases) agree to 1e-5.
    """
    assert expected.keys() == actual.keys()
    bound = 2 * learning_rate * steps + 1e-6
    mismatched = total = 0
    for key, value in expected.items():
        difference = (actual[key].float() - value.float()).abs()
        assert difference.max() <= bound, f"{key} differs by {difference.max():.3g}"
        if key.endswith("weight") and value.ndim == 4:
            mismatched += int((difference > 1e-5).sum())
            total += value.numel()
    assert mismatched / total < 0.01, f"{mismatched} of {total} weights differ"


def train_straight_and_resumed(tmp_path, domains, config: Config, stop_at: int = 3):
    """Two trainers of ``config``: one trained straight through, one stopped after
    ``stop_at`` steps and resumed from its checkpoint; returns them when both are done."""
    from napari_cyclestyle.trainer import Trainer

    straight = Trainer(*domains, config, output=tmp_path / "straight.safetensors")
    list(straight.run())
    first = Trainer(*domains, config, output=tmp_path / "resumed.safetensors")
    for event in first.run():
        if event.step == stop_at:
            first.stop()
    resumed = Trainer(
        *domains,
        config,
        output=tmp_path / "resumed.safetensors",
        resume=tmp_path / "resumed.checkpoint.pt",
    )
    assert resumed.step == stop_at
    steps = [event.step for event in resumed.run()]
    assert steps == list(range(stop_at + 1, config.train.total_steps + 1))
    return straight, resumed


def network_weights(trainer) -> dict[str, torch.Tensor]:
    """Copies of the four networks' weights, keyed ``<network>.<key>``."""
    n = trainer.networks
    return {
        f"{name}.{key}": value.clone()
        for name, network in (
            ("G", n.generator_ab),
            ("F", n.generator_ba),
            ("D_A", n.discriminator_a),
            ("D_B", n.discriminator_b),
        )
        for key, value in network.state_dict().items()
    }


@pytest.fixture
def make_napari_viewer(make_napari_viewer):
    """napari's fixture, with the widgets' triton guard set once a viewer exists.

    Building a viewer loads the OpenGL driver's LLVM, after which importing triton
    (torch does on its first optimiser) crashes the process; the widgets guard against
    that, and so must any test that makes a viewer before later tests train.
    """
    from napari_cyclestyle._widgets._startup import avoid_llvm_clash

    def make(*args, **kwargs):
        viewer = make_napari_viewer(*args, **kwargs)
        avoid_llvm_clash()
        return viewer

    return make


@pytest.fixture
def tf32_convolutions():
    """cuDNN's float32 convolutions set to TF32 (its default) for the test; the user's
    setting is put back afterwards."""
    conv = torch.backends.cudnn.conv
    users = conv.fp32_precision
    conv.fp32_precision = "tf32"
    yield conv
    conv.fp32_precision = users
