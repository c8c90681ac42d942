"""Reading reference CycleGAN generators: which architecture a state dict holds.

The reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix) saves bare
``state_dict`` files (``latest_net_G_A.pth``) without the settings that built them. This
module works out the generator from the keys and shapes, and tidies the keys that "old
format" checkpoints carry, so that :mod:`napari_cyclestyle.model_file` can load them
into the networks of :mod:`napari_cyclestyle.networks`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .choices import GENERATORS
from .networks.registry import generator_from_spec, generators_of

# Buffers that "old format" checkpoints carry for every InstanceNorm layer.
_LEGACY_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def strip_legacy_norm_keys(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict:
    """Drop the InstanceNorm running-statistics keys of "old format" checkpoints.

    The published pretrained reference models store ``running_mean``, ``running_var``
    (and sometimes ``num_batches_tracked``) for every InstanceNorm layer, which current
    InstanceNorm layers (``track_running_stats=False``) do not have. Such keys are dropped
    when ``model`` has an ``nn.InstanceNorm2d`` at that path and lacks the key; every
    other key is kept, so a strict load still reports genuine mismatches.

    Parameters
    ----------
    state_dict : Mapping[str, Tensor]
        Checkpoint contents.
    model : nn.Module
        The network the state dict is meant for.

    Returns
    -------
    dict
        A new dict (same order, same tensors) without the legacy keys.
    """
    model_keys = set(model.state_dict())
    instance_norms = {
        name for name, layer in model.named_modules() if isinstance(layer, nn.InstanceNorm2d)
    }
    stripped = {}
    for key, value in state_dict.items():
        if key not in model_keys:
            path, _, leaf = key.rpartition(".")
            if leaf in _LEGACY_NORM_BUFFERS and path in instance_norms:
                continue
        stripped[key] = value
    return stripped


def _shape(state_dict: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    return tuple(state_dict[key].shape)


def _has_conv_weight(state_dict: Mapping[str, Tensor], key: str) -> bool:
    return key in state_dict and len(_shape(state_dict, key)) == 4


def _guess_resnet(state_dict: Mapping[str, Tensor]) -> dict:
    n_blocks = 0
    while f"model.{10 + n_blocks}.conv_block.1.weight" in state_dict:
        n_blocks += 1
    names = generators_of("resnet")
    if n_blocks not in names:
        raise ValueError(
            f"The state dict looks like a ResNet generator with {n_blocks} residual blocks; "
            f"only {', '.join(f'{b} ({n})' for b, n in names.items())} are supported."
        )
    ngf, in_channels = _shape(state_dict, "model.1.weight")[:2]
    out_channels = _shape(state_dict, f"model.{n_blocks + 17}.weight")[0]
    return {
        "generator": names[n_blocks],
        "in_channels": in_channels,
        "out_channels": out_channels,
        "ngf": ngf,
        "norm": "batch" if "model.2.weight" in state_dict else "instance",
        # Dropout shifts the second convolution of each block from index 5 to 6; with
        # batch norm, index 6 otherwise holds the (1-D) norm weight.
        "dropout": _has_conv_weight(state_dict, "model.10.conv_block.6.weight"),
    }


def _guess_unet(state_dict: Mapping[str, Tensor]) -> dict:
    inner_blocks = 0
    prefix = "model.model.1.model."
    while f"{prefix}1.weight" in state_dict:
        inner_blocks += 1
        prefix += "3.model."
    num_downs = inner_blocks + 1
    names = generators_of("unet")
    if num_downs not in names:
        raise ValueError(
            f"The state dict looks like a U-Net generator with {num_downs} levels; "
            f"only {', '.join(f'{d} ({n})' for d, n in names.items())} are supported."
        )
    ngf, in_channels = _shape(state_dict, "model.model.0.weight")[:2]
    out_channels = _shape(state_dict, "model.model.3.weight")[1]  # ConvTranspose: (in, out)
    return {
        "generator": names[num_downs],
        "in_channels": in_channels,
        "out_channels": out_channels,
        "ngf": ngf,
        "norm": "batch" if "model.model.1.model.2.weight" in state_dict else "instance",
        "dropout": False,  # Dropout has no parameters and sits last: invisible in the keys.
    }


def _guess_encoder_decoder(state_dict: Mapping[str, Tensor]) -> dict:
    if _has_conv_weight(state_dict, "model.16.weight"):
        dropout, last = True, "model.16.weight"
    elif _has_conv_weight(state_dict, "model.14.weight"):
        dropout, last = False, "model.14.weight"
    else:
        raise ValueError("The state dict has no final transposed convolution (model.14/16).")
    ngf, in_channels = _shape(state_dict, "model.0.weight")[:2]
    return {
        "generator": "encoder_decoder",
        "in_channels": in_channels,
        "out_channels": _shape(state_dict, last)[1],  # ConvTranspose: (in, out, k, k)
        "ngf": ngf,
        "norm": "batch" if "model.3.weight" in state_dict else "instance",
        "dropout": dropout,
    }


def _looks_like_discriminator(state_dict: Mapping[str, Tensor]) -> bool:
    if "net.0.weight" in state_dict:
        return True
    indices = sorted(
        int(key.split(".")[1])
        for key in state_dict
        if key.startswith("model.") and key.split(".")[1].isdigit() and key.endswith(".weight")
    )
    if not indices:
        return False
    last = _shape(state_dict, f"model.{indices[-1]}.weight")
    return len(last) == 4 and last[0] == 1 and last[2:] == (4, 4)


def _layout_mismatches(spec: dict, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Compare ``state_dict`` with the keys and shapes of the network ``spec`` describes."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = generator_from_spec(spec)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    given = strip_legacy_norm_keys(state_dict, model)
    problems = []
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    wrong = [
        f"{key} {_shape(given, key)} (expected {expected[key]})"
        for key in expected
        if key in given and _shape(given, key) != expected[key]
    ]
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}" + (" ..." * (len(missing) > 5)))
    if unexpected:
        problems.append(
            f"unexpected keys: {', '.join(unexpected[:5])}" + (" ..." * (len(unexpected) > 5))
        )
    if wrong:
        problems.append(f"wrong shapes: {', '.join(wrong[:5])}" + (" ..." * (len(wrong) > 5)))
    if missing and all(key.endswith(".bias") for key in missing):
        problems.append(
            "convolutions without biases and no normalisation parameters suggest a reference "
            "model trained with --norm none, which is not supported"
        )
    return problems


def infer_generator_spec(state_dict: Mapping[str, Tensor]) -> dict:
    """Work out which generator a reference-layout state dict belongs to.

    Recognises the ResNet (6 or 9 blocks) and U-Net (128 or 256) layouts of the
    reference implementation, including "old format" checkpoints with InstanceNorm
    running statistics, and this project's encoder-decoder. The guess is checked against
    the keys and shapes of the network it describes, so a returned spec always loads
    (after :func:`strip_legacy_norm_keys`) with ``strict=True``.

    Two things cannot be read from the keys: a norm-free network (``norm="none"``) has
    the same keys as instance norm and is reported as ``"instance"``; U-Net dropout has
    no parameters and is reported as ``False``. Neither matters for loading, and dropout
    does not matter in eval mode; the norm does, so prefer a stored configuration when
    one exists.

    Parameters
    ----------
    state_dict : Mapping[str, Tensor]
        A generator's ``state_dict`` (e.g. ``latest_net_G_A.pth``), without a
        ``module.`` prefix.

    Returns
    -------
    dict
        ``{"generator": name, "in_channels": int, "out_channels": int, "ngf": int,
        "norm": "instance" | "batch", "dropout": bool}``.

    Raises
    ------
    ValueError
        If the keys match no known generator layout; the message says what was found.
    """
    keys = list(state_dict)
    if not keys:
        raise ValueError("The state dict is empty; it holds no generator weights.")
    try:
        if "model.model.0.weight" in state_dict:
            spec = _guess_unet(state_dict)
        elif "model.1.weight" in state_dict and "model.10.conv_block.1.weight" in state_dict:
            spec = _guess_resnet(state_dict)
        elif "model.0.weight" in state_dict and "model.8.weight" in state_dict:
            spec = _guess_encoder_decoder(state_dict)
        else:
            spec = None
    except (KeyError, IndexError, ValueError) as error:
        detail = str(error) if isinstance(error, ValueError) else f"missing key {error}"
        spec, problems = None, [detail]
    else:
        problems = [] if spec is None else _layout_mismatches(spec, state_dict)

    if spec is not None and not problems:
        return spec

    hints = []
    if any(key.startswith("module.") for key in keys):
        hints.append("keys start with 'module.' (saved from DataParallel): strip that prefix")
    if _looks_like_discriminator(state_dict):
        hints.append("this looks like a discriminator (net_D) checkpoint, not a generator")
    found = spec["generator"] if spec is not None else "no known generator"
    message = (
        f"The state dict matches no known generator layout "
        f"({', '.join(GENERATORS)}); closest guess: {found}"
    )
    details = problems + hints
    if details:
        message += "; " + "; ".join(details)
    sample = ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")
    raise ValueError(f"{message}. First keys: {sample}.")
