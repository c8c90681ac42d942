"""The CycleGAN training loop, as a generator of progress events.

The GUI, the CLI and scripts all consume the same :class:`TrainEvent` stream from
:meth:`Trainer.run`. Stopping is always safe: break out of the loop, close the
generator or call :meth:`Trainer.stop`, and the model file and a checkpoint are written.

The loop only: sampling, the learning-rate schedule, events, stop and resume, guards
(divergence, out of memory) and saving. One optimisation step is
:meth:`napari_cyclestyle.cyclegan.CycleGAN.training_step`; the checkpoint's contents are
:class:`napari_cyclestyle.checkpoint.TrainingCheckpoint`; validation, the best model and the
health watch are :class:`napari_cyclestyle.judging.RunJudge`'s.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__, distributed
from .checkpoint import TrainingCheckpoint
from .config import Config
from .cyclegan import LOSS_NAMES, CycleGAN
from .data import PatchStreams, run_settings
from .devices import is_out_of_memory, seed_torch
from .errors import CycleStyleError, OutOfMemory
from .health import HealthWarning
from .judging import RunJudge, hold_out
from .model import CycleStyleModel
from .model_file import CHECKPOINT_SUFFIX, MODEL_SUFFIX, save_model

BEST_SUFFIX = ".best" + MODEL_SUFFIX

__all__ = [
    "LOSS_NAMES",
    "HealthWarning",
    "TrainEvent",
    "Trainer",
    "TrainingDiverged",
    "TrainingOutOfMemory",
    "train",
]


class TrainingDiverged(CycleStyleError, RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint is kept."""

    @classmethod
    def at(cls, step: int, losses: list[str]) -> TrainingDiverged:
        """The error for ``losses`` that were not finite at ``step``."""
        return cls(
            f"Training diverged at step {step}: loss {', '.join(losses)} is not "
            "finite. The last checkpoint is kept; try a lower learning rate or check "
            "the images for extreme values."
        )


class TrainingOutOfMemory(OutOfMemory):
    """The device ran out of memory while training; the model and checkpoint are saved."""

    @classmethod
    def at(cls, step: int, device: torch.device, config: Config) -> TrainingOutOfMemory:
        """The advice for running out of memory on ``device`` at ``step``."""
        train = config.train
        return cls(
            f"Out of memory on {device} at step {step} (crop_size "
            f"{train.crop_size}, batch_size {train.batch_size}, ngf "
            f"{config.model.ngf}). Try a smaller crop_size or batch_size, a "
            "narrower network (ngf/ndf), or another device; the model and checkpoint "
            "of the steps done so far are saved."
        )


class RunClock:
    """Seconds spent training since a run (or resume) started, without the time the
    consumer holds the loop between events (a paused GUI worker)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since = time.perf_counter()

    def resume(self) -> None:
        """Count from now on (the consumer has handed the loop back)."""
        self._since = time.perf_counter()

    def lap(self) -> float:
        """Add the time since the last lap or resume, and return the total."""
        now = time.perf_counter()
        self.seconds += now - self._since
        self._since = now
        return self.seconds


def read_losses(
    step_losses: dict[str, torch.Tensor],
    names: tuple[str, ...],
    context: distributed.DistributedContext,
    step: int,
) -> dict[str, float]:
    """The losses of ``step`` (averaged over ranks) on the host, by name.

    Raises
    ------
    TrainingDiverged
        If any of them is NaN or Inf.
    """
    stacked = distributed.mean_over_ranks(
        torch.stack([step_losses[name].float() for name in names]), context
    )
    losses = dict(zip(names, stacked.tolist(), strict=True))
    bad = [name for name, value in losses.items() if not math.isfinite(value)]
    if bad:
        raise TrainingDiverged.at(step, bad)
    return losses


@dataclass
class TrainEvent:
    """What happened at one training step.

    Attributes
    ----------
    step : int
        Steps completed so far (including those before a resume).
    total_steps : int
        Steps of the whole run.
    learning_rate : float
        Learning rate used at this step.
    elapsed : float
        Seconds spent training since this run (or resume) started; time the consumer
        holds the loop between events (a paused GUI worker) does not count.
    seconds_left : float
        Estimated seconds to the end of the run.
    steps_per_second : float
        Speed of this run so far.
    losses : dict or None
        Loss values (see ``LOSS_NAMES``, and ``CycleGAN.loss_names`` for a one-sided
        run's and the terms of the optional methods) on steps where they were read back
        from the device (every ``log_every`` steps and the last), else None.
    preview : dict or None
        Every ``preview_every`` steps: ``real_A``, ``fake_B`` (= G(real_A)), ``real_B``,
        ``fake_A`` (= F(real_B)) as ``(C, Y, X)`` arrays in each domain's own values,
        always on the same fixed patches; a one-sided run (no F) has ``real_A`` and
        ``fake_B`` alone.
    checkpoint : Path or None
        Checkpoint written at this step, if any.
    finished : bool
        True on the last event of the run (completed or stopped).
    model_path : Path or None
        On the last event: the model file written.
    validation : dict or None
        Every ``validation_every`` steps and at the end, when there is held-out data:
        :func:`napari_cyclestyle.validation.measure`'s values on it.
    best_model_path : Path or None
        The best model file, when this step's validation made it the best so far.
    warnings : list of HealthWarning
        The health watch's warnings new at this step (each kind comes once a run).
    """

    step: int
    total_steps: int
    learning_rate: float
    elapsed: float
    seconds_left: float
    steps_per_second: float
    losses: dict[str, float] | None = None
    preview: dict[str, np.ndarray] | None = None
    checkpoint: Path | None = None
    finished: bool = False
    model_path: Path | None = None
    validation: dict[str, float] | None = None
    best_model_path: Path | None = None
    warnings: list[HealthWarning] = dataclasses.field(default_factory=list)


class Trainer:
    """Train a CycleGAN between two unpaired domains.

    Parameters
    ----------
    domain_a, domain_b : Domain, array, path or sequence
        The two domains' images (see :class:`~napari_cyclestyle.data.Domain`).
    config : Config, optional
        Model and training settings. Channel counts are taken from the data (the
        trainer's own copy of ``config`` holds them; ``config`` itself is not changed).
    output : path-like, optional
        Model file to write at the end and on stop; ``cyclestyle-model.safetensors``
        when None. The checkpoint goes beside it (``<stem>.checkpoint.pt``).
    resume : path-like, optional
        A checkpoint to continue from. Its model configuration is used; its training
        settings too, unless ``config`` is given (e.g. to extend the run).
    channel_axis_a, channel_axis_b : int, optional
        Channel axes of the domains' images when not inferable.
    validation_a, validation_b : Domain, array, path or sequence, optional
        Images to validate on, kept out of training; a domain without them keeps
        ``validation_fraction`` of its images out instead (when above 0).
    validation_truth_b : Domain, array, path or sequence, optional
        The true B image of each ``validation_a`` image (paired validation data): adds
        PSNR and SSIM to the validation values.

    Attributes
    ----------
    cyclegan : CycleGAN
        The networks, optimisers, losses and pools; :meth:`CycleGAN.training_step` is
        the step the loop runs.
    validation_set : ValidationSet or None
        The fixed validation patches (held out, or without held-out data fixed training
        patches for the health watch alone); None when neither is needed.
    best_path : Path
        Where the best model goes (``<stem>.best.safetensors``).
    judge : RunJudge
        Validation, the best model and the health watch; asked after every step.

    Raises
    ------
    ValueError
        For bad data or configuration, before anything is trained.
    """

    def __init__(
        self,
        domain_a,
        domain_b,
        config: Config | None = None,
        output: str | Path | None = None,
        resume: str | Path | None = None,
        channel_axis_a: int | None = None,
        channel_axis_b: int | None = None,
        validation_a=None,
        validation_b=None,
        validation_truth_b=None,
    ):
        self._resume_path = resume
        checkpoint = TrainingCheckpoint.load(resume) if resume is not None else None
        config, self.domain_a, self.domain_b = run_settings(
            domain_a, domain_b, config, checkpoint, resume, (channel_axis_a, channel_axis_b)
        )
        self.config = config
        self.output = (
            Path(output) if output is not None else Path("cyclestyle-model" + MODEL_SUFFIX)
        )
        self.checkpoint_path = self.output.with_name(self.output.stem + CHECKPOINT_SUFFIX)
        self.best_path = self.output.with_name(self.output.stem + BEST_SUFFIX)
        self.domain_a, self.domain_b, held_out = hold_out(
            self.domain_a,
            self.domain_b,
            (validation_a, validation_b, validation_truth_b),
            (channel_axis_a, channel_axis_b),
            config.train.validation_fraction,
        )
        self.judge = RunJudge(config, held_out, self.best_path)
        self.best_metric = self.judge.best_metric
        self.context, self.device = distributed.setup(config.train.device)
        self._stop_requested = False
        self.step = 0
        self.last_losses: dict[str, float] = {}
        self._model: tuple[int, CycleStyleModel] | None = None  # (updates, model)
        self._build(checkpoint)

    # ------------------------------------------------------------------ set-up
    def _build(self, checkpoint: TrainingCheckpoint | None) -> None:
        train = self.config.train
        seed_torch(train.seed, train.deterministic, train.cudnn_benchmark, self.device)
        self.patches = PatchStreams(self.domain_a, self.domain_b, train, self.context)
        networks = checkpoint.model["networks"] if checkpoint is not None else None
        self.cyclegan = CycleGAN(self.config, self.device, self.context, networks)
        self.judge.prepare(self.domain_a, self.domain_b, self.is_main_process)
        self.validation_set = self.judge.validation_set
        if checkpoint is not None:
            checkpoint.restore(self, self._resume_path)

    @property
    def networks(self):
        """The networks (``generator_ab``, ``generator_ba``, ``discriminator_a``,
        ``discriminator_b``; in a one-sided run the second and third are None) as they
        train."""
        return self.cyclegan.networks

    @property
    def validation_record(self) -> dict[str, dict[str, float]]:
        """Provenance of validation: ``{"last": {...}, "best": {...}}`` (each with its
        step); empty before the first validation on held-out data."""
        return self.judge.record

    @property
    def precision(self) -> str:
        """The precision training runs in (what ``"auto"`` picked): fp32, bf16 or fp16."""
        return self.cyclegan.precision

    @property
    def is_main_process(self) -> bool:
        """False on the helper ranks of a ``torchrun`` run (they write and log nothing)."""
        return self.context.is_main

    # ------------------------------------------------------------------ schedule
    def learning_rate(self, step: int) -> float:
        """Learning rate of (0-based) ``step``: constant, then linear decay toward zero."""
        train = self.config.train
        decay = max(0, step + 1 - train.n_steps) / (train.n_steps_decay + 1)
        return train.learning_rate * (1.0 - decay)

    # ------------------------------------------------------------------ the loop
    def stop(self) -> None:
        """Ask the running loop to finish after the current step (it then saves)."""
        self._stop_requested = True

    def run(self) -> Iterator[TrainEvent]:
        """Train, yielding a :class:`TrainEvent` after every step.

        The model file and a checkpoint are written at the end, when :meth:`stop` is
        called, and when the consumer stops iterating (``break``, ``close()``).

        Raises
        ------
        TrainingDiverged
            If a loss becomes NaN/Inf; the previous checkpoint is kept.
        TrainingOutOfMemory
            If the device runs out of memory; the steps done so far are saved.
        """
        train = self.config.train
        total = train.total_steps
        start_step = self.step
        self._clock = RunClock()
        finished = False
        step_losses: dict[str, torch.Tensor] = {}
        try:
            while self.step < total and not self._stop_everywhere():
                lr = self.learning_rate(self.step)
                step_losses = self._guarded_step()
                self.step += 1
                last = self.step == total
                losses = None
                if self.step % train.log_every == 0 or last:
                    losses = self._read_losses(step_losses)
                checkpoint = None
                if train.checkpoint_every and self.step % train.checkpoint_every == 0 and not last:
                    checkpoint = self.save_checkpoint()
                finished = last
                preview = self._maybe_preview(last)
                yield self._event(start_step, lr, losses, preview, checkpoint, last)
                self._clock.resume()  # the consumer's time is not training time
            if not finished:  # stop() was called between two steps
                finished = True
                losses = self._read_losses(step_losses) if step_losses else None
                lr = self.learning_rate(max(self.step - 1, 0))
                preview = self._maybe_preview(True)
                yield self._event(start_step, lr, losses, preview, None, True)
        except TrainingDiverged:
            finished = True  # keep the last good files rather than diverged weights
            raise
        finally:
            # Reached when the consumer abandons the loop (break, close, an exception).
            if not finished and self.step > start_step:
                try:
                    self.save()
                except Exception as error:  # do not hide the error that got us here
                    warnings.warn(
                        f"Could not save the model on the way out: {error}", stacklevel=2
                    )

    def _stop_everywhere(self) -> bool:
        """Whether to stop now; under torchrun, all ranks stop together."""
        self._stop_requested = distributed.any_rank(
            self._stop_requested, self.context, self.device
        )
        return self._stop_requested

    def _guarded_step(self) -> dict[str, torch.Tensor]:
        """One training step; running out of memory becomes advice, not a traceback."""
        try:
            real_a, real_b = self.patches.sample(self.device, self.config.train.channels_last)
            return self.cyclegan.training_step(real_a, real_b, self.learning_rate(self.step))
        except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(error):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise TrainingOutOfMemory.at(self.step + 1, self.device, self.config) from error

    def _maybe_preview(self, last: bool) -> dict[str, np.ndarray] | None:
        every = self.config.train.preview_every
        if not self.is_main_process or not every or not (last or self.step % every == 0):
            return None
        return self.patches.preview(self.cyclegan.preview)

    def _read_losses(self, step_losses: dict[str, torch.Tensor]) -> dict[str, float]:
        self.last_losses = read_losses(
            step_losses, self.cyclegan.loss_names, self.context, self.step
        )
        return self.last_losses

    def _event(self, start_step, lr, losses, preview, checkpoint, last) -> TrainEvent:
        elapsed = self._clock.lap()
        speed = (self.step - start_step) / elapsed if elapsed > 0 else 0.0
        total = self.config.train.total_steps
        verdict = self.judge.judge(self.step, losses, last, self.cyclegan, lambda: self.model)
        model_path = None
        if last and self.step > start_step:
            model_path = self.save()
            checkpoint = self.checkpoint_path
        return TrainEvent(
            step=self.step,
            total_steps=total,
            learning_rate=lr,
            elapsed=elapsed,
            seconds_left=(total - self.step) / speed if speed > 0 else float("inf"),
            steps_per_second=speed,
            losses=losses,
            preview=preview,
            checkpoint=checkpoint,
            finished=last,
            model_path=model_path,
            validation=verdict.validation,
            best_model_path=verdict.best_model_path,
            warnings=verdict.warnings,
        )

    # ------------------------------------------------------------------ outputs
    @property
    def model(self) -> CycleStyleModel:
        """The generators as they are now (copies in eval mode), with the domains'
        normalisations; built again only once training has moved on."""
        if self._model is None or self._model[0] != self.cyclegan.updates:
            norms = (self.domain_a.norm, self.domain_b.norm)
            model = CycleStyleModel(self.config.model, *self.cyclegan.generators(), *norms)
            self._model = (self.cyclegan.updates, model)
        model = self._model[1]
        model.info = {
            "steps": self.step,
            "mode": self.config.train.mode,  # a one-sided mode's model has no F
            "losses": self.last_losses,
            "version": __version__,
        }
        if self.validation_record:
            model.info["validation"] = copy.deepcopy(self.validation_record)
        return model

    def save(self) -> Path:
        """Write the model file and a checkpoint; return the model file's path.

        Under torchrun every rank must call this; rank 0 alone writes.
        """
        self.save_checkpoint()
        if self.is_main_process:
            save_model(self.model, self.output)
        distributed.barrier(self.context)
        return self.output

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write everything exact resume needs (atomically) and return its path.

        Under torchrun every rank must call this (the random streams and pools of all
        ranks are gathered); rank 0 alone writes.
        """
        path = Path(path or self.checkpoint_path)
        checkpoint = TrainingCheckpoint.gather(self)
        if checkpoint is not None:
            checkpoint.save(path)
        distributed.barrier(self.context)
        return path


def train(domain_a, domain_b, config: Config | None = None, **kwargs) -> Iterator[TrainEvent]:
    """Train a CycleGAN and yield progress events; see :class:`Trainer` for arguments.

    Examples
    --------
    >>> for event in train(images_a, images_b, config, output="model.safetensors"):
    ...     if event.losses:
    ...         print(event.step, event.losses["cycle_A"])
    """
    return Trainer(domain_a, domain_b, config, **kwargs).run()
