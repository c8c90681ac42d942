"""Data-parallel training under torchrun (2 CPU processes, gloo on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cyclestyle.inference import translate
from napari_cyclestyle.model_file import load_checkpoint, load_model
from napari_cyclestyle.trainer import Trainer

from .conftest import assert_trained_alike, tiny_config

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import shutil
import sys
import numpy as np
from napari_cyclestyle.trainer import Trainer
from tests.conftest import tiny_config

rng = np.random.default_rng(0)
domain_a = rng.integers(0, 200, (3, 48, 56), dtype=np.uint8)
domain_b = (rng.integers(0, 55, (2, 40, 64)) + 200).astype(np.uint8)
config = tiny_config(
    n_steps=3, n_steps_decay=1, batch_size=2, pool_size=0, deterministic=True, checkpoint_every=1
)
trainer = Trainer(domain_a, domain_b, config, output=sys.argv[1])
for event in trainer.run():
    if trainer.is_main_process:
        print(f"step {event.step}", flush=True)
        if event.step in (1, 2):
            shutil.copy(event.checkpoint, sys.argv[1 + event.step])
print(f"rank done {trainer.context.rank} {trainer.context.world_size}", flush=True)
"""


@pytest.mark.numerics
def test_torchrun_two_processes_train_like_one_and_resume_in_one(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(SCRIPT))
    output = tmp_path / "ddp" / "model.safetensors"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
        str(output),
        str(tmp_path / "step1.checkpoint.pt"),
        str(tmp_path / "step2.checkpoint.pt"),
    ]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=environment
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank done 0 2" in result.stdout and "rank done 1 2" in result.stdout
    assert result.stdout.count("step 4") == 1, result.stdout  # only rank 0 logs
    assert sorted(p.name for p in output.parent.iterdir()) == [
        "model.checkpoint.pt",
        "model.safetensors",
    ]

    rng = np.random.default_rng(0)
    domain_a = rng.integers(0, 200, (3, 48, 56), dtype=np.uint8)
    domain_b = (rng.integers(0, 55, (2, 40, 64)) + 200).astype(np.uint8)
    config = tiny_config(n_steps=3, n_steps_decay=1, batch_size=2, pool_size=0, deterministic=True)
    # After one step the two runs agree up to rounding: two processes' gradients of one
    # patch each, averaged, against one process's gradient of both. From the second step
    # on Adam (beta1 0.5) amplifies that rounding into differences of about the learning
    # rate, by amounts that depend on the CPU's kernels, so later steps are not compared.
    single = Trainer(domain_a, domain_b, config, output=tmp_path / "single.safetensors")
    for event in single.run():
        if event.step == 1:
            single.stop()
    distributed = load_checkpoint(tmp_path / "step1.checkpoint.pt")["networks"]
    for name, network in single.networks.named().items():
        learning_rate = config.train.learning_rate
        assert_trained_alike(network.state_dict(), distributed[name], learning_rate, steps=1)

    # A checkpoint written by two processes resumes in one (another world size), with
    # the weights the two processes had.
    checkpoint = tmp_path / "step2.checkpoint.pt"
    resumed = Trainer(
        domain_a, domain_b, config, output=tmp_path / "resumed.safetensors", resume=checkpoint
    )
    saved = load_checkpoint(checkpoint)["networks"]
    for name, network in resumed.networks.named().items():
        for key, value in network.state_dict().items():
            assert torch.equal(value, saved[name][key]), (name, key)
    assert [event.step for event in resumed.run()] == [3, 4]

    distributed_model = load_model(output)
    assert distributed_model.info["steps"] == 4
    image = domain_a[0]
    assert translate(image, distributed_model, device="cpu").shape == image.shape


def test_the_train_command_runs_unchanged_under_torchrun(tmp_path):
    import tifffile

    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for index in range(2):
            image = rng.integers(0, 255, (40, 48), dtype=np.uint8)
            tifffile.imwrite(tmp_path / name / f"{index}.tif", image)
    output = tmp_path / "out" / "model.safetensors"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "napari_cyclestyle.cli", "train",
        "--domain-a", str(tmp_path / "a"), "--domain-b", str(tmp_path / "b"),
        "--generator", "resnet_6blocks", "--ngf", "4", "--ndf", "4", "--crop-size", "32",
        "--batch-size", "2", "--steps", "2", "--decay-steps", "0", "--device", "cpu",
        "--output", str(output),
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("Done: model saved") == 1
    assert sorted(p.name for p in output.parent.iterdir()) == [
        "model.checkpoint.pt",
        "model.safetensors",
    ]
    assert load_model(output).info["steps"] == 2
