"""Apply G (A→B) or F (B→A) to images of any size, dtype, channel layout and dimension.

The image is split into 2D planes (every Z, T, ... position), each plane is normalised
with the source domain's intensity normalisation, run through the generator (padded to
the size the architecture needs, and cropped back), and mapped into the target domain's
values and dtype. The result has the input's shape, with the channel axis resized to
the model's output channels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from .devices import resolve_device
from .intensity import IntensityNorm, check_finite, fit_intensity
from .layout import from_planes, infer_layout, to_planes
from .model import CycleStyleModel, parse_direction
from .networks import size_multiple


@dataclass
class TranslateProgress:
    """Progress of a translation: ``done`` of ``total`` planes; ``result`` at the end."""

    done: int
    total: int
    result: np.ndarray | None = None


def translate(
    image,
    model: CycleStyleModel | str | os.PathLike,
    direction: str = "AtoB",
    *,
    device: str | torch.device = "auto",
    channel_axis: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Translate ``image`` with the model's G (``"AtoB"``/``"G"``) or F (``"BtoA"``/``"F"``).

    Parameters
    ----------
    image : array-like
        ``(Y, X)``, ``(..., Y, X, 3|4)`` RGB(A), ``(..., C, Y, X)`` or ``(..., Y, X, C)``
        multichannel, with any leading axes (Z, T, ...). Any integer, boolean or float
        dtype; NaN and Inf are refused.
    model : CycleStyleModel or path
        A loaded model, or a model file / reference checkpoint to load.
    direction : str
        ``"AtoB"`` (alias ``"G"``) or ``"BtoA"`` (alias ``"F"``).
    device : str or torch.device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cuda"``, ``"mps"`` or ``"cpu"``.
    channel_axis : int, optional
        The image's channel axis when it cannot be inferred.
    progress : callable, optional
        Called as ``progress(done, total)`` after each plane.

    Returns
    -------
    numpy.ndarray
        The translated image: the input's shape with the channel axis sized to the
        model's output channels (see :meth:`ImageLayout.output_shape`), in the target
        domain's dtype and value range.

    Raises
    ------
    ValueError
        If the image's channels, shape or values do not fit the model.
    """
    result = None
    for step in translate_steps(image, model, direction, device=device, channel_axis=channel_axis):
        if progress is not None:
            progress(step.done, step.total)
        result = step.result
    return result


def translate_steps(
    image,
    model: CycleStyleModel | str | os.PathLike,
    direction: str = "AtoB",
    *,
    device: str | torch.device = "auto",
    channel_axis: int | None = None,
) -> Iterator[TranslateProgress]:
    """Like :func:`translate`, but yield progress after each plane; stop iterating to
    cancel. The last item carries the ``result``."""
    if not isinstance(model, CycleStyleModel):
        from .model_file import load_model

        model = load_model(model)
    direction = parse_direction(direction)
    network = model.generator(direction)
    in_channels, out_channels = model.channels(direction)
    image = _as_array(image)
    layout = infer_layout(image.shape, channel_axis, expected_channels=in_channels)
    planes = to_planes(image, layout)
    norm_in, norm_out = _norms(model, direction, planes, image.dtype, out_channels)
    torch_device = resolve_device(device)
    network.to(torch_device).eval()
    multiple = size_multiple(model.config.generator)
    total = planes.shape[0]
    out_planes = None
    for index in range(total):
        plane = np.asarray(planes[index])
        check_finite(plane)
        x = torch.from_numpy(norm_in.normalize(plane)).to(torch_device)
        y = run_generator(network, x[None], multiple)[0].float().cpu().numpy()
        translated = norm_out.denormalize(y)
        if out_planes is None:
            out_planes = np.empty((total, *translated.shape), translated.dtype)
        out_planes[index] = translated
        done = index + 1
        yield TranslateProgress(
            done, total, from_planes(out_planes, layout) if done == total else None
        )


@torch.inference_mode()
def run_generator(network: nn.Module, batch: torch.Tensor, multiple: int) -> torch.Tensor:
    """Run ``network`` on a ``(N, C, Y, X)`` batch in [-1, 1] of any spatial size.

    The batch is reflect-padded up to a multiple of ``multiple`` (the architecture's
    stride product) and the output cropped back, so the output has the input's size.
    """
    height, width = batch.shape[-2:]
    pad_y, pad_x = -height % multiple, -width % multiple
    if pad_y or pad_x:
        # Reflection needs the pad to be smaller than the size; replicate tiny images.
        mode = "reflect" if pad_y < height and pad_x < width else "replicate"
        top, left = pad_y // 2, pad_x // 2
        batch = functional.pad(batch, (left, pad_x - left, top, pad_y - top), mode=mode)
        return network(batch)[..., top : top + height, left : left + width]
    return network(batch)


def _as_array(image):
    if hasattr(image, "shape") and hasattr(image, "dtype"):
        return image
    return np.asarray(image)


def _norms(
    model: CycleStyleModel, direction: str, planes, dtype, out_channels: int
) -> tuple[IntensityNorm, IntensityNorm]:
    """Source and target normalisations; imported models derive them from the input."""
    norm_in, norm_out = model.norms(direction)
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"Images of dtype {dtype} cannot be translated; use numbers.")
    if norm_in is None:
        sample = np.asarray(planes[: min(len(planes), 4)])
        check_finite(sample)
        in_unit_range = dtype.kind == "f" and sample.min() >= 0 and sample.max() <= 1
        norm_in = fit_intensity(
            [sample],
            dtype,
            mode="fixed" if in_unit_range else "auto",
            value_range=(0.0, 1.0) if in_unit_range else None,
        )
    if norm_out is None:
        low, high = norm_in.low, norm_in.high
        if len(low) != out_channels:
            low, high = (float(np.mean(low)),), (float(np.mean(high)),)
        norm_out = IntensityNorm(norm_in.mode, low, high, norm_in.dtype)
    return norm_in, norm_out
