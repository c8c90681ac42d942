"""Generator and discriminator networks, weight initialisation and checkpoint layout helpers.

The ResNet and U-Net generators and both PatchGAN discriminators reproduce the module
layout of the reference CycleGAN implementation (junyanz/pytorch-CycleGAN-and-pix2pix):
the same ``nn.Sequential`` index positions, hence the same ``state_dict`` keys and shapes,
so reference checkpoints load unchanged. :class:`EncoderDecoderGenerator` is this
project's own small network and has no reference counterpart.

Normalisation is chosen by name (see :data:`NORM_NAMES`):

- ``"instance"``: ``nn.InstanceNorm2d(affine=False, track_running_stats=False)``, i.e.
  per-image statistics and no parameters; convolutions that feed a norm keep their bias.
- ``"batch"``: ``nn.BatchNorm2d(affine=True, track_running_stats=True)``; convolutions
  that feed a norm have no bias (the norm's shift replaces it).
- ``"none"``: an ``nn.Identity`` sits in the norm's slot so that module indices, and so
  ``state_dict`` keys, stay those of the reference; convolutions keep their bias.

This module imports torch at the top; the package imports it lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

GENERATOR_NAMES: tuple[str, ...] = (
    "resnet_9blocks",
    "resnet_6blocks",
    "unet_256",
    "unet_128",
    "encoder_decoder",
)
DISCRIMINATOR_NAMES: tuple[str, ...] = ("basic", "n_layers", "pixel")
NORM_NAMES: tuple[str, ...] = ("instance", "batch", "none")

_RESNET_BLOCKS = {"resnet_9blocks": 9, "resnet_6blocks": 6}
_UNET_DOWNS = {"unet_256": 8, "unet_128": 7}
_SIZE_MULTIPLES = {
    "resnet_9blocks": 4,
    "resnet_6blocks": 4,
    "unet_256": 256,
    "unet_128": 128,
    "encoder_decoder": 8,
}
# Buffers that "old format" checkpoints carry for every InstanceNorm layer.
_LEGACY_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _check_choice(what: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {what} {value!r}; valid values are: {', '.join(valid)}.")


def _check_count(what: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}.")


def _norm_layer(norm: str, channels: int) -> nn.Module:
    """Return the normalisation layer for ``norm`` (``nn.Identity`` for ``"none"``)."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "none":
        return nn.Identity()
    _check_choice("norm", norm, NORM_NAMES)
    raise AssertionError("unreachable")


def _conv_bias(norm: str) -> bool:
    """Whether a convolution that feeds a norm layer has a bias (not with batch norm)."""
    return norm != "batch"


# --------------------------------------------------------------------------------------
# ResNet generator
# --------------------------------------------------------------------------------------


class ResnetBlock(nn.Module):
    """Residual block: ``x + conv_block(x)`` with two reflection-padded 3×3 convolutions.

    ``conv_block`` is ``[ReflectionPad2d(1), Conv3×3, norm, ReLU, (Dropout(0.5)),
    ReflectionPad2d(1), Conv3×3, norm]``; with dropout the second convolution moves from
    index 5 to index 6, as in the reference.

    Parameters
    ----------
    channels : int
        Number of input and output channels.
    norm : str
        ``"instance"``, ``"batch"`` or ``"none"``.
    dropout : bool
        Insert ``Dropout(0.5)`` after the first convolution's activation.
    """

    def __init__(self, channels: int, norm: str = "instance", dropout: bool = False) -> None:
        super().__init__()
        bias = _conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, padding=0, bias=bias),
            _norm_layer(norm, channels),
            nn.ReLU(),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, padding=0, bias=bias),
            _norm_layer(norm, channels),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x + conv_block(x)``."""
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """ResNet generator (Johnson et al.), the reference CycleGAN default.

    ``model`` is ``[ReflectionPad2d(3), Conv7×7, norm, ReLU]``, two down-sampling stages
    ``[Conv3×3 stride 2, norm, ReLU]``, ``n_blocks`` :class:`ResnetBlock`, two up-sampling
    stages ``[ConvTranspose3×3 stride 2 (output_padding 1), norm, ReLU]`` and
    ``[ReflectionPad2d(3), Conv7×7, Tanh]``. Height and width must be multiples of 4 for
    the output to have the input's size.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and output images.
    ngf : int
        Filters of the first convolution; the residual blocks work at ``4 * ngf``.
    norm : str
        ``"instance"``, ``"batch"`` or ``"none"``.
    dropout : bool
        Dropout(0.5) inside every residual block.
    n_blocks : int
        Number of residual blocks (9 for ``resnet_9blocks``, 6 for ``resnet_6blocks``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 64,
        norm: str = "instance",
        dropout: bool = False,
        n_blocks: int = 9,
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, NORM_NAMES)
        _check_count("n_blocks", n_blocks, minimum=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ngf = ngf
        self.norm = norm
        self.dropout = dropout
        self.n_blocks = n_blocks
        bias = _conv_bias(norm)

        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, kernel_size=7, padding=0, bias=bias),
            _norm_layer(norm, ngf),
            nn.ReLU(),
        ]
        channels = ngf
        for _ in range(2):
            layers += [
                nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1, bias=bias),
                _norm_layer(norm, channels * 2),
                nn.ReLU(),
            ]
            channels *= 2
        layers += [ResnetBlock(channels, norm=norm, dropout=dropout) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(
                    channels,
                    channels // 2,
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    bias=bias,
                ),
                _norm_layer(norm, channels // 2),
                nn.ReLU(),
            ]
            channels //= 2
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(channels, out_channels, kernel_size=7, padding=0),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Translate a batch ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``."""
        return self.model(x)


# --------------------------------------------------------------------------------------
# U-Net generator
# --------------------------------------------------------------------------------------


class UnetSkipBlock(nn.Module):
    """One level of the recursive U-Net: down-sample, inner block, up-sample, skip.

    ``model`` holds the block's own layers with the inner block in the middle:

    - outermost: ``[Conv4×4 s2, inner, ReLU, ConvTranspose4×4 s2 (bias), Tanh]``;
    - innermost: ``[LeakyReLU(0.2), Conv4×4 s2, ReLU, ConvTranspose4×4 s2, norm]``;
    - otherwise: ``[LeakyReLU(0.2), Conv4×4 s2, norm, inner, ReLU, ConvTranspose4×4 s2,
      norm, (Dropout(0.5))]``.

    Every block but the outermost returns ``cat([x, model(x)])`` along the channel axis.
    (The reference's LeakyReLU runs in place, so its skip carries ``LeakyReLU(x)``; the
    only consumer of the concatenation is the parent's ReLU, and
    ``ReLU(LeakyReLU(x)) == ReLU(x)``, so outputs and gradients are the same.)

    Parameters
    ----------
    outer_channels : int
        Channels this block returns (before the concatenation) and, unless
        ``in_channels`` is given, receives.
    inner_channels : int
        Channels after the down convolution (the inner block's input).
    in_channels : int, optional
        Channels of the input when they differ from ``outer_channels`` (outermost block).
    submodule : nn.Module, optional
        The inner block; required unless ``innermost``.
    outermost, innermost : bool
        Position of the block in the U-Net.
    norm : str
        ``"instance"``, ``"batch"`` or ``"none"``.
    dropout : bool
        Append ``Dropout(0.5)`` after the up path (middle blocks only).
    """

    def __init__(
        self,
        outer_channels: int,
        inner_channels: int,
        in_channels: int | None = None,
        submodule: nn.Module | None = None,
        *,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "instance",
        dropout: bool = False,
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, NORM_NAMES)
        if outermost and innermost:
            raise ValueError("A U-Net block cannot be both outermost and innermost.")
        if submodule is None and not innermost:
            raise ValueError("A U-Net block that is not innermost needs an inner submodule.")
        self.outermost = outermost
        self.innermost = innermost
        if in_channels is None:
            in_channels = outer_channels
        bias = _conv_bias(norm)
        down_conv = nn.Conv2d(
            in_channels, inner_channels, kernel_size=4, stride=2, padding=1, bias=bias
        )
        up_in = inner_channels if innermost else inner_channels * 2

        layers: list[nn.Module]
        if outermost:
            assert submodule is not None
            layers = [
                down_conv,
                submodule,
                nn.ReLU(),
                nn.ConvTranspose2d(up_in, outer_channels, kernel_size=4, stride=2, padding=1),
                nn.Tanh(),
            ]
        elif innermost:
            layers = [
                nn.LeakyReLU(0.2),
                down_conv,
                nn.ReLU(),
                nn.ConvTranspose2d(
                    up_in, outer_channels, kernel_size=4, stride=2, padding=1, bias=bias
                ),
                _norm_layer(norm, outer_channels),
            ]
        else:
            assert submodule is not None
            layers = [
                nn.LeakyReLU(0.2),
                down_conv,
                _norm_layer(norm, inner_channels),
                submodule,
                nn.ReLU(),
                nn.ConvTranspose2d(
                    up_in, outer_channels, kernel_size=4, stride=2, padding=1, bias=bias
                ),
                _norm_layer(norm, outer_channels),
            ]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``model(x)`` (outermost) or ``cat([x, model(x)], dim=1)``."""
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


class UnetGenerator(nn.Module):
    """U-Net generator built recursively from :class:`UnetSkipBlock`.

    Channels from the outside in: ``ngf``, ``2 ngf``, ``4 ngf``, then ``8 ngf`` for the
    remaining levels. With ``num_downs`` stride-2 levels the image shrinks to
    ``H / 2**num_downs``, so height and width must be multiples of ``2**num_downs``
    (256 for ``unet_256``, ``num_downs`` 8; 128 for ``unet_128``, ``num_downs`` 7).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and output images.
    num_downs : int
        Number of down-sampling levels (at least 5).
    ngf : int
        Filters of the outermost convolution.
    norm : str
        ``"instance"``, ``"batch"`` or ``"none"``.
    dropout : bool
        Dropout(0.5) in the ``num_downs - 5`` middle ``8 ngf`` blocks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_downs: int,
        ngf: int = 64,
        norm: str = "instance",
        dropout: bool = False,
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, NORM_NAMES)
        _check_count("num_downs", num_downs, minimum=5)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_downs = num_downs
        self.ngf = ngf
        self.norm = norm
        self.dropout = dropout

        block = UnetSkipBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, dropout=dropout)
        block = UnetSkipBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetSkipBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetSkipBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetSkipBlock(
            out_channels, ngf, in_channels=in_channels, submodule=block, outermost=True, norm=norm
        )

    def forward(self, x: Tensor) -> Tensor:
        """Translate a batch ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``."""
        return self.model(x)


# --------------------------------------------------------------------------------------
# Small encoder-decoder generator (this project's own design)
# --------------------------------------------------------------------------------------


class EncoderDecoderGenerator(nn.Module):
    """Small encoder-decoder generator without skip connections.

    ``model`` is three ``Conv4×4 stride 2`` stages (``in → ngf → 2 ngf → 4 ngf``, norm
    after the second and third, LeakyReLU(0.2) after each) followed by three
    ``ConvTranspose4×4 stride 2`` stages back (``4 ngf → 2 ngf → ngf → out``, norm and
    ReLU after the first two, ``Dropout(0.5)`` after those two when ``dropout``) and Tanh.
    Height and width must be multiples of 8 for the output to have the input's size.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and output images.
    ngf : int
        Filters of the first convolution.
    norm : str
        ``"instance"``, ``"batch"`` or ``"none"``.
    dropout : bool
        Dropout(0.5) after the first two decoder stages (shifts the later indices).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 64,
        norm: str = "instance",
        dropout: bool = False,
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, NORM_NAMES)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ngf = ngf
        self.norm = norm
        self.dropout = dropout
        bias = _conv_bias(norm)

        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ngf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf, ngf * 2, kernel_size=4, stride=2, padding=1, bias=bias),
            _norm_layer(norm, ngf * 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf * 2, ngf * 4, kernel_size=4, stride=2, padding=1, bias=bias),
            _norm_layer(norm, ngf * 4),
            nn.LeakyReLU(0.2),
        ]
        for channels in (ngf * 4, ngf * 2):
            layers += [
                nn.ConvTranspose2d(
                    channels, channels // 2, kernel_size=4, stride=2, padding=1, bias=bias
                ),
                _norm_layer(norm, channels // 2),
                nn.ReLU(),
            ]
            if dropout:
                layers.append(nn.Dropout(0.5))
        layers += [
            nn.ConvTranspose2d(ngf, out_channels, kernel_size=4, stride=2, padding=1),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Translate a batch ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``."""
        return self.model(x)


# --------------------------------------------------------------------------------------
# Discriminators
# --------------------------------------------------------------------------------------


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator: a grid of real/fake scores, one per overlapping patch.

    ``model`` is ``[Conv4×4 s2 in→ndf, LeakyReLU(0.2)]``, ``n_layers - 1`` stages
    ``[Conv4×4 s2, norm, LeakyReLU]`` doubling the filters (capped at ``8 ndf``), one stage
    ``[Conv4×4 s1, norm, LeakyReLU]`` and a final ``Conv4×4 s1 → 1``; padding 1 throughout.
    With ``n_layers`` 3 (``"basic"``) the receptive field is 70×70 and a 256×256 input
    gives a 30×30 output.

    Parameters
    ----------
    in_channels : int
        Channels of the judged images.
    ndf : int
        Filters of the first convolution.
    n_layers : int
        Number of stride-2 convolutions.
    norm : str
        ``"instance"``, ``"batch"`` or ``"none"``.
    """

    def __init__(
        self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance"
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, NORM_NAMES)
        _check_count("n_layers", n_layers, minimum=1)
        self.in_channels = in_channels
        self.ndf = ndf
        self.n_layers = n_layers
        self.norm = norm
        bias = _conv_bias(norm)

        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        channels = ndf
        for n in range(1, n_layers + 1):
            next_channels = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(
                    channels, next_channels, kernel_size=4, stride=stride, padding=1, bias=bias
                ),
                _norm_layer(norm, next_channels),
                nn.LeakyReLU(0.2),
            ]
            channels = next_channels
        layers.append(nn.Conv2d(channels, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Score a batch ``(N, C, H, W)``; returns raw logits ``(N, 1, h, w)``."""
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """1×1 PatchGAN ("pixelGAN"): judges every pixel on its own.

    ``net`` is ``[Conv1×1 in→ndf, LeakyReLU(0.2), Conv1×1 ndf→2 ndf, norm, LeakyReLU(0.2),
    Conv1×1 2 ndf→1]``. As in the reference, the last convolution has a bias only when the
    norm is not batch norm.

    Parameters
    ----------
    in_channels : int
        Channels of the judged images.
    ndf : int
        Filters of the first convolution.
    norm : str
        ``"instance"``, ``"batch"`` or ``"none"``.
    """

    def __init__(self, in_channels: int, ndf: int = 64, norm: str = "instance") -> None:
        super().__init__()
        _check_choice("norm", norm, NORM_NAMES)
        self.in_channels = in_channels
        self.ndf = ndf
        self.norm = norm
        bias = _conv_bias(norm)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, ndf, kernel_size=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, bias=bias),
            _norm_layer(norm, ndf * 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, bias=bias),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Score a batch ``(N, C, H, W)``; returns raw logits ``(N, 1, H, W)``."""
        return self.net(x)


# --------------------------------------------------------------------------------------
# Factories and initialisation
# --------------------------------------------------------------------------------------


def build_generator(
    name: str,
    in_channels: int,
    out_channels: int,
    ngf: int = 64,
    norm: str = "instance",
    dropout: bool = False,
) -> nn.Module:
    """Build a generator by name (weights are PyTorch defaults; see :func:`init_weights`).

    Parameters
    ----------
    name : str
        One of :data:`GENERATOR_NAMES`.
    in_channels, out_channels : int
        Channels of the input and output images (any positive counts).
    ngf : int
        Filters of the first convolution.
    norm : str
        One of :data:`NORM_NAMES`.
    dropout : bool
        Dropout(0.5) in the residual blocks (ResNet), middle blocks (U-Net) or first two
        decoder stages (encoder-decoder).

    Returns
    -------
    nn.Module
        The generator, mapping ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``
        in ``[-1, 1]`` when ``H`` and ``W`` are multiples of :func:`size_multiple`.

    Raises
    ------
    ValueError
        If ``name`` or ``norm`` is unknown or a count is not a positive integer.
    """
    _check_choice("generator", name, GENERATOR_NAMES)
    _check_choice("norm", norm, NORM_NAMES)
    _check_count("in_channels", in_channels)
    _check_count("out_channels", out_channels)
    _check_count("ngf", ngf)
    dropout = bool(dropout)
    if name in _RESNET_BLOCKS:
        return ResnetGenerator(
            in_channels, out_channels, ngf, norm, dropout, n_blocks=_RESNET_BLOCKS[name]
        )
    if name in _UNET_DOWNS:
        return UnetGenerator(in_channels, out_channels, _UNET_DOWNS[name], ngf, norm, dropout)
    return EncoderDecoderGenerator(in_channels, out_channels, ngf, norm, dropout)


def build_discriminator(
    name: str,
    in_channels: int,
    ndf: int = 64,
    n_layers: int = 3,
    norm: str = "instance",
) -> nn.Module:
    """Build a discriminator by name (weights are PyTorch defaults; see :func:`init_weights`).

    Parameters
    ----------
    name : str
        One of :data:`DISCRIMINATOR_NAMES`: ``"basic"`` (70×70 PatchGAN, always 3 layers),
        ``"n_layers"`` (PatchGAN with ``n_layers``) or ``"pixel"`` (1×1 PatchGAN).
    in_channels : int
        Channels of the judged images.
    ndf : int
        Filters of the first convolution.
    n_layers : int
        Stride-2 convolutions of the ``"n_layers"`` PatchGAN; ignored otherwise.
    norm : str
        One of :data:`NORM_NAMES`.

    Returns
    -------
    nn.Module
        The discriminator, returning raw logits of shape ``(N, 1, h, w)``.

    Raises
    ------
    ValueError
        If ``name`` or ``norm`` is unknown or a count is not a positive integer.
    """
    _check_choice("discriminator", name, DISCRIMINATOR_NAMES)
    _check_choice("norm", norm, NORM_NAMES)
    _check_count("in_channels", in_channels)
    _check_count("ndf", ndf)
    if name == "basic":
        return NLayerDiscriminator(in_channels, ndf, n_layers=3, norm=norm)
    if name == "n_layers":
        _check_count("n_layers", n_layers)
        return NLayerDiscriminator(in_channels, ndf, n_layers=n_layers, norm=norm)
    return PixelDiscriminator(in_channels, ndf, norm=norm)


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


def size_multiple(name: str) -> int:
    """Return the number that image height and width must be multiples of.

    Only then does the generator's output have the input's size.

    Parameters
    ----------
    name : str
        One of :data:`GENERATOR_NAMES`.

    Returns
    -------
    int
        4 for the ResNet generators, 256 for ``unet_256``, 128 for ``unet_128`` and 8 for
        ``encoder_decoder``.

    Raises
    ------
    ValueError
        If ``name`` is unknown.
    """
    _check_choice("generator", name, GENERATOR_NAMES)
    return _SIZE_MULTIPLES[name]


def generator_from_spec(spec: Mapping) -> nn.Module:
    """Build the generator an :func:`infer_generator_spec` result describes."""
    return build_generator(
        spec["generator"],
        spec["in_channels"],
        spec["out_channels"],
        ngf=spec["ngf"],
        norm=spec["norm"],
        dropout=spec["dropout"],
    )


def minimum_size(name: str) -> int:
    """Return the smallest height and width the generator takes.

    Its innermost normalised layer needs more than one pixel: twice the size multiple
    for the ResNet and encoder-decoder generators, the size multiple for the U-Nets
    (whose innermost block has no norm on its way down).

    Raises
    ------
    ValueError
        If ``name`` is unknown.
    """
    multiple = size_multiple(name)
    return multiple if name.startswith("unet") else 2 * multiple


# --------------------------------------------------------------------------------------
# Checkpoint layout helpers
# --------------------------------------------------------------------------------------


def strip_legacy_norm_keys(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict:
    """Drop the InstanceNorm running-statistics keys of "old format" checkpoints.

    The published pretrained reference models store ``running_mean``, ``running_var``
    (and sometimes ``num_batches_tracked``) for every InstanceNorm layer, which current
    InstanceNorm layers (``track_running_stats=False``) do not have. Such keys are dropped
    when ``model`` has an ``nn.InstanceNorm2d`` at that path and lacks the key; every
    other key is kept, so a strict load still reports genuine mismatches.

    Parameters
    ----------
    state_dict : Mapping[str, Tensor]
        Checkpoint contents.
    model : nn.Module
        The network the state dict is meant for.

    Returns
    -------
    dict
        A new dict (same order, same tensors) without the legacy keys.
    """
    model_keys = set(model.state_dict())
    instance_norms = {
        name for name, layer in model.named_modules() if isinstance(layer, nn.InstanceNorm2d)
    }
    stripped = {}
    for key, value in state_dict.items():
        if key not in model_keys:
            path, _, leaf = key.rpartition(".")
            if leaf in _LEGACY_NORM_BUFFERS and path in instance_norms:
                continue
        stripped[key] = value
    return stripped


def _shape(state_dict: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    return tuple(state_dict[key].shape)


def _has_conv_weight(state_dict: Mapping[str, Tensor], key: str) -> bool:
    return key in state_dict and len(_shape(state_dict, key)) == 4


def _guess_resnet(state_dict: Mapping[str, Tensor]) -> dict:
    n_blocks = 0
    while f"model.{10 + n_blocks}.conv_block.1.weight" in state_dict:
        n_blocks += 1
    names = {blocks: name for name, blocks in _RESNET_BLOCKS.items()}
    if n_blocks not in names:
        raise ValueError(
            f"The state dict looks like a ResNet generator with {n_blocks} residual blocks; "
            f"only {', '.join(f'{b} ({n})' for b, n in names.items())} are supported."
        )
    ngf, in_channels = _shape(state_dict, "model.1.weight")[:2]
    out_channels = _shape(state_dict, f"model.{n_blocks + 17}.weight")[0]
    return {
        "generator": names[n_blocks],
        "in_channels": in_channels,
        "out_channels": out_channels,
        "ngf": ngf,
        "norm": "batch" if "model.2.weight" in state_dict else "instance",
        # Dropout shifts the second convolution of each block from index 5 to 6; with
        # batch norm, index 6 otherwise holds the (1-D) norm weight.
        "dropout": _has_conv_weight(state_dict, "model.10.conv_block.6.weight"),
    }


def _guess_unet(state_dict: Mapping[str, Tensor]) -> dict:
    inner_blocks = 0
    prefix = "model.model.1.model."
    while f"{prefix}1.weight" in state_dict:
        inner_blocks += 1
        prefix += "3.model."
    num_downs = inner_blocks + 1
    names = {downs: name for name, downs in _UNET_DOWNS.items()}
    if num_downs not in names:
        raise ValueError(
            f"The state dict looks like a U-Net generator with {num_downs} levels; "
            f"only {', '.join(f'{d} ({n})' for d, n in names.items())} are supported."
        )
    ngf, in_channels = _shape(state_dict, "model.model.0.weight")[:2]
    out_channels = _shape(state_dict, "model.model.3.weight")[1]  # ConvTranspose: (in, out)
    return {
        "generator": names[num_downs],
        "in_channels": in_channels,
        "out_channels": out_channels,
        "ngf": ngf,
        "norm": "batch" if "model.model.1.model.2.weight" in state_dict else "instance",
        "dropout": False,  # Dropout has no parameters and sits last: invisible in the keys.
    }


def _guess_encoder_decoder(state_dict: Mapping[str, Tensor]) -> dict:
    if _has_conv_weight(state_dict, "model.16.weight"):
        dropout, last = True, "model.16.weight"
    elif _has_conv_weight(state_dict, "model.14.weight"):
        dropout, last = False, "model.14.weight"
    else:
        raise ValueError("The state dict has no final transposed convolution (model.14/16).")
    ngf, in_channels = _shape(state_dict, "model.0.weight")[:2]
    return {
        "generator": "encoder_decoder",
        "in_channels": in_channels,
        "out_channels": _shape(state_dict, last)[1],  # ConvTranspose: (in, out, k, k)
        "ngf": ngf,
        "norm": "batch" if "model.3.weight" in state_dict else "instance",
        "dropout": dropout,
    }


def _looks_like_discriminator(state_dict: Mapping[str, Tensor]) -> bool:
    if "net.0.weight" in state_dict:
        return True
    indices = sorted(
        int(key.split(".")[1])
        for key in state_dict
        if key.startswith("model.") and key.split(".")[1].isdigit() and key.endswith(".weight")
    )
    if not indices:
        return False
    last = _shape(state_dict, f"model.{indices[-1]}.weight")
    return len(last) == 4 and last[0] == 1 and last[2:] == (4, 4)


def _layout_mismatches(spec: dict, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Compare ``state_dict`` with the keys and shapes of the network ``spec`` describes."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = generator_from_spec(spec)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    given = strip_legacy_norm_keys(state_dict, model)
    problems = []
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    wrong = [
        f"{key} {_shape(given, key)} (expected {expected[key]})"
        for key in expected
        if key in given and _shape(given, key) != expected[key]
    ]
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}" + (" ..." * (len(missing) > 5)))
    if unexpected:
        problems.append(
            f"unexpected keys: {', '.join(unexpected[:5])}" + (" ..." * (len(unexpected) > 5))
        )
    if wrong:
        problems.append(f"wrong shapes: {', '.join(wrong[:5])}" + (" ..." * (len(wrong) > 5)))
    if missing and all(key.endswith(".bias") for key in missing):
        problems.append(
            "convolutions without biases and no normalisation parameters suggest a reference "
            "model trained with --norm none, which is not supported"
        )
    return problems


def infer_generator_spec(state_dict: Mapping[str, Tensor]) -> dict:
    """Work out which generator a reference-layout state dict belongs to.

    Recognises the ResNet (6 or 9 blocks) and U-Net (128 or 256) layouts of the
    reference implementation, including "old format" checkpoints with InstanceNorm
    running statistics, and this project's encoder-decoder. The guess is checked against
    the keys and shapes of the network it describes, so a returned spec always loads
    (after :func:`strip_legacy_norm_keys`) with ``strict=True``.

    Two things cannot be read from the keys: a norm-free network (``norm="none"``) has
    the same keys as instance norm and is reported as ``"instance"``; U-Net dropout has
    no parameters and is reported as ``False``. Neither matters for loading, and dropout
    does not matter in eval mode; the norm does, so prefer a stored configuration when
    one exists.

    Parameters
    ----------
    state_dict : Mapping[str, Tensor]
        A generator's ``state_dict`` (e.g. ``latest_net_G_A.pth``), without a
        ``module.`` prefix.

    Returns
    -------
    dict
        ``{"generator": name, "in_channels": int, "out_channels": int, "ngf": int,
        "norm": "instance" | "batch", "dropout": bool}``.

    Raises
    ------
    ValueError
        If the keys match no known generator layout; the message says what was found.
    """
    keys = list(state_dict)
    if not keys:
        raise ValueError("The state dict is empty; it holds no generator weights.")
    try:
        if "model.model.0.weight" in state_dict:
            spec = _guess_unet(state_dict)
        elif "model.1.weight" in state_dict and "model.10.conv_block.1.weight" in state_dict:
            spec = _guess_resnet(state_dict)
        elif "model.0.weight" in state_dict and "model.8.weight" in state_dict:
            spec = _guess_encoder_decoder(state_dict)
        else:
            spec = None
    except (KeyError, IndexError, ValueError) as error:
        detail = str(error) if isinstance(error, ValueError) else f"missing key {error}"
        spec, problems = None, [detail]
    else:
        problems = [] if spec is None else _layout_mismatches(spec, state_dict)

    if spec is not None and not problems:
        return spec

    hints = []
    if any(key.startswith("module.") for key in keys):
        hints.append("keys start with 'module.' (saved from DataParallel): strip that prefix")
    if _looks_like_discriminator(state_dict):
        hints.append("this looks like a discriminator (net_D) checkpoint, not a generator")
    found = spec["generator"] if spec is not None else "no known generator"
    message = (
        f"The state dict matches no known generator layout "
        f"({', '.join(GENERATOR_NAMES)}); closest guess: {found}"
    )
    details = problems + hints
    if details:
        message += "; " + "; ".join(details)
    sample = ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")
    raise ValueError(f"{message}. First keys: {sample}.")
