"""``napari-cyclestyle translate``: image files, folders and zarr stores through a model."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..choices import STATISTICS_MODES
from ..io import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    fits_png,
    list_images,
    open_zarr_image,
    read_image,
    write_image,
)
from .common import EXIT_OK, UsageError, add_threads_argument
from .progress import ProgressLine

if TYPE_CHECKING:
    from ..inference import TranslateOptions
    from ..model import CycleStyleModel


def add_parser(subparsers) -> None:
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
        help="translate large planes in tiles of this side; 'auto' tiles planes that "
        "would not fit in memory, and on the CPU those that this machine runs faster in "
        "tiles (timed on the first), 'none' never tiles (default: %(default)s)",
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
    add_threads_argument(parser, None)
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
            suffix = ".tif" if file.suffix.lower() in TIFF_SUFFIXES else ".png"
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
    from ..devices import resolve_device
    from ..inference import TranslateOptions
    from ..model import parse_direction
    from ..model_file import load_model

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
    options = TranslateOptions(
        device=device,
        channel_axis=args.channel_axis,
        tile_size=args.tile_size,
        overlap=args.overlap,
        statistics=args.statistics,
        memory_budget=args.memory_budget,
        scratch=args.scratch,
    )
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
    options: TranslateOptions,
) -> None:
    """Translate one image file into ``target`` (a zarr input tile by tile into a zarr)."""
    from ..inference import translate

    try:
        if _is_zarr(source):
            if target.exists():
                raise ValueError(f"{target} exists; remove it or choose another --output.")
            image = open_zarr_image(source)
            translate(image, model, direction, progress=show, output=str(target), options=options)
            return
        result = translate(read_image(source), model, direction, progress=show, options=options)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error
    if not named and target.suffix == ".png" and not fits_png(result):
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
