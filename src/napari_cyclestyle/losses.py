"""CycleGAN losses, the optional regularisers of issue 19, and the history pool."""

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
        original GAN log-likelihood). ``hinge``: for the discriminator
        ``relu(1 - prediction)`` on real and ``relu(1 + prediction)`` on fake targets,
        for the generator ``-prediction`` (Lim & Ye 2017, as with spectral norm in
        Miyato et al. 2018).
    """

    def __init__(self, gan_mode: str = "lsgan"):
        super().__init__()
        if gan_mode not in GAN_MODES:
            allowed = " or ".join(repr(mode) for mode in GAN_MODES)
            raise ValueError(f"gan_mode must be {allowed}, got {gan_mode!r}.")
        self.gan_mode = gan_mode

    def forward(
        self, prediction: Tensor, target_is_real: bool, for_discriminator: bool = True
    ) -> Tensor:
        """Return the loss of ``prediction`` (discriminator output) for the target.

        ``for_discriminator`` matters for the hinge loss only: the generator's loss
        (``for_discriminator=False``, target real) is ``-mean(prediction)``.
        """
        if self.gan_mode == "hinge":
            if not for_discriminator:
                return -prediction.mean()
            sign = -1.0 if target_is_real else 1.0
            return functional.relu(1.0 + sign * prediction).mean()
        target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
        if self.gan_mode == "lsgan":
            return functional.mse_loss(prediction, target)
        return functional.binary_cross_entropy_with_logits(prediction, target)


def cycle_loss(reconstructed: Tensor, original: Tensor) -> Tensor:
    """Mean absolute error ‖F(G(a)) − a‖₁ (or ‖G(F(b)) − b‖₁), averaged over pixels."""
    return functional.l1_loss(reconstructed, original)


def r1_penalty(prediction: Tensor, real: Tensor) -> Tensor:
    """``½ · E‖∇ₓD(x)‖²`` over real images ``x`` (Mescheder et al. 2018), differentiable.

    Parameters
    ----------
    prediction : Tensor
        The discriminator's output on ``real``, computed with ``real.requires_grad``.
    real : Tensor
        The real images ``(N, C, H, W)``.
    """
    (gradient,) = torch.autograd.grad(prediction.float().sum(), real, create_graph=True)
    return 0.5 * gradient.float().pow(2).flatten(1).sum(1).mean()


# Luminance weights of RGB (ITU-R BT.601); other channel counts use the channel mean.
_RGB_LUMINANCE = (0.299, 0.587, 0.114)
# SSIM's C3 = C2 / 2 with C2 = (0.03 · L)², for values in [-1, 1] (L = 2).
_STRUCTURE_C3 = (0.03 * 2) ** 2 / 2


def luminance(images: Tensor) -> Tensor:
    """``(N, 1, H, W)`` luminance: the one channel, BT.601 for RGB, else the mean."""
    if images.shape[1] == 3:
        weights = images.new_tensor(_RGB_LUMINANCE).view(1, 3, 1, 1)
        return (images * weights).sum(1, keepdim=True)
    return images.mean(1, keepdim=True)


def _gaussian_window(images: Tensor, size: int = 7, sigma: float = 1.5) -> Tensor:
    """Local means of ``(N, 1, H, W)`` images over a Gaussian window (reflect padded)."""
    coordinates = torch.arange(size, dtype=images.dtype, device=images.device) - size // 2
    kernel = torch.exp(-(coordinates**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = functional.pad(images, (size // 2,) * 4, mode="reflect")
    rows = functional.conv2d(padded, kernel.view(1, 1, 1, size))
    return functional.conv2d(rows, kernel.view(1, 1, size, 1))


def structure_loss(source: Tensor, output: Tensor) -> Tensor:
    """``1 − mean local correlation`` of the luminances of ``source`` and ``output``.

    The local correlation is SSIM's structure term ``(σ_xy + C3) / (σ_x σ_y + C3)`` over
    7×7 Gaussian windows (σ 1.5), with ``C3 = (0.03 · 2)² / 2`` for values in [-1, 1].
    It is invariant to any local gain and offset: about 0 for ``output = 2 · source +
    0.3`` and about 2 for ``output = −source``. Channel counts may differ.
    """
    x, y = luminance(source.float()), luminance(output.float())
    mean_x, mean_y = _gaussian_window(x), _gaussian_window(y)
    var_x = (_gaussian_window(x * x) - mean_x**2).clamp_min(0)
    var_y = (_gaussian_window(y * y) - mean_y**2).clamp_min(0)
    covariance = _gaussian_window(x * y) - mean_x * mean_y
    # The epsilon keeps the square root's gradient finite where a window is flat.
    spread = (var_x * var_y + 1e-12).sqrt()
    correlation = (covariance + _STRUCTURE_C3) / (spread + _STRUCTURE_C3)
    return 1.0 - correlation.mean()


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
