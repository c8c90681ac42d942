"""The CycleGAN being trained: four networks, their optimisers, losses, pools and precision.

:class:`CycleGAN` owns one optimisation step (:meth:`CycleGAN.training_step`, the
reference implementation's ``optimize_parameters``) and the state a checkpoint keeps of
it (:meth:`CycleGAN.state_dict`). The optional methods' terms and their state belong to
:class:`napari_cyclestyle.methods.CycleGANTerms`; the loop around the step (sampling,
schedule, events, saving) is :mod:`napari_cyclestyle.trainer`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import Config, TrainConfig
from .devices import ieee_float32, is_out_of_memory
from .distributed import DistributedContext, wrap
from .losses import GANLoss, ImagePool, cycle_loss
from .methods import NCE_LOSS_NAMES, R1_LOSS_NAMES, STRUCTURE_LOSS_NAMES, CycleGANTerms
from .model import build_discriminators, build_generators
from .networks import init_weights

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
# The optional methods' loss names (issue 19) are methods.py's, and importable from here.
__all__ = [
    "LOSS_NAMES",
    "NCE_LOSS_NAMES",
    "R1_LOSS_NAMES",
    "STRUCTURE_LOSS_NAMES",
    "CycleGAN",
    "Networks",
    "resolve_precision",
]


class _CompiledOrEager:
    """Calls ``torch.compile(network)``; if compiling fails, warns once and calls the
    network itself from then on (compilers fail in many ways: no C compiler, no
    Triton, an unsupported platform)."""

    def __init__(self, network: nn.Module, name: str) -> None:
        self.network, self.name = network, name
        self.compiled: Callable | None = torch.compile(network)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(batch)
            except Exception as error:  # any compiler failure
                if is_out_of_memory(error):
                    raise
                warnings.warn(
                    f"torch.compile could not compile {self.name} ({type(error).__name__}: "
                    f"{str(error)[:300]}); it trains uncompiled.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled = None
        return self.network(batch)


@dataclass
class Networks:
    """The four networks, as built (their state dicts are what files hold)."""

    generator_ab: nn.Module
    generator_ba: nn.Module
    discriminator_a: nn.Module
    discriminator_b: nn.Module

    def named(self) -> dict[str, nn.Module]:
        """Networks by the names checkpoints use."""
        return {
            "G": self.generator_ab,
            "F": self.generator_ba,
            "D_A": self.discriminator_a,
            "D_B": self.discriminator_b,
        }


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``"auto"`` stands for on ``device`` (bf16 or fp16 on CUDA, else fp32).

    Raises
    ------
    ValueError
        For ``"fp16"`` on a device other than CUDA.
    """
    on_cuda = device.type == "cuda"
    if precision == "auto":
        if not on_cuda:
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not on_cuda:
        raise ValueError("precision='fp16' needs a CUDA device; use 'fp32' or 'auto'.")
    return precision


def _build_networks(
    config: Config, device: torch.device, state: dict[str, dict[str, torch.Tensor]] | None
) -> Networks:
    """The four networks, initialised (or loaded from ``state``), on ``device``."""
    train, model = config.train, config.model
    networks = Networks(*build_generators(model), *build_discriminators(model))
    for network in networks.named().values():
        init_weights(network)
        network.to(device).train()
        if train.channels_last:
            network.to(memory_format=torch.channels_last)
    if state is not None:
        for name, network in networks.named().items():
            network.load_state_dict(state[name])
    return networks


def _called_networks(
    networks: Networks, train: TrainConfig, context: DistributedContext, device: torch.device
) -> Networks:
    """What the step calls: DistributedDataParallel wrappers under torchrun, compiled if
    ``train.compile``."""
    called = {name: wrap(network, context, device) for name, network in networks.named().items()}
    if train.compile:
        # R1 differentiates the discriminators' gradients (a double backward), which
        # torch.compile does not support: with lambda_r1 they run uncompiled.
        compiled = ("G", "F") if train.lambda_r1 > 0 else tuple(called)
        called = {
            name: _CompiledOrEager(network, name) if name in compiled else network
            for name, network in called.items()
        }
    return Networks(*called.values())


class CycleGAN:
    """G (A→B), F (B→A), D_A and D_B with their optimisers, losses and history pools.

    Parameters
    ----------
    config : Config
        The model (with the domains' channel counts) and the training settings.
    device : torch.device
        Where to train.
    context : DistributedContext
        This process's place in a ``torchrun`` run (one process: rank 0 of 1).
    networks : dict, optional
        State dicts of ``G``, ``F``, ``D_A`` and ``D_B`` to start from (a checkpoint's),
        loaded before the networks are wrapped for distribution or compiled.

    Raises
    ------
    ValueError
        For a precision the device cannot train in.
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
        self.networks = _build_networks(config, device, networks)
        self._called = _called_networks(self.networks, train, context, device)
        self.batched_forward = train.batched_forward and model.norm != "batch"
        self.use_identity = train.lambda_identity > 0 and model.channels_a == model.channels_b
        self.precision = resolve_precision(train.precision, device)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        # The optional methods: weight averages (what the model file and previews show),
        # PatchNCE's heads (trained with the generators), structure, R1, DiffAugment.
        self.terms = CycleGANTerms(config, self.networks, device)
        self.loss_names = LOSS_NAMES + self.terms.loss_names
        heads = self.terms.head_parameters()
        raw = self.networks
        fused = device.type in ("cpu", "cuda")
        betas = (train.beta1, train.beta2)
        self.optimizer_g = torch.optim.Adam(
            [*raw.generator_ab.parameters(), *raw.generator_ba.parameters(), *heads],
            train.learning_rate,
            betas,
            fused=fused,
        )
        self.optimizer_d = torch.optim.Adam(
            [*raw.discriminator_a.parameters(), *raw.discriminator_b.parameters()],
            train.learning_rate,
            betas,
            fused=fused,
        )
        self.gan_loss = GANLoss(train.gan_mode)
        rank = context.rank
        self.pool_a = ImagePool(
            train.pool_size, torch.Generator().manual_seed(train.seed + 2 * rank + 1)
        )
        self.pool_b = ImagePool(
            train.pool_size, torch.Generator().manual_seed(train.seed + 2 * rank + 2)
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
            Every loss of :attr:`loss_names` (:data:`LOSS_NAMES` and those of the
            methods in use) as a detached 0-d tensor on the device
            (reading them back is a host sync: the trainer does it every few steps).
        """
        self.updates += 1
        with ieee_float32() if self.precision == "fp32" else contextlib.nullcontext():
            return self._step(real_a, real_b, learning_rate)

    def _step(self, real_a, real_b, learning_rate: float) -> dict[str, torch.Tensor]:
        n, raw = self._called, self.networks
        train = self.config.train
        for optimizer in (self.optimizer_g, self.optimizer_d):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
        autocast = torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

        # Generators: fool the discriminators, close both cycles, keep identities.
        # The discriminators are frozen and called unwrapped: no gradient of theirs to sync.
        for network in (raw.discriminator_a, raw.discriminator_b):
            network.requires_grad_(False)
        with autocast:
            out = self._generate(real_a, real_b)
            losses: dict[str, torch.Tensor] = {}
            if self.use_identity:
                weight = train.lambda_identity
                losses["identity_A"] = (
                    cycle_loss(out["idt_A"], real_a) * train.lambda_cycle_a * weight
                )
                losses["identity_B"] = (
                    cycle_loss(out["idt_B"], real_b) * train.lambda_cycle_b * weight
                )
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
            names = _GENERATOR_LOSSES + self.terms.add_generator_terms(
                losses, raw, real_a, real_b, out
            )
            generator_total = sum(losses[name] for name in names)
        self.optimizer_g.zero_grad(set_to_none=True)
        self._backward_and_step(generator_total, self.optimizer_g)
        self.terms.update_averages(self.networks)

        # Discriminators: real images against a history of fakes (and R1 on the reals).
        for network in (raw.discriminator_a, raw.discriminator_b):
            network.requires_grad_(True)
        with_r1 = self.terms.r1_due(self.updates)
        with autocast:
            for name, r1_name, network, real, fake, pool in (
                ("D_A", "R1_A", n.discriminator_a, real_a, out["fake_A"], self.pool_a),
                ("D_B", "R1_B", n.discriminator_b, real_b, out["fake_B"], self.pool_b),
            ):
                if with_r1:
                    real = real.detach().requires_grad_(True)
                on_real, on_fake = self._discriminate(
                    network, self.terms.augment(real), self.terms.augment(pool.query(fake))
                )
                losses[name] = 0.5 * (self.gan_loss(on_real, True) + self.gan_loss(on_fake, False))
                self.terms.add_r1(losses, r1_name, on_real, real, with_r1)
        discriminator_total = losses["D_A"] + losses["D_B"]
        if with_r1:
            discriminator_total = discriminator_total + losses["R1_A"] + losses["R1_B"]
        self.optimizer_d.zero_grad(set_to_none=True)
        self._backward_and_step(discriminator_total, self.optimizer_d)
        if self.scaler is not None:
            self.scaler.update()
        return {name: losses[name].detach() for name in self.loss_names}

    def _generate(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """fake_B = G(a), rec_A = F(G(a)), fake_A = F(b), rec_B = G(F(b)) and identities.

        With ``batched_forward`` each generator runs on the concatenation of its inputs
        (per-image norms make that the same mathematics in fewer, larger operations).
        """
        n = self._called
        out: dict[str, torch.Tensor] = {}
        if self.batched_forward:
            inputs = [real_b, real_a] if self.use_identity else [real_b]
            f_outputs = n.generator_ba(torch.cat(inputs)).split(len(real_b))
            out["fake_A"] = f_outputs[0]
            inputs = [real_a, out["fake_A"]] + ([real_b] if self.use_identity else [])
            g_outputs = n.generator_ab(torch.cat(inputs)).split(len(real_a))
            out["fake_B"], out["rec_B"] = g_outputs[0], g_outputs[1]
            out["rec_A"] = n.generator_ba(out["fake_B"])
            if self.use_identity:
                out["idt_A"], out["idt_B"] = f_outputs[1], g_outputs[2]
        else:
            out["fake_B"] = n.generator_ab(real_a)
            out["rec_A"] = n.generator_ba(out["fake_B"])
            out["fake_A"] = n.generator_ba(real_b)
            out["rec_B"] = n.generator_ab(out["fake_A"])
            if self.use_identity:
                out["idt_A"] = n.generator_ba(real_a)
                out["idt_B"] = n.generator_ab(real_b)
        return out

    def _discriminate(self, network: nn.Module, real: torch.Tensor, fake: torch.Tensor):
        """The discriminator's predictions on real and fake images (one call if batched)."""
        if self.batched_forward:
            return network(torch.cat([real, fake])).split(len(real))
        return network(real), network(fake)

    def _backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)

    @property
    def averages(self) -> dict:
        """G's and F's weight averages by name (``ema_decay``), else empty."""
        return self.terms.averages

    # ------------------------------------------------------------------ outputs
    def shown_generators(self) -> tuple[nn.Module, nn.Module]:
        """``G`` and ``F`` as the model file and previews show them: the weight
        averages with ``ema_decay``, else the networks being trained."""
        if averages := self.terms.averages:
            return averages["G"].network, averages["F"].network
        return self.networks.generator_ab, self.networks.generator_ba

    @torch.inference_mode()
    def preview(self, real_a: torch.Tensor, real_b: torch.Tensor) -> tuple[np.ndarray, ...]:
        """``G(real_a)[0]`` and ``F(real_b)[0]`` as float32 ``(C, Y, X)`` arrays (by the
        weight averages with ``ema_decay``)."""
        fakes = []
        for network, real in zip(self.shown_generators(), (real_a, real_b), strict=True):
            training = network.training
            network.eval()
            fakes.append(network(real.to(self.device)).float().cpu().numpy()[0])
            network.train(training)
        return tuple(fakes)

    def generators(self) -> tuple[nn.Module, nn.Module]:
        """Copies of ``G`` and ``F`` as they are now (the weight averages with
        ``ema_decay``), on the CPU and in eval mode.

        Building them draws no number from torch's random stream that training uses
        (their initial weights are overwritten anyway), so saving a model mid-run, as
        the best model is, leaves the training as it would have been.
        """
        with torch.random.fork_rng(devices=[]):
            copies = build_generators(self.config.model)
        for copy, network in zip(copies, self.shown_generators(), strict=True):
            copy.load_state_dict(network.state_dict())
            copy.eval()
        return copies

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the model being trained, the same on every rank:
        ``networks`` (by name), ``optimizer_g``, ``optimizer_d``, ``grad_scaler``
        (fp16's loss scale, learnt over the steps so far; empty in other precisions) and,
        with ``ema_decay``, ``ema`` (the weight averages of G and F by name), with
        ``lambda_nce``, ``nce_heads`` (PatchNCE's heads of G and F by name)."""
        state = {
            "networks": {
                name: network.state_dict() for name, network in self.networks.named().items()
            },
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else {},
        }
        return self.terms.state_dict(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the optimisers, the loss scale and the weight averages of
        :meth:`state_dict` (the networks' weights are given to the constructor, before
        wrapping). A checkpoint without averages (``ema_decay`` turned on when resuming)
        starts them from the weights resumed; one without PatchNCE heads, with new ones."""
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        if self.scaler is not None and state.get("grad_scaler"):  # older checkpoints: none
            self.scaler.load_state_dict(state["grad_scaler"])
        self.terms.load_state_dict(state)

    def pool_state_dict(self) -> dict[str, Any]:
        """This rank's history pools (each rank keeps its own)."""
        return {"A": self.pool_a.state_dict(), "B": self.pool_b.state_dict()}

    def load_pool_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`pool_state_dict` output."""
        self.pool_a.load_state_dict(state["A"], self.device)
        self.pool_b.load_state_dict(state["B"], self.device)
