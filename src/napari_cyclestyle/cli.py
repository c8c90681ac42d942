"""The ``napari-cyclestyle`` command: ``train``, ``translate``, ``info``, ``export``, ``demo``.

A thin front end over the core calls (:class:`~napari_cyclestyle.trainer.Trainer`,
:func:`~napari_cyclestyle.model_file.load_model`,
:func:`~napari_cyclestyle.inference.translate`). Progress and messages go to stderr;
``info`` prints to stdout. torch is imported only when a command runs, so ``--help``
is fast.

Exit codes: 0 success, 1 a runtime error (unreadable image, bad model file, mismatched
channels, diverged training), 2 a usage error (bad option or configuration value),
130 training stopped with Ctrl-C (the model and a checkpoint were saved).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from . import __version__
from .config import (
    DEVICES,
    DISCRIMINATORS,
    GAN_MODES,
    GENERATORS,
    NORMS,
    PRECISIONS,
    STATISTICS_MODES,
    Config,
    ConfigError,
    ModelConfig,
    TrainConfig,
)
from .errors import CycleStyleError

if TYPE_CHECKING:
    from .model import CycleStyleModel

PROG = "napari-cyclestyle"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_MODEL = "cyclestyle-model.safetensors"
# Suffixes whose images are written back as TIFF; every other input is written as PNG.
_TIFF_SUFFIXES = (".tif", ".tiff")
# The demo's settings: about a minute on two CPU cores, a visible translation.
DEMO_STEPS = 800
DEMO_GENERATOR = "resnet_6blocks"
DEMO_WIDTH = 8
DEMO_CROP_SIZE = 48
DEMO_LEARNING_RATE = 1e-3  # 5x the paper's: a short run still gets somewhere
DEMO_THREADS = 1  # tiny networks: more threads cost more in overhead than they save


class UsageError(ValueError):
    """Options that contradict each other; reported with exit code 2."""


# ---------------------------------------------------------------------- progress
class ProgressLine:
    """A status line on a stream: redrawn in place on a terminal, one line per update
    otherwise (logs, pipes).

    Parameters
    ----------
    stream : file-like
        Where to write (stderr).
    min_interval : float
        On a terminal, redraw at most this often (seconds).
    """

    def __init__(self, stream: TextIO, min_interval: float = 0.2):
        self.stream = stream
        self.interactive = stream.isatty()
        self.min_interval = min_interval
        self._last_draw = 0.0
        self._drawn = False

    def update(self, text: str, force: bool = False) -> None:
        """Show ``text`` as the current status (throttled on a terminal unless ``force``)."""
        if not self.interactive:
            print(text, file=self.stream, flush=True)
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.min_interval:
            return
        width = shutil.get_terminal_size().columns - 1
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()
        self._last_draw, self._drawn = now, True

    def message(self, text: str) -> None:
        """Print a permanent line, keeping the status line below it intact."""
        self.close()
        print(text, file=self.stream, flush=True)

    def message_now(self, text: str) -> None:
        """Like :meth:`message`, but safe inside a signal handler: one unbuffered write
        that cannot collide with a write the handler interrupted."""
        prefix = "\n" if self._drawn else ""
        self._drawn = False
        try:
            os.write(self.stream.fileno(), f"{prefix}{text}\n".encode())
        except (OSError, ValueError, AttributeError):  # a stream without a file descriptor
            pass

    def close(self) -> None:
        """End the status line (a newline on a terminal)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def format_duration(seconds: float) -> str:
    """``75.2`` → ``"1:15"``, ``3725`` → ``"1:02:05"``; ``"?"`` when unknown."""
    if not np.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_train_event(event, losses: dict[str, float]) -> str:
    """The training status line: step/total, percent, speed, ETA and the latest losses."""
    percent = 100.0 * event.step / event.total_steps
    text = (
        f"step {event.step}/{event.total_steps} ({percent:3.0f}%) "
        f"{event.steps_per_second:.2f} steps/s, ETA {format_duration(event.seconds_left)}"
    )
    if losses:
        text += " | " + " ".join(f"{name} {value:.3g}" for name, value in losses.items())
    return text


# ---------------------------------------------------------------------- images
def image_to_rgb8(image: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """An image made displayable: ``(Y, X, 3)`` uint8, scaled to its own range unless
    it is uint8 already. One channel becomes gray; two or more than three show the
    first channel."""
    image = np.asarray(image)
    if image.ndim == 3 and channels_first:
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] != 3:
        image = np.repeat(image[..., :1], 3, axis=-1)
    if image.dtype != np.uint8:
        values = image.astype(np.float32)
        low, high = float(values.min()), float(values.max())
        image = np.clip((values - low) * (255.0 / max(high - low, 1e-12)), 0, 255)
        image = image.astype(np.uint8)
    return image


def image_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Stitch rows of ``(Y, X, 3)`` uint8 images (all the same size) with white gaps."""
    height, width = rows[0][0].shape[:2]
    n_columns = max(len(row) for row in rows)
    grid = np.full(
        (len(rows) * (height + gap) - gap, n_columns * (width + gap) - gap, 3), 255, np.uint8
    )
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            grid[top : top + height, left : left + width] = image
    return grid


def write_image(path: Path, image: np.ndarray) -> None:
    """Write a TIFF (any dtype, tifffile) or a PNG/JPEG (uint8/uint16 gray or RGB(A)).

    Raises
    ------
    ValueError
        If the format cannot hold the image's dtype or channels.
    OSError
        If the file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        rgb = image.ndim >= 3 and image.shape[-1] in (3, 4)
        tifffile.imwrite(path, image, photometric="rgb" if rgb else "minisblack")
        return
    if not _fits_png(image):
        raise ValueError(
            f"{path}: a {path.suffix} file cannot hold a {image.dtype} image of shape "
            f"{image.shape}; name the output .tif instead."
        )
    import imageio.v3 as iio

    iio.imwrite(path, image)


def _fits_png(image: np.ndarray) -> bool:
    shape_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))
    return shape_ok and image.dtype in (np.uint8, np.uint16)


def _add_threads_argument(parser: argparse.ArgumentParser, default: int | None) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=default,
        metavar="N",
        help="CPU threads torch may use; small networks often run fastest with 1, and "
        "fewer threads leave cores to others (default: "
        + (f"{default})" if default else "torch's choice, one per core)"),
    )


# ---------------------------------------------------------------------- train
# Flags that override one setting: flag → (section, setting, argparse keywords).
_MODEL_FLAGS = {
    "--generator": ("generator", {"choices": GENERATORS, "help": "generator architecture"}),
    "--discriminator": (
        "discriminator",
        {"choices": DISCRIMINATORS, "help": "PatchGAN discriminator (basic = 70x70)"},
    ),
    "--n-layers-discriminator": (
        "n_layers_discriminator",
        {"type": int, "metavar": "N", "help": "layers of the n_layers discriminator"},
    ),
    "--ngf": ("ngf", {"type": int, "metavar": "N", "help": "generator width (filters)"}),
    "--ndf": ("ndf", {"type": int, "metavar": "N", "help": "discriminator width (filters)"}),
    "--norm": ("norm", {"choices": NORMS, "help": "normalisation layers"}),
    "--dropout": (
        "dropout",
        {"action": argparse.BooleanOptionalAction, "help": "dropout in the generators"},
    ),
}
_TRAIN_FLAGS = {
    "--steps": (
        "n_steps",
        {"type": int, "metavar": "N", "help": "steps at the initial learning rate"},
    ),
    "--decay-steps": (
        "n_steps_decay",
        {"type": int, "metavar": "N", "help": "further steps decaying the rate to zero"},
    ),
    "--batch-size": ("batch_size", {"type": int, "metavar": "N", "help": "patches per step"}),
    "--crop-size": (
        "crop_size",
        {"type": int, "metavar": "PIXELS", "help": "side of the training patches"},
    ),
    "--learning-rate": ("learning_rate", {"type": float, "metavar": "RATE", "help": "Adam"}),
    "--lambda-cycle": (
        ("lambda_cycle_a", "lambda_cycle_b"),
        {"type": float, "metavar": "WEIGHT", "help": "cycle-consistency weight (both cycles)"},
    ),
    "--lambda-identity": (
        "lambda_identity",
        {
            "type": float,
            "metavar": "WEIGHT",
            "help": "identity weight relative to the cycle weight; used only when both "
            "domains have the same channel count",
        },
    ),
    "--gan-mode": ("gan_mode", {"choices": GAN_MODES, "help": "adversarial loss"}),
    "--pool-size": (
        "pool_size",
        {"type": int, "metavar": "N", "help": "history pool of fakes (0: off)"},
    ),
    "--flip": (
        "flip",
        {"action": argparse.BooleanOptionalAction, "help": "random flips/rotations"},
    ),
    "--seed": ("seed", {"type": int, "metavar": "N", "help": "random seed"}),
    "--deterministic": (
        "deterministic",
        {"action": argparse.BooleanOptionalAction, "help": "deterministic torch algorithms"},
    ),
    "--device": ("device", {"choices": DEVICES, "help": "where to train"}),
    "--precision": (
        "precision",
        {
            "choices": PRECISIONS,
            "help": "arithmetic: auto is bf16 (else fp16) mixed precision on CUDA, fp32 "
            "elsewhere; fp32 is IEEE float32 everywhere",
        },
    ),
    "--compile": (
        "compile",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "compile the networks with torch.compile (faster steps after a minute "
            "or more of compiling)",
        },
    ),
    "--channels-last": (
        "channels_last",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "channels-last (NHWC) weights and batches: for tensor cores; slower on "
            "the CPU",
        },
    ),
    "--cudnn-benchmark": (
        "cudnn_benchmark",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "let cuDNN time its convolution algorithms and keep the fastest (CUDA)",
        },
    ),
    "--checkpoint-every": (
        "checkpoint_every",
        {"type": int, "metavar": "N", "help": "write a checkpoint every N steps (0: at the end)"},
    ),
    "--preview-every": (
        "preview_every",
        {
            "type": int,
            "metavar": "N",
            "help": "write a preview every N steps (needs --preview-dir)",
        },
    ),
    "--log-every": (
        "log_every",
        {"type": int, "metavar": "N", "help": "read the losses every N steps"},
    ),
}


def _flag_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _default_of(section: type, setting: str | tuple[str, ...]) -> object:
    name = setting if isinstance(setting, str) else setting[0]
    return getattr(section, name)


def _add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model between two folders of images",
        description=(
            "Train a CycleGAN between domain A and domain B (unpaired images). Settings "
            "come from the defaults, then --config, then the flags below. Ctrl-C stops "
            "after the current step, saves the model and a checkpoint, and exits with "
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
    files = parser.add_argument_group("files")
    files.add_argument(
        "--output",
        "-o",
        metavar="MODEL",
        help=f"model file to write; the checkpoint goes beside it as <stem>.checkpoint.pt "
        f"(default: {DEFAULT_MODEL}, or the resumed checkpoint's model)",
    )
    files.add_argument("--config", metavar="FILE", help="settings from a .json/.yaml file")
    files.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint")
    files.add_argument(
        "--save-config", metavar="FILE", help="write the effective settings as JSON"
    )
    files.add_argument(
        "--preview-dir",
        metavar="DIR",
        help="write preview images (real A | G(A) / real B | F(B)) here every "
        "--preview-every steps",
    )
    for title, section, flags in (
        ("model (fixed by the checkpoint with --resume)", ModelConfig, _MODEL_FLAGS),
        ("training", TrainConfig, _TRAIN_FLAGS),
    ):
        group = parser.add_argument_group(title)
        for flag, (setting, keywords) in flags.items():
            keywords = dict(keywords)
            keywords["help"] += f" (default: {_default_of(section, setting)})"
            group.add_argument(flag, dest=_flag_dest(flag), default=None, **keywords)
    _add_threads_argument(parser, None)
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
    settings["model"].update(model_overrides)
    settings["train"].update(_overrides(args, _TRAIN_FLAGS))
    if args.preview_dir is None:
        settings["train"]["preview_every"] = 0  # nobody would see the previews
    return Config.from_dict(settings)


def _run_train(args: argparse.Namespace) -> int:
    from .model_file import CHECKPOINT_SUFFIX, MODEL_SUFFIX, load_checkpoint
    from .trainer import Trainer

    checkpoint_config = None
    output = args.output
    if args.resume is not None:
        state = load_checkpoint(args.resume)  # read again by Trainer; only settings here
        checkpoint_config = Config.from_json(state["config"])
        done = int(state["step"])
        del state
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
        from .model_file import atomic_write_bytes

        atomic_write_bytes(args.save_config, (config.to_json() + "\n").encode())
    trainer = Trainer(
        args.domain_a,
        args.domain_b,
        config,
        output=output or DEFAULT_MODEL,
        resume=args.resume,
        channel_axis_a=args.channel_axis_a,
        channel_axis_b=args.channel_axis_b,
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
    from .devices import describe_device

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
    """The preview of a training event as one RGB image: real A | G(A) over real B | F(B)."""
    rows = [["real_A", "fake_B"], ["real_B", "fake_A"]]
    return image_grid([[image_to_rgb8(preview[k], channels_first=True) for k in r] for r in rows])


# ---------------------------------------------------------------------- translate
def _add_translate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "translate",
        help="translate images with a trained model",
        description=(
            "Translate image files with G (A→B) or F (B→A). TIFF inputs are written as "
            "TIFF in the model's target dtype (uint16 and float32 kept); PNG/JPEG/BMP "
            "inputs as PNG (as TIFF when PNG cannot hold the result). Output files are "
            "named <stem>_<direction>.<suffix>. A .zarr input (an array, or an OME-Zarr "
            "group's level 0) is read lazily and written tile by tile to a .zarr output, "
            "so images larger than memory translate; with --dask-scheduler the tiles are "
            "spread over a dask cluster's workers."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="model file or reference .pth checkpoint")
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files or folders of images"
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="OUT",
        help="output folder; or, for a single INPUT, the output's name (a .zarr for a "
        ".zarr input) (default: beside each input)",
    )
    parser.add_argument(
        "--direction",
        "-d",
        default="AtoB",
        help="AtoB (alias G) or BtoA (alias F) (default: %(default)s)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)"
    )
    parser.add_argument(
        "--channel-axis",
        type=int,
        metavar="AXIS",
        help="channel axis of the inputs when not inferable (default: inferred from the "
        "model's input channels)",
    )
    parser.add_argument(
        "--tile-size",
        type=_tile_size,
        default="auto",
        metavar="PIXELS",
        help="translate large planes in tiles of this side; 'auto' tiles only planes that "
        "would not fit in memory, 'none' never tiles (default: %(default)s)",
    )
    parser.add_argument(
        "--overlap",
        type=int,
        metavar="PIXELS",
        help="overlap between blended tiles (default: the core's, 64)",
    )
    parser.add_argument(
        "--statistics",
        choices=STATISTICS_MODES,
        default="exact",
        help="normalisation statistics of tiled planes: the whole plane's (exact), from a "
        "sample of tiles (estimate) or each tile's own (tile) (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-budget",
        type=_gibibytes,
        metavar="GIB",
        help="memory the translation may use for activations, in GiB; more keeps more of "
        "a large plane's stored activations in RAM, which is faster (default: a quarter "
        "of the available RAM, at most 1 GiB; on CUDA, half the free GPU memory)",
    )
    parser.add_argument(
        "--scratch",
        metavar="DIR",
        help="folder for activations that do not fit in memory (default: the system's "
        "temporary folder; with --dask-scheduler, the output's folder)",
    )
    parser.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="address of a dask.distributed scheduler (e.g. tcp://head-node:8786) whose "
        "workers translate .zarr inputs; they must reach the input, output and scratch "
        "folders",
    )
    _add_threads_argument(parser, None)
    parser.set_defaults(run=_run_translate)


def _tile_size(text: str) -> int | str | None:
    if text.lower() in ("auto", "none"):
        return None if text.lower() == "none" else "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of pixels, 'auto' or 'none', got {text!r}"
        ) from None


def _gibibytes(text: str) -> int:
    try:
        gib = float(text)
    except ValueError:
        gib = 0.0
    if not 0 < gib < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number of GiB, got {text!r}")
    return max(int(gib * 2**30), 1)


def _collect_inputs(inputs: Sequence[str]) -> list[Path]:
    from .data import list_images

    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir() and path.suffix.lower() != ".zarr":
            files += list_images(path)
        elif path.is_file() or path.suffix.lower() == ".zarr":
            files.append(path)
        else:
            raise ValueError(f"{path} does not exist.")
    return files


def _output_paths(inputs: Sequence[str], files: list[Path], output: str | None, direction: str):
    """Where each file goes: an explicit file for a single file input, else a folder."""
    from .data import IMAGE_SUFFIXES

    if output is not None:
        out = Path(output).expanduser()
        single_file = len(files) == 1 and files[0] == Path(inputs[0]).expanduser()
        if _is_zarr(files[0]):
            names_a_target = _is_zarr(out)  # a .zarr output is a folder too
        else:
            names_a_target = out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir()
        if names_a_target:
            if not single_file:
                raise UsageError(
                    f"--output {out} is a file name, but there are several inputs; give a folder."
                )
            return [(files[0], out, True)]
    targets, seen = [], {}
    for file in files:
        folder = Path(output).expanduser() if output is not None else file.parent
        if _is_zarr(file):
            suffix = ".zarr"
        else:
            suffix = ".tif" if file.suffix.lower() in _TIFF_SUFFIXES else ".png"
        target = folder / f"{file.stem}_{direction}{suffix}"
        if target.with_suffix("") in seen:
            raise UsageError(
                f"{file} and {seen[target.with_suffix('')]} would both be written to "
                f"{target}; translate them into different --output folders."
            )
        seen[target.with_suffix("")] = file
        targets.append((file, target, False))
    return targets


def _run_translate(args: argparse.Namespace) -> int:
    from .devices import resolve_device
    from .model import parse_direction
    from .model_file import load_model

    direction = parse_direction(args.direction)
    device = resolve_device(args.device)
    model = load_model(args.model)
    model.generator(direction)  # fails early if the model lacks this direction
    files = _collect_inputs(args.inputs)
    targets = _output_paths(args.inputs, files, args.output, direction)
    if args.dask_scheduler and not all(_is_zarr(source) for source, _, _ in targets):
        raise UsageError(
            "--dask-scheduler needs .zarr inputs: the workers write the result into a "
            ".zarr output. Convert the images to zarr, or leave out --dask-scheduler."
        )
    progress = ProgressLine(sys.stderr)
    options = {
        "device": device,
        "channel_axis": args.channel_axis,
        "tile_size": args.tile_size,
        "overlap": args.overlap,
        "statistics": args.statistics,
        "memory_budget": args.memory_budget,
        "scratch": args.scratch,
    }
    with _dask_client(args.dask_scheduler):
        for index, (source, target, named) in enumerate(targets, 1):

            def show(done: int, total: int, index=index, source=source) -> None:
                if progress.interactive and total > 1:
                    progress.update(
                        f"[{index}/{len(targets)}] {source.name}: {done}/{total} planes or tiles"
                    )

            _translate_file(source, target, named, model, direction, show, options)
            progress.message(f"[{index}/{len(targets)}] {source} -> {target}")
    return EXIT_OK


def _translate_file(
    source: Path,
    target: Path,
    named: bool,
    model: CycleStyleModel,
    direction: str,
    show: Callable[[int, int], None],
    options: dict,
) -> None:
    """Translate one image file into ``target`` (a zarr input tile by tile into a zarr)."""
    from .data import open_zarr_image, read_image
    from .inference import translate

    try:
        if _is_zarr(source):
            if target.exists():
                raise ValueError(f"{target} exists; remove it or choose another --output.")
            image = open_zarr_image(source)
            translate(image, model, direction, progress=show, output=str(target), **options)
            return
        result = translate(read_image(source), model, direction, progress=show, **options)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error
    if not named and target.suffix == ".png" and not _fits_png(result):
        target = target.with_suffix(".tif")
    write_image(target, result)


def _is_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr"


@contextmanager
def _dask_client(address: str | None):
    """A ``dask.distributed`` client connected to ``address`` for the duration (none
    without an address)."""
    if not address:
        yield
        return
    try:
        from distributed import Client
    except ImportError as error:
        raise UsageError(
            "--dask-scheduler needs dask.distributed: pip install distributed"
        ) from error
    try:
        client = Client(address, timeout=30)
    except OSError as error:
        raise UsageError(
            f"Cannot reach the dask scheduler at {address}: {error}. Start one with "
            "`dask scheduler` (and workers with `dask worker ADDRESS`) or fix the address."
        ) from error
    with client:
        yield


# ---------------------------------------------------------------------- info
def _add_info_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="describe a model file or training checkpoint",
        description=(
            "Print what a model file holds (architecture, channels, directions, "
            "intensity ranges, training steps and losses). Reads our .safetensors "
            "files, reference CycleGAN .pth files or folders, and our training "
            "checkpoints (*.checkpoint.pt: step and settings)."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="model file, .pth, folder or checkpoint")
    parser.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from .model_file import CHECKPOINT_SUFFIX, load_checkpoint, load_model

    path = Path(args.model)
    print(f"file: {path.resolve()}")
    if path.name.endswith(CHECKPOINT_SUFFIX):
        state = load_checkpoint(path)
        config = Config.from_json(state["config"])
        print(f"training checkpoint at step {state['step']} of {config.train.total_steps}")
        print(f"written by napari-cyclestyle {state['version']}")
        print(config.to_json())
        return EXIT_OK
    print(load_model(path).describe())
    return EXIT_OK


# ---------------------------------------------------------------------- export
def _add_export_parser(subparsers) -> None:
    from .exporting import FORMATS

    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or a bioimage.io package",
        description=(
            "Export the model's generators as whole-plane graphs (any height and width; "
            "float32 (N, C, Y, X) in [-1, 1] in and out): ONNX with the intensity "
            "normalisation in its metadata, TorchScript (runs without napari-cyclestyle), "
            "or a bioimage.io model package (ONNX + TorchScript weights, pre- and "
            "post-processing, test tensors; tested with bioimageio.core). Needs "
            "pip install 'napari-cyclestyle[export]'."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="model file, reference .pth or folder")
    parser.add_argument(
        "--format",
        "-f",
        choices=list(FORMATS),
        required=True,
        help="onnx, torchscript, or bioimageio (one package per direction)",
    )
    parser.add_argument(
        "--direction",
        "-d",
        help="AtoB (alias G), BtoA (alias F) or both (default: every direction the model holds)",
    )
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="OUT",
        help="file to write (suffix .onnx, .pt or .zip added when missing); with two "
        "directions _AtoB and _BtoA go before the suffix",
    )
    parser.add_argument(
        "--author",
        action="append",
        metavar="NAME",
        help="an author of the bioimage.io package (repeatable)",
    )
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .exporting import export

    for path in export(args.model, args.output, args.format, args.direction, authors=args.author):
        print(f"wrote {path}", file=sys.stderr, flush=True)
    return EXIT_OK


# ---------------------------------------------------------------------- demo
def _add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train on the bundled sample images and translate them (about a minute)",
        description=(
            "Train a small model on the bundled sample domains (A: grayscale "
            "'brightfield' images, B: RGB 'stained' images, unpaired), then translate "
            "the A images to B and the B images to A. Writes into DIR: the model "
            "(demo-model.safetensors), the translated images (*_AtoB.png, *_BtoA.png) "
            "and demo.png (rows: A, G(A), B, F(B))."
        ),
    )
    parser.add_argument(
        "--output",
        "-o",
        default="cyclestyle-demo",
        metavar="DIR",
        help="folder for the model, images and figure (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEMO_STEPS,
        metavar="N",
        help="training steps, the last half with a decaying learning rate (default: %(default)s)",
    )
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="where to train (default: %(default)s)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=256,
        metavar="PIXELS",
        help=f"side of the sample images, at least {DEMO_CROP_SIZE} (default: %(default)s)",
    )
    _add_threads_argument(parser, DEMO_THREADS)
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ._sample_data import sample_domains
    from .inference import translate
    from .trainer import Trainer

    if args.image_size < DEMO_CROP_SIZE:
        raise UsageError(f"--image-size must be at least {DEMO_CROP_SIZE}, got {args.image_size}.")
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}.")
    output = Path(args.output)
    domain_a, domain_b = sample_domains(args.image_size)
    config = Config(
        model=ModelConfig(
            generator=DEMO_GENERATOR,
            discriminator="n_layers",
            n_layers_discriminator=2,
            ngf=DEMO_WIDTH,
            ndf=DEMO_WIDTH,
        ),
        train=TrainConfig(
            n_steps=args.steps - args.steps // 2,
            n_steps_decay=args.steps // 2,
            crop_size=DEMO_CROP_SIZE,
            learning_rate=DEMO_LEARNING_RATE,
            device=args.device,
            checkpoint_every=0,
            preview_every=0,
            log_every=10,
        ),
    )
    trainer = Trainer(domain_a, domain_b, config, output=output / "demo-model.safetensors")
    if run_training(trainer):
        return EXIT_INTERRUPTED
    model = trainer.model
    rows = []
    for name, images, direction in (("A", domain_a, "AtoB"), ("B", domain_b, "BtoA")):
        translated = translate(images, model, direction, device=trainer.device)
        for index, image in enumerate(translated):
            write_image(output / f"sample_{name}{index}_{direction}.png", image)
        rows.append([image_to_rgb8(image) for image in images])
        rows.append([image_to_rgb8(image) for image in translated])
    figure = output / "demo.png"
    write_image(figure, image_grid(rows))
    print(
        f"Wrote the translated samples and {figure} (rows: A, G(A), B, F(B)) to {output}.",
        file=sys.stderr,
    )
    return EXIT_OK


# ---------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``napari-cyclestyle`` command and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Unpaired image-to-image translation (CycleGAN): train, translate, "
        "inspect and export models, or run the one-minute demo.",
        epilog=f"Exit codes: {EXIT_OK} success, {EXIT_ERROR} error, {EXIT_USAGE} usage error, "
        f"{EXIT_INTERRUPTED} training stopped with Ctrl-C (model and checkpoint saved). "
        f"Run '{PROG} COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in (
        _add_train_parser,
        _add_translate_parser,
        _add_info_parser,
        _add_export_parser,
        _add_demo_parser,
    ):
        add(subparsers)
    return parser


@contextmanager
def _torch_threads(threads: int | None):
    """Let torch use ``threads`` CPU threads for the block (None: leave as it is)."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}.")
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fail(error: BaseException, code: int) -> int:
    message = str(error).strip().replace("\n", " ") or type(error).__name__
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``napari-cyclestyle`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        The exit code: 0 success, 1 runtime error, 2 usage error, 130 stopped by Ctrl-C.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        with _torch_threads(getattr(args, "threads", None)):
            return run(args)
    except KeyboardInterrupt:
        print(f"\n{PROG}: aborted.", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (UsageError, ConfigError) as error:
        return _fail(error, EXIT_USAGE)
    except MemoryError as error:  # numpy's and Python's allocations; torch's are OutOfMemory
        return _fail(MemoryError(f"out of memory ({error or 'no details'})"), EXIT_ERROR)
    except (ValueError, OSError, CycleStyleError) as error:
        return _fail(error, EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())
