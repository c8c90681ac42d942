"""The two cycles of a step side by side on the CPU, the faster CPU layers, the heap."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from napari_cyclestyle import cyclegan
from napari_cyclestyle.config import ModelConfig
from napari_cyclestyle.heap import settle_malloc_thresholds
from napari_cyclestyle.model import build_network
from napari_cyclestyle.networks.layers import (
    TAP_PRODUCTS_MIN_CHANNELS,
    ImageOutputConv2d,
    InstanceNorm,
)
from napari_cyclestyle.side_by_side import SideBySide, pays_off
from napari_cyclestyle.trainer import Trainer

from .conftest import assert_trained_alike, network_weights, tiny_config


@pytest.fixture
def two_threads():
    """Two intra-op threads for the test (the suite runs on one), then one again."""
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


def _trained(tmp_path, domains, name: str, **settings) -> Trainer:
    config = tiny_config(**({"n_steps": 3, "n_steps_decay": 0, "precision": "fp32"} | settings))
    trainer = Trainer(*domains, config, output=tmp_path / f"{name}.safetensors")
    list(trainer.run())
    return trainer


def test_the_cycles_side_by_side_train_as_the_plain_step(
    tmp_path, gray_domains, two_threads, monkeypatch
):
    side_by_side = _trained(tmp_path, gray_domains, "side", n_steps=1)
    assert side_by_side.cyclegan.side_by_side is not None
    monkeypatch.setattr(cyclegan.CycleGAN, "_cycles_side_by_side", lambda self: False)
    plain = _trained(tmp_path, gray_domains, "plain", n_steps=1)
    assert plain.cyclegan.side_by_side is None
    # One step: the same gradients up to rounding (see assert_trained_alike).
    learning_rate = side_by_side.config.train.learning_rate
    assert_trained_alike(network_weights(plain), network_weights(side_by_side), learning_rate, 1)


def test_the_cycles_side_by_side_give_every_loss_and_train_reproducibly(
    tmp_path, gray_domains, two_threads
):
    settings = {"lambda_structure": 1.0, "lambda_r1": 1.0, "r1_every": 2}
    first = _trained(tmp_path, gray_domains, "first", **settings)
    second = _trained(tmp_path, gray_domains, "second", **settings)
    assert first.cyclegan.side_by_side is not None
    expected, actual = network_weights(first), network_weights(second)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    losses = first.cyclegan.training_step(
        *first.patches.sample(first.device, False), learning_rate=1e-4
    )
    assert set(losses) == set(first.cyclegan.loss_names)
    assert {"structure_A", "structure_B", "R1_A", "R1_B"} <= set(losses)
    assert all(torch.isfinite(loss) for loss in losses.values())


@pytest.mark.parametrize(
    "settings",
    [
        {"diff_augment": "color"},  # random numbers from torch's one stream
        {"compile": True},
        {"batched_forward": False},
        {"mode": "cut"},
    ],
)
def test_the_cycles_run_one_after_the_other_where_side_by_side_cannot(
    gray_domains, two_threads, settings
):
    trainer = Trainer(*gray_domains, tiny_config(**settings))
    assert trainer.cyclegan.side_by_side is None


def test_side_by_side_pays_off_only_for_small_generators_and_two_threads():
    small, wide = (build_network(ModelConfig(ngf=ngf), "G") for ngf in (4, 64))
    assert pays_off([small], threads=2)
    assert not pays_off([small], threads=1)
    assert not pays_off([small, wide], threads=2)


def test_side_by_side_workers_keep_their_threads_and_leave_the_process_its_count(two_threads):
    pair = SideBySide(2)
    assert pair.run(torch.get_num_threads, torch.get_num_threads) == (1, 1)
    assert torch.get_num_threads() == 2
    counts = []
    thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert counts == [2]  # a thread started later takes the process's count


def test_side_by_side_raises_a_workers_error_after_both_end(two_threads):
    finished = []

    def fails():
        raise ValueError("bad half")

    with pytest.raises(ValueError, match="bad half"):
        SideBySide(2).run(fails, lambda: finished.append(True))
    assert finished == [True]


def test_a_flop_counter_sees_the_work_of_both_halves(two_threads):
    from torch.utils.flop_counter import FlopCounterMode

    left, right = torch.ones(8, 16), torch.ones(16, 4)
    with FlopCounterMode(display=False) as counter:
        first, second = SideBySide(2).run(lambda: left @ right, lambda: right.T @ left.T)
    assert counter.get_total_flops() == 2 * (2 * 8 * 16 * 4)
    assert torch.equal(first, second.T)


@pytest.mark.numerics
def test_the_cpu_training_norm_computes_the_plain_norms_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 12, 10, requires_grad=True)
    ours, plain = InstanceNorm(5).train()(x), F.instance_norm(x)
    assert ours.is_contiguous()
    assert torch.allclose(ours, plain, atol=1e-5)
    gradient = torch.randn_like(plain)
    ours_gradient = torch.autograd.grad(ours, x, gradient)[0]
    assert torch.allclose(ours_gradient, torch.autograd.grad(plain, x, gradient)[0], atol=1e-5)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        InstanceNorm(5).train()(torch.randn(2, 5, 1, 1))  # as nn.InstanceNorm2d refuses it


@pytest.mark.numerics
@pytest.mark.parametrize("in_channels", [5, TAP_PRODUCTS_MIN_CHANNELS])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_cpu_training_image_convolution_computes_the_plain_values_and_gradients(
    in_channels, memory_format
):
    """Both CPU paths (channels-last kernels, tap products), on either input layout."""
    torch.manual_seed(0)
    conv = ImageOutputConv2d(in_channels, 3, kernel_size=7).train()
    x = torch.randn(3, in_channels, 12, 10).contiguous(memory_format=memory_format)
    x.requires_grad_()
    ours, plain = conv(x), F.conv2d(x, conv.weight, conv.bias)
    assert ours.shape == (3, 3, 6, 4) and ours.is_contiguous()
    assert torch.allclose(ours, plain, rtol=1e-4, atol=1e-5)
    gradient = torch.randn_like(plain)
    inputs = (x, conv.weight, conv.bias)
    ours_gradients = torch.autograd.grad(ours, inputs, gradient)
    for mine, theirs in zip(
        ours_gradients, torch.autograd.grad(plain, inputs, gradient), strict=True
    ):
        assert mine.shape == theirs.shape
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-4)


def test_the_malloc_thresholds_are_set_on_linux_with_glibc():
    import platform
    import sys

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert settle_malloc_thresholds() is expected
