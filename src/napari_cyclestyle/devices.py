"""Choosing the torch device: ``auto`` means CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


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
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"Unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is available; use 'auto'.")
    if kind == "mps" and not _mps_available():
        raise ValueError("device='mps' was asked for but Apple MPS is not available; use 'auto'.")
    return torch.device(name)


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


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
