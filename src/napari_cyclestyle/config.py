"""Typed, validated configuration of a CycleGAN model and its training.

Everything is a plain dataclass so that configurations are cheap to import (no torch),
print readably and round-trip through JSON. Validation happens on construction: an
impossible value raises :class:`ConfigError` naming the field and what would be valid.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .choices import (
    BEST_METRICS,
    DEVICES,
    DISCRIMINATORS,
    GAN_MODES,
    GENERATORS,
    NORMS,
    PRECISIONS,
)


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the field and the fix."""


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(choices)}.")


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value!r}.")


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__} {value!r}.")


@dataclass
class ModelConfig:
    """Architecture of the four networks of a CycleGAN.

    Parameters
    ----------
    generator : str
        One of ``resnet_9blocks``, ``resnet_6blocks``, ``unet_256``, ``unet_128``,
        ``encoder_decoder``.
    discriminator : str
        ``basic`` (70×70 PatchGAN), ``n_layers`` (PatchGAN with ``n_layers_discriminator``
        layers) or ``pixel`` (1×1 PatchGAN).
    channels_a, channels_b : int
        Channel counts of domain A and domain B images. ``G`` maps
        ``channels_a → channels_b``, ``F`` maps ``channels_b → channels_a``.
    ngf, ndf : int
        Width (filters in the first layer) of the generators and discriminators.
    n_layers_discriminator : int
        Number of stride-2 layers of the ``n_layers`` PatchGAN.
    norm : str
        ``instance`` (the CycleGAN default), ``batch`` or ``none``.
    dropout : bool
        Dropout(0.5) in the generators' residual / middle U-Net blocks.
    """

    generator: str = "resnet_9blocks"
    discriminator: str = "basic"
    channels_a: int = 3
    channels_b: int = 3
    ngf: int = 64
    ndf: int = 64
    n_layers_discriminator: int = 3
    norm: str = "instance"
    dropout: bool = False

    def __post_init__(self) -> None:
        _check_choice("generator", self.generator, GENERATORS)
        _check_choice("discriminator", self.discriminator, DISCRIMINATORS)
        _check_choice("norm", self.norm, NORMS)
        for name in ("channels_a", "channels_b", "ngf", "ndf", "n_layers_discriminator"):
            _check_int(name, getattr(self, name))
            _check_positive(name, getattr(self, name))
        if not isinstance(self.dropout, bool):
            raise ConfigError(f"dropout must be true or false, got {self.dropout!r}.")


@dataclass
class TrainConfig:
    """How to train: schedule, losses, data sampling, checkpoints.

    Parameters
    ----------
    n_steps : int
        Steps at the initial learning rate.
    n_steps_decay : int
        Further steps over which the learning rate decays linearly to zero. The whole run
        is ``n_steps + n_steps_decay`` steps.
    batch_size, crop_size : int
        Patches per step and their side length in pixels.
    learning_rate, beta1, beta2 : float
        Adam settings for all four networks (paper: 2e-4, 0.5, 0.999).
    gan_mode : str
        ``lsgan`` (least squares, the paper's choice) or ``vanilla`` (log-likelihood).
    lambda_cycle_a, lambda_cycle_b : float
        Weights of ‖F(G(a)) − a‖₁ and ‖G(F(b)) − b‖₁.
    lambda_identity : float
        Identity loss weight, relative to the cycle weights (paper: 0.5). Used only
        when both domains have the same channel count.
    pool_size : int
        Size of the history pool of generated images shown to the discriminators
        (0 turns the pool off).
    flip : bool
        Random horizontal/vertical flips and 90° rotations of training patches.
    seed : int
        Seed of every random number generator used by training.
    deterministic : bool
        Ask torch for deterministic algorithms (bit-exact resume, slower on GPU).
    device : str
        ``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda`` or ``mps``.
    checkpoint_every : int
        Write a training checkpoint every this many steps (0: only at the end/stop).
    preview_every : int
        Attach preview images to an event every this many steps (0: never).
    log_every : int
        Read the losses back from the device (a host sync) every this many steps.
    batched_forward : bool
        Run each generator and discriminator on one concatenated batch per phase of a
        step instead of one call per image set: the same mathematics with fewer, larger
        operations (faster on small images). Ignored with batch norm, whose statistics
        would mix the sets.
    precision : str
        ``auto``: mixed precision on CUDA (bf16 where supported, else fp16 with a
        gradient scaler), fp32 elsewhere; ``fp32`` (IEEE float32: on CUDA without
        cuDNN's default TF32 rounding); ``bf16``; ``fp16`` (CUDA only).
    cudnn_benchmark : bool
        Let cuDNN pick the fastest convolution algorithms (CUDA; not with
        ``deterministic``).
    compile : bool
        Compile the networks with ``torch.compile``: faster steps once compiled, after a
        minute or more of compiling before the first step (and again for a new batch
        shape). A network that cannot be compiled trains uncompiled, with a warning.
    channels_last : bool
        Keep the networks' weights and the training batches in channels-last memory
        order (NHWC). Tensor cores' convolutions prefer it; on the CPU it is slower.
    validation_fraction : float
        Fraction of each domain's image planes kept out of training to validate on
        (0: none, unless validation images are given to the trainer).
    validation_every : int
        Measure the validation metrics every this many steps, and at the end (0: only
        at the end).
    validation_patches : int
        Fixed patches per domain that validation measures on (chosen once).
    keep_best : bool
        With validation data, also write ``<name>.best.safetensors`` whenever
        ``best_metric`` reaches its best value so far.
    best_metric : str
        ``auto`` (``ssim`` with paired validation data, else ``cycle``), ``cycle``
        (lowest mean cycle error), ``realism`` (highest mean realism), ``psnr`` or
        ``ssim`` (highest, paired data only).
    health_watch : bool
        Watch the losses and validation measures for a failing training and warn,
        once per kind of failure, with advice.
    """

    n_steps: int = 100
    n_steps_decay: int = 100
    batch_size: int = 1
    crop_size: int = 256
    learning_rate: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    gan_mode: str = "lsgan"
    lambda_cycle_a: float = 10.0
    lambda_cycle_b: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    flip: bool = True
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    checkpoint_every: int = 500
    preview_every: int = 50
    log_every: int = 10
    batched_forward: bool = True
    precision: str = "auto"
    cudnn_benchmark: bool = True
    compile: bool = False
    channels_last: bool = False
    # Validation, the best model and the health watch (issue 20).
    validation_fraction: float = 0.0
    validation_every: int = 100
    validation_patches: int = 8
    keep_best: bool = True
    best_metric: str = "auto"
    health_watch: bool = True

    def __post_init__(self) -> None:
        _check_choice("gan_mode", self.gan_mode, GAN_MODES)
        _check_choice("precision", self.precision, PRECISIONS)
        for name in (
            "flip",
            "deterministic",
            "batched_forward",
            "cudnn_benchmark",
            "compile",
            "channels_last",
            "keep_best",
            "health_watch",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        _check_choice("device", self.device, DEVICES)
        _check_choice("best_metric", self.best_metric, BEST_METRICS)
        _check_positive("validation_fraction", self.validation_fraction, allow_zero=True)
        if self.validation_fraction >= 1:
            raise ConfigError(
                f"validation_fraction must be below 1, got {self.validation_fraction!r}."
            )
        for name in ("n_steps", "n_steps_decay", "pool_size", "seed"):
            _check_int(name, getattr(self, name))
            _check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("checkpoint_every", "preview_every", "validation_every"):
            _check_int(name, getattr(self, name))
            _check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("batch_size", "crop_size", "log_every", "validation_patches"):
            _check_int(name, getattr(self, name))
            _check_positive(name, getattr(self, name))
        if self.n_steps + self.n_steps_decay == 0:
            raise ConfigError("n_steps + n_steps_decay must be at least 1.")
        if self.crop_size < 16:
            raise ConfigError(f"crop_size must be at least 16 pixels, got {self.crop_size}.")
        _check_positive("learning_rate", self.learning_rate)
        for name in ("lambda_cycle_a", "lambda_cycle_b", "lambda_identity"):
            _check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            _check_positive(name, value, allow_zero=True)
            if value >= 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}.")

    @property
    def total_steps(self) -> int:
        """All steps of the run: constant phase plus decay phase."""
        return self.n_steps + self.n_steps_decay


@dataclass
class Config:
    """A whole CycleGAN configuration: the model and its training."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = _from_dict(ModelConfig, self.model, "model")
        if isinstance(self.train, dict):
            self.train = _from_dict(TrainConfig, self.train, "train")

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as nested plain dicts."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Return the configuration as a JSON string."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build a configuration from nested dicts, validating every value.

        Raises
        ------
        ConfigError
            On unknown keys, wrong types or impossible values.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"A configuration must be a mapping, got {type(data).__name__}.")
        unknown = set(data) - {"model", "train"}
        if unknown:
            raise ConfigError(
                f"Unknown configuration section(s) {sorted(unknown)}; use 'model' and 'train'."
            )
        return cls(
            model=_from_dict(ModelConfig, data.get("model", {}), "model"),
            train=_from_dict(TrainConfig, data.get("train", {}), "train"),
        )

    @classmethod
    def from_json(cls, text: str) -> Config:
        """Parse a JSON string written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"The configuration is not valid JSON: {error}") from error
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        """Read a configuration from a ``.json`` or ``.yaml``/``.yml`` file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as error:
            raise ConfigError(f"Cannot read configuration file {path}: {error}") from error
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as error:
                raise ConfigError(f"{path} is not valid YAML: {error}") from error
            parse, argument = cls.from_dict, data
        else:
            parse, argument = cls.from_json, text
        try:
            return parse(argument)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from error


def _from_dict(kind: type, data: Any, section: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"Section '{section}' must be a mapping, got {type(data).__name__}.")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"Unknown {section} setting(s) {sorted(unknown)}; valid ones are {sorted(names)}."
        )
    return kind(**data)
