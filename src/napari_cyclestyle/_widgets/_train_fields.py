"""The training widget's settings: one field per configuration setting it offers, and
the :class:`~napari_cyclestyle.Config` they describe.

Values, ranges and choices come from the configuration's fields (config.py); the
labels, and a first try that suits a laptop CPU (:data:`DEFAULTS`), are the widget's.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    SpinBox,
)

from ..config import Config, ModelConfig, TrainConfig, settings

# A first try on a laptop CPU: visibly learns the sample domains in about a minute. The
# other fields start at the configuration's defaults, within its bounds (config.py).
DEFAULTS = {
    "generator": "resnet_6blocks",
    "ngf": 16,
    "ndf": 16,
    "crop_size": 64,
    "n_steps": 300,
    "n_steps_decay": 300,
    "preview_every": 25,
    "log_every": 10,
}
CHANNEL_AXIS_CHOICES = [
    ("auto (RGB last, else gray)", None),
    ("last axis (…, Y, X, C)", -1),
    ("before Y, X (…, C, Y, X)", -3),
    ("first axis (C, …)", 0),
]


def _initial(section: type, setting: str):
    """A field's facts and its first value (the widget's own first try, else the
    configuration's default)."""
    facts = settings(section)[setting]
    return facts, DEFAULTS.get(setting, facts.default)


def _number(section: type, setting: str, label: str, **options) -> SpinBox | FloatSpinBox:
    """A spin box for a numeric setting, within the bounds the configuration gives it."""
    facts, value = _initial(section, setting)
    kind = FloatSpinBox if isinstance(facts.default, float) else SpinBox
    low, high = facts.bounds
    return kind(label=label, min=low, max=high, value=value, **options)


def _flag(section: type, setting: str, text: str) -> CheckBox:
    """A check box for a true/false setting."""
    _, value = _initial(section, setting)
    return CheckBox(text=text, value=value)


def _choice(section: type, setting: str, label: str, **options) -> ComboBox:
    """A combo box offering a setting's choices."""
    facts, value = _initial(section, setting)
    return ComboBox(label=label, choices=facts.choices, value=value, **options)


class TrainingFields:
    """The settings fields: the main ones (:attr:`main`, shown at once) and the
    :attr:`advanced` container (folded away)."""

    def __init__(self) -> None:
        self.generator = _choice(ModelConfig, "generator", "generator", name="generator")
        self.ngf = _number(ModelConfig, "ngf", "width (ngf)")
        self.crop_size = _number(TrainConfig, "crop_size", "crop size", step=16)
        self.n_steps = _number(TrainConfig, "n_steps", "steps")
        self.device = _choice(TrainConfig, "device", "device")
        self.device_info = Label(label="")
        self.output = FileEdit(
            label="output file",
            mode="w",
            filter="*.safetensors",
            value=Path.home() / "cyclestyle-model.safetensors",
        )

        self.ndf = _number(ModelConfig, "ndf", "width D (ndf)")
        self.batch_size = _number(TrainConfig, "batch_size", "batch size")
        self.n_steps_decay = _number(TrainConfig, "n_steps_decay", "decay steps")
        self.learning_rate = _number(TrainConfig, "learning_rate", "learning rate", step=1e-5)
        self.learning_rate.native.setDecimals(6)
        self.lambda_cycle = _number(TrainConfig, "lambda_cycle_a", "λ cycle")
        self.lambda_identity = _number(TrainConfig, "lambda_identity", "λ identity", step=0.1)
        self.gan_mode = _choice(TrainConfig, "gan_mode", "adversarial loss")
        self.norm = _choice(ModelConfig, "norm", "normalisation")
        self.preview_every = _number(TrainConfig, "preview_every", "preview every")
        self.log_every = _number(TrainConfig, "log_every", "plot losses every")
        self.checkpoint_every = _number(TrainConfig, "checkpoint_every", "checkpoint every")
        self.seed = _number(TrainConfig, "seed", "seed")
        self.channel_axis_a = ComboBox(label="channels A", choices=CHANNEL_AXIS_CHOICES)
        self.channel_axis_b = ComboBox(label="channels B", choices=CHANNEL_AXIS_CHOICES)
        self.resume = FileEdit(
            label="resume from", mode="r", nullable=True, filter="*.checkpoint.pt"
        )
        # Methods beyond the paper's recipe (issue 19), at the configuration's defaults.
        self.upsampling = _choice(ModelConfig, "upsampling", "up-sampling")
        self.spectral_norm = CheckBox(label="spectral norm D", value=False)
        self.ema_decay = _number(TrainConfig, "ema_decay", "EMA decay", step=0.001)
        self.ema_decay.native.setDecimals(4)
        self.lambda_r1 = _number(TrainConfig, "lambda_r1", "λ R1", step=0.1)
        self.r1_every = _number(TrainConfig, "r1_every", "R1 every")
        self.lambda_structure = _number(TrainConfig, "lambda_structure", "λ structure", step=0.1)
        self.diff_augment = LineEdit(label="DiffAugment", value="")
        self.diff_augment.tooltip = settings(TrainConfig)["diff_augment"].help
        self.mode = _choice(TrainConfig, "mode", "mode")
        self.mode.tooltip = settings(TrainConfig)["mode"].help
        self.lambda_nce = _number(TrainConfig, "lambda_nce", "λ PatchNCE", step=0.1)
        self.nce_patches = _number(TrainConfig, "nce_patches", "PatchNCE patches")
        methods = [
            self.mode,
            self.upsampling,
            self.spectral_norm,
            self.ema_decay,
            self.lambda_r1,
            self.r1_every,
            self.lambda_structure,
            self.diff_augment,
            self.lambda_nce,
            self.nce_patches,
        ]
        # Validation, the best model and the health watch (issue 20).
        self.validation_fraction = _number(
            TrainConfig, "validation_fraction", "validation fraction", step=0.05
        )
        self.validation_every = _number(TrainConfig, "validation_every", "validate every")
        self.keep_best = _flag(TrainConfig, "keep_best", "keep the best model")
        self.best_metric = _choice(TrainConfig, "best_metric", "best model by")
        self.health_watch = _flag(TrainConfig, "health_watch", "health watch (warnings)")
        validation = [
            self.validation_fraction,
            self.validation_every,
            self.keep_best,
            self.best_metric,
            self.health_watch,
        ]
        self.advanced = Container(
            labels=True,
            widgets=[
                self.ndf,
                self.batch_size,
                self.n_steps_decay,
                self.learning_rate,
                self.lambda_cycle,
                self.lambda_identity,
                self.gan_mode,
                self.norm,
                self.preview_every,
                self.log_every,
                self.checkpoint_every,
                self.seed,
                self.channel_axis_a,
                self.channel_axis_b,
                self.resume,
                *methods,
                *validation,
            ],
        )
        self.main = [
            self.generator,
            self.ngf,
            self.crop_size,
            self.n_steps,
            self.device,
            self.device_info,
            self.output,
        ]

    def config(self) -> Config:
        """The :class:`~napari_cyclestyle.Config` the fields describe.

        Raises
        ------
        ConfigError
            If a value is impossible (the message names it).
        """
        lambda_cycle = float(self.lambda_cycle.value)
        return Config(
            model=ModelConfig(
                generator=self.generator.value,
                ngf=int(self.ngf.value),
                ndf=int(self.ndf.value),
                norm=self.norm.value,
                upsampling=self.upsampling.value,
                spectral_norm=bool(self.spectral_norm.value),
            ),
            train=TrainConfig(
                n_steps=int(self.n_steps.value),
                n_steps_decay=int(self.n_steps_decay.value),
                batch_size=int(self.batch_size.value),
                crop_size=int(self.crop_size.value),
                learning_rate=float(self.learning_rate.value),
                gan_mode=self.gan_mode.value,
                lambda_cycle_a=lambda_cycle,
                lambda_cycle_b=lambda_cycle,
                lambda_identity=float(self.lambda_identity.value),
                seed=int(self.seed.value),
                device=self.device.value,
                checkpoint_every=int(self.checkpoint_every.value),
                preview_every=int(self.preview_every.value),
                log_every=int(self.log_every.value),
                ema_decay=float(self.ema_decay.value),
                lambda_r1=float(self.lambda_r1.value),
                r1_every=int(self.r1_every.value),
                lambda_structure=float(self.lambda_structure.value),
                diff_augment=str(self.diff_augment.value).strip(),
                mode=self.mode.value,
                lambda_nce=float(self.lambda_nce.value),
                nce_patches=int(self.nce_patches.value),
                validation_fraction=float(self.validation_fraction.value),
                validation_every=int(self.validation_every.value),
                keep_best=bool(self.keep_best.value),
                best_metric=self.best_metric.value,
                health_watch=bool(self.health_watch.value),
            ),
        )

    def remembered(self) -> dict:
        """The fields whose values a new session starts from (all settings but the
        checkpoint to resume, which is for one run), by name."""
        skipped = ("main", "advanced", "device_info", "resume")
        return {name: field for name, field in vars(self).items() if name not in skipped}
