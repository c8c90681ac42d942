"""Instance-norm statistics: per-channel moments merged tile by tile, and norms frozen
to the statistics of a whole plane (or of a sample of it).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional


def has_instance_norm(network: nn.Module) -> bool:
    """Whether any layer normalises with per-image statistics (InstanceNorm without
    running statistics)."""
    return any(is_instance_norm(m) for m in network.modules())


def is_instance_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.InstanceNorm2d) and not module.track_running_stats


class Moments:
    """Running per-channel mean and (biased) variance, merged tile by tile (Chan et al.)."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)

    def merge(self, partial: tuple[int, np.ndarray, np.ndarray]) -> None:
        """Add the moments of more values, as :func:`partial_moments` returns them."""
        n, mean, m2 = partial
        if n == 0:
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)


def partial_moments(values: Tensor) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, per-channel mean and sum of squared deviations of ``(N, C, H, W)`` values."""
    n = values.shape[0] * values.shape[2] * values.shape[3]
    if n == 0:
        return 0, np.zeros(values.shape[1]), np.zeros(values.shape[1])
    if values.device.type in ("cpu", "cuda"):
        # batch norm's statistics kernel: 2-3x faster than var_mean on the CPU
        mean, var = torch.batch_norm_update_stats(values, None, None, 1.0)
    else:  # not implemented on Apple MPS
        var, mean = torch.var_mean(values, dim=(0, 2, 3), unbiased=False)
    return n, mean.double().cpu().numpy(), var.double().cpu().numpy() * n


class FrozenNorm(nn.Module):
    """Instance normalisation with fixed per-channel statistics (eps as the layer's)."""

    def __init__(self, mean: np.ndarray, var: np.ndarray, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("var", torch.as_tensor(var, dtype=torch.float32))
        # The same transform as x · scale + shift, for normalising into a given tensor.
        scale = (self.var + eps).rsqrt()
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", (-self.mean * scale).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Return ``(x - mean) / sqrt(var + eps)``."""
        return functional.batch_norm(x, self.mean, self.var, training=False, eps=self.eps)

    def normalize_into(self, x: Tensor, out: Tensor) -> None:
        """Write the normalised ``x`` into ``out`` (a view of the same shape): one pass,
        where copying and then normalising would take two. Channels are the second axis
        of any number of axes."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        torch.addcmul(self.shift.view(shape), x, self.scale.view(shape), out=out)


def with_frozen_norms(network: nn.Module, statistics: dict[nn.Module, FrozenNorm]) -> nn.Module:
    """A copy of ``network`` whose instance norms are replaced by frozen ones.

    The original network is not modified (it may be in use in another thread).
    """
    memo = {id(norm): frozen for norm, frozen in statistics.items()}
    return copy.deepcopy(network, memo)
