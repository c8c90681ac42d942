"""The PatchGAN discriminators, in the reference CycleGAN module layout."""

from __future__ import annotations

from torch import Tensor, nn

from ..choices import NORMS
from .layers import check_choice, check_count, conv_bias, norm_layer


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
        check_choice("norm", norm, NORMS)
        check_count("n_layers", n_layers, minimum=1)
        self.in_channels = in_channels
        self.ndf = ndf
        self.n_layers = n_layers
        self.norm = norm
        bias = conv_bias(norm)

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
                norm_layer(norm, next_channels),
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
        check_choice("norm", norm, NORMS)
        self.in_channels = in_channels
        self.ndf = ndf
        self.norm = norm
        bias = conv_bias(norm)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, ndf, kernel_size=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, bias=bias),
            norm_layer(norm, ndf * 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, bias=bias),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Score a batch ``(N, C, H, W)``; returns raw logits ``(N, 1, H, W)``."""
        return self.net(x)
