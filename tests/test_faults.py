"""Crashes, full disks and memory exhaustion: nothing trained is lost.

Processes are really killed (SIGKILL, which no handler can intercept) at known points,
reported by the child on its stdout, so the tests need no timing.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_cyclestyle.checkpoint import TrainingCheckpoint
from napari_cyclestyle.model_file import load_model, save_model
from napari_cyclestyle.trainer import Trainer

from .conftest import network_weights, tiny_config
from .test_model_file import _model

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL")

# Saves a ~90 MB model (two resnet_9blocks generators, ngf 64) to argv[1]; the file
# object of the atomic write reports when half of the bytes are on disk, then waits.
_SAVE_LARGE_MODEL = """
import os, sys
from napari_cyclestyle.config import ModelConfig
from napari_cyclestyle.model import CycleStyleModel, build_generators
from napari_cyclestyle.model_file import save_model

class PauseHalfway:
    def __init__(self, file):
        self.file = file
    def write(self, data):
        half = len(data) // 2
        self.file.write(data[:half])
        self.file.flush()
        print("half written", half, flush=True)
        sys.stdin.readline()
        return half + self.file.write(data[half:])
    def __getattr__(self, name):
        return getattr(self.file, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.file.__exit__(*exc)

fdopen = os.fdopen
os.fdopen = lambda *args, **kwargs: PauseHalfway(fdopen(*args, **kwargs))
config = ModelConfig(generator="resnet_9blocks", channels_a=3, channels_b=3, ngf=64)
save_model(CycleStyleModel(config, *build_generators(config)), sys.argv[1])
"""

# Trains with the configuration in argv[1]/config.json on argv[1]/{a,b}.npy with
# argv[2] threads, reports every checkpoint, and waits (to be killed) after the one at
# step >= 4. Bit-exact results need the test's thread count: CPU kernels sum in another
# order with another number of threads.
_TRAIN_UNTIL_KILLED = """
import sys
from pathlib import Path
import numpy as np
import torch
from napari_cyclestyle.config import Config
from napari_cyclestyle.trainer import train

torch.set_num_threads(int(sys.argv[2]))
folder = Path(sys.argv[1])
config = Config.from_json((folder / "config.json").read_text())
domains = np.load(folder / "a.npy"), np.load(folder / "b.npy")
for event in train(*domains, config, output=folder / "killed.safetensors"):
    if event.checkpoint is not None:
        print("checkpoint", event.step, flush=True)
        if event.step >= 4:
            sys.stdin.readline()
"""


def _child(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


def _same_weights(model_a, model_b) -> bool:
    pairs = [
        (model_a.generator_ab, model_b.generator_ab),
        (model_a.generator_ba, model_b.generator_ba),
    ]
    return all(
        torch.equal(value, b.state_dict()[key])
        for a, b in pairs
        for key, value in a.state_dict().items()
    )


# ---------------------------------------------------------------- saving
def test_killing_a_process_while_it_saves_a_large_model_keeps_the_previous_file(tmp_path):
    path = tmp_path / "model.safetensors"
    previous = _model()
    save_model(previous, path)
    before = path.read_bytes()

    writer = _child(_SAVE_LARGE_MODEL, str(path))
    try:
        report = writer.stdout.readline().split()
        assert report[:2] == ["half", "written"], report
        [temporary] = tmp_path.glob(".model.safetensors.*.tmp")
        assert temporary.stat().st_size == int(report[2]) > 40_000_000
    finally:
        _kill(writer)

    assert path.read_bytes() == before
    assert _same_weights(load_model(path), previous)
    assert temporary.exists()  # the killed writer's leftover, under another name

    save_model(_model("encoder_decoder"), path)  # the next save cleans it up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert load_model(path).config.generator == "encoder_decoder"


def test_a_save_leaves_the_temporary_file_of_a_running_writer_alone(tmp_path):
    path = save_model(_model(), tmp_path / "model.safetensors")
    running = tmp_path / f".model.safetensors.{os.getpid()}.abcd1234.tmp"
    running.write_bytes(b"being written")
    save_model(_model(), path)
    assert running.read_bytes() == b"being written"


class _FullDisk:
    """A file object that writes ``room`` bytes and then fails like a full disk."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data):
        self.file.write(data[: self.room])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)


def _fill_disk(monkeypatch, room: int = 1000) -> None:
    fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullDisk(fdopen(*a, **k), room))


def test_a_full_disk_gives_a_clear_error_and_keeps_the_previous_model(tmp_path, monkeypatch):
    path = save_model(_model(), tmp_path / "model.safetensors")
    before = path.read_bytes()
    _fill_disk(monkeypatch)
    with pytest.raises(OSError, match="No space left on device") as error:
        save_model(_model("unet_128"), path)
    assert str(path) in str(error.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_full_disk_during_training_keeps_the_last_checkpoint(
    tmp_path, gray_domains, monkeypatch
):
    config = tiny_config(checkpoint_every=2, n_steps=10)
    trainer = Trainer(*gray_domains, config, output=tmp_path / "m.safetensors")
    failed = pytest.raises(OSError, match="Could not write .*m.checkpoint.pt: No space left")
    on_the_way_out = pytest.warns(UserWarning, match="Could not save the model on the way out")
    with failed, on_the_way_out:
        for event in trainer.run():
            if event.step == 3:
                _fill_disk(monkeypatch)
    monkeypatch.undo()
    assert TrainingCheckpoint.load(trainer.checkpoint_path).step == 2
    assert not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------- training
def test_a_killed_training_resumes_from_its_checkpoint_to_the_same_weights(tmp_path, gray_domains):
    config = tiny_config(n_steps=5, n_steps_decay=3, checkpoint_every=2, deterministic=True)
    config.model.dropout = True
    np.save(tmp_path / "a.npy", gray_domains[0])
    np.save(tmp_path / "b.npy", gray_domains[1])
    (tmp_path / "config.json").write_text(config.to_json())

    trainer_process = _child(_TRAIN_UNTIL_KILLED, str(tmp_path), str(torch.get_num_threads()))
    try:
        steps = []
        for line in trainer_process.stdout:
            steps.append(int(line.split()[1]))
            if steps[-1] >= 4:
                break
    finally:
        _kill(trainer_process)
    assert steps == [2, 4]
    assert not (tmp_path / "killed.safetensors").exists()  # killed: nothing saved on exit

    checkpoint = tmp_path / "killed.checkpoint.pt"
    resumed = Trainer(
        *gray_domains, config, output=tmp_path / "killed.safetensors", resume=checkpoint
    )
    assert resumed.step == 4
    assert [e.step for e in resumed.run()] == [5, 6, 7, 8]

    straight = Trainer(*gray_domains, config, output=tmp_path / "straight.safetensors")
    list(straight.run())
    expected, actual = network_weights(straight), network_weights(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert _same_weights(
        load_model(tmp_path / "killed.safetensors"), load_model(tmp_path / "straight.safetensors")
    )


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB"),
    ],
)
def test_running_out_of_memory_in_training_gives_advice(tmp_path, gray_domains, error):
    config = tiny_config(checkpoint_every=2, n_steps=10)
    trainer = Trainer(*gray_domains, config, output=tmp_path / "m.safetensors")
    original_step = trainer.cyclegan.training_step

    def step_out_of_memory(*batches_and_learning_rate):
        if trainer.step >= 3:
            raise error
        return original_step(*batches_and_learning_rate)

    trainer.cyclegan.training_step = step_out_of_memory
    with pytest.raises(RuntimeError) as raised:
        list(trainer.run())
    message = str(raised.value)
    assert not isinstance(raised.value, torch.OutOfMemoryError)
    assert "Out of memory" in message
    assert "crop_size" in message and "batch_size" in message
    assert load_model(tmp_path / "m.safetensors").info["steps"] == 3  # the work is kept


def test_running_out_of_memory_in_translation_advises_tiling(monkeypatch):
    from napari_cyclestyle.inference import translate

    model = _model()

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(model.generator_ab, "forward", out_of_memory)
    image = np.zeros((64, 64), np.uint16)
    with pytest.raises((ValueError, RuntimeError)) as raised:
        translate(image, model, device="cpu", tile_size=None)
    assert not isinstance(raised.value, torch.OutOfMemoryError)
    assert "tile_size" in str(raised.value)
