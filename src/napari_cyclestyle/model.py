"""A trained CycleGAN: the two generators and what is needed to apply them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .choices import MODES
from .config import ModelConfig
from .intensity import IntensityNorm
from .networks import build_discriminator, build_generator

_DIRECTION_ALIASES = {
    "atob": "AtoB",
    "a2b": "AtoB",
    "g": "AtoB",
    "btoa": "BtoA",
    "b2a": "BtoA",
    "f": "BtoA",
}


def parse_direction(direction: str) -> str:
    """Return ``"AtoB"`` or ``"BtoA"`` for a direction or its alias (``"G"``, ``"F"``).

    Raises
    ------
    ValueError
        If ``direction`` is none of them.
    """
    key = str(direction).strip().lower().replace("_", "").replace("-", "")
    if key not in _DIRECTION_ALIASES:
        raise ValueError(
            f"Unknown direction {direction!r}; use 'AtoB' (alias 'G') or 'BtoA' (alias 'F')."
        )
    return _DIRECTION_ALIASES[key]


def build_network(config: ModelConfig, name: str) -> nn.Module:
    """Build untrained network ``name`` for ``config``: ``G`` (A→B), ``F`` (B→A), ``D_A``
    or ``D_B``."""
    if name in ("G", "F"):
        channels = (config.channels_a, config.channels_b)
        source, target = channels if name == "G" else channels[::-1]
        return build_generator(
            config.generator,
            source,
            target,
            ngf=config.ngf,
            norm=config.norm,
            dropout=config.dropout,
            upsampling=config.upsampling,
        )
    return build_discriminator(
        config.discriminator,
        config.channels_a if name == "D_A" else config.channels_b,
        config.ndf,
        config.n_layers_discriminator,
        config.norm,
        spectral_norm=config.spectral_norm,
    )


def build_generators(config: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """Build untrained ``G`` (A→B) and ``F`` (B→A) for ``config``."""
    return build_network(config, "G"), build_network(config, "F")


def build_discriminators(config: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """Build untrained ``D_A`` and ``D_B`` for ``config``."""
    return build_network(config, "D_A"), build_network(config, "D_B")


@dataclass
class CycleStyleModel:
    """Generators ``G`` (A→B) and ``F`` (B→A) with their configuration.

    Attributes
    ----------
    config : ModelConfig
        Architecture and channel counts.
    generator_ab, generator_ba : nn.Module or None
        ``G`` and ``F``. A reference CycleGAN checkpoint may hold only one of them.
    norm_a, norm_b : IntensityNorm or None
        How each domain's values map to [-1, 1]; None for imported models, whose
        inputs are then normalised from their own dtype/range at translation time.
    info : dict
        Provenance: steps trained, final losses, package version, source files.
    """

    config: ModelConfig
    generator_ab: nn.Module | None
    generator_ba: nn.Module | None
    norm_a: IntensityNorm | None = None
    norm_b: IntensityNorm | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def generator(self, direction: str) -> nn.Module:
        """Return ``G`` for ``"AtoB"``/``"G"`` or ``F`` for ``"BtoA"``/``"F"``.

        Raises
        ------
        ValueError
            If the model holds no generator for that direction.
        """
        direction = parse_direction(direction)
        network = self.generator_ab if direction == "AtoB" else self.generator_ba
        if network is None:
            name = "G" if direction == "AtoB" else "F"
            reason = self._one_sided_reason() if name == "F" else ""
            raise ValueError(
                f"This model has no {direction} generator ({name}){reason}; it can "
                f"translate {', '.join(self.directions)}: use that direction, or train a "
                "model with both (mode 'cyclegan')."
            )
        return network

    def _one_sided_reason(self) -> str:
        """Why F is missing, when the provenance says: a one-sided (CUT) run."""
        mode = self.info.get("mode")  # from a file: used only when it is a mode's name
        if isinstance(mode, str) and mode in MODES and mode != "cyclegan":
            return f": the model was trained one-sided (CUT, mode {mode!r}), which trains G alone"
        return ""

    @property
    def directions(self) -> list[str]:
        """Directions this model can translate."""
        found = [("AtoB", self.generator_ab), ("BtoA", self.generator_ba)]
        return [name for name, network in found if network is not None]

    def channels(self, direction: str) -> tuple[int, int]:
        """(input channels, output channels) of a direction."""
        if parse_direction(direction) == "AtoB":
            return self.config.channels_a, self.config.channels_b
        return self.config.channels_b, self.config.channels_a

    def norms(self, direction: str) -> tuple[IntensityNorm | None, IntensityNorm | None]:
        """(source, target) intensity normalisations of a direction."""
        if parse_direction(direction) == "AtoB":
            return self.norm_a, self.norm_b
        return self.norm_b, self.norm_a

    def describe(self) -> str:
        """A few lines for people: architecture, channels, domains, training."""
        c = self.config
        lines = [
            f"generator: {c.generator} (ngf {c.ngf}, norm {c.norm}"
            + (", dropout" if c.dropout else "")
            + (f", {c.upsampling} up-sampling" if c.upsampling != "transposed" else "")
            + ")",
            f"channels: A {c.channels_a}, B {c.channels_b}",
            f"directions: {', '.join(self.directions)}",
        ]
        if self.generator_ab is None:
            lines.append("not available: G (A → B)")
        if self.generator_ba is None:
            lines.append(f"not available: F (B → A){self._one_sided_reason()}")
        for name, norm in (("A", self.norm_a), ("B", self.norm_b)):
            if norm is None:
                lines.append(f"domain {name}: normalised from each input's own range")
            else:
                ranges = ", ".join(
                    f"[{lo:g}, {hi:g}]" for lo, hi in zip(norm.low, norm.high, strict=True)
                )
                lines.append(f"domain {name}: {norm.dtype}, {norm.mode} range {ranges}")
        if "steps" in self.info:
            lines.append(f"trained steps: {self.info['steps']}")
        if self.info.get("losses"):
            losses = ", ".join(f"{k} {v:.3g}" for k, v in self.info["losses"].items())
            lines.append(f"final losses: {losses}")
        best = (self.info.get("validation") or {}).get("best")
        # info comes from a file: describe it only when it has the expected form
        if isinstance(best, dict) and isinstance(best.get("value"), int | float):
            lines.append(
                f"best validation: {best.get('metric')} {best['value']:.3g} at step "
                f"{best.get('step')}"
            )
        if "source" in self.info:
            lines.append(f"source: {self.info['source']}")
        if "version" in self.info:
            lines.append(f"written by napari-cyclestyle {self.info['version']}")
        return "\n".join(lines)
