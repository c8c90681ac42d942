"""The generators: ResNet, U-Net and a small encoder-decoder.

The ResNet and U-Net generators reproduce the module layout of the reference CycleGAN
implementation (junyanz/pytorch-CycleGAN-and-pix2pix): the same ``nn.Sequential`` index
positions, hence the same ``state_dict`` keys and shapes, so reference checkpoints load
unchanged. :class:`EncoderDecoderGenerator` is this project's own small network and has
no reference counterpart.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..choices import NORMS
from .layers import (
    ImageOutputConv2d,
    check_choice,
    check_count,
    conv_bias,
    norm_layer,
    upsampling_layers,
)

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
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, padding=0, bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, padding=0, bias=bias),
            norm_layer(norm, channels),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x + conv_block(x)``."""
        return x + self.conv_block(x)


class GeneratorBase(nn.Module):
    """What every generator records of its architecture: the facts that model files,
    exports and :mod:`~napari_cyclestyle.reference` read back from a built network."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int,
        norm: str,
        dropout: bool,
        upsampling: str,
    ) -> None:
        super().__init__()
        check_choice("norm", norm, NORMS)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ngf = ngf
        self.norm = norm
        self.dropout = dropout
        self.upsampling = upsampling


class ResnetGenerator(GeneratorBase):
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
    upsampling : str
        ``"transposed"`` (the reference layout) or ``"resize"``: each transposed
        convolution becomes ``[Upsample ×2 nearest, Conv3×3]`` (see
        :func:`~napari_cyclestyle.networks.layers.upsampling_layers`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 64,
        norm: str = "instance",
        dropout: bool = False,
        n_blocks: int = 9,
        upsampling: str = "transposed",
    ) -> None:
        super().__init__(in_channels, out_channels, ngf, norm, dropout, upsampling)
        check_count("n_blocks", n_blocks, minimum=0)
        self.n_blocks = n_blocks
        bias = conv_bias(norm)

        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, kernel_size=7, padding=0, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(),
        ]
        channels = ngf
        for _ in range(2):
            layers += [
                nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1, bias=bias),
                norm_layer(norm, channels * 2),
                nn.ReLU(),
            ]
            channels *= 2
        layers += [ResnetBlock(channels, norm=norm, dropout=dropout) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [
                *upsampling_layers(
                    upsampling,
                    channels,
                    channels // 2,
                    bias,
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                ),
                norm_layer(norm, channels // 2),
                nn.ReLU(),
            ]
            channels //= 2
        layers += [
            nn.ReflectionPad2d(3),
            ImageOutputConv2d(channels, out_channels, kernel_size=7, padding=0),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Translate a batch ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``."""
        return self.model(x)


# --------------------------------------------------------------------------------------
# U-Net generator
# --------------------------------------------------------------------------------------


# The 4×4 transposed up-convolutions of the U-Net and the encoder-decoder.
_UP_4X4 = {"kernel_size": 4, "stride": 2, "padding": 1}


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
    upsampling : str
        ``"transposed"`` (the reference layout) or ``"resize"`` (each up-convolution
        becomes ``[Upsample ×2 nearest, Conv3×3]``, shifting the later indices).
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
        upsampling: str = "transposed",
    ) -> None:
        super().__init__()
        check_choice("norm", norm, NORMS)
        if outermost and innermost:
            raise ValueError("A U-Net block cannot be both outermost and innermost.")
        if submodule is None and not innermost:
            raise ValueError("A U-Net block that is not innermost needs an inner submodule.")
        self.outermost = outermost
        self.innermost = innermost
        if in_channels is None:
            in_channels = outer_channels
        bias = conv_bias(norm)
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
                *upsampling_layers(upsampling, up_in, outer_channels, True, **_UP_4X4),
                nn.Tanh(),
            ]
        elif innermost:
            layers = [
                nn.LeakyReLU(0.2),
                down_conv,
                nn.ReLU(),
                *upsampling_layers(upsampling, up_in, outer_channels, bias, **_UP_4X4),
                norm_layer(norm, outer_channels),
            ]
        else:
            assert submodule is not None
            layers = [
                nn.LeakyReLU(0.2),
                down_conv,
                norm_layer(norm, inner_channels),
                submodule,
                nn.ReLU(),
                *upsampling_layers(upsampling, up_in, outer_channels, bias, **_UP_4X4),
                norm_layer(norm, outer_channels),
            ]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``model(x)`` (outermost) or ``cat([x, model(x)], dim=1)``."""
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


class UnetGenerator(GeneratorBase):
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
    upsampling : str
        ``"transposed"`` or ``"resize"`` (see :class:`UnetSkipBlock`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_downs: int,
        ngf: int = 64,
        norm: str = "instance",
        dropout: bool = False,
        upsampling: str = "transposed",
    ) -> None:
        super().__init__(in_channels, out_channels, ngf, norm, dropout, upsampling)
        check_count("num_downs", num_downs, minimum=5)
        self.num_downs = num_downs
        kinds = {"norm": norm, "upsampling": upsampling}
        block = UnetSkipBlock(ngf * 8, ngf * 8, innermost=True, **kinds)
        for _ in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, submodule=block, dropout=dropout, **kinds)
        block = UnetSkipBlock(ngf * 4, ngf * 8, submodule=block, **kinds)
        block = UnetSkipBlock(ngf * 2, ngf * 4, submodule=block, **kinds)
        block = UnetSkipBlock(ngf, ngf * 2, submodule=block, **kinds)
        self.model = UnetSkipBlock(
            out_channels, ngf, in_channels=in_channels, submodule=block, outermost=True, **kinds
        )

    def forward(self, x: Tensor) -> Tensor:
        """Translate a batch ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``."""
        return self.model(x)


# --------------------------------------------------------------------------------------
# Small encoder-decoder generator (this project's own design)
# --------------------------------------------------------------------------------------


class EncoderDecoderGenerator(GeneratorBase):
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
    upsampling : str
        ``"transposed"`` or ``"resize"`` (each decoder stage's transposed convolution
        becomes ``[Upsample ×2 nearest, Conv3×3]``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 64,
        norm: str = "instance",
        dropout: bool = False,
        upsampling: str = "transposed",
    ) -> None:
        super().__init__(in_channels, out_channels, ngf, norm, dropout, upsampling)
        bias = conv_bias(norm)

        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ngf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf, ngf * 2, kernel_size=4, stride=2, padding=1, bias=bias),
            norm_layer(norm, ngf * 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ngf * 2, ngf * 4, kernel_size=4, stride=2, padding=1, bias=bias),
            norm_layer(norm, ngf * 4),
            nn.LeakyReLU(0.2),
        ]
        for channels in (ngf * 4, ngf * 2):
            layers += [
                *upsampling_layers(upsampling, channels, channels // 2, bias, **_UP_4X4),
                norm_layer(norm, channels // 2),
                nn.ReLU(),
            ]
            if dropout:
                layers.append(nn.Dropout(0.5))
        layers += [
            *upsampling_layers(upsampling, ngf, out_channels, True, **_UP_4X4),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Translate a batch ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``."""
        return self.model(x)
