"""The ``napari-cyclestyle`` command: ``train``, ``translate``, ``info`` and ``demo``.

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

from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, UsageError
from .main import build_parser, main
from .train import run_training

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "UsageError",
    "build_parser",
    "main",
    "run_training",
]
