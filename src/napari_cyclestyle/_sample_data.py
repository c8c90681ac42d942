"""Bundled sample domains: grayscale "brightfield" images and RGB "stained" images.

Both domains are made on the fly from images that scikit-image ships (nothing is
downloaded). Domain B is rendered from *other* images than domain A with a
Beer-Lambert stain model (an H&E-like pink/purple), so the pair is unpaired, and the
mapping A→B ("virtual staining") is simple enough to learn on a CPU in a minute.

This module has no napari import: the CLI demo and tests use it too. The npe2 sample
data commands are the ``*_layers`` functions.
"""

from __future__ import annotations

import numpy as np

SAMPLE_SIZE = 256
# Optical densities of the stain per RGB channel: absorbs green most (pink/purple).
STAIN_OPTICAL_DENSITY = np.array([0.45, 1.35, 0.55])
_DOMAIN_A_IMAGES = ("camera", "brick", "grass", "gravel")
_DOMAIN_B_IMAGES = ("moon", "text", "coins", "page")


def stain(gray: np.ndarray) -> np.ndarray:
    """Render a grayscale uint8 image as an RGB "stained" uint8 image.

    Dark pixels take up much stain, bright ones little (Beer-Lambert):
    ``rgb = 255 · exp(−(1 − gray/255) · optical_density)``.
    """
    darkness = 1.0 - gray.astype(np.float32)[..., None] / 255.0
    rgb = 255.0 * np.exp(-darkness * 2.0 * STAIN_OPTICAL_DENSITY)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _tiles(names: tuple[str, ...], size: int) -> list[np.ndarray]:
    from skimage import data
    from skimage.transform import resize

    tiles = []
    for name in names:
        image = getattr(data, name)()
        if image.ndim == 3:
            image = image[..., :3].mean(-1).astype(np.uint8)
        if min(image.shape) < size:
            scale = size / min(image.shape)
            shape = (round(image.shape[0] * scale), round(image.shape[1] * scale))
            image = (resize(image, shape, preserve_range=True)).astype(np.uint8)
        tiles.append(image[:size, :size])
    return tiles


def sample_domains(size: int = SAMPLE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Return the unpaired sample domains as stacks.

    Returns
    -------
    domain_a : ndarray, uint8, shape (4, size, size)
        Grayscale "brightfield" images.
    domain_b : ndarray, uint8, shape (4, size, size, 3)
        RGB "stained" images rendered from four other images.
    """
    domain_a = np.stack(_tiles(_DOMAIN_A_IMAGES, size))
    domain_b = np.stack([stain(tile) for tile in _tiles(_DOMAIN_B_IMAGES, size)])
    return domain_a, domain_b


def sample_domains_layers() -> list[tuple]:
    """npe2 sample data: the two domains as napari image layers."""
    domain_a, domain_b = sample_domains()
    return [
        (domain_a, {"name": "domain A (brightfield)"}, "image"),
        (domain_b, {"name": "domain B (stained)", "rgb": True}, "image"),
    ]
