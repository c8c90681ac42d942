"""CycleGAN losses and the history pool of generated images."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from .choices import GAN_MODES


class GANLoss(nn.Module):
    """Adversarial loss against a real (1) or fake (0) target.

    Parameters
    ----------
    gan_mode : str
        ``lsgan``: mean squared error to the target (Mao et al., the CycleGAN paper's
        choice). ``vanilla``: binary cross-entropy on the discriminator's logits (the
        original GAN log-likelihood).
    """

    def __init__(self, gan_mode: str = "lsgan"):
        super().__init__()
        if gan_mode not in GAN_MODES:
            allowed = " or ".join(repr(mode) for mode in GAN_MODES)
            raise ValueError(f"gan_mode must be {allowed}, got {gan_mode!r}.")
        self.gan_mode = gan_mode

    def forward(self, prediction: Tensor, target_is_real: bool) -> Tensor:
        """Return the loss of ``prediction`` (discriminator output) for the target."""
        target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
        if self.gan_mode == "lsgan":
            return functional.mse_loss(prediction, target)
        return functional.binary_cross_entropy_with_logits(prediction, target)


def cycle_loss(reconstructed: Tensor, original: Tensor) -> Tensor:
    """Mean absolute error ‖F(G(a)) − a‖₁ (or ‖G(F(b)) − b‖₁), averaged over pixels."""
    return functional.l1_loss(reconstructed, original)


class ImagePool:
    """History of generated images shown to a discriminator (Shrivastava et al. 2017).

    Each image of a new batch is returned as is while the pool fills; afterwards, with
    probability 0.5 it is swapped for a random stored image (which the new one replaces).

    Parameters
    ----------
    pool_size : int
        Images kept; 0 turns the pool off (``query`` returns its input).
    generator : torch.Generator, optional
        Random source, so that training can be resumed exactly.
    """

    def __init__(self, pool_size: int = 50, generator: torch.Generator | None = None):
        self.pool_size = pool_size
        self.images: list[Tensor] = []
        self.generator = generator if generator is not None else torch.Generator()

    def query(self, images: Tensor) -> Tensor:
        """Return a batch of the same size mixing new and stored images (detached)."""
        if self.pool_size == 0:
            return images.detach()
        chosen = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image)
                chosen.append(image)
            elif torch.rand((), generator=self.generator).item() > 0.5:
                index = int(torch.randint(self.pool_size, (), generator=self.generator))
                chosen.append(self.images[index].clone())
                self.images[index] = image
            else:
                chosen.append(image)
        return torch.cat(chosen, 0)

    def state_dict(self) -> dict:
        """Stored images and RNG state, for checkpoints."""
        return {
            "images": [image.cpu() for image in self.images],
            "rng": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        """Restore :meth:`state_dict` output."""
        self.images = [image.to(device) if device else image for image in state["images"]]
        self.generator.set_state(state["rng"])
