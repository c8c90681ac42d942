"""A CycleGAN step as its two cycles side by side on the CPU.

The cycle from A (G(a), F(G(a)), G's identity G(b), D_B on G(a) and on its reals) and the
cycle from B (the same with the roles swapped) share the networks' weights but no
computation, so each can run forward and backward on a thread of its own
(:class:`~napari_cyclestyle.side_by_side.SideBySide`). Their gradients are summed in a
fixed order, so a run stays reproducible; the optimisers then step as in the plain step.
It is the same step as :meth:`napari_cyclestyle.cyclegan.CycleGAN.training_step`'s: the
same losses of the same images, and gradients equal up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .losses import cycle_loss
from .optimisers import parameters_of

if TYPE_CHECKING:
    from .cyclegan import CycleGAN


@dataclass(frozen=True)
class CycleHalf:
    """One of the two cycles: from ``source`` to ``target`` and back, and the
    discriminator of ``target``."""

    source: str
    target: str
    forward: str  # the network names of :meth:`Networks.named`
    backward: str
    judge: str
    adversarial: str  # the forward generator's adversarial loss

    def names(self) -> dict[str, str]:
        """This half's losses (the structure term and R1 are the methods')."""
        return {
            "cycle": f"cycle_{self.source}",
            "identity": f"identity_{self.target}",
            "discriminator": self.judge,
            "r1": f"R1_{self.target}",
        }


HALVES = (
    CycleHalf("A", "B", "G", "F", "D_B", "G_adversarial"),
    CycleHalf("B", "A", "F", "G", "D_A", "F_adversarial"),
)


def step_side_by_side(
    cyclegan: CycleGAN, real_a: torch.Tensor, real_b: torch.Tensor
) -> dict[str, torch.Tensor]:
    """One training step of ``cyclegan`` with its two cycles run at once (the learning
    rate is set); return every loss, detached."""
    reals = {"A": real_a, "B": real_b}
    with_r1 = cyclegan.terms.r1_due(cyclegan.updates)
    first, second = cyclegan.side_by_side.run(
        *(lambda half=half: _half_step(cyclegan, half, reals, with_r1) for half in HALVES)
    )
    optimisers = cyclegan.optimisers

    def update_generators() -> None:
        optimisers.step_with(_summed(first[1], second[1]), optimisers.generators)
        cyclegan.terms.update_averages(cyclegan.networks)

    results = zip(HALVES, (first, second), strict=True)
    by_judge = {half.judge: result[2] for half, result in results}

    def update_discriminators() -> None:  # in the optimiser's order: D_A's, then D_B's
        optimisers.step_with(by_judge["D_A"] + by_judge["D_B"], optimisers.discriminators)

    cyclegan.side_by_side.run(update_generators, update_discriminators)
    losses = first[0] | second[0]
    return {name: losses[name] for name in cyclegan.loss_names}


def _summed(first: list, second: list) -> list:
    """Two halves' gradients of the same parameters, summed (None where neither has one)."""
    return [
        a if b is None else b if a is None else a + b for a, b in zip(first, second, strict=True)
    ]


def _half_step(cyclegan: CycleGAN, half: CycleHalf, reals: dict, with_r1: bool):
    """One half's losses (detached), its gradients of the generators' parameters and of
    its discriminator's, in the optimisers' order."""
    train, named, names = cyclegan.config.train, cyclegan.networks.named(), half.names()
    forward, backward, judge = named[half.forward], named[half.backward], named[half.judge]
    real, other = reals[half.source], reals[half.target]
    count = len(real)
    inputs = [real, other] if cyclegan.use_identity else [real]
    outputs = forward(torch.cat(inputs)).split(count)
    fake = outputs[0]
    out = {f"fake_{half.target}": fake}
    losses = {
        half.adversarial: cyclegan.gan_loss(judge(fake), True, for_discriminator=False),
        names["cycle"]: cycle_loss(backward(fake), real) * _cycle_weight(train, half.source),
    }
    if cyclegan.use_identity:
        weight = _cycle_weight(train, half.target) * train.lambda_identity
        losses[names["identity"]] = cycle_loss(outputs[1], other) * weight
    else:
        losses[names["identity"]] = real.new_zeros(())
    summed = list(losses)
    summed += cyclegan.terms.add_generator_terms(
        losses, cyclegan.networks, reals["A"], reals["B"], out, sources=(half.source,)
    )
    generator_parameters = parameters_of(cyclegan.optimisers.generators)
    generator_gradients = torch.autograd.grad(
        sum(losses[name] for name in summed), generator_parameters, allow_unused=True
    )

    # The discriminator: this half's reals against a history of its fakes (and R1).
    target = other.detach().requires_grad_(True) if with_r1 else other
    fake = cyclegan.pools[half.target].query(fake.detach())
    on_real, on_fake = cyclegan.discriminate(judge, target, fake)
    gan = cyclegan.gan_loss
    losses[names["discriminator"]] = 0.5 * (gan(on_real, True) + gan(on_fake, False))
    cyclegan.terms.add_r1(losses, names["r1"], on_real, target, with_r1)
    judged = [names["discriminator"]] + ([names["r1"]] if with_r1 else [])
    discriminator_gradients = torch.autograd.grad(
        sum(losses[name] for name in judged), list(judge.parameters())
    )
    return (
        {name: loss.detach() for name, loss in losses.items()},
        list(generator_gradients),
        list(discriminator_gradients),
    )


def _cycle_weight(train, domain: str) -> float:
    return train.lambda_cycle_a if domain == "A" else train.lambda_cycle_b
