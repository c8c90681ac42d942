"""The optimisation of a GAN's two sides: an Adam for the generators (with PatchNCE's
heads), one for the discriminators, and fp16's loss scale."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .config import TrainConfig


def parameters_of(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """What ``optimizer`` updates, in its order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


class Optimisers:
    """The generators' and the discriminators' Adam (fused on CPU and CUDA) and, in fp16,
    the gradient scaler they share.

    Parameters
    ----------
    generator_parameters, discriminator_parameters : iterable of torch.nn.Parameter
        What each optimiser updates.
    train : TrainConfig
        ``learning_rate``, ``beta1`` and ``beta2``.
    precision : str
        The precision training runs in (fp32, bf16 or fp16: fp16 scales the loss).
    device : torch.device
        Where the parameters are.
    """

    def __init__(
        self,
        generator_parameters: Iterable[torch.nn.Parameter],
        discriminator_parameters: Iterable[torch.nn.Parameter],
        train: TrainConfig,
        precision: str,
        device: torch.device,
    ) -> None:
        settings = {
            "lr": train.learning_rate,
            "betas": (train.beta1, train.beta2),
            "fused": device.type in ("cpu", "cuda"),
        }
        self.generators = torch.optim.Adam(list(generator_parameters), **settings)
        self.discriminators = torch.optim.Adam(list(discriminator_parameters), **settings)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def set_learning_rate(self, learning_rate: float) -> None:
        """Use ``learning_rate`` for every parameter from the next update on."""
        for optimizer in (self.generators, self.discriminators):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate

    def minimise(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """One update of ``optimizer``'s parameters down the gradient of ``loss``."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)

    def step_with(
        self, gradients: list[torch.Tensor | None], optimizer: torch.optim.Optimizer
    ) -> None:
        """One update of ``optimizer``'s parameters by ``gradients`` (one per parameter,
        in the optimiser's order; None for none), computed elsewhere (fp32 and bf16:
        without a loss scale)."""
        for parameter, gradient in zip(parameters_of(optimizer), gradients, strict=True):
            parameter.grad = gradient
        optimizer.step()

    def end_step(self) -> None:
        """After both sides' updates: let fp16's loss scale learn from the step."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """``optimizer_g``, ``optimizer_d`` and ``grad_scaler`` (empty outside fp16), as
        checkpoints hold them."""
        return {
            "optimizer_g": self.generators.state_dict(),
            "optimizer_d": self.discriminators.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (older checkpoints have no ``grad_scaler``)."""
        self.generators.load_state_dict(state["optimizer_g"])
        self.discriminators.load_state_dict(state["optimizer_d"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
