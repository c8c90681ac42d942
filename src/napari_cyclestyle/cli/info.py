"""``napari-cyclestyle info``: describe a model file or a training checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_OK


def add_parser(subparsers) -> None:
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
    from ..checkpoint import TrainingCheckpoint
    from ..model_file import CHECKPOINT_SUFFIX, load_model

    path = Path(args.model)
    print(f"file: {path.resolve()}")
    if path.name.endswith(CHECKPOINT_SUFFIX):
        checkpoint = TrainingCheckpoint.load(path)
        config = checkpoint.config
        print(f"training checkpoint at step {checkpoint.step} of {config.train.total_steps}")
        print(f"written by napari-cyclestyle {checkpoint.version}")
        print(config.to_json())
        return EXIT_OK
    print(load_model(path).describe())
    return EXIT_OK
