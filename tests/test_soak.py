"""Endurance: a long run neither leaks memory nor writes a checkpoint that does not load.

Slow (a few minutes on a laptop CPU), so excluded from the default run; run it with::

    python -m pytest -m slow tests/test_soak.py
"""

from __future__ import annotations

import gc
import shutil

import numpy as np
import pytest

from napari_cyclestyle.checkpoint import TrainingCheckpoint
from napari_cyclestyle.model_file import load_model
from napari_cyclestyle.trainer import train

from .conftest import tiny_config

psutil = pytest.importorskip("psutil")  # installed with napari

STEPS = 2000
EVERY = 100
WARM_UP = 200
MAX_GROWTH = 50 * 2**20  # bytes of resident memory


@pytest.mark.slow
def test_two_thousand_steps_keep_memory_flat_and_every_checkpoint_loads(tmp_path, gray_domains):
    config = tiny_config(
        n_steps=STEPS // 2,
        n_steps_decay=STEPS // 2,
        preview_every=EVERY,
        checkpoint_every=EVERY,
        log_every=10,
    )
    process = psutil.Process()
    copies, previews, resident = [], 0, {}
    for event in train(*gray_domains, config, output=tmp_path / "soak.safetensors"):
        if event.preview is not None:
            previews += 1
            assert all(np.isfinite(image).all() for image in event.preview.values())
        if event.checkpoint is not None:  # overwritten each time: keep a copy to load later
            copies.append((event.step, tmp_path / f"step-{event.step}.checkpoint.pt"))
            shutil.copyfile(event.checkpoint, copies[-1][1])
        if event.step % EVERY == 0 and event.step >= WARM_UP:
            gc.collect()
            resident[event.step] = process.memory_info().rss

    assert previews == STEPS // EVERY
    assert [step for step, _ in copies] == list(range(EVERY, STEPS + 1, EVERY))
    growth = max(resident.values()) - resident[WARM_UP]
    assert growth < MAX_GROWTH, {step: rss // 2**20 for step, rss in resident.items()}
    for step, path in copies:
        assert TrainingCheckpoint.load(path).step == step
    assert load_model(tmp_path / "soak.safetensors").info["steps"] == STEPS
