"""Export a model's generators to ONNX, TorchScript and BioImage Model Zoo packages.

:func:`export` writes, per direction, a whole-plane graph that takes a ``(N, C, Y, X)``
float32 batch in [-1, 1] and returns the translation in [-1, 1]. The intensity
normalisation that ``translate`` applies around the network travels with it: as ONNX
metadata_props, as the TorchScript extra file ``metadata.json``, and as the bioimage.io
package's pre- and post-processing. Tiled translation stays with ``translate``.

The formats need the ``[export]`` extra: ``pip install 'napari-cyclestyle[export]'``.
Every file is written atomically (``files.atomic_write_bytes``). This module
imports torch only when an export runs (the CLI reads :data:`FORMATS` from it).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..intensity import IntensityNorm

if TYPE_CHECKING:
    from ..model import CycleStyleModel

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "bioimageio": ".zip"}
# The packages each format needs, and the extra that brings them.
_NEEDS = {"onnx": ("onnx",), "torchscript": (), "bioimageio": ("onnx", "bioimageio.core")}
METADATA_FORMAT = "napari-cyclestyle-export/1"
NORMALISATION_RULE = (
    "network input = clip((value - low) * 2 / (high - low) - 1, -1, 1) per channel, with "
    "the source domain's low and high; result = (network output + 1) * (high - low) / 2 + "
    "low with the target domain's, rounded and clipped to the range of an integer dtype"
)
IMPORTED_RULE = (
    "no stored normalisation (an imported reference CycleGAN model): napari-cyclestyle "
    "scales each input from its own range (0-255 for 8-bit images, 0-1 for float images "
    "within it, else its 1 and 99.8 percentiles) and maps the result back to that range; "
    "the reference's own convention is 8-bit images, value / 127.5 - 1"
)


class ExportError(ValueError):
    """A model cannot be exported as asked; the message says why and what to do."""


@dataclass
class ExportProgress:
    """Progress of an export: ``done`` of ``total`` steps, ``message`` says which one;
    ``paths`` holds the files written so far (all of them at the end)."""

    done: int
    total: int
    message: str
    paths: list[Path] = field(default_factory=list)


def export(
    model: CycleStyleModel | str | os.PathLike,
    path: str | os.PathLike,
    format: str = "onnx",  # noqa: A002 - the word users know
    direction: str | None = None,
    *,
    authors: Sequence[str] | None = None,
    sample_a=None,
    sample_b=None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Export the model's generators as whole-plane ONNX, TorchScript or bioimage.io.

    Parameters
    ----------
    model : CycleStyleModel or path
        A loaded model, or a model file (ours, or a reference CycleGAN ``.pth``).
    path : path-like
        The file to write (its suffix is added when missing: ``.onnx``, ``.pt``,
        ``.zip``). With two directions, ``_AtoB`` and ``_BtoA`` go before the suffix:
        ``stain.onnx`` gives ``stain_AtoB.onnx`` and ``stain_BtoA.onnx``.
    format : str
        ``"onnx"``, ``"torchscript"`` or ``"bioimageio"`` (a bioimage.io model package
        holding the ONNX and TorchScript weights, checked by ``bioimageio.core``).
    direction : str, optional
        ``"AtoB"`` (alias ``"G"``), ``"BtoA"`` (alias ``"F"``) or ``"both"``; default
        every direction the model holds.
    authors : sequence of str, optional
        Author names for the bioimage.io package (default: "napari-cyclestyle user").
    sample_a, sample_b : array, optional
        A domain A / B image (as ``translate`` takes it) for the bioimage.io test
        tensors and cover; default the bundled sample image, made to fit the model.
    progress : callable, optional
        Called as ``progress(done, total)`` after each step.

    Returns
    -------
    list of Path
        The files written, one per direction.

    Raises
    ------
    ExportError
        On an unknown format or direction, a direction the model lacks, a domain the
        format cannot describe, or a missing optional dependency.
    OSError
        If a file cannot be written; the message names it.
    ModelFileError
        If ``model`` is a path that cannot be loaded.
    """
    paths: list[Path] = []
    for step in export_steps(
        model,
        path,
        format,
        direction,
        authors=authors,
        sample_a=sample_a,
        sample_b=sample_b,
    ):
        if progress is not None:
            progress(step.done, step.total)
        paths = step.paths
    return paths


def export_steps(
    model: CycleStyleModel | str | os.PathLike,
    path: str | os.PathLike,
    format: str = "onnx",  # noqa: A002
    direction: str | None = None,
    *,
    authors: Sequence[str] | None = None,
    sample_a=None,
    sample_b=None,
) -> Iterator[ExportProgress]:
    """Like :func:`export`, but yield an :class:`ExportProgress` after each step; stop
    iterating to cancel (files already written stay)."""
    format_name = str(format).strip().lower()
    if format_name not in FORMATS:
        raise ExportError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}.")
    _check_dependencies(format_name)
    from ..files import atomic_write_bytes
    from ..model import CycleStyleModel
    from ..model_file import load_model

    if not isinstance(model, CycleStyleModel):
        model = load_model(model)
    directions = export_directions(model, direction)
    targets = output_paths(path, format_name, directions)
    for target in targets:
        check_writable(target)
    samples = {"AtoB": sample_a, "BtoA": sample_b}
    total, written = len(directions) * 2, []
    for index, (name, target) in enumerate(zip(directions, targets, strict=True)):
        yield ExportProgress(2 * index + 1, total, f"{_label(name)}: building", list(written))
        data = _export_bytes(model, name, format_name, authors, samples[name])
        atomic_write_bytes(target, data)
        written.append(target)
        message = f"{_label(name)}: wrote {target}"
        yield ExportProgress(2 * index + 2, total, message, list(written))


def export_directions(model: CycleStyleModel, direction: str | None) -> list[str]:
    """The directions to export: ``["AtoB"]``, ``["BtoA"]`` or both.

    Raises
    ------
    ExportError
        If the model has no generator for an asked direction, or the name is unknown.
    """
    from ..model import parse_direction

    if direction is None:
        return list(model.directions)
    if str(direction).strip().lower() == "both":
        asked = ["AtoB", "BtoA"]
    else:
        try:
            asked = [parse_direction(direction)]
        except ValueError as error:
            raise ExportError(f"{error} Or 'both'.") from None
    missing = [name for name in asked if name not in model.directions]
    if missing:
        raise ExportError(
            f"This model has no {' or '.join(missing)} generator ({_label(missing[0])}); it "
            f"can export {', '.join(model.directions)}. A one-sided model (trained in mode "
            "cut or fastcut) or a reference checkpoint such as latest_net_G.pth holds one "
            "generator only."
        )
    return asked


def output_paths(path: str | os.PathLike, format_name: str, directions: list[str]) -> list[Path]:
    """The file of each direction: ``path`` (with the format's suffix when it has none),
    with ``_<direction>`` before the suffix when there are two."""
    path = Path(path).expanduser()
    if not path.suffix:
        path = path.with_name(path.name + FORMATS[format_name])
    if len(directions) == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{name}{path.suffix}") for name in directions]


def check_writable(path: Path) -> None:
    """Raise OSError (naming ``path``) when its folder cannot be made or written, so
    that an export fails before the work, not after it."""
    folder = path.parent
    blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise OSError(f"Could not write {path}: {blocking} is a file, not a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(error.errno, f"Could not write {path}: {error.strerror}") from None
    if path.is_dir():
        raise OSError(f"Could not write {path}: it is a folder; give a file name.")
    if not os.access(folder, os.W_OK):
        raise OSError(f"Could not write {path}: permission denied.")


def metadata(model: CycleStyleModel, direction: str) -> dict[str, str]:
    """What a consumer needs to reproduce ``translate`` around an exported graph, as
    string pairs (ONNX metadata_props): the normalisations (JSON of
    :class:`IntensityNorm`, or ``null`` for imported models), the rule, the direction,
    the architecture and the provenance."""
    from .. import __version__

    norm_in, norm_out = model.norms(direction)
    in_channels, out_channels = model.channels(direction)
    imported = norm_in is None or norm_out is None
    return {
        "format": METADATA_FORMAT,
        "description": (
            f"CycleGAN generator {_label(direction)} ({model.config.generator}), whole "
            f"plane: float32 (N, {in_channels}, Y, X) in [-1, 1] to (N, {out_channels}, Y, "
            "X) in [-1, 1]; any Y and X (the padding is in the graph)."
        ),
        "direction": direction,
        "generator": "G" if direction == "AtoB" else "F",
        "input_channels": str(in_channels),
        "output_channels": str(out_channels),
        "input_normalization": json.dumps(norm_in.to_dict() if norm_in else None),
        "output_normalization": json.dumps(norm_out.to_dict() if norm_out else None),
        "normalization_rule": IMPORTED_RULE if imported else NORMALISATION_RULE,
        "architecture": json.dumps(model.config.__dict__),
        "provenance": json.dumps(model.info, default=str),
        "exported_by": f"napari-cyclestyle {__version__}",
    }


def export_norms(model: CycleStyleModel, direction: str) -> tuple[IntensityNorm, IntensityNorm]:
    """Source and target normalisations a package can state: the model's, or for an
    imported model the reference convention, 8-bit images over 0-255."""
    norm_in, norm_out = model.norms(direction)
    in_channels, out_channels = model.channels(direction)
    if norm_in is None:
        norm_in = IntensityNorm("fixed", (0.0,) * in_channels, (255.0,) * in_channels, "uint8")
    if norm_out is None:
        norm_out = IntensityNorm("fixed", (0.0,) * out_channels, (255.0,) * out_channels, "uint8")
    return norm_in, norm_out


def cpu_generator(model: CycleStyleModel, direction: str):
    """A copy of the direction's generator on the CPU in eval mode (the model's own
    network stays where it is)."""
    network = copy.deepcopy(model.generator(direction)).cpu().eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def _export_bytes(
    model: CycleStyleModel, direction: str, format_name: str, authors, sample: Any
) -> bytes:
    from ..networks import minimum_size, size_multiple
    from . import graph

    network = cpu_generator(model, direction)
    in_channels, _ = model.channels(direction)
    multiple, minimum = size_multiple(model.config.generator), minimum_size(model.config.generator)
    facts = metadata(model, direction)
    if format_name == "onnx":
        return graph.onnx_bytes(network, in_channels, multiple, minimum, facts)
    if format_name == "torchscript":
        return graph.torchscript_bytes(network, in_channels, multiple, minimum, facts)
    from .bioimage import package_bytes

    weights = {
        "onnx": graph.onnx_bytes(network, in_channels, multiple, minimum, facts),
        "torchscript": graph.torchscript_bytes(network, in_channels, multiple, minimum, facts),
    }
    return package_bytes(model, direction, weights, authors=authors, sample=sample)


def _check_dependencies(format_name: str) -> None:
    import importlib.util

    missing = [name for name in _NEEDS[format_name] if not _importable(name, importlib.util)]
    if missing:
        raise ExportError(
            f"Export to {format_name} needs {', '.join(missing)}, which is not installed: "
            "pip install 'napari-cyclestyle[export]'."
        )


def _importable(name: str, util) -> bool:
    try:
        return util.find_spec(name) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def _label(direction: str) -> str:
    return "G (A→B)" if direction == "AtoB" else "F (B→A)"


def display_rgb(planes: np.ndarray, norm: IntensityNorm) -> np.ndarray:
    """A ``(C, Y, X)`` plane in ``norm``'s domain as ``(Y, X, 3)`` uint8 for a picture:
    scaled by the domain's range; one channel is gray, others show the first three."""
    values = (norm.normalize(planes) + 1.0) * 127.5
    if values.shape[0] < 3:
        values = np.repeat(values[:1], 3, axis=0)
    return np.clip(np.rint(np.moveaxis(values[:3], 0, -1)), 0, 255).astype(np.uint8)
