"""Choosing the torch device: ``auto`` means CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

from .choices import DEVICES

_Result = TypeVar("_Result")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device to run on.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` picks CUDA if available, else MPS, else CPU. ``"cuda"``, ``"cuda:1"``,
        ``"mps"`` and ``"cpu"`` are taken as given once checked to be available.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If the device is unknown or not available on this machine.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise ValueError(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is available; use 'auto'.")
    if kind == "mps" and not _mps_available():
        raise ValueError("device='mps' was asked for but Apple MPS is not available; use 'auto'.")
    return torch.device(name)


def seed_torch(
    seed: int, deterministic: bool, cudnn_benchmark: bool, device: torch.device
) -> None:
    """Seed torch's random stream and choose its algorithms for a training run:
    deterministic ones when asked (warning where there are none), cuDNN's autotuner on
    CUDA when allowed and results need not repeat."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
    torch.manual_seed(seed)


def describe_device(device: torch.device) -> str:
    """Return a short human-readable description, e.g. ``cuda (NVIDIA H100)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads > 1 else ''})"
    return device.type


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device running out of memory (CUDA, MPS or the CPU
    allocator), which deserves advice rather than a traceback."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    phrases = ("out of memory", "not enough memory", "can't allocate memory")
    return isinstance(error, RuntimeError) and any(phrase in text for phrase in phrases)


class _ConvPrecision:
    """cuDNN's float32 convolution precision: a process-wide flag, held at IEEE float32
    while any thread needs it (the first to enter saves the flag, the last restores it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._saved: str | bool = ""

    def hold(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._saved = _get_conv_precision()
                _set_conv_precision("ieee")
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                _set_conv_precision(self._saved)


def _get_conv_precision() -> str | bool:
    conv = getattr(torch.backends.cudnn, "conv", None)  # older torch: the legacy flag
    return conv.fp32_precision if conv is not None else torch.backends.cudnn.allow_tf32


def _set_conv_precision(value: str | bool) -> None:
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None:
        conv.fp32_precision = value
    else:
        torch.backends.cudnn.allow_tf32 = value not in ("ieee", False)


_CONV_PRECISION = _ConvPrecision()


@contextmanager
def ieee_float32() -> Iterator[None]:
    """Run float32 convolutions in IEEE float32 on CUDA for the duration.

    cuDNN rounds float32 convolutions to TF32 (10-bit mantissa) by default. Through a
    generator's ~20 convolutions that moves outputs by ~5e-3, so tiles would no longer
    equal the whole image, nor a GPU the CPU. Costs ~1.6× in time on an H200. The CPU
    and MPS are unaffected.
    """
    _CONV_PRECISION.hold()
    try:
        yield
    finally:
        _CONV_PRECISION.release()


def exact_inference(function: Callable[..., _Result]) -> Callable[..., _Result]:
    """Decorate ``function`` to run under ``torch.inference_mode`` and
    :func:`ieee_float32`."""

    @functools.wraps(function)
    def run(*args, **kwargs) -> _Result:
        with torch.inference_mode(), ieee_float32():
            return function(*args, **kwargs)

    return run


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
