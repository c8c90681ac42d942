"""Losses against hand-computed values, and the history pool."""

import math

import pytest
import torch

from napari_cyclestyle.losses import GANLoss, ImagePool, cycle_loss


def test_lsgan_is_mean_squared_distance_to_the_target():
    prediction = torch.tensor([0.0, 0.5, 1.0, 2.0])
    # real target 1: (1 + 0.25 + 0 + 1) / 4; fake target 0: (0 + 0.25 + 1 + 4) / 4
    assert GANLoss("lsgan")(prediction, True).item() == pytest.approx(0.5625)
    assert GANLoss("lsgan")(prediction, False).item() == pytest.approx(1.3125)


def test_vanilla_is_binary_cross_entropy_on_logits():
    prediction = torch.tensor([0.0, 2.0])
    sigmoid_two = 1 / (1 + math.exp(-2.0))
    expected_real = (-math.log(0.5) - math.log(sigmoid_two)) / 2
    expected_fake = (-math.log(0.5) - math.log(1 - sigmoid_two)) / 2
    assert GANLoss("vanilla")(prediction, True).item() == pytest.approx(expected_real)
    assert GANLoss("vanilla")(prediction, False).item() == pytest.approx(expected_fake)


def test_unknown_gan_mode_is_refused():
    with pytest.raises(ValueError, match="gan_mode"):
        GANLoss("wgan")


def test_cycle_loss_is_mean_absolute_error():
    original = torch.zeros(1, 1, 2, 2)
    reconstructed = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])
    assert cycle_loss(reconstructed, original).item() == pytest.approx(2.5 / 4)


def test_pool_returns_new_images_until_full_then_mixes_history():
    pool = ImagePool(pool_size=3, generator=torch.Generator().manual_seed(0))
    first = torch.arange(3.0).reshape(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first)
    returned = torch.cat([pool.query(torch.full((1, 1, 1, 1), 10.0 + i)) for i in range(40)])
    values = set(returned.flatten().tolist())
    assert values & {0.0, 1.0, 2.0}, "stored images are sometimes returned"
    assert values & {10.0 + i for i in range(40)}, "new images are sometimes returned"
    assert len(pool.images) == 3


def test_pool_of_size_zero_passes_images_through():
    images = torch.randn(2, 3, 4, 4)
    assert torch.equal(ImagePool(0).query(images), images)


def test_pool_state_round_trip_continues_identically():
    pool = ImagePool(2, torch.Generator().manual_seed(1))
    for i in range(3):
        pool.query(torch.full((1, 1, 1, 1), float(i)))
    copy = ImagePool(2)
    copy.load_state_dict(pool.state_dict())
    for i in range(10):
        image = torch.full((1, 1, 1, 1), 100.0 + i)
        assert torch.equal(pool.query(image), copy.query(image))
