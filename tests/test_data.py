"""Domains from arrays, stacks, files, folders and lists; patch sampling."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_cyclestyle.config import TrainConfig
from napari_cyclestyle.data import Domain, PatchStreams
from napari_cyclestyle.distributed import DistributedContext


def test_patches_are_normalised_and_cover_every_plane_of_a_stack():
    stack = np.stack([np.full((40, 40), value, np.uint8) for value in (0, 128, 255)])
    domain = Domain(stack, "A")
    assert domain.n_channels == 1 and domain.norm.mode == "fixed"
    patches = domain.sample(np.random.default_rng(0), 60, 16)
    assert patches.shape == (60, 1, 16, 16) and patches.dtype == np.float32
    np.testing.assert_allclose(np.unique(patches), [-1.0, 128 / 127.5 - 1, 1.0], atol=1e-6)


def test_rgb_layers_and_uint16_domains_choose_sensible_normalisations():
    rgb = np.zeros((30, 30, 3), np.uint8)
    assert Domain(rgb).n_channels == 3
    fluorescence = np.random.default_rng(0).integers(100, 5000, (2, 30, 30)).astype(np.uint16)
    domain = Domain(fluorescence)
    assert domain.norm.mode == "percentile" and domain.dtype == np.uint16


def test_folder_of_tiffs_and_pngs_is_read(tmp_path):
    folder = tmp_path / "domain"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.zeros((20, 24), np.uint8))
    iio.imwrite(folder / "b.png", np.full((30, 20), 255, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    domain = Domain(folder, "B")
    assert len(domain.sources) == 2
    patches = domain.sample(np.random.default_rng(0), 8, 16)
    assert patches.min() == -1.0 and patches.max() == 1.0


def test_a_file_list_names_images_relative_to_itself(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((20, 20), np.uint16))
    tifffile.imwrite(tmp_path / "two.tif", np.ones((20, 20), np.uint16))
    listing = tmp_path / "list.txt"
    listing.write_text("one.tif\n\ntwo.tif\n")
    assert len(Domain(listing).sources) == 2


def test_images_smaller_than_the_crop_are_reflect_padded():
    small = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    patches = Domain(small).sample(np.random.default_rng(0), 2, 32, augment=False)
    assert patches.shape == (2, 1, 32, 32)
    np.testing.assert_array_equal(patches[0, 0, 12, :10], patches[0, 0, 10, :10])


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([], "has no images"),
        (["/does/not/exist"], "does not exist"),
        ([np.zeros((20, 20), np.uint8), np.zeros((20, 20, 3), np.uint8)], "mixes images with"),
        ([np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint16)], "mixes dtypes"),
        ([np.zeros(20, np.uint8)], "at least two spatial axes"),
    ],
)
def test_bad_domains_are_refused_with_a_clear_message(images, message):
    with pytest.raises(ValueError, match=message):
        Domain(images, "A")


def test_unreadable_image_file_is_named(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="broken.png"):
        Domain(broken)


def test_nan_in_training_images_is_refused():
    image = np.ones((20, 20), np.float32)
    image[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        Domain(image)


def test_a_batch_that_the_processes_cannot_share_is_refused():
    domain = Domain(np.zeros((40, 40), np.uint8))
    train = TrainConfig(batch_size=3, crop_size=16)
    with pytest.raises(ValueError, match="batch_size 3 is the global batch.*2 training"):
        PatchStreams(domain, domain, train, DistributedContext(rank=0, world_size=2))


def test_previews_come_back_in_each_domain_s_values():
    domain_a = Domain(np.full((40, 40), 200, np.uint8))
    domain_b = Domain(np.full((40, 40), 50, np.uint8))
    streams = PatchStreams(domain_a, domain_b, TrainConfig(crop_size=16), DistributedContext())

    def generate(real_a, real_b):  # G and F swap the two domains' images
        return real_b.numpy()[0], real_a.numpy()[0]

    preview = streams.preview(generate)
    assert preview["real_A"].shape == (1, 16, 16)
    np.testing.assert_allclose(preview["real_A"], 200, atol=1e-3)
    np.testing.assert_allclose(preview["fake_B"], 50, atol=1e-3)
    np.testing.assert_allclose(preview["fake_A"], 200, atol=1e-3)

    one_sided = streams.preview(lambda real_a, real_b: (real_b.numpy()[0], None))
    assert set(one_sided) == {"real_A", "fake_B"}
