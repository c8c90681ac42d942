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

from ..choices import NORMS, UPSAMPLINGS


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


def upsampling_layers(
    upsampling: str, in_channels: int, out_channels: int, bias: bool, **transposed: Any
) -> list[nn.Module]:
    """The layers of one ×2 up-sampling stage.

    Parameters
    ----------
    upsampling : str
        ``"transposed"``: one ``ConvTranspose2d(in_channels, out_channels, **transposed)``
        (the reference layout). ``"resize"``: ``Upsample(×2, nearest)`` then a 3×3
        convolution with zero padding 1 (Odena et al. 2016: every output pixel gets the
        same number of kernel taps, so no checkerboard).
    in_channels, out_channels : int
        Channels before and after the stage.
    bias : bool
        Whether the convolution has a bias.
    **transposed
        ``kernel_size``, ``stride``, ``padding``, ``output_padding`` of the transposed
        convolution (ignored by ``"resize"``).
    """
    check_choice("upsampling", upsampling, UPSAMPLINGS)
    if upsampling == "transposed":
        return [nn.ConvTranspose2d(in_channels, out_channels, bias=bias, **transposed)]
    return [
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias),
    ]


def spectral_normalized(network: nn.Module) -> nn.Module:
    """``network`` with spectral normalisation on every convolution's weight (in place).

    Uses ``torch.nn.utils.parametrizations.spectral_norm`` (one power iteration per
    training forward); call it after :func:`init_weights`, which it then still reaches
    through the parametrisation's ``original`` weight.
    """
    from torch.nn.utils.parametrizations import spectral_norm

    for layer in list(network.modules()):
        if isinstance(layer, nn.Conv2d):
            spectral_norm(layer)
    return network


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
    from torch.nn.utils import parametrize

    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if parametrize.is_parametrized(layer, "weight"):  # spectral norm
                nn.init.normal_(layer.parametrizations.weight.original, 0.0, gain)
            else:
                nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d) and layer.weight is not None:
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)
