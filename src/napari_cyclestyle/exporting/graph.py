"""Whole-plane generator graphs for ONNX and TorchScript.

A generator only keeps the input's size when height and width are multiples of its
stride product (4 for the ResNets, 128 or 256 for the U-Nets) and at least its minimum
size. :func:`~napari_cyclestyle.inference.run_generator` pads the plane (reflection, or
replication where the pad would exceed the plane) and crops the result; the exported
graphs carry the same padding and cropping, so they take any height and width and give
what ``translate`` gives for a whole plane.

- ONNX: :class:`PaddedGenerator` computes the pads from the input's shape with tensor
  operations and pads by gathering rows and columns, so one traced graph without
  control flow serves every size and picks reflection or replication per input. (The
  torch.export-based ONNX exporter refuses the size-dependent index arithmetic; the
  TorchScript-based one, ``dynamo=False``, exports it, and InstanceNorm as ONNX
  ``InstanceNormalization`` with the input's own statistics.)
- TorchScript: :class:`ScriptedPadding` is scripted around the traced network, with
  the padding in plain integer arithmetic, as in ``run_generator``.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch
from torch import Tensor, nn
from torch.nn import functional

ONNX_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"


class PaddedGenerator(nn.Module):
    """``network`` on a ``(N, C, Y, X)`` batch of any spatial size, padded as
    ``run_generator`` pads, in tensor operations only (traceable for ONNX)."""

    def __init__(self, network: nn.Module, multiple: int, minimum: int) -> None:
        super().__init__()
        self.network, self.multiple, self.minimum = network, multiple, minimum

    def forward(self, x: Tensor) -> Tensor:
        """Pad, run the network, crop back to the input's size."""
        shape = torch._shape_as_tensor(x)
        height, width = shape[2], shape[3]
        pad_y = torch.maximum((-height) % self.multiple, self.minimum - height)
        pad_x = torch.maximum((-width) % self.multiple, self.minimum - width)
        # Reflection needs pads smaller than the plane; replicate tiny planes.
        reflect = (pad_y < height) & (pad_x < width)
        top, left = pad_y // 2, pad_x // 2
        rows = _padded_index(height, pad_y, top, reflect)
        columns = _padded_index(width, pad_x, left, reflect)
        y = self.network(x.index_select(2, rows).index_select(3, columns))
        return y.index_select(2, torch.arange(height) + top).index_select(
            3, torch.arange(width) + left
        )


def _padded_index(size: Tensor, pad: Tensor, before: Tensor, reflect: Tensor) -> Tensor:
    """Source index of every position of an axis padded by ``pad`` (``before`` of them
    in front): mirrored without repeating the edge (reflection) or clamped to it."""
    offset = torch.arange(size + pad) - before
    mirrored = offset.abs()
    mirrored = torch.where(mirrored >= size, 2 * (size - 1) - mirrored, mirrored)
    clamped = torch.minimum(torch.clamp(offset, min=0), size - 1)
    return torch.where(reflect, mirrored, clamped)


class ScriptedPadding(nn.Module):
    """``run_generator``'s padding and cropping around a (traced) network, written for
    ``torch.jit.script``: the scripted module works on any device and size."""

    def __init__(self, network: nn.Module, multiple: int, minimum: int) -> None:
        super().__init__()
        self.network, self.multiple, self.minimum = network, multiple, minimum

    def forward(self, x: Tensor) -> Tensor:
        """Pad, run the network, crop back to the input's size."""
        height, width = x.shape[2], x.shape[3]
        pad_y = max((-height) % self.multiple, self.minimum - height)
        pad_x = max((-width) % self.multiple, self.minimum - width)
        if pad_y == 0 and pad_x == 0:
            return self.network(x)
        mode = "reflect" if pad_y < height and pad_x < width else "replicate"
        top, left = pad_y // 2, pad_x // 2
        x = functional.pad(x, [left, pad_x - left, top, pad_y - top], mode=mode)
        return self.network(x)[:, :, top : top + height, left : left + width]


@contextlib.contextmanager
def _quiet_tracing():
    """Tracing warns about constant-folded checks (InstanceNorm's size check, which the
    padding makes hold) and deprecations; none of them concerns these graphs, which the
    tests run at other sizes than the traced one."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        yield


def _example(network: nn.Module, in_channels: int, size: int) -> Tensor:
    """An input of ``size`` (the network is traced unpadded: it must fit as it is)."""
    parameter = next(network.parameters())
    side = size
    return torch.zeros(1, in_channels, side, side, dtype=parameter.dtype)


def onnx_bytes(
    network: nn.Module, in_channels: int, multiple: int, minimum: int, metadata: dict[str, str]
) -> bytes:
    """An ONNX model of ``network`` (on the CPU, in eval mode) with dynamic batch,
    height and width, the padding inside, and ``metadata`` as its metadata_props."""
    import onnx

    module = PaddedGenerator(network, multiple, minimum).eval()
    buffer = io.BytesIO()
    axes = {0: "batch", 2: "y", 3: "x"}
    with _quiet_tracing():
        torch.onnx.export(
            module,
            (_example(network, in_channels, max(multiple, minimum)),),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
        )
    graph = onnx.load_from_string(buffer.getvalue())
    graph.producer_name = "napari-cyclestyle"
    graph.doc_string = metadata.get("description", "")
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph)
    return graph.SerializeToString()


def torchscript_bytes(
    network: nn.Module, in_channels: int, multiple: int, minimum: int, metadata: dict[str, str]
) -> bytes:
    """A TorchScript module of ``network`` (on the CPU, in eval mode) taking any batch,
    height and width; ``metadata`` travels as the extra file ``metadata.json``."""
    import json

    with _quiet_tracing():
        traced = torch.jit.trace(network, _example(network, in_channels, max(multiple, minimum)))
        scripted = torch.jit.script(ScriptedPadding(traced, multiple, minimum).eval())
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer, _extra_files={"metadata.json": json.dumps(metadata)})
    return buffer.getvalue()
