"""An exponential moving average of a network's weights (generator weight averaging)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """A copy of a network whose parameters follow an exponential moving average.

    After each update ``t`` (counted from 0) the average moves as ``average ← d ·
    average + (1 − d) · weights`` with ``d = min(decay, (1 + t) / (10 + t))``: the
    ramp (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``) lets the
    average forget the random initial weights within the first steps. Buffers (batch
    norm's running statistics) are copied, not averaged.

    Parameters
    ----------
    network : nn.Module
        The network being trained; the average starts as a copy of it, in eval mode.
    decay : float
        The decay in (0, 1).
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.network = copy.deepcopy(network).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """Move the average toward ``network``'s current weights."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, weight in zip(self.network.parameters(), network.parameters(), strict=True):
            average.lerp_(weight.detach(), 1.0 - decay)
        for average, buffer in zip(self.network.buffers(), network.buffers(), strict=True):
            average.copy_(buffer)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights (``weights``) and the updates so far (``updates``)."""
        return {"weights": self.network.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.network.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
