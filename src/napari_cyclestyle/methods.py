"""The optional training methods of a CycleGAN (issue 19) and their state.

:class:`CycleGANTerms` owns what the methods add to
:meth:`napari_cyclestyle.cyclegan.CycleGAN.training_step`: the structure term and
PatchNCE (with its heads) in the generators' loss, R1 in the discriminators', DiffAugment
on the discriminators' inputs, and the generators' weight averages (EMA). Each is off when
its setting is (``lambda_structure``, ``lambda_nce``, ``lambda_r1``, ``diff_augment``,
``ema_decay``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .augment import diff_augment
from .config import Config
from .ema import WeightAverage
from .losses import r1_penalty, structure_loss
from .patchnce import PatchNCE, choose_layers

if TYPE_CHECKING:
    from .cyclegan import Networks

__all__ = ["NCE_LOSS_NAMES", "R1_LOSS_NAMES", "STRUCTURE_LOSS_NAMES", "CycleGANTerms"]

# The losses of the optional methods, present when their weight is not 0.
STRUCTURE_LOSS_NAMES = ("structure_A", "structure_B")
R1_LOSS_NAMES = ("R1_A", "R1_B")
NCE_LOSS_NAMES = ("NCE_A", "NCE_B")


class CycleGANTerms:
    """The optional methods' terms of one CycleGAN, and their state.

    Parameters
    ----------
    config : Config
        The model and the training settings.
    networks : Networks
        The four networks as built (on the device).
    device : torch.device
        Where PatchNCE's heads go.

    Attributes
    ----------
    averages : dict
        G's and F's :class:`~napari_cyclestyle.ema.WeightAverage` by name (``ema_decay``
        above 0), else empty.
    patch_nce : dict
        PatchNCE of G and of F by name, with their heads (``lambda_nce`` above 0), else
        empty.
    loss_names : tuple of str
        The losses the methods in use add.

    Raises
    ------
    ValueError
        For PatchNCE between domains with different channel counts, or with a generator
        it cannot read.
    """

    def __init__(self, config: Config, networks: Networks, device: torch.device) -> None:
        train, model = config.train, config.model
        self.train = train
        self.averages = (
            {
                "G": WeightAverage(networks.generator_ab, train.ema_decay),
                "F": WeightAverage(networks.generator_ba, train.ema_decay),
            }
            if train.ema_decay > 0
            else {}
        )
        self.patch_nce: dict[str, PatchNCE] = {}
        if train.lambda_nce:
            if model.channels_a != model.channels_b:
                raise ValueError(
                    f"PatchNCE (lambda_nce) embeds a generator's output with its own "
                    f"encoder, so both domains need the same channel count (A has "
                    f"{model.channels_a}, B {model.channels_b}); lambda_structure keeps "
                    "content between any counts."
                )
            self.patch_nce = {
                name: PatchNCE(
                    network, choose_layers(network, train.nce_layer_indices), train.nce_patches
                ).to(device)
                for name, network in (("G", networks.generator_ab), ("F", networks.generator_ba))
            }
        self.loss_names = (
            (STRUCTURE_LOSS_NAMES if train.lambda_structure > 0 else ())
            + (R1_LOSS_NAMES if train.lambda_r1 > 0 else ())
            + (NCE_LOSS_NAMES if train.lambda_nce > 0 else ())
        )

    def head_parameters(self) -> list[nn.Parameter]:
        """PatchNCE's heads' parameters (trained with the generators)."""
        return [p for patch_nce in self.patch_nce.values() for p in patch_nce.parameters()]

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """A discriminator's input under the DiffAugment policy (itself when off)."""
        policies = self.train.augment_policies
        return diff_augment(images, policies) if policies else images

    def add_generator_terms(
        self,
        losses: dict[str, torch.Tensor],
        networks: Networks,
        real_a: torch.Tensor,
        real_b: torch.Tensor,
        out: dict[str, torch.Tensor],
    ) -> tuple[str, ...]:
        """Add the structure and PatchNCE terms to ``losses``; return their names."""
        train, names = self.train, ()
        if train.lambda_structure > 0:
            weight = train.lambda_structure
            losses["structure_A"] = structure_loss(real_a, out["fake_B"]) * weight
            losses["structure_B"] = structure_loss(real_b, out["fake_A"]) * weight
            names += STRUCTURE_LOSS_NAMES
        if self.patch_nce:
            weight = train.lambda_nce
            for name, key, network, real, fake in (
                ("NCE_A", "G", networks.generator_ab, real_a, out["fake_B"]),
                ("NCE_B", "F", networks.generator_ba, real_b, out["fake_A"]),
            ):
                losses[name] = self.patch_nce[key](network, real, fake) * weight
            names += NCE_LOSS_NAMES
        return names

    def update_averages(self, networks: Networks) -> None:
        """Move the weight averages toward the generators' new weights."""
        for name, average in self.averages.items():
            average.update(networks.named()[name])

    def r1_due(self, updates: int) -> bool:
        """Whether step ``updates`` adds R1 (lazily, every ``r1_every`` steps)."""
        return self.train.lambda_r1 > 0 and updates % self.train.r1_every == 0

    def add_r1(
        self,
        losses: dict[str, torch.Tensor],
        name: str,
        on_real: torch.Tensor,
        real: torch.Tensor,
        due: bool,
    ) -> None:
        """Add R1 on the reals as ``name`` when ``due`` (weighted to match its laziness);
        with R1 on, a zero on other steps."""
        if due:
            losses[name] = r1_penalty(on_real, real) * (self.train.lambda_r1 * self.train.r1_every)
        elif self.train.lambda_r1 > 0:
            losses[name] = real.new_zeros(())

    def state_dict(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with ``ema`` (the weight averages by name, with ``ema_decay``) and
        ``nce_heads`` (PatchNCE's heads by name, with ``lambda_nce``)."""
        if self.averages:
            state["ema"] = {name: average.state_dict() for name, average in self.averages.items()}
        if self.patch_nce:
            state["nce_heads"] = {name: nce.state_dict() for name, nce in self.patch_nce.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` added; averages or heads a checkpoint lacks
        (turned on when resuming) start from the weights resumed, or new."""
        saved = state.get("ema") or {}
        for name, average in self.averages.items():
            if name in saved:
                average.load_state_dict(saved[name])
        heads = state.get("nce_heads") or {}
        for name, patch_nce in self.patch_nce.items():
            if name in heads:
                patch_nce.load_state_dict(heads[name])
