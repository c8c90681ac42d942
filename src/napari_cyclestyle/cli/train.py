"""``napari-cyclestyle train``: the options (built from the configuration), and the run."""

from __future__ import annotations

import argparse
import io
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import numpy as np

from ..config import Config, ModelConfig, TrainConfig, settings
from ..io import image_grid, image_to_rgb8, write_image
from ..presets import PRESETS, apply_preset
from .common import (
    DEFAULT_MODEL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    PROG,
    UsageError,
    add_threads_argument,
)
from .progress import ProgressLine, format_train_event, format_validation

# Each flag: the setting(s) it sets, and what argparse needs beyond the setting's own
# help and choices (config.py owns those).
_MODEL_FLAGS = {
    "--generator": ("generator", {}),
    "--discriminator": ("discriminator", {}),
    "--n-layers-discriminator": ("n_layers_discriminator", {"type": int, "metavar": "N"}),
    "--ngf": ("ngf", {"type": int, "metavar": "N"}),
    "--ndf": ("ndf", {"type": int, "metavar": "N"}),
    "--norm": ("norm", {}),
    "--dropout": ("dropout", {"action": argparse.BooleanOptionalAction}),
    # Methods beyond the paper's recipe (issue 19).
    "--upsampling": ("upsampling", {}),
    "--spectral-norm": ("spectral_norm", {"action": argparse.BooleanOptionalAction}),
}

_TRAIN_FLAGS = {
    "--steps": ("n_steps", {"type": int, "metavar": "N"}),
    "--decay-steps": ("n_steps_decay", {"type": int, "metavar": "N"}),
    "--batch-size": ("batch_size", {"type": int, "metavar": "N"}),
    "--crop-size": ("crop_size", {"type": int, "metavar": "PIXELS"}),
    "--learning-rate": ("learning_rate", {"type": float, "metavar": "RATE"}),
    "--lambda-cycle": (
        ("lambda_cycle_a", "lambda_cycle_b"),
        {"type": float, "metavar": "WEIGHT", "help": "cycle-consistency weight (both cycles)"},
    ),
    "--lambda-identity": ("lambda_identity", {"type": float, "metavar": "WEIGHT"}),
    "--gan-mode": ("gan_mode", {}),
    "--pool-size": ("pool_size", {"type": int, "metavar": "N"}),
    "--flip": ("flip", {"action": argparse.BooleanOptionalAction}),
    "--seed": ("seed", {"type": int, "metavar": "N"}),
    "--deterministic": ("deterministic", {"action": argparse.BooleanOptionalAction}),
    "--device": ("device", {}),
    "--precision": ("precision", {}),
    "--compile": ("compile", {"action": argparse.BooleanOptionalAction}),
    "--channels-last": ("channels_last", {"action": argparse.BooleanOptionalAction}),
    "--cudnn-benchmark": ("cudnn_benchmark", {"action": argparse.BooleanOptionalAction}),
    "--checkpoint-every": ("checkpoint_every", {"type": int, "metavar": "N"}),
    "--preview-every": ("preview_every", {"type": int, "metavar": "N"}),
    "--log-every": ("log_every", {"type": int, "metavar": "N"}),
    "--mode": ("mode", {}),
    # Methods beyond the paper's recipe (issue 19).
    "--ema-decay": ("ema_decay", {"type": float, "metavar": "DECAY"}),
    "--lambda-r1": ("lambda_r1", {"type": float, "metavar": "WEIGHT"}),
    "--r1-every": ("r1_every", {"type": int, "metavar": "N"}),
    "--lambda-structure": ("lambda_structure", {"type": float, "metavar": "WEIGHT"}),
    "--diff-augment": ("diff_augment", {"metavar": "POLICY"}),
    "--lambda-nce": ("lambda_nce", {"type": float, "metavar": "WEIGHT"}),
    "--nce-layers": ("nce_layers", {"metavar": "LAYERS"}),
    "--nce-patches": ("nce_patches", {"type": int, "metavar": "N"}),
}


# Held-out validation, the best model and the health watch (issue 20).
_VALIDATION_FLAGS = {
    "--validation-fraction": ("validation_fraction", {"type": float, "metavar": "FRACTION"}),
    "--validation-every": ("validation_every", {"type": int, "metavar": "N"}),
    "--validation-patches": ("validation_patches", {"type": int, "metavar": "N"}),
    "--keep-best": ("keep_best", {"action": argparse.BooleanOptionalAction}),
    "--best-metric": ("best_metric", {}),
    "--health-watch": ("health_watch", {"action": argparse.BooleanOptionalAction}),
}


def _flag_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _argument(section: type, setting: str | tuple[str, ...], keywords: dict) -> dict:
    """The keywords of ``add_argument`` for a flag: its setting's help (with the default)
    and choices from the configuration, then the flag's own."""
    facts = settings(section)[setting if isinstance(setting, str) else setting[0]]
    keywords = {"help": facts.help, **keywords}
    if facts.choices is not None:
        keywords = {"choices": facts.choices, **keywords}
    keywords["help"] += f" (default: {facts.default})"
    return keywords


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model between two folders of images",
        description=(
            "Train a CycleGAN between domain A and domain B (unpaired images). Settings "
            "come from the defaults, then --config, then --preset, then the flags below. "
            "Ctrl-C stops after the current step, saves the model and a checkpoint, and "
            "exits with "
            f"code {EXIT_INTERRUPTED}; --resume continues from the checkpoint (its settings "
            "are kept unless overridden; the architecture cannot change)."
        ),
    )
    data = parser.add_argument_group("data")
    for name in ("a", "b"):
        data.add_argument(
            f"--domain-{name}",
            nargs="+",
            required=True,
            metavar="PATH",
            help=f"domain {name.upper()} images: folders, image files (TIFF/PNG/JPEG/BMP) "
            "or .txt files listing image paths",
        )
        data.add_argument(
            f"--channel-axis-{name}",
            type=int,
            metavar="AXIS",
            help=f"channel axis of the domain {name.upper()} images when not inferable "
            "(default: an RGB(A) last axis, else one channel)",
        )
    for name, what in (
        ("a", "domain A images to validate on, kept out of training"),
        ("b", "domain B images to validate on, kept out of training"),
        ("truth-b", "the true B image of each --validation-a image (paired: adds PSNR, SSIM)"),
    ):
        data.add_argument(f"--validation-{name}", nargs="+", metavar="PATH", help=what)
    files = parser.add_argument_group("files")
    files.add_argument(
        "--output",
        "-o",
        metavar="MODEL",
        help=f"model file to write; the checkpoint goes beside it as <stem>.checkpoint.pt "
        f"(default: {DEFAULT_MODEL}, or the resumed checkpoint's model)",
    )
    files.add_argument("--config", metavar="FILE", help="settings from a .json/.yaml file")
    files.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="set a published recipe's settings explicitly, over --config and under the "
        "flags: paper = the CycleGAN paper's (lsgan, cycle 10, identity 0.5, pool 50, Adam "
        "2e-4 beta1 0.5, transposed convolutions, no newer method); cut / fastcut = CUT's "
        "and FastCUT's (one-sided: G and D_B alone; PatchNCE 1 with the identity term / 10 "
        "without, 256 patches, no pool, the same Adam)",
    )
    files.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint")
    files.add_argument(
        "--save-config", metavar="FILE", help="write the effective settings as JSON"
    )
    files.add_argument(
        "--preview-dir",
        metavar="DIR",
        help="write preview images (real A | G(A) / real B | F(B); one-sided modes: real A "
        "| G(A)) here every --preview-every steps",
    )
    for title, section, flags in (
        ("model (fixed by the checkpoint with --resume)", ModelConfig, _MODEL_FLAGS),
        ("training", TrainConfig, _TRAIN_FLAGS),
        ("validation and health", TrainConfig, _VALIDATION_FLAGS),
    ):
        group = parser.add_argument_group(title)
        for flag, (setting, keywords) in flags.items():
            keywords = _argument(section, setting, keywords)
            group.add_argument(flag, dest=_flag_dest(flag), default=None, **keywords)
    add_threads_argument(parser, None)
    parser.set_defaults(run=_run_train)


def _overrides(args: argparse.Namespace, flags: dict) -> dict[str, object]:
    values = {}
    for flag, (setting, _) in flags.items():
        value = getattr(args, _flag_dest(flag))
        if value is not None:
            for name in (setting,) if isinstance(setting, str) else setting:
                values[name] = value
    return values


def _train_config(args: argparse.Namespace, checkpoint_config: Config | None) -> Config:
    """Defaults (or the checkpoint's settings), then --config, then the flags."""
    model_overrides = _overrides(args, _MODEL_FLAGS)
    if checkpoint_config is not None and model_overrides:
        flags = ", ".join(f for f in _MODEL_FLAGS if getattr(args, _flag_dest(f)) is not None)
        raise UsageError(
            f"{flags} cannot change when resuming: the checkpoint's architecture is used."
        )
    if args.config is not None:
        base = Config.from_file(args.config)
    else:
        base = checkpoint_config or Config()
    settings = base.to_dict()
    if args.preset is not None:
        settings = apply_preset(args.preset, settings)
        if checkpoint_config is not None and settings["model"] != base.to_dict()["model"]:
            raise UsageError(
                f"--preset {args.preset} sets an architecture other than the checkpoint's; "
                "resume without it."
            )
    settings["model"].update(model_overrides)
    settings["train"].update(_overrides(args, _TRAIN_FLAGS))
    settings["train"].update(_overrides(args, _VALIDATION_FLAGS))
    if args.preview_dir is None:
        settings["train"]["preview_every"] = 0  # nobody would see the previews
    return Config.from_dict(settings)


def _run_train(args: argparse.Namespace) -> int:
    from ..checkpoint import TrainingCheckpoint
    from ..model_file import CHECKPOINT_SUFFIX, MODEL_SUFFIX
    from ..trainer import Trainer

    checkpoint_config = None
    output = args.output
    if args.resume is not None:
        checkpoint = TrainingCheckpoint.load(args.resume)  # read again by the Trainer
        done, checkpoint_config = checkpoint.step, checkpoint.config
        del checkpoint
        if output is None:
            name = Path(args.resume).name.removesuffix(CHECKPOINT_SUFFIX) + MODEL_SUFFIX
            output = Path(args.resume).with_name(name)
    config = _train_config(args, checkpoint_config)
    if args.resume is not None and config.train.total_steps <= done:
        raise UsageError(
            f"the checkpoint {args.resume} is at step {done} and the run has "
            f"{config.train.total_steps} steps; raise --steps or --decay-steps to train on."
        )
    if args.save_config is not None:
        from ..files import atomic_write_bytes

        atomic_write_bytes(args.save_config, (config.to_json() + "\n").encode())
    trainer = Trainer(
        args.domain_a,
        args.domain_b,
        config,
        output=output or DEFAULT_MODEL,
        resume=args.resume,
        channel_axis_a=args.channel_axis_a,
        channel_axis_b=args.channel_axis_b,
        validation_a=args.validation_a,
        validation_b=args.validation_b,
        validation_truth_b=args.validation_truth_b,
    )
    preview_dir = Path(args.preview_dir) if args.preview_dir is not None else None
    stopped = run_training(trainer, preview_dir=preview_dir)
    if stopped:
        resume = [PROG, "train", "--domain-a", *args.domain_a, "--domain-b", *args.domain_b]
        for flag, value in (
            ("--channel-axis-a", args.channel_axis_a),
            ("--channel-axis-b", args.channel_axis_b),
        ):
            if value is not None:
                resume += [flag, str(value)]
        resume += ["--resume", str(trainer.checkpoint_path), "--output", str(trainer.output)]
        if trainer.is_main_process:
            print(f"Resume with: {shlex.join(resume)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


@contextmanager
def _stop_on_interrupt(trainer, progress: ProgressLine):
    """First Ctrl-C (SIGINT) or SIGTERM (a cluster's time limit, ``torchrun`` shutting
    down): ``trainer.stop()`` (finish the step, save). A second Ctrl-C aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return

    def handler(signum, frame):
        trainer.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        progress.message_now(
            "Stopping after this step and saving the model (Ctrl-C again aborts at once)..."
        )

    previous = {
        number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, old_handler in previous.items():
            signal.signal(number, old_handler)


def run_training(trainer, preview_dir: Path | None = None, stream: TextIO | None = None) -> bool:
    """Run ``trainer`` with a progress line and Ctrl-C handling.

    Parameters
    ----------
    trainer : Trainer
        A ready trainer.
    preview_dir : Path, optional
        Folder for the preview images of the events that carry them.
    stream : file-like, optional
        Where progress goes; stderr when None.

    Returns
    -------
    bool
        True if training was stopped (Ctrl-C) before the last step.

    Raises
    ------
    TrainingDiverged
        If a loss became NaN/Inf.
    """
    from ..devices import describe_device

    stream = stream or sys.stderr
    if not trainer.is_main_process:
        stream = io.StringIO()  # under torchrun, rank 0 alone reports
    progress = ProgressLine(stream)
    train = trainer.config.train
    progress.message(
        f"Training {trainer.config.model.generator} (A: {trainer.domain_a.n_channels} "
        f"channel(s), B: {trainer.domain_b.n_channels}) for {train.total_steps} steps "
        f"on {describe_device(trainer.device)}"
        + (f", from step {trainer.step}" if trainer.step else "")
        + "; Ctrl-C stops and saves."
    )
    losses: dict[str, float] = {}
    event = None
    with _stop_on_interrupt(trainer, progress):
        for event in trainer.run():
            if event.losses is not None:
                losses = event.losses
            if progress.interactive or event.losses is not None or event.finished:
                progress.update(format_train_event(event, losses), force=event.finished)
            if event.preview is not None and preview_dir is not None:
                path = preview_dir / f"preview_{event.step:06d}.png"
                write_image(path, preview_figure(event.preview))
            if event.checkpoint is not None and not event.finished:
                progress.message(f"Checkpoint saved: {event.checkpoint}")
            if event.validation is not None:
                progress.message(format_validation(event))
            for warning in event.warnings:
                progress.message(f"Warning: {warning}")
    progress.close()
    if event is None or event.model_path is None:
        return False
    stopped = event.step < event.total_steps
    verb = f"Stopped at step {event.step}/{event.total_steps}" if stopped else "Done"
    print(
        f"{verb}: model saved to {event.model_path}, checkpoint {event.checkpoint}.",
        file=stream,
        flush=True,
    )
    return stopped


def preview_figure(preview: dict[str, np.ndarray]) -> np.ndarray:
    """The preview of a training event as one RGB image: real A | G(A) over real B | F(B)
    (a one-sided run, without F: real A | G(A) alone)."""
    rows = [row for row in (["real_A", "fake_B"], ["real_B", "fake_A"]) if row[1] in preview]
    return image_grid([[image_to_rgb8(preview[k], channels_first=True) for k in r] for r in rows])
