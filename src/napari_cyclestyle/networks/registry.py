"""The networks by name: each generator's builder and its facts.

A generator's name maps to a :class:`GeneratorFacts` entry (its family, depth, size
multiple and minimum input size, and how to build it), so code asks the registry rather
than testing names. The names themselves are listed once, in
:mod:`napari_cyclestyle.choices`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from ..choices import DISCRIMINATORS, GENERATORS, NORMS, UPSAMPLINGS
from .discriminators import NLayerDiscriminator, PixelDiscriminator
from .generators import EncoderDecoderGenerator, ResnetGenerator, UnetGenerator
from .layers import check_choice, check_count, spectral_normalized


@dataclass(frozen=True)
class GeneratorFacts:
    """What a generator's name stands for.

    Attributes
    ----------
    name : str
        The name (one of :data:`napari_cyclestyle.choices.GENERATORS`).
    family : str
        ``"resnet"``, ``"unet"`` or ``"encoder_decoder"``: the module layout.
    depth : int
        Residual blocks (ResNet) or down-sampling levels (U-Net); 3 stride-2 stages for
        the encoder-decoder.
    size_multiple : int
        Height and width must be multiples of it for the output to have the input's size.
    minimum_size : int
        The smallest height and width the generator takes: its innermost normalised
        layer needs more than one pixel. Twice the size multiple for the ResNet and
        encoder-decoder generators, the size multiple for the U-Nets (whose innermost
        block has no norm on its way down).
    builder : callable
        ``builder(in_channels, out_channels, ngf=, norm=, dropout=, upsampling=)``
        returns the network.
    """

    name: str
    family: str
    depth: int
    size_multiple: int
    minimum_size: int
    builder: Callable[..., nn.Module] = field(repr=False, compare=False)

    def build(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int,
        norm: str,
        dropout: bool,
        upsampling: str = "transposed",
    ) -> nn.Module:
        """Build this generator (arguments checked by :func:`build_generator`)."""
        return self.builder(
            in_channels, out_channels, ngf=ngf, norm=norm, dropout=dropout, upsampling=upsampling
        )


def _resnet(name: str, n_blocks: int) -> GeneratorFacts:
    builder = functools.partial(ResnetGenerator, n_blocks=n_blocks)
    return GeneratorFacts(name, "resnet", n_blocks, 4, minimum_size=8, builder=builder)


def _unet(name: str, num_downs: int) -> GeneratorFacts:
    builder = functools.partial(UnetGenerator, num_downs=num_downs)
    multiple = 2**num_downs
    return GeneratorFacts(name, "unet", num_downs, multiple, multiple, builder=builder)


GENERATOR_FACTS: Mapping[str, GeneratorFacts] = {
    facts.name: facts
    for facts in (
        _resnet("resnet_9blocks", 9),
        _resnet("resnet_6blocks", 6),
        _unet("unet_256", 8),
        _unet("unet_128", 7),
        GeneratorFacts(
            "encoder_decoder", "encoder_decoder", 3, 8, 16, builder=EncoderDecoderGenerator
        ),
    )
}
assert tuple(GENERATOR_FACTS) == GENERATORS, "the registry and choices.GENERATORS disagree"


def generator_facts(name: str) -> GeneratorFacts:
    """Return the registry entry of generator ``name``.

    Raises
    ------
    ValueError
        If ``name`` is unknown.
    """
    check_choice("generator", name, GENERATORS)
    return GENERATOR_FACTS[name]


def generators_of(family: str) -> dict[int, str]:
    """Map depth to name for the generators of ``family`` (e.g. ``{9: "resnet_9blocks"}``)."""
    return {
        facts.depth: facts.name for facts in GENERATOR_FACTS.values() if facts.family == family
    }


def build_generator(
    name: str,
    in_channels: int,
    out_channels: int,
    ngf: int = 64,
    norm: str = "instance",
    dropout: bool = False,
    upsampling: str = "transposed",
) -> nn.Module:
    """Build a generator by name (weights are PyTorch defaults; see
    :func:`~napari_cyclestyle.networks.init_weights`).

    Parameters
    ----------
    name : str
        One of :data:`GENERATORS`.
    in_channels, out_channels : int
        Channels of the input and output images (any positive counts).
    ngf : int
        Filters of the first convolution.
    norm : str
        One of :data:`NORMS`.
    dropout : bool
        Dropout(0.5) in the residual blocks (ResNet), middle blocks (U-Net) or first two
        decoder stages (encoder-decoder).
    upsampling : str
        One of :data:`UPSAMPLINGS`: ``"transposed"`` (the reference layout) or
        ``"resize"`` (nearest ×2 then a 3×3 convolution).

    Returns
    -------
    nn.Module
        The generator, mapping ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``
        in ``[-1, 1]`` when ``H`` and ``W`` are multiples of :func:`size_multiple`.

    Raises
    ------
    ValueError
        If ``name``, ``norm`` or ``upsampling`` is unknown or a count is not a positive
        integer.
    """
    check_choice("generator", name, GENERATORS)
    check_choice("norm", norm, NORMS)
    check_choice("upsampling", upsampling, UPSAMPLINGS)
    check_count("in_channels", in_channels)
    check_count("out_channels", out_channels)
    check_count("ngf", ngf)
    facts = GENERATOR_FACTS[name]
    return facts.build(in_channels, out_channels, ngf, norm, bool(dropout), upsampling)


def build_discriminator(
    name: str,
    in_channels: int,
    ndf: int = 64,
    n_layers: int = 3,
    norm: str = "instance",
    spectral_norm: bool = False,
) -> nn.Module:
    """Build a discriminator by name (weights are PyTorch defaults; see
    :func:`~napari_cyclestyle.networks.init_weights`).

    Parameters
    ----------
    name : str
        One of :data:`DISCRIMINATORS`: ``"basic"`` (70×70 PatchGAN, always 3 layers),
        ``"n_layers"`` (PatchGAN with ``n_layers``) or ``"pixel"`` (1×1 PatchGAN).
    in_channels : int
        Channels of the judged images.
    ndf : int
        Filters of the first convolution.
    n_layers : int
        Stride-2 convolutions of the ``"n_layers"`` PatchGAN; ignored otherwise.
    norm : str
        One of :data:`NORMS`.
    spectral_norm : bool
        Spectral normalisation of every convolution (see
        :func:`~napari_cyclestyle.networks.layers.spectral_normalized`).

    Returns
    -------
    nn.Module
        The discriminator, returning raw logits of shape ``(N, 1, h, w)``.

    Raises
    ------
    ValueError
        If ``name`` or ``norm`` is unknown or a count is not a positive integer.
    """
    check_choice("discriminator", name, DISCRIMINATORS)
    check_choice("norm", norm, NORMS)
    check_count("in_channels", in_channels)
    check_count("ndf", ndf)
    if name == "basic":
        network = NLayerDiscriminator(in_channels, ndf, n_layers=3, norm=norm)
    elif name == "n_layers":
        check_count("n_layers", n_layers)
        network = NLayerDiscriminator(in_channels, ndf, n_layers=n_layers, norm=norm)
    else:
        network = PixelDiscriminator(in_channels, ndf, norm=norm)
    return spectral_normalized(network) if spectral_norm else network


def size_multiple(name: str) -> int:
    """Return the number that image height and width must be multiples of.

    Only then does the generator's output have the input's size.

    Parameters
    ----------
    name : str
        One of :data:`GENERATORS`.

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
    return generator_facts(name).size_multiple


def generator_from_spec(spec: Mapping) -> nn.Module:
    """Build the generator a
    :func:`~napari_cyclestyle.reference.infer_generator_spec` result describes."""
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
    return generator_facts(name).minimum_size
