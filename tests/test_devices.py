"""Choosing the device, and holding convolutions at IEEE float32."""

from __future__ import annotations

import threading

import pytest
import torch

from napari_cyclestyle.devices import ieee_float32, resolve_device


def test_unknown_and_missing_devices_name_the_fix():
    with pytest.raises(ValueError, match="Unknown device 'tpu'; choose one of auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available; use 'auto'"):
            resolve_device("cuda")
    assert resolve_device(" CPU ") == torch.device("cpu")


def test_ieee_float32_holds_while_any_thread_needs_it_then_restores_the_setting(
    tf32_convolutions,
):
    conv = tf32_convolutions
    entered, leave = threading.Event(), threading.Event()

    def other_thread() -> None:
        with ieee_float32():
            entered.set()
            leave.wait(10)

    worker = threading.Thread(target=other_thread)
    worker.start()
    try:
        assert entered.wait(10)
        with ieee_float32():
            leave.set()  # the thread that entered first leaves first
            worker.join(10)
            assert conv.fp32_precision == "ieee"  # this thread still needs it
        assert conv.fp32_precision == "tf32"
    finally:
        leave.set()
