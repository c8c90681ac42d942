"""Generator and discriminator networks, their registry and weight initialisation.

- :mod:`.generators`: the ResNet and U-Net generators in the reference CycleGAN module
  layout (so reference checkpoints load unchanged), and a small encoder-decoder;
- :mod:`.discriminators`: the PatchGAN discriminators;
- :mod:`.registry`: a generator's name → its builder and facts (size multiple, minimum
  input size); :func:`build_generator` and :func:`build_discriminator`;
- :mod:`.layers`: normalisation layers by name, :func:`init_weights`.

Reading reference ``.pth`` files and inferring their architecture is
:mod:`napari_cyclestyle.reference`. This package imports torch; the package root imports
it lazily.
"""

from __future__ import annotations

from ..choices import DISCRIMINATORS as DISCRIMINATOR_NAMES
from ..choices import GENERATORS as GENERATOR_NAMES
from ..choices import NORMS as NORM_NAMES
from .discriminators import NLayerDiscriminator, PixelDiscriminator
from .generators import (
    EncoderDecoderGenerator,
    ResnetBlock,
    ResnetGenerator,
    UnetGenerator,
    UnetSkipBlock,
)
from .layers import init_weights
from .registry import (
    GENERATOR_FACTS,
    GeneratorFacts,
    build_discriminator,
    build_generator,
    generator_facts,
    generator_from_spec,
    minimum_size,
    size_multiple,
)

__all__ = [
    "DISCRIMINATOR_NAMES",
    "GENERATOR_FACTS",
    "GENERATOR_NAMES",
    "NORM_NAMES",
    "EncoderDecoderGenerator",
    "GeneratorFacts",
    "NLayerDiscriminator",
    "PixelDiscriminator",
    "ResnetBlock",
    "ResnetGenerator",
    "UnetGenerator",
    "UnetSkipBlock",
    "build_discriminator",
    "build_generator",
    "generator_facts",
    "generator_from_spec",
    "init_weights",
    "minimum_size",
    "size_multiple",
]
