"""What every command shares: the program name, exit codes and usage errors."""

from __future__ import annotations

import argparse

PROG = "napari-cyclestyle"


EXIT_OK = 0


EXIT_ERROR = 1


EXIT_USAGE = 2


EXIT_INTERRUPTED = 130


DEFAULT_MODEL = "cyclestyle-model.safetensors"


class UsageError(ValueError):
    """Options that contradict each other; reported with exit code 2."""


def add_threads_argument(parser: argparse.ArgumentParser, default: int | None) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=default,
        metavar="N",
        help="CPU threads torch may use; small networks often run fastest with 1, and "
        "fewer threads leave cores to others (default: "
        + (f"{default})" if default else "torch's choice, one per core)"),
    )
