"""Held-out validation: fixed patches of both domains and what the networks make of them.

A :class:`ValidationSet` holds a few patches of each domain, chosen once from images
kept out of training (and, for paired data, the true B of each A patch). :func:`measure`
runs G, F and the discriminators (a one-sided run: G and D_B) on them, without gradients
and in eval mode, and returns plain numbers: the cycle errors, the discriminators'
realism scores, how varied and how structure-preserving the translations are, and with
paired data PSNR and SSIM to the truth. Measuring draws no random numbers, so a run
with validation trains exactly like one without.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as functional
from torch import nn

from .data import Domain

# Patches per network call while measuring (bounds the memory validation needs).
_CHUNK = 4
_SSIM_WINDOW, _SSIM_SIGMA = 11, 1.5

# What :func:`measure` returns, in this order (a one-sided run: the ``_B`` ones).
MEASURE_NAMES = (
    "cycle_A",
    "cycle_B",
    "realism_A",
    "realism_B",
    "diversity_A",
    "diversity_B",
    "structure_A",
    "structure_B",
)
# Per metric: whether higher is better (the best model keeps the best value).
HIGHER_IS_BETTER = {"cycle": False, "realism": True, "psnr": True, "ssim": True}


@dataclass
class ValidationSet:
    """Fixed, normalised ``(N, C, crop, crop)`` patches of each domain.

    Attributes
    ----------
    real_a, real_b : torch.Tensor
        The patches of domain A and domain B (on the CPU).
    truth_b : torch.Tensor or None
        The true B of each A patch (paired validation data), else None.
    held_out : bool
        Whether the patches come from images kept out of training (else they are fixed
        training patches, good only for the health watch).
    """

    real_a: torch.Tensor
    real_b: torch.Tensor
    truth_b: torch.Tensor | None = None
    held_out: bool = True

    @classmethod
    def build(
        cls,
        domain_a: Domain,
        domain_b: Domain,
        count: int,
        crop_size: int,
        seed: int,
        truth_b: Domain | None = None,
        held_out: bool = True,
    ) -> ValidationSet:
        """Choose ``count`` patches per domain once, from their own random stream.

        ``truth_b`` must hold one image of the shape of each of ``domain_a``'s; its
        patches are read at the A patches' positions.

        Raises
        ------
        ValueError
            If ``truth_b``'s images do not match ``domain_a``'s in number and shape.
        """
        if truth_b is not None:
            _check_paired(domain_a, truth_b)
        patches = []
        for slot, domain in enumerate((domain_a, domain_b)):
            rng = np.random.default_rng([seed, 54321, slot])
            positions = [domain.draw_position(rng, crop_size) for _ in range(count)]
            patches.append([domain.read_patch(p, crop_size) for p in positions])
            if slot == 0 and truth_b is not None:
                truth = np.stack([truth_b.read_patch(p, crop_size) for p in positions])
        return cls(
            *(torch.from_numpy(np.stack(found)) for found in patches),
            truth_b=torch.from_numpy(truth) if truth_b is not None else None,
            held_out=held_out,
        )

    @property
    def paired(self) -> bool:
        """Whether PSNR and SSIM to the truth can be measured."""
        return self.truth_b is not None


def resolve_metric(best_metric: str, paired: bool, one_sided: bool = False) -> str:
    """The metric ``best_metric`` names (``auto``: ``ssim`` if paired, else ``cycle``, or
    ``realism`` for a one-sided run, which has no cycle).

    Raises
    ------
    ValueError
        For ``psnr`` or ``ssim`` without paired validation data.
    """
    if best_metric == "auto":
        return "ssim" if paired else ("realism" if one_sided else "cycle")
    if best_metric in ("psnr", "ssim") and not paired:
        raise ValueError(
            f"best_metric={best_metric!r} needs paired validation data (the true B of "
            "the validation A images); choose 'cycle' or 'realism', or give the truth."
        )
    return best_metric


def score(measures: dict[str, float], metric: str) -> float:
    """The value of ``metric`` (see :data:`HIGHER_IS_BETTER`) in a :func:`measure` result:
    for ``cycle`` and ``realism`` the mean over the directions measured."""
    if metric in ("cycle", "realism"):
        values = [measures[key] for key in (f"{metric}_A", f"{metric}_B") if key in measures]
        return sum(values) / len(values)
    return measures[f"{metric}_B"]


def measure(
    generator_ab: nn.Module,
    generator_ba: nn.Module | None,
    discriminator_a: nn.Module | None,
    discriminator_b: nn.Module,
    validation: ValidationSet,
    gan_mode: str,
) -> dict[str, float]:
    """Run the networks on the validation patches and summarise what they make.

    Without F and D_A (a one-sided run) only what G and D_B show is measured: no cycle
    errors and none of the ``_A`` values.

    Returns
    -------
    dict
        ``cycle_A`` (mean ‖F(G(a)) − a‖₁) and ``cycle_B``; ``realism_A`` (how real
        D_A finds F(b), 0 to 1) and ``realism_B``; ``diversity_A`` (how much F(b)
        varies from patch to patch, relative to the real A patches; near 0 is mode
        collapse) and ``diversity_B``; ``structure_A`` (correlation of the luminance of
        b and F(b); negative is inverted content) and ``structure_B``; with paired
        data ``psnr_B`` (dB) and ``ssim_B`` of G(a) against the truth. All on the
        normalised [-1, 1] values.
    """
    device = next(generator_ab.parameters()).device
    networks = (generator_ab, generator_ba, discriminator_a, discriminator_b)
    networks = [network for network in networks if network is not None]
    with _evaluating(networks), torch.inference_mode():
        real_a, real_b = validation.real_a, validation.real_b
        fake_b = _apply(generator_ab, real_a, device)
        found = {
            "realism_B": _realism(_apply(discriminator_b, fake_b, device), gan_mode),
            "diversity_B": _diversity(fake_b, real_b),
            "structure_B": _structure(real_a, fake_b),
        }
        if generator_ba is not None and discriminator_a is not None:  # F's and the cycles'
            fake_a = _apply(generator_ba, real_b, device)
            found |= {
                "cycle_A": _mean_abs(_apply(generator_ba, fake_b, device), real_a),
                "cycle_B": _mean_abs(_apply(generator_ab, fake_a, device), real_b),
                "realism_A": _realism(_apply(discriminator_a, fake_a, device), gan_mode),
                "diversity_A": _diversity(fake_a, real_a),
                "structure_A": _structure(real_b, fake_a),
            }
        results = {name: found[name] for name in MEASURE_NAMES if name in found}
        if validation.truth_b is not None:
            truth = validation.truth_b
            mse = float(((fake_b - truth) ** 2).mean())
            results["psnr_B"] = 10 * math.log10(4.0 / max(mse, 1e-12))  # range 2: [-1, 1]
            results["ssim_B"] = _ssim(fake_b, truth)
    return results


@contextlib.contextmanager
def _evaluating(networks):
    """Eval mode for the networks (no dropout, batch norm's running statistics), then
    back to the modes they had."""
    modes = [network.training for network in networks]
    for network in networks:
        network.eval()
    try:
        yield
    finally:
        for network, mode in zip(networks, modes, strict=True):
            network.train(mode)


def _apply(network: nn.Module, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``network`` on ``batch`` a few patches at a time; the result float32 on the CPU."""
    outputs = [network(chunk.to(device)).float().cpu() for chunk in batch.split(_CHUNK)]
    return torch.cat(outputs)


def _mean_abs(first: torch.Tensor, second: torch.Tensor) -> float:
    return float((first - second).abs().mean())


def _realism(predictions: torch.Tensor, gan_mode: str) -> float:
    """How real the discriminator finds the fakes: its mean verdict in [0, 1]."""
    if gan_mode == "vanilla":
        predictions = torch.sigmoid(predictions)
    return float(predictions.clamp(0, 1).mean())


def _diversity(fakes: torch.Tensor, reals: torch.Tensor) -> float:
    """Per-pixel spread of the fakes over patches, relative to the real patches'."""
    if len(fakes) < 2:
        return 1.0
    spread_real = float(reals.std(dim=0).mean())
    return float(fakes.std(dim=0).mean()) / max(spread_real, 1e-6)


def _structure(inputs: torch.Tensor, outputs: torch.Tensor) -> float:
    """Mean correlation of the luminance (channel mean) of inputs and outputs, per patch."""
    first, second = (t.mean(dim=1).flatten(1) for t in (inputs, outputs))
    first = first - first.mean(dim=1, keepdim=True)
    second = second - second.mean(dim=1, keepdim=True)
    denominator = (first.norm(dim=1) * second.norm(dim=1)).clamp_min(1e-6)
    return float(((first * second).sum(dim=1) / denominator).mean())


def _ssim(first: torch.Tensor, second: torch.Tensor) -> float:
    """Structural similarity (Gaussian window, data range 2), averaged over channels."""
    coords = torch.arange(_SSIM_WINDOW, dtype=torch.float32) - _SSIM_WINDOW // 2
    gauss = torch.exp(-(coords**2) / (2 * _SSIM_SIGMA**2))
    gauss = gauss / gauss.sum()
    channels = first.shape[1]
    window = (gauss[:, None] * gauss[None, :]).expand(channels, 1, -1, -1)

    def blur(image: torch.Tensor) -> torch.Tensor:
        return functional.conv2d(image, window, groups=channels)

    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    mean_1, mean_2 = blur(first), blur(second)
    var_1 = blur(first * first) - mean_1**2
    var_2 = blur(second * second) - mean_2**2
    covariance = blur(first * second) - mean_1 * mean_2
    ssim = ((2 * mean_1 * mean_2 + c1) * (2 * covariance + c2)) / (
        (mean_1**2 + mean_2**2 + c1) * (var_1 + var_2 + c2)
    )
    return float(ssim.mean())


def _check_paired(domain_a: Domain, truth_b: Domain) -> None:
    shapes_a = [(s.layout.n_planes, s.layout.spatial_shape) for s in domain_a.sources]
    shapes_b = [(s.layout.n_planes, s.layout.spatial_shape) for s in truth_b.sources]
    if shapes_a != shapes_b:
        raise ValueError(
            "Paired validation needs one true B image of the same size for each "
            f"validation A image; got A (planes, size) {shapes_a} and B {shapes_b}."
        )
