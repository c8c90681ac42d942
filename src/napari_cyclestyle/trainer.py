"""The CycleGAN training loop, as a generator of progress events.

The GUI, the CLI and scripts all consume the same :class:`TrainEvent` stream from
:meth:`Trainer.run`. Stopping is always safe: break out of the loop, close the
generator or call :meth:`Trainer.stop`, and the model file and a checkpoint are written.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import Config
from .data import Domain
from .devices import resolve_device
from .intensity import IntensityNorm
from .losses import GANLoss, ImagePool, cycle_loss
from .model import CycleStyleModel, build_generators
from .model_file import (
    CHECKPOINT_SUFFIX,
    FORMAT_NAME,
    MODEL_SUFFIX,
    load_checkpoint,
    save_checkpoint,
    save_model,
)
from .networks import build_discriminator, init_weights

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


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint is kept."""


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
        Seconds since this run (or resume) started.
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
    generator_ab: nn.Module
    generator_ba: nn.Module
    discriminator_a: nn.Module
    discriminator_b: nn.Module


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
        A checkpoint to continue from; its model configuration is used and the training
        settings of ``config`` may extend the run (e.g. more steps).
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
        config = config or Config()
        checkpoint = load_checkpoint(resume) if resume is not None else None
        norm_a: IntensityNorm | str = "auto"
        norm_b: IntensityNorm | str = "auto"
        if checkpoint is not None:
            saved = Config.from_json(checkpoint["config"])
            config = Config(model=saved.model, train=config.train)
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
        self.config = config
        self.output = (
            Path(output) if output is not None else Path("cyclestyle-model" + MODEL_SUFFIX)
        )
        self.checkpoint_path = self.output.with_name(self.output.stem + CHECKPOINT_SUFFIX)
        self.device = resolve_device(config.train.device)
        self._stop_requested = False
        self.step = 0
        self.last_losses: dict[str, float] = {}
        self._build(checkpoint)

    # ------------------------------------------------------------------ set-up
    def _build(self, checkpoint: dict | None) -> None:
        train = self.config.train
        if train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(train.seed)
        generator_ab, generator_ba = build_generators(self.config.model)
        model = self.config.model
        discriminator_a = build_discriminator(
            model.discriminator,
            model.channels_a,
            model.ndf,
            model.n_layers_discriminator,
            model.norm,
        )
        discriminator_b = build_discriminator(
            model.discriminator,
            model.channels_b,
            model.ndf,
            model.n_layers_discriminator,
            model.norm,
        )
        self.networks = _Networks(generator_ab, generator_ba, discriminator_a, discriminator_b)
        for network in self._all_networks():
            init_weights(network)
            network.to(self.device).train()
        betas = (train.beta1, train.beta2)
        generator_params = [*generator_ab.parameters(), *generator_ba.parameters()]
        discriminator_params = [*discriminator_a.parameters(), *discriminator_b.parameters()]
        self.optimizer_g = torch.optim.Adam(generator_params, train.learning_rate, betas)
        self.optimizer_d = torch.optim.Adam(discriminator_params, train.learning_rate, betas)
        self.gan_loss = GANLoss(train.gan_mode)
        self.pool_a = ImagePool(train.pool_size, torch.Generator().manual_seed(train.seed + 1))
        self.pool_b = ImagePool(train.pool_size, torch.Generator().manual_seed(train.seed + 2))
        self.rng = np.random.default_rng(train.seed)
        preview_rng = np.random.default_rng(train.seed + 12345)
        self.preview_a = torch.from_numpy(
            self.domain_a.sample(preview_rng, 1, train.crop_size, augment=False)
        )
        self.preview_b = torch.from_numpy(
            self.domain_b.sample(preview_rng, 1, train.crop_size, augment=False)
        )
        self.use_identity = (
            train.lambda_identity > 0
            and self.config.model.channels_a == self.config.model.channels_b
        )
        if checkpoint is not None:
            self._restore(checkpoint)

    def _all_networks(self) -> list[nn.Module]:
        n = self.networks
        return [n.generator_ab, n.generator_ba, n.discriminator_a, n.discriminator_b]

    # ------------------------------------------------------------------ schedule
    def learning_rate(self, step: int) -> float:
        """Learning rate of (0-based) ``step``: constant, then linear decay toward zero."""
        train = self.config.train
        decay = max(0, step + 1 - train.n_steps) / (train.n_steps_decay + 1)
        return train.learning_rate * (1.0 - decay)

    # ------------------------------------------------------------------ one step
    def _train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.networks
        train = self.config.train
        lr = self.learning_rate(self.step)
        for optimizer in (self.optimizer_g, self.optimizer_d):
            for group in optimizer.param_groups:
                group["lr"] = lr

        # Generators: fool the discriminators, close both cycles, keep identities.
        for network in (n.discriminator_a, n.discriminator_b):
            network.requires_grad_(False)
        fake_b = n.generator_ab(real_a)
        reconstructed_a = n.generator_ba(fake_b)
        fake_a = n.generator_ba(real_b)
        reconstructed_b = n.generator_ab(fake_a)
        losses: dict[str, torch.Tensor] = {}
        zero = real_a.new_zeros(())
        if self.use_identity:
            losses["identity_A"] = (
                cycle_loss(n.generator_ba(real_a), real_a)
                * train.lambda_cycle_a
                * train.lambda_identity
            )
            losses["identity_B"] = (
                cycle_loss(n.generator_ab(real_b), real_b)
                * train.lambda_cycle_b
                * train.lambda_identity
            )
        else:
            losses["identity_A"] = losses["identity_B"] = zero
        losses["G_adversarial"] = self.gan_loss(n.discriminator_b(fake_b), True)
        losses["F_adversarial"] = self.gan_loss(n.discriminator_a(fake_a), True)
        losses["cycle_A"] = cycle_loss(reconstructed_a, real_a) * train.lambda_cycle_a
        losses["cycle_B"] = cycle_loss(reconstructed_b, real_b) * train.lambda_cycle_b
        generator_total = sum(
            losses[k]
            for k in ("G_adversarial", "F_adversarial", "cycle_A", "cycle_B")
            + ("identity_A", "identity_B")
        )
        self.optimizer_g.zero_grad(set_to_none=True)
        generator_total.backward()
        self.optimizer_g.step()

        # Discriminators: real vs. a history of fakes.
        for network in (n.discriminator_a, n.discriminator_b):
            network.requires_grad_(True)
        pooled_b = self.pool_b.query(fake_b)
        pooled_a = self.pool_a.query(fake_a)
        losses["D_B"] = 0.5 * (
            self.gan_loss(n.discriminator_b(real_b), True)
            + self.gan_loss(n.discriminator_b(pooled_b), False)
        )
        losses["D_A"] = 0.5 * (
            self.gan_loss(n.discriminator_a(real_a), True)
            + self.gan_loss(n.discriminator_a(pooled_a), False)
        )
        self.optimizer_d.zero_grad(set_to_none=True)
        (losses["D_A"] + losses["D_B"]).backward()
        self.optimizer_d.step()
        return {name: losses[name].detach() for name in LOSS_NAMES}

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
        """
        train = self.config.train
        total = train.total_steps
        start_step, start_time = self.step, time.perf_counter()
        finished = False
        step_losses: dict[str, torch.Tensor] = {}
        try:
            while self.step < total and not self._stop_requested:
                real_a = torch.from_numpy(
                    self.domain_a.sample(self.rng, train.batch_size, train.crop_size, train.flip)
                ).to(self.device, non_blocking=True)
                real_b = torch.from_numpy(
                    self.domain_b.sample(self.rng, train.batch_size, train.crop_size, train.flip)
                ).to(self.device, non_blocking=True)
                lr = self.learning_rate(self.step)
                step_losses = self._train_step(real_a, real_b)
                self.step += 1
                last = self.step == total
                losses = None
                if self.step % train.log_every == 0 or last:
                    losses = self._read_losses(step_losses)
                checkpoint = None
                if train.checkpoint_every and self.step % train.checkpoint_every == 0 and not last:
                    checkpoint = self.save_checkpoint()
                preview = None
                if train.preview_every and (self.step % train.preview_every == 0 or last):
                    preview = self.preview()
                finished = last
                yield self._event(start_step, start_time, lr, losses, preview, checkpoint, last)
            if not finished:  # stop() was called between two steps
                finished = True
                losses = self._read_losses(step_losses) if step_losses else None
                preview = self.preview() if train.preview_every else None
                lr = self.learning_rate(max(self.step - 1, 0))
                yield self._event(start_step, start_time, lr, losses, preview, None, True)
        except TrainingDiverged:
            finished = True
            raise
        finally:
            # Reached when the consumer abandons the loop (break, close, an exception).
            if not finished and self.step > start_step:
                self.save()

    def _read_losses(self, step_losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """Bring the losses to the host (a device sync) and check they are finite."""
        losses = {name: float(value) for name, value in step_losses.items()}
        bad = [name for name, value in losses.items() if not math.isfinite(value)]
        if bad:
            raise TrainingDiverged(
                f"Training diverged at step {self.step}: loss {', '.join(bad)} is not "
                "finite. The last checkpoint is kept; try a lower learning rate or check "
                "the images for extreme values."
            )
        self.last_losses = losses
        return losses

    def _event(self, start_step, start_time, lr, losses, preview, checkpoint, last) -> TrainEvent:
        elapsed = time.perf_counter() - start_time
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
        """Write the model file and a checkpoint; return the model file's path."""
        self.save_checkpoint()
        return save_model(self.model, self.output)

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write everything exact resume needs (atomically) and return its path."""
        n = self.networks
        state = {
            "format": FORMAT_NAME + "-checkpoint",
            "version": __version__,
            "step": self.step,
            "config": self.config.to_json(),
            "norm_a": json.dumps(self.domain_a.norm.to_dict()),
            "norm_b": json.dumps(self.domain_b.norm.to_dict()),
            "networks": {
                "G": n.generator_ab.state_dict(),
                "F": n.generator_ba.state_dict(),
                "D_A": n.discriminator_a.state_dict(),
                "D_B": n.discriminator_b.state_dict(),
            },
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "pool_a": self.pool_a.state_dict(),
            "pool_b": self.pool_b.state_dict(),
            "data_rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "last_losses": json.dumps(self.last_losses),
        }
        return save_checkpoint(state, path or self.checkpoint_path)

    def _restore(self, state: dict) -> None:
        n = self.networks
        for key, network in (
            ("G", n.generator_ab),
            ("F", n.generator_ba),
            ("D_A", n.discriminator_a),
            ("D_B", n.discriminator_b),
        ):
            network.load_state_dict(state["networks"][key])
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        self.pool_a.load_state_dict(state["pool_a"], self.device)
        self.pool_b.load_state_dict(state["pool_b"], self.device)
        self.rng.bit_generator.state = json.loads(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
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
