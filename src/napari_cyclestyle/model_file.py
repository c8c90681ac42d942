"""Model files: safe to load, atomic to write.

A model file is one safetensors file: tensors ``G.<key>`` and ``F.<key>`` and a JSON
header entry holding the architecture, each domain's intensity normalisation and the
provenance. Loading it executes nothing. Reference CycleGAN checkpoints (a plain
``state_dict`` per generator in a ``.pth`` pickle) are read with
``torch.load(..., weights_only=True)``, which refuses anything but tensors and plain
containers.

Training checkpoints (``*.checkpoint.pt``) are :mod:`napari_cyclestyle.checkpoint`'s;
it shares the checks below.

Nothing read from a file is trusted: the description is validated, the networks it
describes are first built on PyTorch's ``meta`` device (no memory) and compared, key by
key and shape by shape, with the stored tensors, and weights holding NaN or Inf are
refused, all before any real network is allocated. Every problem is a
:class:`ModelFileError` naming the file. See ``SECURITY.md``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import Config, ConfigError, ModelConfig
from .files import atomic_write_bytes
from .intensity import IntensityNorm
from .model import CycleStyleModel, build_discriminators, build_generators
from .networks import generator_from_spec
from .reference import infer_generator_spec, strip_legacy_norm_keys

FORMAT_NAME = "napari-cyclestyle"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".safetensors"
CHECKPOINT_SUFFIX = ".checkpoint.pt"


class ModelFileError(ValueError):
    """A model or checkpoint file cannot be used; the message names the file and why."""


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
    if is_safetensors(path):
        return _load_ours(path)
    path_ba = Path(path_ba) if path_ba is not None else _sibling_generator(path)
    loaded = [_load_reference_generator(path, generator)]
    if path_ba:
        loaded.append(_load_reference_generator(path_ba, generator))
    return _reference_model(*loaded, paths=[path, path_ba])


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
        # safetensors checks every tensor's dtype, shape and extent against the file.
        tensors = load(data)
        header = json.loads(data[8 : 8 + header_size])
    except (SafetensorError, ValueError, RecursionError) as error:
        raise ModelFileError(f"{path}: not a readable safetensors file ({error}).") from error
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return tensors, metadata or {}


def _load_ours(path: Path) -> CycleStyleModel:
    tensors, metadata = _read_safetensors(path)
    if FORMAT_NAME not in metadata:
        raise ModelFileError(f"{path}: a safetensors file, but not a napari-cyclestyle model.")
    config, norm_a, norm_b, info = _parse_description(path, metadata[FORMAT_NAME])
    present = {key.split(".", 1)[0] for key in tensors}
    if not present or not present <= {"G", "F"}:
        raise ModelFileError(f"{path}: expected G.* and F.* weights, found {sorted(present)}.")
    states = {
        prefix: {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        for prefix in ("G", "F")
        if prefix in present
    }
    described = described_networks(path, config, discriminators=False)
    for prefix, state in states.items():
        check_state(described[prefix], state, f"{path} ({prefix})")
    networks: dict[str, nn.Module | None] = dict(
        zip(("G", "F"), build_generators(config), strict=True)
    )
    for prefix, network in networks.items():
        if prefix in states:
            _load_state(network, states[prefix], f"{path} ({prefix})")
        else:
            networks[prefix] = None
    return CycleStyleModel(config, networks["G"], networks["F"], norm_a, norm_b, info)


def _parse_description(
    path: Path, text: str
) -> tuple[ModelConfig, IntensityNorm | None, IntensityNorm | None, dict]:
    """The configuration, normalisations and provenance stored in a model file."""
    try:
        header = json.loads(text)
        if not isinstance(header, dict):
            raise TypeError("it is not a JSON object")
        version = header.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"format_version must be an integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: written by a newer napari-cyclestyle (format {version}); upgrade "
                "the package to load it."
            )
        if not isinstance(header.get("model"), dict):
            raise TypeError("the 'model' entry must be a JSON object")
        config = Config.from_dict({"model": header["model"]}, stored=True).model
        norm_a = parse_norm(header.get("norm_a"), config.channels_a, "norm_a")
        norm_b = parse_norm(header.get("norm_b"), config.channels_b, "norm_b")
        info = header.get("info") or {}
        if not isinstance(info, dict):
            raise TypeError("the 'info' entry must be a JSON object")
    except ModelFileError:
        raise
    except (ConfigError, KeyError, TypeError, ValueError, RecursionError) as error:
        detail = f"missing entry {error}" if isinstance(error, KeyError) else str(error)
        raise ModelFileError(f"{path}: the model description is invalid ({detail}).") from error
    return config, norm_a, norm_b, info


def parse_norm(data: Any, n_channels: int, name: str) -> IntensityNorm | None:
    """An :class:`IntensityNorm` from its stored form, checked to be usable."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError(f"{name} must be a JSON object, got {type(data).__name__}")
    norm = IntensityNorm.from_dict(data)
    if np.dtype(norm.dtype).kind not in "biuf":
        raise ValueError(f"{name} has dtype {norm.dtype!r}; expected a numeric dtype")
    if not all(math.isfinite(value) for value in norm.low + norm.high):
        raise ValueError(f"{name} has non-finite bounds {norm.low}, {norm.high}")
    if norm.n_channels not in (1, n_channels):
        raise ValueError(f"{name} describes {norm.n_channels} channels, the model {n_channels}")
    return norm


def described_networks(
    path: Path, config: ModelConfig, discriminators: bool
) -> dict[str, nn.Module]:
    """The networks ``config`` describes, on the meta device: shapes without memory."""
    try:
        with torch.device("meta"):
            generator_ab, generator_ba = build_generators(config)
            networks = {"G": generator_ab, "F": generator_ba}
            if discriminators:
                networks["D_A"], networks["D_B"] = build_discriminators(config)
    except (RuntimeError, OverflowError, ValueError) as error:
        raise ModelFileError(
            f"{path}: the description asks for a network that cannot be built ({error})."
        ) from error
    return networks


def check_state(network: nn.Module, state: Mapping[str, Any], where: str) -> None:
    """Refuse a state dict that does not fit ``network`` (which may live on the meta
    device): missing or extra keys, other shapes or kinds, NaN or Inf values."""
    expected = network.state_dict()
    problems = [f"missing {key}" for key in expected if key not in state]
    problems += [f"unexpected {key}" for key in state if key not in expected]
    for key, value in state.items():
        if key not in expected:
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif value.shape != expected[key].shape:
            problems.append(
                f"{key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
            )
        elif value.is_floating_point() != expected[key].is_floating_point():
            problems.append(f"{key} has dtype {value.dtype}, expected {expected[key].dtype}")
    if problems:
        more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
        raise ModelFileError(
            f"{where}: the weights do not fit the described network "
            f"({'; '.join(problems[:4])}{more})."
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise ModelFileError(
            f"{where}: the weights {', '.join(broken[:3])} hold NaN or Inf values; the file "
            "is damaged."
        )


def _load_state(network: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Load a state dict already passed by :func:`check_state`; eval mode."""
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
    state = safe_torch_load(path, "not a loadable weights file")
    if isinstance(state, Mapping) and state.get("format") == FORMAT_NAME + "-checkpoint":
        raise ModelFileError(
            f"{path}: a training checkpoint, not a model; resume training from it, or load "
            f"the model file ({MODEL_SUFFIX}) written beside it."
        )
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelFileError(f"{path}: expected a state_dict of tensors.")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def safe_torch_load(path: Path, what: str) -> Any:
    """``torch.load`` restricted to tensors and plain containers (no code runs), with
    every tensor checked to hold the data it claims."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        text = str(error).strip()
        message = text.splitlines()[0] if text else repr(error)
        if "weights_only" in text or "Unsupported global" in text:
            message = "it holds Python objects that could run code; refusing to load it"
        raise ModelFileError(f"{path}: {what} ({message}).") from error
    for key, tensor in _tensors(state):
        # A crafted view (e.g. zero strides) can claim far more values than it stores.
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            raise ModelFileError(
                f"{path}: the tensor {key} claims {tuple(tensor.shape)} values but stores "
                "fewer; the file is damaged or crafted."
            )
    return state


def _tensors(value: Any, key: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts, lists and tuples, with its key path."""
    if isinstance(value, torch.Tensor):
        return [(key or "(top level)", value)]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return []
    return [found for k, v in items for found in _tensors(v, f"{key}.{k}" if key else str(k))]


def _load_reference_generator(path: Path, generator: str | None) -> tuple[nn.Module, dict]:
    """The generator a reference ``.pth`` holds, and its inferred spec."""
    state = read_state_dict(path)
    try:
        spec = infer_generator_spec(state)
    except ValueError as error:
        raise ModelFileError(f"{path}: {error}") from error
    if generator is not None and generator != spec["generator"]:
        raise ModelFileError(
            f"{path}: the weights are a {spec['generator']} generator, not {generator}."
        )
    network = generator_from_spec(spec)
    state = strip_legacy_norm_keys(state, network)
    check_state(network, state, str(path))
    _load_state(network, state, str(path))
    return network, spec


def _reference_model(
    generator_ab: tuple[nn.Module, dict] | None,
    generator_ba: tuple[nn.Module, dict] | None = None,
    *,
    paths: list,
) -> CycleStyleModel:
    """Wrap imported ``(generator, spec)`` pairs; either may be None (a one-direction
    checkpoint)."""
    if generator_ab is not None:
        spec = generator_ab[1]
        channels_a, channels_b = spec["in_channels"], spec["out_channels"]
    else:
        spec = generator_ba[1]
        channels_a, channels_b = spec["out_channels"], spec["in_channels"]
    if generator_ab is not None and generator_ba is not None:
        other = generator_ba[1]
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
        upsampling="transposed",  # the reference's layout, whatever today's default is
    )
    source = ", ".join(str(p) for p in paths if p is not None)
    networks = [None if pair is None else pair[0] for pair in (generator_ab, generator_ba)]
    return CycleStyleModel(config, *networks, info={"source": source})


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
        loaded = _load_reference_generator(only_ba, generator)
        return _reference_model(None, loaded, paths=[only_ba])
    raise ModelFileError(
        f"{folder}: a folder without latest_net_G_A.pth, latest_net_G_B.pth or "
        "latest_net_G.pth; give the model file itself."
    )


def is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header size, then '{'."""
    try:
        with path.open("rb") as file:
            head = file.read(9)
    except OSError as error:
        raise ModelFileError(f"{path}: cannot be read ({error.strerror}).") from error
    return len(head) == 9 and head[8:9] == b"{"


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
