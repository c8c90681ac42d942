"""The optional training methods of a CycleGAN (issue 19) and their state.

:class:`CycleGANTerms` owns what the methods add to
:meth:`napari_cyclestyle.cyclegan.CycleGAN.training_step`: the structure term and
PatchNCE (with its heads) in the generators' loss, R1 in the discriminators', DiffAugment
on the discriminators' inputs, and the generators' weight averages (EMA). Each is off when
its setting is (``lambda_structure``, ``lambda_nce``, ``lambda_r1``, ``diff_augment``,
``ema_decay``), except PatchNCE in the one-sided modes (``mode`` cut and fastcut), where
it is G's loss beside the adversarial one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .augment import diff_augment
from .config import Config, check_nce_channels
from .ema import WeightAverage
from .losses import r1_penalty, structure_loss
from .patchnce import PatchNCE, choose_layers

if TYPE_CHECKING:
    from .training_networks import Networks

__all__ = [
    "NCE_IDENTITY_LOSS_NAME",
    "NCE_LOSS_NAMES",
    "R1_LOSS_NAMES",
    "STRUCTURE_LOSS_NAMES",
    "CycleGANTerms",
]

# The losses of the optional methods, present when their weight is not 0 (a one-sided
# run, without F and D_A, has only G's and D_B's: structure_A, R1_B, NCE_A).
STRUCTURE_LOSS_NAMES = ("structure_A", "structure_B")
R1_LOSS_NAMES = ("R1_A", "R1_B")
NCE_LOSS_NAMES = ("NCE_A", "NCE_B")
# CUT's identity term (mode cut): G's PatchNCE of b → G(b).
NCE_IDENTITY_LOSS_NAME = "NCE_identity_B"

# The structure term per generator: its loss, the domain of its input, its output.
_STRUCTURE_TERMS = (("structure_A", "A", "fake_B"), ("structure_B", "B", "fake_A"))
# PatchNCE's terms per mode: loss, generator, the domain of its input, its output; and
# the share of the weight each gets (CUT averages its two terms, as the authors' code).
_NCE_TERMS = {
    "cyclegan": (("NCE_A", "G", "A", "fake_B"), ("NCE_B", "F", "B", "fake_A")),
    "cut": (("NCE_A", "G", "A", "fake_B"), (NCE_IDENTITY_LOSS_NAME, "G", "B", "idt_B")),
    "fastcut": (("NCE_A", "G", "A", "fake_B"),),
}
_NCE_SHARE = {"cyclegan": 1.0, "cut": 0.5, "fastcut": 1.0}


class CycleGANTerms:
    """The optional methods' terms of one CycleGAN, and their state.

    Parameters
    ----------
    config : Config
        The model and the training settings.
    networks : Networks
        The networks as built (on the device); a one-sided run has no F and no D_A.
    device : torch.device
        Where PatchNCE's heads go.

    Attributes
    ----------
    averages : dict
        G's and F's :class:`~napari_cyclestyle.ema.WeightAverage` by name (``ema_decay``
        above 0; G's alone without F), else empty.
    patch_nce : dict
        PatchNCE of G and of F by name, with their heads (PatchNCE's weight above 0:
        ``lambda_nce``, or any one-sided mode), else empty.
    nce_weight : float
        The weight of each PatchNCE term: the mode's (``TrainConfig.nce_weight``), halved
        in mode cut, whose two terms are averaged.
    loss_names : tuple of str
        The losses the methods in use add.

    Raises
    ------
    ConfigError
        For PatchNCE between domains with different channel counts, or with a generator
        it cannot read.
    """

    def __init__(self, config: Config, networks: Networks, device: torch.device) -> None:
        train = config.train
        self.train = train
        generators = {
            name: network for name, network in networks.named().items() if name in ("G", "F")
        }
        self.averages = (
            {name: WeightAverage(network, train.ema_decay) for name, network in generators.items()}
            if train.ema_decay > 0
            else {}
        )
        self.patch_nce: dict[str, PatchNCE] = {}
        self._nce_terms = _NCE_TERMS[train.mode] if train.nce_weight else ()
        self.nce_weight = train.nce_weight * _NCE_SHARE[train.mode]
        if self._nce_terms:
            check_nce_channels(config)
            self.patch_nce = {
                name: PatchNCE(
                    network, choose_layers(network, train.nce_layer_indices), train.nce_patches
                ).to(device)
                for name, network in generators.items()
            }
        one_sided = train.one_sided
        self._structure_terms = _STRUCTURE_TERMS[:1] if one_sided else _STRUCTURE_TERMS
        self.loss_names = (
            (tuple(term[0] for term in self._structure_terms) if train.lambda_structure else ())
            + ((R1_LOSS_NAMES[1:] if one_sided else R1_LOSS_NAMES) if train.lambda_r1 else ())
            + tuple(term[0] for term in self._nce_terms)
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
        sources: tuple[str, ...] = ("A", "B"),
    ) -> tuple[str, ...]:
        """Add the structure and PatchNCE terms of the generators' outputs from
        ``sources`` to ``losses``; return their names."""
        train, names = self.train, ()
        reals = {"A": real_a, "B": real_b}
        if train.lambda_structure > 0:
            weight = train.lambda_structure
            for name, source, output in self._structure_terms:
                if source not in sources:
                    continue
                losses[name] = structure_loss(reals[source], out[output]) * weight
                names += (name,)
        named = networks.named()
        for name, generator, source, output in self._nce_terms:
            if source not in sources:
                continue
            patch_nce = self.patch_nce[generator]
            losses[name] = (
                patch_nce(named[generator], reals[source], out[output]) * self.nce_weight
            )
            names += (name,)
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
