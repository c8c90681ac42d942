"""DiffAugment: differentiable augmentations of discriminator inputs (Zhao et al. 2020).

The same random augmentations are applied to real and generated images before every
discriminator call, and are differentiable, so the generator learns through them while
the discriminator cannot memorise a small domain. The operations follow the authors'
``DiffAugment_pytorch.py`` (images in [-1, 1]); their random numbers come from torch's
generator of the images' device, which a checkpoint keeps, so resume stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional

from .choices import DIFF_AUGMENTS


def _color(x: Tensor) -> Tensor:
    """Random brightness (±0.5), saturation (×0–2) and contrast (×0.5–1.5) per image."""
    n = x.shape[0]
    x = x + (torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(n, 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + mean


def _translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to ``ratio`` of its size, filling with zeros."""
    n, _, height, width = x.shape
    shift_y, shift_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    dy = torch.randint(-shift_y, shift_y + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-shift_x, shift_x + 1, (n, 1, 1), device=x.device)
    batch, rows, columns = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(height, device=x.device),
        torch.arange(width, device=x.device),
        indexing="ij",
    )
    rows = torch.clamp(rows + dy + 1, 0, height + 1)
    columns = torch.clamp(columns + dx + 1, 0, width + 1)
    padded = functional.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[batch, rows, columns].permute(0, 3, 1, 2)


def _cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero a random square of ``ratio`` of the image's size in each image."""
    n, _, height, width = x.shape
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    offset_y = torch.randint(0, height + (1 - size_y % 2), (n, 1, 1), device=x.device)
    offset_x = torch.randint(0, width + (1 - size_x % 2), (n, 1, 1), device=x.device)
    batch, rows, columns = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(size_y, device=x.device),
        torch.arange(size_x, device=x.device),
        indexing="ij",
    )
    rows = torch.clamp(rows + offset_y - size_y // 2, 0, height - 1)
    columns = torch.clamp(columns + offset_x - size_x // 2, 0, width - 1)
    mask = torch.ones(n, height, width, dtype=x.dtype, device=x.device)
    mask[batch, rows, columns] = 0
    return x * mask.unsqueeze(1)


AUGMENTATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "color": _color,
    "translation": _translation,
    "cutout": _cutout,
}


def diff_augment(images: Tensor, policies: Sequence[str]) -> Tensor:
    """Apply the named augmentations, in order, to a batch ``(N, C, H, W)``.

    Parameters
    ----------
    images : Tensor
        Images in [-1, 1].
    policies : sequence of str
        Names from :data:`napari_cyclestyle.choices.DIFF_AUGMENTS`; empty returns
        ``images`` itself.
    """
    for policy in policies:
        images = AUGMENTATIONS[policy](images)
    return images


assert tuple(AUGMENTATIONS) == DIFF_AUGMENTS, "augment.py and choices.DIFF_AUGMENTS disagree"
