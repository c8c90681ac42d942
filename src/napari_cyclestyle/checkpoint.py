"""The training checkpoint: everything an exact resume needs, in one type.

A checkpoint is a torch file of tensors and plain values only (it loads with
``weights_only=True``, running no code): the step reached, the configuration, both
domains' normalisations, the four networks (a one-sided run's two: G and D_B) with
their optimisers and loss scale, the generators' weight averages (with ``ema_decay``),
PatchNCE's heads, every patch stream's random state, each rank's history pools and
torch's random states.
:class:`TrainingCheckpoint` gathers it from a run, writes it, reads it back, validates
it and restores it into a run; nothing read from a file is trusted.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import __version__, distributed
from .config import Config, ConfigError
from .files import atomic_write_bytes
from .intensity import IntensityNorm
from .model_file import (
    CHECKPOINT_SUFFIX,
    FORMAT_NAME,
    ModelFileError,
    check_state,
    described_networks,
    is_safetensors,
    parse_norm,
    safe_torch_load,
)

if TYPE_CHECKING:
    from .trainer import Trainer

CHECKPOINT_FORMAT = FORMAT_NAME + "-checkpoint"

# Entries checked on a cheap read, and their types.
_SETTINGS_ENTRIES = {
    "version": str,
    "step": int,
    "config": str,
    "norm_a": str,
    "norm_b": str,
    "networks": dict,
    "torch_rng": torch.Tensor,
}
# Training state of the optional methods: the generators' weight averages, PatchNCE's
# heads (their shapes are checked as they load into the networks they belong to).
_OPTIONAL_ENTRIES = ("ema", "nce_heads")
_ERRORS = (ConfigError, KeyError, TypeError, ValueError, RuntimeError, RecursionError)


@dataclass
class TrainingCheckpoint:
    """A training run's state at a step.

    Attributes
    ----------
    step : int
        Steps completed.
    config : Config
        The run's model and training settings.
    norm_a, norm_b : IntensityNorm
        The domains' intensity normalisations.
    model : dict
        :meth:`napari_cyclestyle.cyclegan.CycleGAN.state_dict`: ``networks``,
        ``optimizer_g``, ``optimizer_d``, ``grad_scaler``, ``ema``, ``nce_heads``.
    data_streams : dict
        Each patch slot's random stream (``str(slot)`` → its bit generator's state as
        JSON), over all ranks.
    pools : list of dict
        Each rank's history pools (:meth:`~napari_cyclestyle.cyclegan.CycleGAN.pool_state_dict`).
    torch_rng : torch.Tensor
        torch's CPU random state.
    cuda_rng : list
        torch's CUDA random states (empty without CUDA).
    last_losses : dict
        The losses last read back.
    validation : dict
        The last and the best validation values (empty without validation; older
        checkpoints have none).
    version : str
        The package version that wrote it.
    """

    step: int
    config: Config
    norm_a: IntensityNorm
    norm_b: IntensityNorm
    model: dict[str, Any]
    data_streams: dict[str, str]
    pools: list[dict[str, Any]]
    torch_rng: torch.Tensor
    cuda_rng: list = field(default_factory=list)
    last_losses: dict[str, float] = field(default_factory=dict)
    validation: dict[str, dict] = field(default_factory=dict)
    version: str = __version__

    # ------------------------------------------------------------------ the run
    @classmethod
    def gather(cls, trainer: Trainer) -> TrainingCheckpoint | None:
        """``trainer``'s state now, with every rank's random streams and pools: on
        rank 0; None on the other ranks. Under torchrun every rank must call this."""
        local = {"streams": trainer.patches.state(), "pools": trainer.cyclegan.pool_state_dict()}
        ranks = distributed.all_gather(local, trainer.context)
        if not trainer.is_main_process:
            return None
        return cls(
            step=trainer.step,
            config=trainer.config,
            norm_a=trainer.domain_a.norm,
            norm_b=trainer.domain_b.norm,
            model=trainer.cyclegan.state_dict(),
            data_streams={
                slot: value for rank in ranks for slot, value in rank["streams"].items()
            },
            pools=[rank["pools"] for rank in ranks],
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            last_losses=trainer.last_losses,
            validation=trainer.validation_record,
        )

    def restore(self, trainer: Trainer, source: str | os.PathLike) -> None:
        """Continue ``trainer`` from this checkpoint, read from ``source`` (the
        networks' weights load before they are wrapped for DDP).

        Raises
        ------
        ModelFileError
            If the checkpoint does not fit the trainer's networks or streams.
        """
        try:
            trainer.cyclegan.load_state_dict(self.model)
            # Another world size redistributes the patches' streams and the ranks' pools.
            trainer.patches.restore(self.data_streams)
            trainer.cyclegan.load_pool_state_dict(
                self.pools[trainer.context.rank % len(self.pools)]
            )
            torch.set_rng_state(self.torch_rng)
            if self.cuda_rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self.cuda_rng)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise ModelFileError(
                f"{source}: a damaged training checkpoint ({error!r}); resume from an "
                "earlier copy or start a new run."
            ) from error
        trainer.step = trainer.cyclegan.updates = self.step
        trainer.last_losses = self.last_losses
        trainer.judge.record = self.validation

    # ------------------------------------------------------------------ the file
    def to_state(self) -> dict[str, Any]:
        """The checkpoint as the file holds it (format 1: JSON strings for the settings)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": self.version,
            "step": self.step,
            "config": self.config.to_json(),
            "norm_a": json.dumps(self.norm_a.to_dict()),
            "norm_b": json.dumps(self.norm_b.to_dict()),
            "networks": self.model["networks"],
            "optimizer_g": self.model["optimizer_g"],
            "optimizer_d": self.model["optimizer_d"],
            "data_streams": json.dumps(self.data_streams),
            "pools": self.pools,
            "torch_rng": self.torch_rng,
            "cuda_rng": self.cuda_rng,
            "grad_scaler": self.model["grad_scaler"],
            "last_losses": json.dumps(self.last_losses),
            **{key: self.model[key] for key in _OPTIONAL_ENTRIES if self.model.get(key)},
            "validation": json.dumps(self.validation),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint atomically and return its path."""
        buffer = io.BytesIO()
        torch.save(self.to_state(), buffer)
        path = Path(path)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingCheckpoint:
        """Read and validate a checkpoint, executing no code.

        Its configuration, normalisations and random states are validated, and the
        networks' weights (the four, or a one-sided mode's G and D_B) are checked against
        the networks the configuration describes.

        Raises
        ------
        ModelFileError
            If the file is missing, not a napari-cyclestyle checkpoint, or damaged.
        """
        path = Path(path)
        state = _read(path)
        config = _check_settings(path, state)
        described = described_networks(path, config.model, discriminators=True)
        trained = config.train.network_names
        for name in trained:
            if not isinstance(state["networks"].get(name), Mapping):
                raise ModelFileError(f"{path}: a damaged training checkpoint (no {name} weights).")
            check_state(described[name], state["networks"][name], f"{path} ({name})")
        averages = state.get("ema") or {}
        if not isinstance(averages, Mapping):
            raise ModelFileError(f"{path}: a damaged training checkpoint (ema is not a dict).")
        for name, average in averages.items():
            if name not in ("G", "F") or name not in trained or not isinstance(average, Mapping):
                raise ModelFileError(f"{path}: a damaged training checkpoint (ema {name!r}).")
            if not isinstance(average.get("updates"), int) or not isinstance(
                average.get("weights"), Mapping
            ):
                raise ModelFileError(f"{path}: a damaged training checkpoint (ema {name}).")
            check_state(described[name], average["weights"], f"{path} (ema of {name})")
        return cls.from_state(state, path)

    @classmethod
    def from_state(cls, state: dict[str, Any], path: str | os.PathLike) -> TrainingCheckpoint:
        """The checkpoint a :meth:`to_state` dict describes (read from ``path``).

        Raises
        ------
        ModelFileError
            If an entry is missing or of the wrong kind.
        """
        try:
            data_streams = json.loads(state["data_streams"])
            last_losses = json.loads(state["last_losses"])
            validation = json.loads(state.get("validation", "{}"))
            for name, value in (
                ("data_streams", data_streams),
                ("last_losses", last_losses),
                ("validation", validation),
            ):
                if not isinstance(value, dict):
                    raise TypeError(f"{name} is a {type(value).__name__}, not a dict")
            if not isinstance(state["pools"], list) or not state["pools"]:
                raise TypeError("pools is not a list with a pool state per rank")
            return cls(
                step=state["step"],
                config=Config.from_json(state["config"], stored=True),
                norm_a=IntensityNorm.from_dict(json.loads(state["norm_a"])),
                norm_b=IntensityNorm.from_dict(json.loads(state["norm_b"])),
                model={
                    "networks": state["networks"],
                    "optimizer_g": state["optimizer_g"],
                    "optimizer_d": state["optimizer_d"],
                    "grad_scaler": state.get("grad_scaler") or {},
                    # Older checkpoints and runs without the methods have none.
                    **{key: state.get(key) or {} for key in _OPTIONAL_ENTRIES},
                },
                data_streams=data_streams,
                pools=state["pools"],
                torch_rng=state["torch_rng"],
                cuda_rng=state["cuda_rng"],
                last_losses=last_losses,
                validation=validation,
                version=state["version"],
            )
        except _ERRORS as error:
            raise _damaged(path, error) from error

    @staticmethod
    def read_settings(path: str | os.PathLike) -> tuple[int, Config]:
        """The step reached and the settings, without checking the networks' weights.

        Raises
        ------
        ModelFileError
            If the file is missing, not a checkpoint, or its settings are damaged.
        """
        path = Path(path)
        state = _read(path)
        return state["step"], _check_settings(path, state)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such checkpoint file.")
    if is_safetensors(path):
        raise ModelFileError(
            f"{path}: a model file, not a training checkpoint; training resumes from the "
            f"{CHECKPOINT_SUFFIX} file written beside the model."
        )
    state = safe_torch_load(path, "not a readable checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: not a napari-cyclestyle training checkpoint.")
    return state


def _check_settings(path: Path, state: dict[str, Any]) -> Config:
    """Refuse a checkpoint whose configuration, normalisations or random state could not
    restore a trainer; return its configuration."""
    try:
        for key, kind in _SETTINGS_ENTRIES.items():
            if not isinstance(state[key], kind) or isinstance(state[key], bool):
                raise TypeError(f"{key} is a {type(state[key]).__name__}, not a {kind.__name__}")
        if state["step"] < 0:
            raise ValueError(f"step is {state['step']}")
        config = Config.from_json(state["config"], stored=True)
        parse_norm(json.loads(state["norm_a"]), config.model.channels_a, "norm_a")
        parse_norm(json.loads(state["norm_b"]), config.model.channels_b, "norm_b")
        torch.Generator().set_state(state["torch_rng"])
    except _ERRORS as error:
        raise _damaged(path, error) from error
    return config


def _damaged(path: str | os.PathLike, error: Exception) -> ModelFileError:
    detail = f"missing entry {error}" if isinstance(error, KeyError) else str(error)
    return ModelFileError(f"{path}: a damaged training checkpoint ({detail}).")
