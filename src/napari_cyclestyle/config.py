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
    DIFF_AUGMENTS,
    DISCRIMINATORS,
    GAN_MODES,
    GENERATORS,
    MODES,
    NORMS,
    PRECISIONS,
    UPSAMPLINGS,
)
from .presets import PAPER
from .settings import (
    ConfigError,
    check_choice,
    check_choices,
    check_int,
    check_positive,
    setting,
    settings,
)

__all__ = ["Config", "ConfigError", "ModelConfig", "TrainConfig", "settings"]

# The PatchNCE weight each one-sided mode trains with when lambda_nce is 0: the CUT
# paper's (Park et al. 2020), 1 for CUT and 10 for FastCUT.
MODE_NCE_WEIGHTS = {"cut": 1.0, "fastcut": 10.0}


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
    upsampling : str
        How the generators up-sample: ``transposed`` (stride-2 transposed convolutions,
        the paper's and the reference's layout) or ``resize`` (nearest-neighbour ×2,
        then a 3×3 convolution: Odena et al. 2016's cure for checkerboard artefacts;
        the default, chosen by ``benchmarks/quality.py``). Model files written before
        this option existed, and reference checkpoints, load as ``transposed``.
    spectral_norm : bool
        Spectral normalisation (Miyato et al. 2018) of every convolution of the
        discriminators, keeping each layer's largest singular value near 1.
    """

    generator: str = setting("resnet_9blocks", "generator architecture", choices=GENERATORS)
    discriminator: str = setting(
        "basic", "PatchGAN discriminator (basic = 70x70)", choices=DISCRIMINATORS
    )
    channels_a: int = setting(3, "channels of domain A images")
    channels_b: int = setting(3, "channels of domain B images")
    ngf: int = setting(64, "generator width (filters)", bounds=(1, 512))
    ndf: int = setting(64, "discriminator width (filters)", bounds=(1, 512))
    n_layers_discriminator: int = setting(3, "layers of the n_layers discriminator")
    norm: str = setting("instance", "normalisation layers", choices=NORMS)
    dropout: bool = setting(False, "dropout in the generators")
    # Methods beyond the paper's recipe (issue 19); resize up-sampling is the default.
    upsampling: str = setting(
        "resize",
        "generator up-sampling: transposed convolutions (the paper's) or resize = nearest "
        "x2 then a 3x3 convolution (no checkerboard artefacts)",
        choices=UPSAMPLINGS,
    )
    spectral_norm: bool = setting(False, "spectral normalisation of the discriminators")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("channels_a", "channels_b", "ngf", "ndf", "n_layers_discriminator"):
            check_int(name, getattr(self, name))
            check_positive(name, getattr(self, name))
        for name in ("dropout", "spectral_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}.")


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
        Adam settings for all four networks (paper: 2e-4, 0.5, 0.999). The default
        learning rate is 5e-4, chosen by ``benchmarks/quality.py`` together with the
        weight average (``ema_decay``) that smooths its steps.
    gan_mode : str
        ``lsgan`` (least squares, the paper's choice), ``vanilla`` (log-likelihood) or
        ``hinge`` (Lim & Ye 2017; Miyato et al. 2018: the discriminator minimises
        ``relu(1 - D(real)) + relu(1 + D(fake))``, the generator ``-D(fake)``).
    lambda_cycle_a, lambda_cycle_b : float
        Weights of ‖F(G(a)) − a‖₁ and ‖G(F(b)) − b‖₁.
    lambda_identity : float
        Identity loss weight, relative to the cycle weights (paper: 0.5). Used only
        when both domains have the same channel count, and not in a one-sided ``mode``.
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
        would mix the sets. On the CPU with two threads or more, small generators run
        the step's two cycles side by side instead (:mod:`napari_cyclestyle.cycle_halves`).
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
    ema_decay : float
        Keep an exponential moving average of G's and F's weights with this decay
        (0: off). The model file and the previews then hold the averaged weights; the
        checkpoint holds both. The decay ramps up as ``min(ema_decay, (1 + t) / (10 +
        t))`` over the first updates ``t``, so the average does not remember the
        random initial weights. Default 0.995 (chosen by ``benchmarks/quality.py``).
    lambda_r1 : float
        Weight γ of the R1 penalty (Mescheder et al. 2018), ``γ / 2 · E‖∇D(real)‖²`` on
        each discriminator's real images (0: off). It needs a double backward, which
        ``torch.compile`` does not support: with ``compile`` the discriminators then
        run uncompiled.
    r1_every : int
        Compute R1 every this many steps only, weighted by it (StyleGAN2's lazy
        regularisation; 1: every step).
    lambda_structure : float
        Weight of a structure-preserving term for G and F (0: off): one minus the local
        correlation (SSIM's structure term, 7×7 Gaussian windows) between the
        luminance of a network's input and of its output. It allows any locally
        monotone-increasing intensity mapping and punishes inverted content; it
        applies whatever the domains' channel counts (unlike identity loss). Default 1
        (chosen by ``benchmarks/quality.py``).
    diff_augment : str
        DiffAugment policy (Zhao et al. 2020): a comma-separated subset of ``color``,
        ``translation`` and ``cutout`` ("": off). Real and generated images are
        augmented alike, differentiably, before every discriminator call.
    mode : str
        What the run trains. ``cyclegan`` (the default): G and F, D_A and D_B, with the
        cycle and identity losses. ``cut`` (CUT, Park et al. 2020): G and D_B alone,
        without F, D_A or a cycle; G's loss is its adversarial loss plus PatchNCE of
        ``a → G(a)`` (``NCE_A``) and, as an identity term, of ``b → G(b)``
        (``NCE_identity_B``), averaged as the authors' code does: ``λ_NCE · (NCE(a,
        G(a)) + NCE(b, G(b))) / 2``. ``fastcut``: the same without the identity term
        (FastCUT's flip-equivariance term is not implemented). A one-sided run's model
        file holds G alone: it translates A→B only. It needs both domains to have the
        same channel count and a resnet or encoder_decoder generator; ``lambda_nce`` 0
        stands for the mode's own weight (cut 1, fastcut 10); the cycle and identity
        weights are unused and ``lambda_structure`` applies to G alone. The history
        pool follows ``pool_size``: CUT trains without one (``pool_size=0``, as
        ``presets.CUT`` and ``train --preset cut`` set).
    lambda_nce : float
        Weight of CUT's PatchNCE loss (Park et al. 2020) for G and F, beside the cycle
        loss (0: off): each generator's encoder embeds its input and its output, and
        each output patch must match the input patch at its place rather than other
        patches of the image. Needs domains with the same channel count and a resnet
        or encoder_decoder generator. In the one-sided modes (``mode``) it is G's
        PatchNCE weight, and 0 means the mode's (cut 1, fastcut 10).
    nce_layers : str
        Comma-separated indices of the generator's encoder layers PatchNCE reads
        ("": CUT's 0, 4, 8, 12, 16, those the encoder has).
    nce_patches : int
        Positions sampled per image and layer (CUT: 256).
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
        ``auto`` (``ssim`` with paired validation data, else ``cycle``, or ``realism``
        in a one-sided ``mode``), ``cycle`` (lowest mean cycle error; not in a one-sided
        mode, which has no cycle), ``realism`` (highest mean realism), ``psnr`` or
        ``ssim`` (highest, paired data only).
    health_watch : bool
        Watch the losses and validation measures for a failing training and warn,
        once per kind of failure, with advice.
    """

    n_steps: int = setting(100, "steps at the initial learning rate", bounds=(1, 10_000_000))
    n_steps_decay: int = setting(
        100, "further steps decaying the rate to zero", bounds=(0, 10_000_000)
    )
    batch_size: int = setting(1, "patches per step", bounds=(1, 1024))
    crop_size: int = setting(256, "side of the training patches", bounds=(16, 4096))
    learning_rate: float = setting(
        5e-4, "Adam's learning rate (the paper's: 2e-4)", bounds=(1e-7, 1.0)
    )
    beta1: float = setting(0.5, "Adam's beta1")
    beta2: float = setting(0.999, "Adam's beta2")
    gan_mode: str = setting("lsgan", "adversarial loss", choices=GAN_MODES)
    lambda_cycle_a: float = setting(10.0, "weight of ‖F(G(a)) − a‖₁", bounds=(0, 1000))
    lambda_cycle_b: float = setting(10.0, "weight of ‖G(F(b)) − b‖₁", bounds=(0, 1000))
    lambda_identity: float = setting(
        0.5,
        "identity weight relative to the cycle weight; used only when both domains have "
        "the same channel count",
        bounds=(0, 100),
    )
    pool_size: int = setting(50, "history pool of fakes (0: off)")
    flip: bool = setting(True, "random flips/rotations")
    seed: int = setting(0, "random seed", bounds=(0, 2**31 - 1))
    deterministic: bool = setting(False, "deterministic torch algorithms")
    device: str = setting("auto", "where to train", choices=DEVICES)
    checkpoint_every: int = setting(
        500, "write a checkpoint every N steps (0: at the end)", bounds=(0, 10_000_000)
    )
    preview_every: int = setting(
        50, "write a preview every N steps (needs --preview-dir)", bounds=(0, 1_000_000)
    )
    log_every: int = setting(10, "read the losses every N steps", bounds=(1, 1_000_000))
    batched_forward: bool = setting(True, "one call per network and phase of a step")
    precision: str = setting(
        "auto",
        "arithmetic: auto is bf16 (else fp16) mixed precision on CUDA, fp32 elsewhere; fp32 "
        "is IEEE float32 everywhere",
        choices=PRECISIONS,
    )
    cudnn_benchmark: bool = setting(
        True, "let cuDNN time its convolution algorithms and keep the fastest (CUDA)"
    )
    compile: bool = setting(
        False,
        "compile the networks with torch.compile (faster steps after a minute or more of "
        "compiling)",
    )
    channels_last: bool = setting(
        False, "channels-last (NHWC) weights and batches: for tensor cores; slower on the CPU"
    )
    # Methods beyond the paper's recipe (issue 19); EMA and structure on by default.
    ema_decay: float = setting(
        0.995,
        "decay of a moving average of the generators' weights, which the model file and "
        "previews then use (0: off)",
        bounds=(0.0, 0.9999),
    )
    lambda_r1: float = setting(
        0.0, "weight of the R1 gradient penalty on real images (0: off)", bounds=(0, 1000)
    )
    r1_every: int = setting(1, "compute R1 every N steps (lazy R1)", bounds=(1, 1000))
    lambda_structure: float = setting(
        1.0,
        "weight of 1 - local luminance correlation between input and output: keeps "
        "content, allows other intensities, works between any channel counts (0: off)",
        bounds=(0, 1000),
    )
    diff_augment: str = setting(
        "", "DiffAugment policy: comma-separated color, translation, cutout (empty: off)"
    )
    mode: str = setting(
        "cyclegan",
        "what to train: cyclegan = G and F with the cycle loss; cut = G and D_B alone "
        "with PatchNCE on A and on B (identity), no F (the model translates A to B only); "
        "fastcut = cut without the identity term. cut and fastcut need equal channel "
        "counts",
        choices=MODES,
    )
    lambda_nce: float = setting(
        0.0,
        "weight of CUT's PatchNCE loss beside the cycle loss (0: off; in mode cut or "
        "fastcut G's PatchNCE weight, 0 meaning the mode's: 1 or 10; needs equal channel "
        "counts and a resnet or encoder_decoder generator)",
        bounds=(0, 1000),
    )
    nce_layers: str = setting(
        "", "encoder layers PatchNCE reads, e.g. 0,4,8,12,16 (empty: CUT's choice)"
    )
    nce_patches: int = setting(256, "positions PatchNCE samples per layer", bounds=(1, 4096))
    # Validation, the best model and the health watch (issue 20).
    validation_fraction: float = setting(
        0.0,
        "keep this fraction of each domain's image planes out of training to validate on",
        bounds=(0, 0.9),
    )
    validation_every: int = setting(
        100, "validate every N steps and at the end (0: at the end)", bounds=(0, 10_000_000)
    )
    validation_patches: int = setting(8, "fixed validation patches per domain", bounds=(1, 1024))
    keep_best: bool = setting(
        True, "with validation data, keep <stem>.best.safetensors at the best best_metric"
    )
    best_metric: str = setting(
        "auto",
        "what the best model is best at: auto is ssim with paired validation data, else cycle",
        choices=BEST_METRICS,
    )
    health_watch: bool = setting(True, "warn, with advice, when training looks like failing")

    def __post_init__(self) -> None:
        check_choices(self)
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
        check_positive("validation_fraction", self.validation_fraction, allow_zero=True)
        if self.validation_fraction >= 1:
            raise ConfigError(
                f"validation_fraction must be below 1, got {self.validation_fraction!r}."
            )
        for name in ("n_steps", "n_steps_decay", "pool_size", "seed"):
            check_int(name, getattr(self, name))
            check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("checkpoint_every", "preview_every", "validation_every"):
            check_int(name, getattr(self, name))
            check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("batch_size", "crop_size", "log_every", "validation_patches"):
            check_int(name, getattr(self, name))
            check_positive(name, getattr(self, name))
        if self.n_steps + self.n_steps_decay == 0:
            raise ConfigError("n_steps + n_steps_decay must be at least 1.")
        if self.crop_size < 16:
            raise ConfigError(f"crop_size must be at least 16 pixels, got {self.crop_size}.")
        check_positive("learning_rate", self.learning_rate)
        for name in ("lambda_cycle_a", "lambda_cycle_b", "lambda_identity"):
            check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            check_positive(name, value, allow_zero=True)
            if value >= 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}.")
        self._check_methods()

    def _check_methods(self) -> None:
        check_positive("ema_decay", self.ema_decay, allow_zero=True)
        if self.ema_decay >= 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}.")
        for name in ("lambda_r1", "lambda_structure"):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_int("r1_every", self.r1_every)
        check_positive("r1_every", self.r1_every)
        if not isinstance(self.diff_augment, str):
            raise ConfigError(f"diff_augment must be a string, got {self.diff_augment!r}.")
        for policy in self.augment_policies:
            check_choice("diff_augment", policy, DIFF_AUGMENTS)
        check_positive("lambda_nce", self.lambda_nce, allow_zero=True)
        check_int("nce_patches", self.nce_patches)
        check_positive("nce_patches", self.nce_patches)
        if not isinstance(self.nce_layers, str):
            raise ConfigError(f"nce_layers must be a string, got {self.nce_layers!r}.")
        try:
            layers = self.nce_layer_indices
        except ValueError as error:
            raise ConfigError(
                f"nce_layers={self.nce_layers!r} is not a comma-separated list of layer "
                "indices, e.g. 0,4,8."
            ) from error
        if any(index < 0 for index in layers):
            raise ConfigError(f"nce_layers must be indices >= 0, got {self.nce_layers!r}.")
        if self.one_sided and self.best_metric == "cycle":
            raise ConfigError(
                f"best_metric='cycle' needs F to close the cycle, which mode={self.mode!r} "
                "does not train; choose best_metric 'auto' or 'realism' (or 'psnr'/'ssim' "
                "with paired validation data), or mode 'cyclegan'."
            )

    @property
    def total_steps(self) -> int:
        """All steps of the run: constant phase plus decay phase."""
        return self.n_steps + self.n_steps_decay

    @property
    def one_sided(self) -> bool:
        """Whether the mode trains G and D_B alone (``cut``, ``fastcut``): no F, no cycle."""
        return self.mode != "cyclegan"

    @property
    def network_names(self) -> tuple[str, ...]:
        """The networks the mode trains, by the names checkpoints use."""
        return ("G", "D_B") if self.one_sided else ("G", "F", "D_A", "D_B")

    @property
    def nce_weight(self) -> float:
        """The PatchNCE weight in use: ``lambda_nce``, or in a one-sided mode with
        ``lambda_nce`` 0 the mode's own (:data:`MODE_NCE_WEIGHTS`)."""
        if self.one_sided and not self.lambda_nce:
            return MODE_NCE_WEIGHTS[self.mode]
        return self.lambda_nce

    @property
    def nce_layer_indices(self) -> tuple[int, ...]:
        """The layers of ``nce_layers`` (empty: PatchNCE's default choice)."""
        return tuple(int(part) for part in self.nce_layers.split(",") if part.strip())

    @property
    def augment_policies(self) -> tuple[str, ...]:
        """The DiffAugment policies of ``diff_augment``, in order (empty: off)."""
        return tuple(part.strip() for part in self.diff_augment.split(",") if part.strip())


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
        check_nce_channels(self)

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as nested plain dicts."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Return the configuration as a JSON string."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, stored: bool = False) -> Config:
        """Build a configuration from nested dicts, validating every value.

        ``stored``: the dicts come from a file this package wrote (a model file, a
        checkpoint). A setting they lack predates that setting, so it takes the value
        it had then (every method off: the paper's recipe), not today's default.

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
        sections = {section: data.get(section, {}) for section in ("model", "train")}
        if stored:
            sections = {
                section: {**PAPER[section], **values} if isinstance(values, dict) else values
                for section, values in sections.items()
            }
        return cls(
            model=_from_dict(ModelConfig, sections["model"], "model"),
            train=_from_dict(TrainConfig, sections["train"], "train"),
        )

    @classmethod
    def from_json(cls, text: str, *, stored: bool = False) -> Config:
        """Parse a JSON string written by :meth:`to_json` (``stored``: see
        :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"The configuration is not valid JSON: {error}") from error
        return cls.from_dict(data, stored=stored)

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


def check_nce_channels(config: Config) -> None:
    """Refuse PatchNCE between domains with different channel counts: a generator's
    encoder embeds its output (and in mode ``cut`` G(b)) as it embeds its input.

    Raises
    ------
    ConfigError
        Naming the mode, the channel counts and what to do instead.
    """
    model, train = config.model, config.train
    if not train.nce_weight or model.channels_a == model.channels_b:
        return
    counts = f"(A has {model.channels_a}, B {model.channels_b})"
    if train.one_sided:
        raise ConfigError(
            f"mode={train.mode!r} trains G alone with PatchNCE (lambda_nce), which embeds "
            f"G's output with G's own encoder, so both domains need the same channel count "
            f"{counts}; train with mode 'cyclegan' (lambda_structure keeps content between "
            "any counts), or give domains with equal channel counts."
        )
    raise ConfigError(
        f"PatchNCE (lambda_nce) embeds a generator's output with its own encoder, so both "
        f"domains need the same channel count {counts}; set lambda_nce to 0 "
        "(lambda_structure keeps content between any counts)."
    )


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
