"""napari-cyclestyle: unpaired image-to-image translation (CycleGAN) for napari and Python.

The public API is imported lazily, so that ``import napari_cyclestyle`` (and napari's
plugin discovery) does not import torch:

- :func:`train` / :class:`Trainer`: train G (A→B) and F (B→A), yielding progress events.
- :func:`load_model`: our model files or reference CycleGAN ``.pth`` checkpoints.
- :func:`translate`: apply G or F to an array of any size, dtype and layout.
- :func:`export`: G and/or F as ONNX, TorchScript or a bioimage.io package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "config",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "ConfigError": "config",
    "Domain": "data",
    "Trainer": "trainer",
    "TrainEvent": "trainer",
    "TrainingDiverged": "trainer",
    "TrainingOutOfMemory": "trainer",
    "train": "trainer",
    "HealthWarning": "health",
    "CycleStyleModel": "model",
    "load_model": "model_file",
    "save_model": "model_file",
    "ModelFileError": "model_file",
    "translate": "inference",
    "TranslationOutOfMemory": "inference",
    "CycleStyleError": "errors",
    "resolve_device": "devices",
    "export": "exporting",
    "ExportError": "exporting",
}

__all__ = [
    "__version__",
    "Config",
    "ModelConfig",
    "TrainConfig",
    "ConfigError",
    "Domain",
    "Trainer",
    "TrainEvent",
    "TrainingDiverged",
    "TrainingOutOfMemory",
    "train",
    "HealthWarning",
    "CycleStyleModel",
    "load_model",
    "save_model",
    "ModelFileError",
    "translate",
    "TranslationOutOfMemory",
    "CycleStyleError",
    "resolve_device",
    "export",
    "ExportError",
]

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config, ConfigError, ModelConfig, TrainConfig
    from .data import Domain
    from .devices import resolve_device
    from .errors import CycleStyleError
    from .exporting import ExportError, export
    from .health import HealthWarning
    from .inference import TranslationOutOfMemory, translate
    from .model import CycleStyleModel
    from .model_file import ModelFileError, load_model, save_model
    from .trainer import Trainer, TrainEvent, TrainingDiverged, TrainingOutOfMemory, train


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
