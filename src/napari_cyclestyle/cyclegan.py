"""The CycleGAN being trained: four networks, their optimisers, losses, pools and precision.

:class:`CycleGAN` owns one optimisation step (:meth:`CycleGAN.training_step`, the
reference implementation's ``optimize_parameters``) and the state a checkpoint keeps of
it (:meth:`CycleGAN.state_dict`). In a one-sided mode (``TrainConfig.mode`` cut or
fastcut: CUT, Park et al. 2020) it trains G and D_B alone, with PatchNCE instead of the
cycle. The optional methods' terms and their state belong to
:class:`napari_cyclestyle.methods.CycleGANTerms`; the loop around the step (sampling,
schedule, events, saving) is :mod:`napari_cyclestyle.trainer`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import Config
from .cycle_halves import step_side_by_side
from .devices import ieee_float32
from .distributed import DistributedContext
from .heap import settle_malloc_thresholds
from .losses import GANLoss, ImagePool, cycle_loss
from .methods import (
    NCE_IDENTITY_LOSS_NAME,
    NCE_LOSS_NAMES,
    R1_LOSS_NAMES,
    STRUCTURE_LOSS_NAMES,
    CycleGANTerms,
)
from .model import build_network
from .optimisers import Optimisers
from .side_by_side import SideBySide, pays_off
from .training_networks import Networks, build_networks, called_networks, resolve_precision

# Every loss the step computes; events, logs and model provenance follow this list.
LOSS_NAMES = (
    "G_adversarial",
    "F_adversarial",
    "cycle_A",
    "cycle_B",
    "identity_A",
    "identity_B",
    "D_A",
    "D_B",
)
_GENERATOR_LOSSES = LOSS_NAMES[:6]
# A one-sided run's (mode cut or fastcut: G and D_B alone); PatchNCE's terms, which it
# always has, come with the methods' (NCE_A, and in mode cut NCE_identity_B).
ONE_SIDED_LOSS_NAMES = ("G_adversarial", "D_B")
# The optional methods' loss names (issue 19) are methods.py's, and importable from here.
__all__ = [
    "LOSS_NAMES",
    "NCE_IDENTITY_LOSS_NAME",
    "NCE_LOSS_NAMES",
    "ONE_SIDED_LOSS_NAMES",
    "R1_LOSS_NAMES",
    "STRUCTURE_LOSS_NAMES",
    "CycleGAN",
    "Networks",
    "resolve_precision",
]  # Networks and resolve_precision are training_networks.py's


class CycleGAN:
    """G (A→B), F (B→A), D_A and D_B with their optimisers, losses and history pools; in
    a one-sided mode (``mode`` cut or fastcut) G and D_B alone.

    Parameters
    ----------
    config : Config
        The model (with the domains' channel counts) and the training settings.
    device : torch.device
        Where to train.
    context : DistributedContext
        This process's place in a ``torchrun`` run (one process: rank 0 of 1).
    networks : dict, optional
        State dicts of ``G``, ``F``, ``D_A`` and ``D_B`` (one-sided: ``G`` and ``D_B``)
        to start from (a checkpoint's), loaded before the networks are wrapped for
        distribution or compiled.

    Raises
    ------
    ValueError
        For a precision the device cannot train in.
    ConfigError
        For PatchNCE (``lambda_nce``, a one-sided mode) with unequal channel counts or a
        generator it cannot read.
    """

    def __init__(
        self,
        config: Config,
        device: torch.device,
        context: DistributedContext,
        networks: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> None:
        train, model = config.train, config.model
        self.config, self.device, self.context = config, device, context
        # Training steps begun (a resumed trainer sets those before): the weights change
        # with each, and lazy R1 counts them.
        self.updates = 0
        self.networks = build_networks(config, device, networks)
        self._called = called_networks(self.networks, train, context, device)
        self.batched_forward = train.batched_forward and model.norm != "batch"
        self.use_identity = (
            not train.one_sided
            and train.lambda_identity > 0
            and model.channels_a == model.channels_b
        )
        self.precision = resolve_precision(train.precision, device)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        # The optional methods: weight averages (what the model file and previews show),
        # PatchNCE's heads (trained with the generators), structure, R1, DiffAugment.
        self.terms = CycleGANTerms(config, self.networks, device)
        own = ONE_SIDED_LOSS_NAMES if train.one_sided else LOSS_NAMES
        self.loss_names = own + self.terms.loss_names
        raw = self.networks
        self.optimisers = Optimisers(
            [
                *(p for network in raw.generators() for p in network.parameters()),
                *self.terms.head_parameters(),
            ],
            [p for network in raw.discriminators() for p in network.parameters()],
            train,
            self.precision,
            device,
        )
        self.gan_loss = GANLoss(train.gan_mode)
        seed = train.seed + 2 * context.rank
        self.pools = {
            domain: ImagePool(train.pool_size, torch.Generator().manual_seed(seed + offset))
            for domain, offset in (("A", 1), ("B", 2))
        }
        if device.type == "cpu":
            settle_malloc_thresholds()
        # On the CPU, the two cycles side by side where that pays (cycle_halves.py).
        self.side_by_side = (
            SideBySide(torch.get_num_threads()) if self._cycles_side_by_side() else None
        )

    def _cycles_side_by_side(self) -> bool:
        """Whether steps run the two cycles at once: a batched fp32 CycleGAN on the CPU,
        in one process, uncompiled, that draws no random number in the step (no dropout,
        DiffAugment or PatchNCE, whose draws from torch's one stream would interleave),
        with generators small enough for it to pay (:func:`side_by_side.pays_off`)."""
        train = self.config.train
        return (
            self.device.type == "cpu"
            and self.context.world_size == 1
            and self.batched_forward
            and self.precision == "fp32"
            and not (train.one_sided or train.compile or train.augment_policies)
            and not (self.config.model.dropout or self.terms.patch_nce)
            and pays_off(self.networks.generators(), torch.get_num_threads())
        )

    # ------------------------------------------------------------------ one step
    def training_step(
        self, real_a: torch.Tensor, real_b: torch.Tensor, learning_rate: float
    ) -> dict[str, torch.Tensor]:
        """Update the generators, then the discriminators, on one batch of each domain.

        Parameters
        ----------
        real_a, real_b : torch.Tensor
            ``(N, C, H, W)`` batches of domain A and domain B patches on the device.
        learning_rate : float
            The learning rate of this step (all four networks).

        Returns
        -------
        dict
            Every loss of :attr:`loss_names` (:data:`LOSS_NAMES`, or one-sided
            :data:`ONE_SIDED_LOSS_NAMES`, and those of the methods in use) as a detached
            0-d tensor on the device
            (reading them back is a host sync: the trainer does it every few steps).
        """
        self.updates += 1
        if self.side_by_side is not None:
            self.optimisers.set_learning_rate(learning_rate)
            return step_side_by_side(self, real_a, real_b)
        with ieee_float32() if self.precision == "fp32" else contextlib.nullcontext():
            return self._step(real_a, real_b, learning_rate)

    def _step(self, real_a, real_b, learning_rate: float) -> dict[str, torch.Tensor]:
        n, raw, optimisers = self._called, self.networks, self.optimisers
        optimisers.set_learning_rate(learning_rate)
        autocast = torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

        # Generators: fool the discriminators, close both cycles, keep identities (one-sided:
        # G fools D_B, and PatchNCE keeps content). The discriminators are frozen and
        # called unwrapped: no gradient of theirs to sync.
        for network in raw.discriminators():
            network.requires_grad_(False)
        with autocast:
            out, losses, names = self._generator_losses(real_a, real_b)
            names += self.terms.add_generator_terms(losses, raw, real_a, real_b, out)
            generator_total = sum(losses[name] for name in names)
        optimisers.minimise(generator_total, optimisers.generators)
        self.terms.update_averages(self.networks)

        # Discriminators: real images against a history of fakes (and R1 on the reals).
        for network in raw.discriminators():
            network.requires_grad_(True)
        with_r1 = self.terms.r1_due(self.updates)
        judged = (
            ("D_A", "R1_A", n.discriminator_a, real_a, "fake_A", self.pools["A"]),
            ("D_B", "R1_B", n.discriminator_b, real_b, "fake_B", self.pools["B"]),
        )
        judged = [entry for entry in judged if entry[2] is not None]  # one-sided: no D_A
        with autocast:
            for name, r1_name, network, real, fake, pool in judged:
                if with_r1:
                    real = real.detach().requires_grad_(True)
                on_real, on_fake = self.discriminate(
                    network, self.terms.augment(real), self.terms.augment(pool.query(out[fake]))
                )
                losses[name] = 0.5 * (self.gan_loss(on_real, True) + self.gan_loss(on_fake, False))
                self.terms.add_r1(losses, r1_name, on_real, real, with_r1)
        names = [entry[0] for entry in judged] + [entry[1] for entry in judged if with_r1]
        discriminator_total = sum(losses[name] for name in names)
        optimisers.minimise(discriminator_total, optimisers.discriminators)
        optimisers.end_step()
        return {name: losses[name].detach() for name in self.loss_names}

    def _generator_losses(
        self, real_a: torch.Tensor, real_b: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], tuple[str, ...]]:
        """The generators' outputs, their own losses and the names of those summed:
        CycleGAN's adversarial, cycle and identity losses, or in a one-sided mode G's
        adversarial loss (PatchNCE and the other methods' terms are added after)."""
        train, raw = self.config.train, self.networks
        if train.one_sided:
            generator, batched = self._called.generator_ab, self.batched_forward
            out = one_sided_outputs(generator, real_a, real_b, train.mode == "cut", batched)
            judged = raw.discriminator_b(self.terms.augment(out["fake_B"]))
            losses = {"G_adversarial": self.gan_loss(judged, True, for_discriminator=False)}
            return out, losses, ("G_adversarial",)
        out = cycle_outputs(self._called, real_a, real_b, self.use_identity, self.batched_forward)
        losses: dict[str, torch.Tensor] = {}
        if self.use_identity:
            weight = train.lambda_identity
            losses["identity_A"] = cycle_loss(out["idt_A"], real_a) * train.lambda_cycle_a * weight
            losses["identity_B"] = cycle_loss(out["idt_B"], real_b) * train.lambda_cycle_b * weight
        else:
            losses["identity_A"] = losses["identity_B"] = real_a.new_zeros(())
        for name, network, fake in (
            ("G_adversarial", raw.discriminator_b, out["fake_B"]),
            ("F_adversarial", raw.discriminator_a, out["fake_A"]),
        ):
            judged = network(self.terms.augment(fake))
            losses[name] = self.gan_loss(judged, True, for_discriminator=False)
        losses["cycle_A"] = cycle_loss(out["rec_A"], real_a) * train.lambda_cycle_a
        losses["cycle_B"] = cycle_loss(out["rec_B"], real_b) * train.lambda_cycle_b
        return out, losses, _GENERATOR_LOSSES

    def discriminate(self, network: nn.Module, real: torch.Tensor, fake: torch.Tensor):
        """The discriminator's predictions on real and fake images (one call if batched)."""
        if self.batched_forward:
            return network(torch.cat([real, fake])).split(len(real))
        return network(real), network(fake)

    @property
    def averages(self) -> dict:
        """G's and F's weight averages by name (``ema_decay``; G's alone without F), else
        empty."""
        return self.terms.averages

    # ------------------------------------------------------------------ outputs
    def shown_generators(self) -> tuple[nn.Module, nn.Module | None]:
        """``G`` and ``F`` (None in a one-sided run) as the model file and previews show
        them: the weight averages with ``ema_decay``, else the networks being trained."""
        averages = self.terms.averages
        return tuple(
            averages[name].network if name in averages else network
            for name, network in (
                ("G", self.networks.generator_ab),
                ("F", self.networks.generator_ba),
            )
        )

    @torch.inference_mode()
    def preview(
        self, real_a: torch.Tensor, real_b: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``G(real_a)[0]`` and ``F(real_b)[0]`` (None without F) as float32 ``(C, Y, X)``
        arrays (by the weight averages with ``ema_decay``)."""
        fakes = []
        for network, real in zip(self.shown_generators(), (real_a, real_b), strict=True):
            if network is None:
                fakes.append(None)
                continue
            training = network.training
            network.eval()
            fakes.append(network(real.to(self.device)).float().cpu().numpy()[0])
            network.train(training)
        return tuple(fakes)

    def generators(self) -> tuple[nn.Module, nn.Module | None]:
        """Copies of ``G`` and ``F`` (None in a one-sided run) as they are now (the
        weight averages with ``ema_decay``), on the CPU and in eval mode.

        Building them draws no number from torch's random stream that training uses
        (their initial weights are overwritten anyway), so saving a model mid-run, as
        the best model is, leaves the training as it would have been.
        """
        copies = []
        for name, network in zip(("G", "F"), self.shown_generators(), strict=True):
            if network is None:
                copies.append(None)
                continue
            with torch.random.fork_rng(devices=[]):
                copy = build_network(self.config.model, name)
            copy.load_state_dict(network.state_dict())
            copies.append(copy.eval())
        return tuple(copies)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the model being trained, the same on every rank:
        ``networks`` (by name: those the mode trains), ``optimizer_g``, ``optimizer_d``,
        ``grad_scaler`` (fp16's loss scale, learnt over the steps so far; empty in other
        precisions) and, with ``ema_decay``, ``ema`` (the weight averages of G and F by
        name), with PatchNCE (``lambda_nce``, a one-sided mode), ``nce_heads``
        (PatchNCE's heads of G and F by name; G's alone without F)."""
        named = self.networks.named().items()
        state = {"networks": {name: network.state_dict() for name, network in named}}
        return self.terms.state_dict(state | self.optimisers.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the optimisers, the loss scale and the weight averages of
        :meth:`state_dict` (the networks' weights are given to the constructor, before
        wrapping). A checkpoint without averages (``ema_decay`` turned on when resuming)
        starts them from the weights resumed; one without PatchNCE heads, with new ones."""
        self.optimisers.load_state_dict(state)
        self.terms.load_state_dict(state)

    def pool_state_dict(self) -> dict[str, Any]:
        """This rank's history pools (each rank keeps its own)."""
        return {domain: pool.state_dict() for domain, pool in self.pools.items()}

    def load_pool_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`pool_state_dict` output."""
        for domain, pool in self.pools.items():
            pool.load_state_dict(state[domain], self.device)


def one_sided_outputs(
    generator, real_a: torch.Tensor, real_b: torch.Tensor, identity: bool, batched: bool
) -> dict[str, torch.Tensor]:
    """fake_B = G(a) and, with ``identity`` (mode cut), idt_B = G(b) for PatchNCE's
    identity term (with ``batched`` one call of G on both, as CUT's code does)."""
    if not identity:
        return {"fake_B": generator(real_a)}
    if batched:
        fake_b, idt_b = generator(torch.cat([real_a, real_b])).split(len(real_a))
    else:
        fake_b, idt_b = generator(real_a), generator(real_b)
    return {"fake_B": fake_b, "idt_B": idt_b}


def cycle_outputs(
    called: Networks, real_a: torch.Tensor, real_b: torch.Tensor, identity: bool, batched: bool
) -> dict[str, torch.Tensor]:
    """fake_B = G(a), rec_A = F(G(a)), fake_A = F(b), rec_B = G(F(b)) and, with
    ``identity``, idt_A = F(a) and idt_B = G(b), by the ``called`` networks.

    With ``batched`` each generator runs on the concatenation of its inputs (per-image
    norms make that the same mathematics in fewer, larger operations).
    """
    g, f = called.generator_ab, called.generator_ba
    out: dict[str, torch.Tensor] = {}
    if batched:
        f_outputs = f(torch.cat([real_b, real_a] if identity else [real_b])).split(len(real_b))
        out["fake_A"] = f_outputs[0]
        inputs = [real_a, out["fake_A"]] + ([real_b] if identity else [])
        g_outputs = g(torch.cat(inputs)).split(len(real_a))
        out["fake_B"], out["rec_B"] = g_outputs[0], g_outputs[1]
        out["rec_A"] = f(out["fake_B"])
        if identity:
            out["idt_A"], out["idt_B"] = f_outputs[1], g_outputs[2]
    else:
        out["fake_B"] = g(real_a)
        out["rec_A"] = f(out["fake_B"])
        out["fake_A"] = f(real_b)
        out["rec_B"] = g(out["fake_A"])
        if identity:
            out["idt_A"] = f(real_a)
            out["idt_B"] = g(real_b)
    return out
