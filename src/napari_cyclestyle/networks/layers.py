"""Building blocks shared by the generators and the discriminators.

Normalisation is chosen by name (see :data:`napari_cyclestyle.choices.NORMS`):

- ``"instance"``: ``nn.InstanceNorm2d(affine=False, track_running_stats=False)``, i.e.
  per-image statistics and no parameters; convolutions that feed a norm keep their bias.
- ``"batch"``: ``nn.BatchNorm2d(affine=True, track_running_stats=True)``; convolutions
  that feed a norm have no bias (the norm's shift replaces it).
- ``"none"``: an ``nn.Identity`` sits in the norm's slot so that module indices, and so
  ``state_dict`` keys, stay those of the reference; convolutions keep their bias.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..choices import NORMS


def check_choice(what: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {what} {value!r}; valid values are: {', '.join(valid)}.")


def check_count(what: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}.")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """Return the normalisation layer for ``norm`` (``nn.Identity`` for ``"none"``)."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "none":
        return nn.Identity()
    check_choice("norm", norm, NORMS)
    raise AssertionError("unreachable")


def conv_bias(norm: str) -> bool:
    """Whether a convolution that feeds a norm layer has a bias (not with batch norm)."""
    return norm != "batch"


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Initialise weights in place as the reference does (``init_type="normal"``).

    Convolution, transposed-convolution and linear weights are drawn from
    ``normal(0, gain)``, their biases set to 0; ``BatchNorm2d`` weights are drawn from
    ``normal(1, gain)`` and biases set to 0. Other layers are left as they are.

    Parameters
    ----------
    module : nn.Module
        Network to initialise (all submodules are visited).
    gain : float
        Standard deviation of the normal distributions.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d) and layer.weight is not None:
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)
