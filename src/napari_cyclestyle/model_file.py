"""Model files and training checkpoints: safe to load, atomic to write.

A model file is one safetensors file: tensors ``G.<key>`` and ``F.<key>`` and a JSON
header entry holding the architecture, each domain's intensity normalisation and the
provenance. Loading it executes nothing. Reference CycleGAN checkpoints (a plain
``state_dict`` per generator in a ``.pth`` pickle) are read with
``torch.load(..., weights_only=True)``, which refuses anything but tensors and plain
containers.

A training checkpoint (``*.checkpoint.pt``) holds what exact resume needs: all four
networks, optimiser states, pools and random states; it too loads with
``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, ModelConfig
from .intensity import IntensityNorm
from .model import CycleStyleModel, build_generators
from .networks import build_generator, infer_generator_spec, strip_legacy_norm_keys

FORMAT_NAME = "napari-cyclestyle"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".safetensors"
CHECKPOINT_SUFFIX = ".checkpoint.pt"


class ModelFileError(ValueError):
    """A model or checkpoint file cannot be used; the message names the file and why."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Readers see the old file or the new one, never a half-written one; on failure
    (disk full, interruption) the old file is left as it was.

    Raises
    ------
    OSError
        If the data cannot be written; the message names the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OSError(error.errno, f"Could not write {path}: {error.strerror}") from error
        raise


def save_model(model: CycleStyleModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to a safetensors model file (atomically).

    Parameters
    ----------
    model : CycleStyleModel
    path : path-like
        Destination; ``.safetensors`` is the usual suffix.

    Returns
    -------
    Path
        The path written.
    """
    from safetensors.torch import save

    tensors = {}
    for prefix, network in (("G", model.generator_ab), ("F", model.generator_ba)):
        if network is not None:
            for key, value in network.state_dict().items():
                tensors[f"{prefix}.{key}"] = value.detach().cpu().contiguous()
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": model.config.__dict__,
        "norm_a": model.norm_a.to_dict() if model.norm_a else None,
        "norm_b": model.norm_b.to_dict() if model.norm_b else None,
        "info": model.info,
    }
    metadata = {FORMAT_NAME: json.dumps(header, default=_json_default)}
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


def load_model(
    path: str | os.PathLike,
    path_ba: str | os.PathLike | None = None,
    generator: str | None = None,
) -> CycleStyleModel:
    """Load a model: ours (``.safetensors``) or reference CycleGAN ``.pth`` files.

    Parameters
    ----------
    path : path-like
        Our model file; or a reference generator checkpoint (``latest_net_G_A.pth``,
        ``*_pretrained/latest_net_G.pth``); or a reference checkpoint folder holding
        ``latest_net_G_A.pth`` and/or ``latest_net_G_B.pth``.
    path_ba : path-like, optional
        A second reference checkpoint for the B→A generator (``latest_net_G_B.pth``).
        When ``path`` is ``..._G_A.pth`` and this is None, a ``..._G_B.pth`` beside it
        is used if it exists.
    generator : str, optional
        Architecture of a reference checkpoint; inferred from its keys when None.

    Returns
    -------
    CycleStyleModel

    Raises
    ------
    ModelFileError
        If the file is missing, unreadable, not a model, or inconsistent.
    """
    path = Path(path)
    if path.is_dir():
        return _load_reference_folder(path, generator)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file.")
    if _is_safetensors(path):
        return _load_ours(path)
    path_ba = Path(path_ba) if path_ba is not None else _sibling_generator(path)
    generator_ab = _load_reference_generator(path, generator)
    generator_ba = _load_reference_generator(path_ba, generator) if path_ba else None
    return _reference_model(generator_ab, generator_ba, [path, path_ba])


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelFileError(f"{path}: cannot be read ({error.strerror}).") from error
    header_size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < header_size <= len(data) - 8:
        raise ModelFileError(
            f"{path}: a damaged or truncated safetensors file (header of {header_size} "
            f"bytes declared, {len(data)} bytes in the file)."
        )
    try:
        header = json.loads(data[8 : 8 + header_size])
        metadata = header.get("__metadata__") or {}
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError, AttributeError) as error:
        raise ModelFileError(f"{path}: not a readable safetensors file ({error}).") from error
    return tensors, metadata


def _load_ours(path: Path) -> CycleStyleModel:
    tensors, metadata = _read_safetensors(path)
    if FORMAT_NAME not in metadata:
        raise ModelFileError(f"{path}: a safetensors file, but not a napari-cyclestyle model.")
    try:
        header = json.loads(metadata[FORMAT_NAME])
        if header.get("format_version", 0) > FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: written by a newer napari-cyclestyle (format "
                f"{header['format_version']}); upgrade the package to load it."
            )
        config = ModelConfig(**header["model"])
        norm_a = IntensityNorm.from_dict(header["norm_a"]) if header.get("norm_a") else None
        norm_b = IntensityNorm.from_dict(header["norm_b"]) if header.get("norm_b") else None
        info = dict(header.get("info") or {})
    except ModelFileError:
        raise
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelFileError(f"{path}: the model description is invalid ({error}).") from error
    generator_ab, generator_ba = build_generators(config)
    networks = {"G": generator_ab, "F": generator_ba}
    present = {key.split(".", 1)[0] for key in tensors}
    if not present or not present <= set(networks):
        raise ModelFileError(f"{path}: expected G.* and F.* weights, found {sorted(present)}.")
    for prefix, network in networks.items():
        if prefix not in present:
            networks[prefix] = None
            continue
        state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        _load_state(network, state, f"{path} ({prefix})")
    return CycleStyleModel(config, networks["G"], networks["F"], norm_a, norm_b, info)


def _load_state(network: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        summary = "; ".join(line.strip() for line in first[:4])
        raise ModelFileError(
            f"{where}: the weights do not fit the described network ({summary})."
        ) from error
    network.eval()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a plain ``state_dict`` from a ``.pth`` file without executing code.

    Raises
    ------
    ModelFileError
        If the file is missing, not a torch file, holds something other than tensors,
        or would need code to be run to load (a malicious or non-plain pickle).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the file is empty.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            message = "it holds Python objects that could run code; refusing to load it"
        raise ModelFileError(f"{path}: not a loadable weights file ({message}).") from error
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelFileError(f"{path}: expected a state_dict of tensors.")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _load_reference_generator(path: Path, generator: str | None) -> torch.nn.Module:
    state = read_state_dict(path)
    try:
        spec = infer_generator_spec(state)
    except ValueError as error:
        raise ModelFileError(f"{path}: {error}") from error
    if generator is not None and generator != spec["generator"]:
        raise ModelFileError(
            f"{path}: the weights are a {spec['generator']} generator, not {generator}."
        )
    network = build_generator(
        spec["generator"],
        spec["in_channels"],
        spec["out_channels"],
        ngf=spec["ngf"],
        norm=spec["norm"],
        dropout=spec["dropout"],
    )
    _load_state(network, strip_legacy_norm_keys(state, network), str(path))
    network.spec = spec
    return network


def _reference_model(generator_ab, generator_ba, paths) -> CycleStyleModel:
    """Wrap imported generators; either may be None (a one-direction checkpoint)."""
    if generator_ab is not None:
        spec = generator_ab.spec
        channels_a, channels_b = spec["in_channels"], spec["out_channels"]
    else:
        spec = generator_ba.spec
        channels_a, channels_b = spec["out_channels"], spec["in_channels"]
    if generator_ab is not None and generator_ba is not None:
        other = generator_ba.spec
        if (other["in_channels"], other["out_channels"]) != (channels_b, channels_a):
            raise ModelFileError(
                f"{paths[1]}: maps {other['in_channels']}→{other['out_channels']} channels, "
                f"which does not invert {paths[0]} ({channels_a}→{channels_b})."
            )
    config = ModelConfig(
        generator=spec["generator"],
        channels_a=channels_a,
        channels_b=channels_b,
        ngf=spec["ngf"],
        norm=spec["norm"],
        dropout=spec["dropout"],
    )
    source = ", ".join(str(p) for p in paths if p is not None)
    return CycleStyleModel(config, generator_ab, generator_ba, info={"source": source})


def _sibling_generator(path: Path) -> Path | None:
    match = re.fullmatch(r"(.*_net_G_)A(\.pth)", path.name)
    if match:
        sibling = path.with_name(f"{match.group(1)}B{match.group(2)}")
        if sibling.is_file():
            return sibling
    return None


def _load_reference_folder(folder: Path, generator: str | None) -> CycleStyleModel:
    for stem in ("latest_net_G_A.pth", "latest_net_G.pth"):
        if (folder / stem).is_file():
            return load_model(folder / stem, generator=generator)
    only_ba = folder / "latest_net_G_B.pth"
    if only_ba.is_file():
        return _reference_model(None, _load_reference_generator(only_ba, generator), [only_ba])
    raise ModelFileError(
        f"{folder}: a folder without latest_net_G_A.pth, latest_net_G_B.pth or "
        "latest_net_G.pth; give the model file itself."
    )


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header size, then '{'."""
    with path.open("rb") as file:
        head = file.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a training checkpoint (tensors and plain values only) atomically."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint written by :func:`save_checkpoint`, executing no code.

    Raises
    ------
    ModelFileError
        If the file is missing or not a napari-cyclestyle checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such checkpoint file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelFileError(f"{path}: not a readable checkpoint ({error}).") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_NAME + "-checkpoint":
        raise ModelFileError(f"{path}: not a napari-cyclestyle training checkpoint.")
    return state
