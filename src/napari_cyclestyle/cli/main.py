"""The ``napari-cyclestyle`` parser and :func:`main`, which runs a command and maps its
errors to exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager

from .. import __version__
from ..config import ConfigError
from ..errors import CycleStyleError
from . import demo, info, train, translate
from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, UsageError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``napari-cyclestyle`` command and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Unpaired image-to-image translation (CycleGAN): train, translate, "
        "inspect models, or run the one-minute demo.",
        epilog=f"Exit codes: {EXIT_OK} success, {EXIT_ERROR} error, {EXIT_USAGE} usage error, "
        f"{EXIT_INTERRUPTED} training stopped with Ctrl-C (model and checkpoint saved). "
        f"Run '{PROG} COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in (train, translate, info, demo):
        command.add_parser(subparsers)
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
