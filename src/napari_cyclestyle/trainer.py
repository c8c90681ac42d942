"""The CycleGAN training loop, as a generator of progress events.

The GUI, the CLI and scripts all consume the same :class:`TrainEvent` stream from
:meth:`Trainer.run`. Stopping is always safe: break out of the loop, close the
generator or call :meth:`Trainer.stop`, and the model file and a checkpoint are written.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__, distributed
from .config import Config
from .data import Domain
from .devices import ieee_float32, is_out_of_memory
from .distributed import wrap
from .errors import CycleStyleError, OutOfMemory
from .intensity import IntensityNorm
from .losses import GANLoss, ImagePool, cycle_loss
from .model import CycleStyleModel, build_generators
from .model_file import (
    CHECKPOINT_SUFFIX,
    FORMAT_NAME,
    MODEL_SUFFIX,
    ModelFileError,
    load_checkpoint,
    save_checkpoint,
    save_model,
)
from .networks import build_discriminator, init_weights, size_multiple

# Every loss the step computes; events, logs and model provenance follow this list.
LOSS_NAMES = (
    "G_adversarial",
    "F_adversarial",
    "cycle_A",
    "cycle_B",
    "identity_A",
    "identity_B",
    "D_A",
    "D_B",
)
_GENERATOR_LOSSES = LOSS_NAMES[:6]


class _CompiledOrEager:
    """Calls ``torch.compile(network)``; if compiling fails, warns once and calls the
    network itself from then on (compilers fail in many ways: no C compiler, no
    Triton, an unsupported platform)."""

    def __init__(self, network: nn.Module, name: str) -> None:
        self.network, self.name = network, name
        self.compiled: Callable | None = torch.compile(network)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(batch)
            except Exception as error:  # any compiler failure
                if is_out_of_memory(error):
                    raise
                warnings.warn(
                    f"torch.compile could not compile {self.name} ({type(error).__name__}: "
                    f"{str(error)[:300]}); it trains uncompiled.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled = None
        return self.network(batch)


class TrainingDiverged(CycleStyleError, RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint is kept."""


class TrainingOutOfMemory(OutOfMemory):
    """The device ran out of memory while training; the model and checkpoint are saved."""


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
        Loss values (see ``LOSS_NAMES``) on steps where they were read back from the
        device (every ``log_every`` steps and the last), else None.
    preview : dict or None
        Every ``preview_every`` steps: ``real_A``, ``fake_B`` (= G(real_A)), ``real_B``,
        ``fake_A`` (= F(real_B)) as ``(C, Y, X)`` arrays in each domain's own values,
        always on the same fixed patches.
    checkpoint : Path or None
        Checkpoint written at this step, if any.
    finished : bool
        True on the last event of the run (completed or stopped).
    model_path : Path or None
        On the last event: the model file written.
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


@dataclass
class _Networks:
    """The four networks, as built (their state dicts are what files hold)."""

    generator_ab: nn.Module
    generator_ba: nn.Module
    discriminator_a: nn.Module
    discriminator_b: nn.Module

    def named(self) -> dict[str, nn.Module]:
        """Networks by the names checkpoints use."""
        return {
            "G": self.generator_ab,
            "F": self.generator_ba,
            "D_A": self.discriminator_a,
            "D_B": self.discriminator_b,
        }


class Trainer:
    """Train a CycleGAN between two unpaired domains.

    Parameters
    ----------
    domain_a, domain_b : Domain, array, path or sequence
        The two domains' images (see :class:`~napari_cyclestyle.data.Domain`).
    config : Config, optional
        Model and training settings. Channel counts are taken from the data.
    output : path-like, optional
        Model file to write at the end and on stop; ``cyclestyle-model.safetensors``
        when None. The checkpoint goes beside it (``<stem>.checkpoint.pt``).
    resume : path-like, optional
        A checkpoint to continue from. Its model configuration is used; its training
        settings too, unless ``config`` is given (e.g. to extend the run).
    channel_axis_a, channel_axis_b : int, optional
        Channel axes of the domains' images when not inferable.

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
    ):
        self._resume_path = resume
        checkpoint = load_checkpoint(resume) if resume is not None else None
        norm_a: IntensityNorm | str = "auto"
        norm_b: IntensityNorm | str = "auto"
        if checkpoint is None:
            config = config or Config()
        else:
            saved = Config.from_json(checkpoint["config"])
            config = Config(model=saved.model, train=(config or saved).train)
            norm_a = IntensityNorm.from_dict(json.loads(checkpoint["norm_a"]))
            norm_b = IntensityNorm.from_dict(json.loads(checkpoint["norm_b"]))
        if not isinstance(domain_a, Domain):
            domain_a = Domain(domain_a, "A", channel_axis_a, norm_a)
        if not isinstance(domain_b, Domain):
            domain_b = Domain(domain_b, "B", channel_axis_b, norm_b)
        self.domain_a, self.domain_b = domain_a, domain_b
        if checkpoint is None:
            config.model.channels_a = domain_a.n_channels
            config.model.channels_b = domain_b.n_channels
        else:
            for domain, expected in (
                (domain_a, config.model.channels_a),
                (domain_b, config.model.channels_b),
            ):
                if domain.n_channels != expected:
                    raise ValueError(
                        f"Domain {domain.name} has {domain.n_channels} channel(s) but the "
                        f"checkpoint {resume} was trained with {expected}."
                    )
        multiple = size_multiple(config.model.generator)
        if config.train.crop_size % multiple:
            raise ValueError(
                f"crop_size {config.train.crop_size} does not suit {config.model.generator}: "
                f"use a multiple of {multiple}."
            )
        self.config = config
        self.output = (
            Path(output) if output is not None else Path("cyclestyle-model" + MODEL_SUFFIX)
        )
        self.checkpoint_path = self.output.with_name(self.output.stem + CHECKPOINT_SUFFIX)
        self.context, self.device = distributed.setup(config.train.device)
        if config.train.batch_size % self.context.world_size:
            raise ValueError(
                f"batch_size {config.train.batch_size} is the global batch: it must be a "
                f"multiple of the {self.context.world_size} training processes."
            )
        self._stop_requested = False
        self.step = 0
        self.last_losses: dict[str, float] = {}
        self._build(checkpoint)

    # ------------------------------------------------------------------ set-up
    def _build(self, checkpoint: dict | None) -> None:
        train, model = self.config.train, self.config.model
        if train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = train.cudnn_benchmark and not train.deterministic
        torch.manual_seed(train.seed)
        generator_ab, generator_ba = build_generators(model)
        discriminator_a, discriminator_b = (
            build_discriminator(
                model.discriminator, channels, model.ndf, model.n_layers_discriminator, model.norm
            )
            for channels in (model.channels_a, model.channels_b)
        )
        self.networks = _Networks(generator_ab, generator_ba, discriminator_a, discriminator_b)
        for network in self.networks.named().values():
            init_weights(network)
            network.to(self.device).train()
            if train.channels_last:
                network.to(memory_format=torch.channels_last)
        if checkpoint is not None:
            for name, network in self.networks.named().items():
                network.load_state_dict(checkpoint["networks"][name])
        # What the step calls: DistributedDataParallel wrappers under torchrun, compiled
        # if asked.
        called = {
            name: wrap(network, self.context, self.device)
            for name, network in self.networks.named().items()
        }
        if train.compile:
            called = {name: _CompiledOrEager(network, name) for name, network in called.items()}
        self._train_networks = _Networks(*called.values())
        self.batched_forward = train.batched_forward and model.norm != "batch"
        self.use_identity = train.lambda_identity > 0 and model.channels_a == model.channels_b
        self._setup_precision()
        fused = self.device.type in ("cpu", "cuda")
        betas = (train.beta1, train.beta2)
        self.optimizer_g = torch.optim.Adam(
            [*generator_ab.parameters(), *generator_ba.parameters()],
            train.learning_rate,
            betas,
            fused=fused,
        )
        self.optimizer_d = torch.optim.Adam(
            [*discriminator_a.parameters(), *discriminator_b.parameters()],
            train.learning_rate,
            betas,
            fused=fused,
        )
        self.gan_loss = GANLoss(train.gan_mode)
        rank = self.context.rank
        self.pool_a = ImagePool(
            train.pool_size, torch.Generator().manual_seed(train.seed + 2 * rank + 1)
        )
        self.pool_b = ImagePool(
            train.pool_size, torch.Generator().manual_seed(train.seed + 2 * rank + 2)
        )
        # One random stream per patch of the global batch: a patch is the same whichever
        # process draws it, so N processes train exactly like one with the same batch.
        local_batch = train.batch_size // self.context.world_size
        self.data_streams = {
            slot: np.random.default_rng([train.seed, slot])
            for slot in range(rank * local_batch, (rank + 1) * local_batch)
        }
        preview_rng = np.random.default_rng([train.seed, 12345])
        self.preview_a = torch.from_numpy(
            self.domain_a.sample(preview_rng, 1, train.crop_size, augment=False)
        )
        self.preview_b = torch.from_numpy(
            self.domain_b.sample(preview_rng, 1, train.crop_size, augment=False)
        )
        if checkpoint is not None:
            self._restore(checkpoint)

    def _setup_precision(self) -> None:
        precision = self.config.train.precision
        on_cuda = self.device.type == "cuda"
        if precision == "auto":
            if not on_cuda:
                precision = "fp32"
            else:
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if precision == "fp16" and not on_cuda:
            raise ValueError("precision='fp16' needs a CUDA device; use 'fp32' or 'auto'.")
        self.precision = precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

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

    # ------------------------------------------------------------------ one step
    def _sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        train = self.config.train
        batches = []
        for domain in (self.domain_a, self.domain_b):
            patches = [
                domain.sample(stream, 1, train.crop_size, train.flip)
                for stream in self.data_streams.values()
            ]
            batch = torch.from_numpy(np.concatenate(patches)).to(self.device)
            if train.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            batches.append(batch)
        return batches[0], batches[1]

    def _generate(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """fake_B = G(a), rec_A = F(G(a)), fake_A = F(b), rec_B = G(F(b)) and identities.

        With ``batched_forward`` each generator runs on the concatenation of its inputs
        (per-image norms make that the same mathematics in fewer, larger operations).
        """
        n = self._train_networks
        out: dict[str, torch.Tensor] = {}
        if self.batched_forward:
            inputs = [real_b, real_a] if self.use_identity else [real_b]
            f_outputs = n.generator_ba(torch.cat(inputs)).split(len(real_b))
            out["fake_A"] = f_outputs[0]
            inputs = [real_a, out["fake_A"]] + ([real_b] if self.use_identity else [])
            g_outputs = n.generator_ab(torch.cat(inputs)).split(len(real_a))
            out["fake_B"], out["rec_B"] = g_outputs[0], g_outputs[1]
            out["rec_A"] = n.generator_ba(out["fake_B"])
            if self.use_identity:
                out["idt_A"], out["idt_B"] = f_outputs[1], g_outputs[2]
        else:
            out["fake_B"] = n.generator_ab(real_a)
            out["rec_A"] = n.generator_ba(out["fake_B"])
            out["fake_A"] = n.generator_ba(real_b)
            out["rec_B"] = n.generator_ab(out["fake_A"])
            if self.use_identity:
                out["idt_A"] = n.generator_ba(real_a)
                out["idt_B"] = n.generator_ab(real_b)
        return out

    def _discriminate(self, network: nn.Module, real: torch.Tensor, fake: torch.Tensor):
        """The discriminator's predictions on real and fake images (one call if batched)."""
        if self.batched_forward:
            return network(torch.cat([real, fake])).split(len(real))
        return network(real), network(fake)

    def _train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        n, raw = self._train_networks, self.networks
        train = self.config.train
        lr = self.learning_rate(self.step)
        for optimizer in (self.optimizer_g, self.optimizer_d):
            for group in optimizer.param_groups:
                group["lr"] = lr
        autocast = torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

        # Generators: fool the discriminators, close both cycles, keep identities.
        # The discriminators are frozen and called unwrapped: no gradient of theirs to sync.
        for network in (raw.discriminator_a, raw.discriminator_b):
            network.requires_grad_(False)
        with autocast:
            out = self._generate(real_a, real_b)
            losses: dict[str, torch.Tensor] = {}
            if self.use_identity:
                weight = train.lambda_identity
                losses["identity_A"] = (
                    cycle_loss(out["idt_A"], real_a) * train.lambda_cycle_a * weight
                )
                losses["identity_B"] = (
                    cycle_loss(out["idt_B"], real_b) * train.lambda_cycle_b * weight
                )
            else:
                losses["identity_A"] = losses["identity_B"] = real_a.new_zeros(())
            losses["G_adversarial"] = self.gan_loss(raw.discriminator_b(out["fake_B"]), True)
            losses["F_adversarial"] = self.gan_loss(raw.discriminator_a(out["fake_A"]), True)
            losses["cycle_A"] = cycle_loss(out["rec_A"], real_a) * train.lambda_cycle_a
            losses["cycle_B"] = cycle_loss(out["rec_B"], real_b) * train.lambda_cycle_b
            generator_total = sum(losses[name] for name in _GENERATOR_LOSSES)
        self.optimizer_g.zero_grad(set_to_none=True)
        self._backward_and_step(generator_total, self.optimizer_g)

        # Discriminators: real images against a history of fakes.
        for network in (raw.discriminator_a, raw.discriminator_b):
            network.requires_grad_(True)
        with autocast:
            for name, network, real, fake, pool in (
                ("D_A", n.discriminator_a, real_a, out["fake_A"], self.pool_a),
                ("D_B", n.discriminator_b, real_b, out["fake_B"], self.pool_b),
            ):
                on_real, on_fake = self._discriminate(network, real, pool.query(fake))
                losses[name] = 0.5 * (self.gan_loss(on_real, True) + self.gan_loss(on_fake, False))
        self.optimizer_d.zero_grad(set_to_none=True)
        self._backward_and_step(losses["D_A"] + losses["D_B"], self.optimizer_d)
        if self.scaler is not None:
            self.scaler.update()
        return {name: losses[name].detach() for name in LOSS_NAMES}

    def _backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)

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
        self._active_seconds, self._clock = 0.0, time.perf_counter()
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
                self._clock = time.perf_counter()  # the consumer's time is not training time
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
            real_a, real_b = self._sample()
            with ieee_float32() if self.precision == "fp32" else contextlib.nullcontext():
                return self._train_step(real_a, real_b)
        except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(error):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            train = self.config.train
            raise TrainingOutOfMemory(
                f"Out of memory on {self.device} at step {self.step + 1} (crop_size "
                f"{train.crop_size}, batch_size {train.batch_size}, ngf "
                f"{self.config.model.ngf}). Try a smaller crop_size or batch_size, a "
                "narrower network (ngf/ndf), or another device; the model and checkpoint "
                "of the steps done so far are saved."
            ) from error

    def _maybe_preview(self, last: bool) -> dict[str, np.ndarray] | None:
        every = self.config.train.preview_every
        if not self.is_main_process or not every or not (last or self.step % every == 0):
            return None
        return self.preview()

    def _read_losses(self, step_losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """Bring the losses (averaged over ranks) to the host and check they are finite."""
        stacked = distributed.mean_over_ranks(
            torch.stack([step_losses[name].float() for name in LOSS_NAMES]), self.context
        )
        losses = dict(zip(LOSS_NAMES, stacked.tolist(), strict=True))
        bad = [name for name, value in losses.items() if not math.isfinite(value)]
        if bad:
            raise TrainingDiverged(
                f"Training diverged at step {self.step}: loss {', '.join(bad)} is not "
                "finite. The last checkpoint is kept; try a lower learning rate or check "
                "the images for extreme values."
            )
        self.last_losses = losses
        return losses

    def _event(self, start_step, lr, losses, preview, checkpoint, last) -> TrainEvent:
        now = time.perf_counter()
        self._active_seconds += now - self._clock
        self._clock = now
        elapsed = self._active_seconds
        speed = (self.step - start_step) / elapsed if elapsed > 0 else 0.0
        total = self.config.train.total_steps
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
        )

    # ------------------------------------------------------------------ outputs
    @torch.inference_mode()
    def preview(self) -> dict[str, np.ndarray]:
        """G and F applied to the fixed preview patches, in each domain's values."""
        n = self.networks
        previews = {}
        for name, network, real, source, target in (
            ("B", n.generator_ab, self.preview_a, self.domain_a, self.domain_b),
            ("A", n.generator_ba, self.preview_b, self.domain_b, self.domain_a),
        ):
            network.eval()
            fake = network(real.to(self.device)).float().cpu().numpy()[0]
            network.train()
            real_name = "real_A" if name == "B" else "real_B"
            previews[real_name] = source.norm.denormalize(real.numpy()[0])
            previews[f"fake_{name}"] = target.norm.denormalize(fake)
        return previews

    @property
    def model(self) -> CycleStyleModel:
        """The generators as they are now, with the domains' normalisations."""
        n = self.networks
        generator_ab, generator_ba = build_generators(self.config.model)
        generator_ab.load_state_dict(n.generator_ab.state_dict())
        generator_ba.load_state_dict(n.generator_ba.state_dict())
        generator_ab.eval()
        generator_ba.eval()
        info = {"steps": self.step, "losses": self.last_losses, "version": __version__}
        return CycleStyleModel(
            self.config.model,
            generator_ab,
            generator_ba,
            self.domain_a.norm,
            self.domain_b.norm,
            info,
        )

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
        local = {
            "streams": {
                str(slot): json.dumps(stream.bit_generator.state)
                for slot, stream in self.data_streams.items()
            },
            "pools": {"A": self.pool_a.state_dict(), "B": self.pool_b.state_dict()},
        }
        ranks = distributed.all_gather(local, self.context)
        if self.is_main_process:
            state = {
                "format": FORMAT_NAME + "-checkpoint",
                "version": __version__,
                "step": self.step,
                "config": self.config.to_json(),
                "norm_a": json.dumps(self.domain_a.norm.to_dict()),
                "norm_b": json.dumps(self.domain_b.norm.to_dict()),
                "networks": {
                    name: network.state_dict() for name, network in self.networks.named().items()
                },
                "optimizer_g": self.optimizer_g.state_dict(),
                "optimizer_d": self.optimizer_d.state_dict(),
                "data_streams": json.dumps(
                    {slot: value for rank in ranks for slot, value in rank["streams"].items()}
                ),
                "pools": [rank["pools"] for rank in ranks],
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                # fp16's loss scale, learnt over the steps so far (empty in other precisions).
                "grad_scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "last_losses": json.dumps(self.last_losses),
            }
            save_checkpoint(state, path)
        distributed.barrier(self.context)
        return path

    def _restore(self, state: dict) -> None:
        """Continue from a checkpoint (the networks' weights are loaded before wrapping)."""
        try:
            self._restore_training_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise ModelFileError(
                f"{self._resume_path}: a damaged training checkpoint ({error!r}); resume "
                "from an earlier copy or start a new run."
            ) from error

    def _restore_training_state(self, state: dict) -> None:
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        # Another world size redistributes the patches' streams and the ranks' pools.
        streams = json.loads(state["data_streams"])
        for slot, stream in self.data_streams.items():
            if str(slot) in streams:
                stream.bit_generator.state = json.loads(streams[str(slot)])
        pools = state["pools"][self.context.rank % len(state["pools"])]
        self.pool_a.load_state_dict(pools["A"], self.device)
        self.pool_b.load_state_dict(pools["B"], self.device)
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.scaler is not None and state.get("grad_scaler"):  # older checkpoints: none
            self.scaler.load_state_dict(state["grad_scaler"])
        self.step = int(state["step"])
        self.last_losses = json.loads(state["last_losses"])


def train(domain_a, domain_b, config: Config | None = None, **kwargs) -> Iterator[TrainEvent]:
    """Train a CycleGAN and yield progress events; see :class:`Trainer` for arguments.

    Examples
    --------
    >>> for event in train(images_a, images_b, config, output="model.safetensors"):
    ...     if event.losses:
    ...         print(event.step, event.losses["cycle_A"])
    """
    return Trainer(domain_a, domain_b, config, **kwargs).run()
