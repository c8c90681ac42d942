"""Building blocks shared by the generators and the discriminators.

Normalisation is chosen by name (see :data:`napari_cyclestyle.choices.NORMS`):

- ``"instance"``: :class:`InstanceNorm` (an ``nn.InstanceNorm2d(affine=False,
  track_running_stats=False)``), i.e. per-image statistics and no parameters;
  convolutions that feed a norm keep their bias.
- ``"batch"``: ``nn.BatchNorm2d(affine=True, track_running_stats=True)``; convolutions
  that feed a norm have no bias (the norm's shift replaces it).
- ``"none"``: an ``nn.Identity`` sits in the norm's slot so that module indices, and so
  ``state_dict`` keys, stay those of the reference; convolutions keep their bias.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import NORMS, UPSAMPLINGS


def check_choice(what: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {what} {value!r}; valid values are: {', '.join(valid)}.")


def check_count(what: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}.")


class InstanceNorm(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` without parameters or running statistics whose training
    forward on the CPU runs as a group norm of one channel per group.

    The two compute the same statistics, per image and channel, with the same ``eps``;
    on the CPU the group norm's kernel is 1.4–2.7× faster forward and backward (the
    instance norm runs as a batch norm of the reshaped batch). Elsewhere, and in eval
    mode, it is the plain instance norm, so inference, tiling and exports are unchanged.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=False, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each image's channels of ``x`` to zero mean and unit variance."""
        if self.training and x.device.type == "cpu" and x.dim() == 4 and x[0, 0].numel() > 1:
            return F.group_norm(x, x.shape[1], eps=self.eps)
        return super().forward(x)


class ImageOutputConv2d(nn.Conv2d):
    """``nn.Conv2d`` that trains on faster CPU kernels: for a convolution to an image's
    few channels (the ResNet generator's last 7×7), oneDNN's kernels run at a fraction of
    the matmul rate.

    From :data:`TAP_PRODUCTS_MIN_CHANNELS` input channels on, the convolution runs as
    one matrix product per image (:class:`_TapProducts`): 0.6–0.8× the time of oneDNN's
    channels-last kernels forward and backward at 64 channels (AVX-512 and AVX2
    kernels), 0.97× the time of the paper step at ngf 64 crop 256. With fewer input
    channels the product is too shallow to pay for its memory traffic, and the input and
    weight are viewed channels-last for the call instead (oneDNN's NHWC kernels are
    1.2–1.6× faster than its NCHW ones there). The output is contiguous either way.
    Under autocast it takes the channels-last path, whose convolution autocast casts as
    usual. Elsewhere, and in eval mode, it is the plain convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` (``(N, C, H, W)``)."""
        if not (self.training and x.device.type == "cpu" and x.dim() == 4):
            return super().forward(x)
        if self._runs_as_tap_products() and not torch.is_autocast_enabled("cpu"):
            return _TapProducts.apply(x, self.weight, self.bias)
        nhwc = torch.channels_last
        weight = self.weight.contiguous(memory_format=nhwc)
        output = self._conv_forward(x.contiguous(memory_format=nhwc), weight, self.bias)
        return output.contiguous()

    def _runs_as_tap_products(self) -> bool:
        plain = self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1
        unpadded = self.padding in ((0, 0), "valid")
        return plain and unpadded and self.in_channels >= TAP_PRODUCTS_MIN_CHANNELS


TAP_PRODUCTS_MIN_CHANNELS = 64
"""Input channels from which :class:`ImageOutputConv2d` trains as tap products. With 16
channels oneDNN's channels-last kernels were faster (1.2–1.3×, AVX-512 and AVX2); with
32 the products won at 128 px but lost at 64 px with AVX2 kernels
(``benchmarks/bench_image_output_conv.py``)."""


class _TapProducts(torch.autograd.Function):
    """An unpadded stride-1 convolution as one matrix product per image.

    Each pair of an output channel and a kernel tap is a row of the product with the
    input's channels (``(O·kh·kw) × C`` by ``C × (H·W)``), and the output is the sum of
    the products' planes, each shifted by its tap. The products run at MKL's matmul rate
    with the input's channels as depth; the backward pass spreads the output's gradient
    back onto the shifted planes and runs the two transposed products.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        n, _, height, width = x.shape
        out_channels, _, kernel_height, kernel_width = weight.shape
        planes = torch.matmul(_tap_rows(weight), x.flatten(2))
        planes = planes.view(n, out_channels, kernel_height, kernel_width, height, width)
        out_height, out_width = height - kernel_height + 1, width - kernel_width + 1
        output = x.new_zeros(n, out_channels, out_height, out_width)
        if bias is not None:
            output += bias.view(1, -1, 1, 1)
        for row in range(kernel_height):
            for column in range(kernel_width):
                output += planes[
                    :, :, row, column, row : row + out_height, column : column + out_width
                ]
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        n, channels, height, width = x.shape
        out_channels, _, kernel_height, kernel_width = weight.shape
        out_height, out_width = grad_output.shape[-2:]
        grad_planes = grad_output.new_zeros(
            n, out_channels, kernel_height, kernel_width, height, width
        )
        for row in range(kernel_height):
            for column in range(kernel_width):
                grad_planes[
                    :, :, row, column, row : row + out_height, column : column + out_width
                ] = grad_output
        grad_planes = grad_planes.view(n, -1, height * width)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(_tap_rows(weight).t(), grad_planes).view(x.shape)
        if ctx.needs_input_grad[1]:
            rows = torch.matmul(grad_planes, x.flatten(2).transpose(1, 2)).sum(0)
            grad_weight = rows.view(out_channels, kernel_height, kernel_width, channels)
            grad_weight = grad_weight.permute(0, 3, 1, 2).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias


def _tap_rows(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``(O, C, kh, kw)`` as rows ``(O·kh·kw, C)``, one per channel and tap."""
    return weight.permute(0, 2, 3, 1).reshape(-1, weight.shape[1])


def norm_layer(norm: str, channels: int) -> nn.Module:
    """Return the normalisation layer for ``norm`` (``nn.Identity`` for ``"none"``)."""
    if norm == "instance":
        return InstanceNorm(channels)
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
