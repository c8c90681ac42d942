"""Tests of the ``napari-cyclestyle`` command: train, Ctrl-C and resume, translate, info,
demo, and the one-line errors users get for bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_cyclestyle import __version__
from napari_cyclestyle.checkpoint import TrainingCheckpoint
from napari_cyclestyle.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main
from napari_cyclestyle.model_file import load_model

# A tiny network and few steps: each in-process training run takes about a second.
TINY = ["--generator", "resnet_6blocks", "--ngf", "4", "--ndf", "4", "--crop-size", "32"]
TINY += ["--pool-size", "2", "--log-every", "1", "--threads", "1"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks run several times faster on one thread, more so on a shared CPU."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_domain(folder: Path, seed: int, n_images: int = 3) -> Path:
    """A folder of small uint16 TIFFs: smooth blobs (seed 0) or stripes (seed 1)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:40, :48]
    for index in range(n_images):
        phase = rng.uniform(0, 2 * np.pi)
        pattern = np.sin(x / (3 + 5 * seed) + phase) * np.cos(y / (4 + seed) + phase)
        image = (1000 + 20000 * seed + 800 * pattern + rng.normal(0, 50, y.shape)).astype(
            np.uint16
        )
        tifffile.imwrite(folder / f"image{index}.tif", image)
    return folder


def one_error_line(err: str) -> str:
    """The single stderr line of a user error (and no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-cyclestyle: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("domains")
    return write_domain(root / "a", seed=0), write_domain(root / "b", seed=1)


@pytest.fixture(scope="module")
def trained(domains, tmp_path_factory) -> Path:
    """A model trained for three steps with settings from a YAML file and flags."""
    root = tmp_path_factory.mktemp("trained")
    config = root / "config.yaml"
    config.write_text("train:\n  n_steps: 2\n  n_steps_decay: 5\n  seed: 3\n")
    model = root / "model.safetensors"
    argv = ["train", "--domain-a", str(domains[0]), "--domain-b", str(domains[1]), *TINY]
    argv += ["--config", str(config), "--decay-steps", "1", "--output", str(model)]
    argv += ["--precision", "fp32", "--no-cudnn-benchmark", "--no-compile"]
    argv += ["--channels-last"]
    argv += ["--save-config", str(root / "effective.json")]
    argv += ["--preview-dir", str(root / "previews"), "--preview-every", "2"]
    assert main(argv) == EXIT_OK
    return model


def test_help_and_version_describe_every_command(capsys):
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    for command in ("train", "translate", "info", "demo"):
        assert command in out
    assert main(["train", "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    for flag in ("--domain-a", "--resume", "--config", "--lambda-cycle", "--crop-size"):
        assert flag in out
    assert main(["--version"]) == EXIT_OK
    assert __version__ in capsys.readouterr().out


def test_train_merges_config_file_and_flags_and_saves_a_loadable_model(trained):
    effective = json.loads((trained.parent / "effective.json").read_text())
    # From the YAML file, overridden by --decay-steps, and from the flags.
    assert effective["train"]["n_steps"] == 2
    assert effective["train"]["n_steps_decay"] == 1
    assert effective["train"]["seed"] == 3
    assert effective["train"]["crop_size"] == 32
    assert effective["model"]["ngf"] == 4
    assert effective["train"]["precision"] == "fp32"
    assert effective["train"]["cudnn_benchmark"] is False
    assert effective["train"]["compile"] is False
    assert effective["train"]["channels_last"] is True
    model = load_model(trained)
    assert model.info["steps"] == 3
    assert (trained.parent / "model.checkpoint.pt").is_file()
    previews = sorted(p.name for p in (trained.parent / "previews").iterdir())
    assert previews == ["preview_000002.png", "preview_000003.png"]  # every 2 and the last
    # real A | G(A) over real B | F(B), 32-pixel patches, 4-pixel gaps.
    assert iio.imread(trained.parent / "previews" / previews[0]).shape == (68, 68, 3)


def test_train_validates_on_held_out_folders_and_keeps_the_best_model(domains, tmp_path, capsys):
    held_a, held_b = write_domain(tmp_path / "va", 2, 1), write_domain(tmp_path / "vb", 3, 1)
    model = tmp_path / "model.safetensors"
    argv = ["train", "--domain-a", str(domains[0]), "--domain-b", str(domains[1]), *TINY]
    argv += ["--steps", "2", "--decay-steps", "2", "--output", str(model)]
    argv += ["--validation-a", str(held_a), "--validation-b", str(held_b)]
    argv += ["--validation-every", "2", "--best-metric", "realism"]
    assert main(argv) == EXIT_OK
    lines = [line for line in capsys.readouterr().err.splitlines() if "Validation" in line]
    assert [line.split(":")[0] for line in lines] == [
        "Validation at step 2",
        "Validation at step 4",
    ]
    assert "cycle_A" in lines[0] and "best so far" in lines[0]
    assert load_model(model).info["validation"]["best"]["metric"] == "realism"
    assert load_model(tmp_path / "model.best.safetensors").info["steps"] in (2, 4)


def test_health_warnings_are_lines_with_advice(tmp_path):
    import io

    from napari_cyclestyle.cli.train import run_training
    from napari_cyclestyle.trainer import Trainer

    from .conftest import tiny_config

    images = np.random.default_rng(0).integers(0, 255, (2, 40, 40), dtype=np.uint8)
    config = tiny_config(validation_every=2)
    trainer = Trainer(images, images, config, output=tmp_path / "m.safetensors")
    # an inverted G, as validation sees it (its weight average by default)
    trainer.cyclegan.shown_generators()[0].forward = lambda batch: -batch
    stream = io.StringIO()
    run_training(trainer, stream=stream)
    warnings = [line for line in stream.getvalue().splitlines() if line.startswith("Warning")]
    assert len(warnings) == 1 and "Content inversion" in warnings[0]
    assert "Try: more identity weight" in warnings[0]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_a_loadable_model_and_resume_continues(
    domains, tmp_path, capsys, stop_signal
):
    model = tmp_path / "run.safetensors"
    argv = ["train", "--domain-a", str(domains[0]), "--domain-b", str(domains[1]), *TINY]
    argv += ["--steps", "100000", "--checkpoint-every", "0", "--output", str(model)]
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_cyclestyle.cli", *argv],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for line in process.stderr:
            if line.startswith("step "):
                break
        else:
            pytest.fail(f"training ended without progress (exit {process.wait()})")
        process.send_signal(stop_signal)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    assert "steps/s, ETA" in err and "cycle_A" in err  # the progress line
    assert f"model saved to {model}" in err
    assert "Resume with: napari-cyclestyle train" in err
    checkpoint = tmp_path / "run.checkpoint.pt"
    stopped_at = TrainingCheckpoint.load(checkpoint).step
    assert 1 <= stopped_at < 100000
    assert load_model(model).info["steps"] == stopped_at

    argv = ["train", "--domain-a", str(domains[0]), "--domain-b", str(domains[1])]
    argv += ["--resume", str(checkpoint), "--steps", str(stopped_at + 2), "--decay-steps", "0"]
    assert main(argv) == EXIT_OK
    assert load_model(model).info["steps"] == stopped_at + 2
    err = capsys.readouterr().err
    assert f"step {stopped_at + 2}/{stopped_at + 2} (100%)" in err
    assert f"Done: model saved to {model}" in err


def test_train_in_mode_cut_writes_a_model_that_refuses_b_to_a(domains, tmp_path, capsys):
    model = tmp_path / "cut.safetensors"
    argv = ["train", "--domain-a", str(domains[0]), "--domain-b", str(domains[1]), *TINY]
    argv += ["--steps", "2", "--decay-steps", "0", "--mode", "cut", "--nce-patches", "16"]
    argv += ["--output", str(model), "--preview-dir", str(tmp_path / "previews")]
    assert main(argv) == EXIT_OK
    progress = capsys.readouterr().err
    assert "NCE_identity_B" in progress and "cycle_A" not in progress
    assert load_model(model).generator_ba is None
    # real A | G(A) alone: 32-pixel patches, a 4-pixel gap
    assert iio.imread(tmp_path / "previews" / "preview_000002.png").shape == (32, 68, 3)
    assert main(["info", str(model)]) == EXIT_OK
    assert "not available: F (B → A): the model was trained one-sided" in capsys.readouterr().out
    source = str(domains[0] / "image0.tif")
    assert main(["translate", str(model), source, "-d", "BtoA", "-o", str(tmp_path)]) == EXIT_ERROR
    line = one_error_line(capsys.readouterr().err.split("\r")[-1])
    assert "no BtoA generator (F)" in line and "one-sided" in line and "AtoB" in line


def test_translate_folder_keeps_uint16_tiffs(trained, domains, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["translate", str(trained), str(domains[0]), "--output", str(out)]) == EXIT_OK
    written = sorted(out.iterdir())
    assert [p.name for p in written] == [f"image{i}_AtoB.tif" for i in range(3)]
    source = tifffile.imread(domains[0] / "image0.tif")
    result = tifffile.imread(written[0])
    assert result.dtype == np.uint16
    assert result.shape == source.shape
    assert "[3/3]" in capsys.readouterr().err


def test_translate_one_png_to_a_named_file_in_the_f_direction(trained, tmp_path):
    source = tmp_path / "gray.png"
    iio.imwrite(source, np.full((36, 44), 200, np.uint8))
    target = tmp_path / "result" / "translated.png"
    assert main(["translate", str(trained), str(source), "-o", str(target), "-d", "F"]) == 0
    result = iio.imread(target)
    assert result.shape == (36, 44)
    assert result.dtype == np.uint16  # domain A's dtype


def test_translate_zarr_writes_a_zarr_tile_by_tile_like_the_python_call(trained, tmp_path):
    import zarr

    from napari_cyclestyle.inference import translate

    image = np.random.default_rng(5).integers(900, 1100, (2, 96, 80)).astype(np.uint16)
    group = zarr.open_group(str(tmp_path / "stack.zarr"), mode="w")  # as OME-Zarr: level "0"
    group.create_array("0", shape=image.shape, dtype=image.dtype, chunks=(1, 48, 40))[:] = image
    options = ["--tile-size", "48", "--statistics", "estimate"]

    assert main(["translate", str(trained), str(tmp_path / "stack.zarr"), *options]) == EXIT_OK

    result = zarr.open_array(str(tmp_path / "stack_AtoB.zarr"), mode="r")
    expected = translate(image, load_model(trained), tile_size=48, statistics="estimate")
    assert result.dtype == np.uint16
    np.testing.assert_array_equal(result[:], expected)
    # the result is never overwritten
    assert main(["translate", str(trained), str(tmp_path / "stack.zarr")]) == EXIT_ERROR


def test_translate_memory_budget_replaces_the_automatic_one(trained, tmp_path, monkeypatch):
    from napari_cyclestyle import tiling

    def automatic(device):
        raise AssertionError("the automatic memory budget was used")

    monkeypatch.setattr(tiling, "memory_budget", automatic)
    source = tmp_path / "gray.png"
    iio.imwrite(source, np.full((36, 44), 200, np.uint8))
    argv = ["translate", str(trained), str(source), "--memory-budget", "0.5"]
    assert main(argv) == EXIT_OK
    assert iio.imread(tmp_path / "gray_AtoB.png").shape == (36, 44)


@pytest.mark.parametrize("value", ["0", "-1", "lots", "inf"])
def test_translate_memory_budget_must_be_a_positive_number(trained, tmp_path, value, capsys):
    argv = ["translate", str(trained), str(tmp_path), "--memory-budget", value]
    assert main(argv) == EXIT_USAGE
    assert "expected a positive number of GiB" in capsys.readouterr().err


def test_dask_scheduler_needs_zarr_inputs(trained, domains, capsys):
    argv = ["translate", str(trained), str(domains[0]), "--dask-scheduler", "tcp://x:8786"]
    assert main(argv) == EXIT_USAGE
    assert ".zarr inputs" in one_error_line(capsys.readouterr().err)


def test_info_prints_the_model_description_and_path(trained, capsys):
    assert main(["info", str(trained)]) == EXIT_OK
    out = capsys.readouterr().out
    assert str(trained.resolve()) in out
    assert "generator: resnet_6blocks (ngf 4" in out
    assert "trained steps: 3" in out
    checkpoint = trained.parent / "model.checkpoint.pt"
    assert main(["info", str(checkpoint)]) == EXIT_OK
    assert "training checkpoint at step 3 of 3" in capsys.readouterr().out


def test_info_reads_a_reference_cyclegan_checkpoint(tmp_path, capsys):
    import torch

    from napari_cyclestyle.networks import build_generator

    path = tmp_path / "latest_net_G_A.pth"
    torch.save(build_generator("resnet_6blocks", 3, 3, ngf=4).state_dict(), path)
    assert main(["info", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "generator: resnet_6blocks (ngf 4" in out
    assert f"source: {path}" in out


def test_demo_writes_model_translations_and_figure(tmp_path, capsys):
    argv = ["demo", "--steps", "2", "--image-size", "64", "--output", str(tmp_path)]
    assert main(argv) == EXIT_OK
    assert load_model(tmp_path / "demo-model.safetensors").config.channels_b == 3
    stained = iio.imread(tmp_path / "sample_A0_AtoB.png")
    assert stained.shape == (64, 64, 3)
    assert iio.imread(tmp_path / "sample_B0_BtoA.png").shape == (64, 64)
    # Rows A, G(A), B, F(B); four samples per row; 4-pixel gaps.
    assert iio.imread(tmp_path / "demo.png").shape == (4 * 64 + 12, 4 * 64 + 12, 3)


def test_missing_domain_folder_is_one_error_line(tmp_path, domains, capsys):
    missing = tmp_path / "nowhere"
    argv = ["train", "--domain-a", str(missing), "--domain-b", str(domains[1]), *TINY]
    assert main(argv) == EXIT_ERROR
    assert str(missing) in one_error_line(capsys.readouterr().err)


def test_unreadable_image_is_one_error_line(trained, tmp_path, capsys):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"this is not a TIFF file")
    assert main(["translate", str(trained), str(broken)]) == EXIT_ERROR
    assert "broken.tif" in one_error_line(capsys.readouterr().err)


def test_translating_rgb_with_a_gray_model_is_one_error_line(trained, tmp_path, capsys):
    rgb = tmp_path / "rgb.png"
    iio.imwrite(rgb, np.zeros((32, 32, 3), np.uint8))
    assert main(["translate", str(trained), str(rgb), "-o", str(tmp_path)]) == EXIT_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert "3 channel(s)" in line and "expects 1" in line


def test_domain_mixing_channel_counts_is_one_error_line(domains, tmp_path, capsys):
    mixed = write_domain(tmp_path / "mixed", seed=0, n_images=1)
    tifffile.imwrite(mixed / "rgb.tif", np.zeros((40, 48, 3), np.uint16), photometric="rgb")
    argv = ["train", "--domain-a", str(mixed), "--domain-b", str(domains[1]), *TINY]
    assert main(argv) == EXIT_ERROR
    assert "same channels" in one_error_line(capsys.readouterr().err)


def test_missing_model_file_is_one_error_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.safetensors")]) == EXIT_ERROR
    assert "no such model file" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--crop-size", "8"], "crop_size must be at least 16"),
        (["--config", "missing.yaml"], "Cannot read configuration file"),
    ],
)
def test_bad_settings_are_usage_errors(domains, flags, expected, capsys):
    argv = ["train", "--domain-a", str(domains[0]), "--domain-b", str(domains[1]), *flags]
    assert main(argv) == EXIT_USAGE
    assert expected in one_error_line(capsys.readouterr().err)


def test_changing_the_architecture_on_resume_is_a_usage_error(trained, domains, capsys):
    checkpoint = trained.parent / "model.checkpoint.pt"
    argv = ["train", "--domain-a", str(domains[0]), "--domain-b", str(domains[1])]
    argv += ["--resume", str(checkpoint), "--ngf", "8", "--steps", "10"]
    assert main(argv) == EXIT_USAGE
    assert "--ngf cannot change when resuming" in one_error_line(capsys.readouterr().err)


def test_unknown_option_exits_with_usage_code(capsys):
    assert main(["translate", "--no-such-option"]) == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def _out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_running_out_of_memory_in_training_is_one_error_line(
    domains, tmp_path, monkeypatch, capsys
):
    from napari_cyclestyle.cyclegan import CycleGAN

    monkeypatch.setattr(CycleGAN, "training_step", _out_of_memory)
    model = tmp_path / "model.safetensors"
    argv = ["train", "--domain-a", str(domains[0]), "--domain-b", str(domains[1]), *TINY]
    assert main([*argv, "--steps", "2", "--output", str(model)]) == EXIT_ERROR
    line = one_error_line(capsys.readouterr().err.split("\n", 1)[-1].split("\r")[-1])
    assert "Out of memory" in line and "smaller crop_size" in line


def test_running_out_of_memory_in_translation_is_one_error_line(
    trained, domains, tmp_path, monkeypatch, capsys
):
    from napari_cyclestyle.job import TranslationJob

    monkeypatch.setattr(TranslationJob, "plane_steps", _out_of_memory)
    source = domains[0] / "image0.tif"
    assert main(["translate", str(trained), str(source), "-o", str(tmp_path)]) == EXIT_ERROR
    line = one_error_line(capsys.readouterr().err.split("\r")[-1])
    assert "Out of memory" in line and "tile_size" in line


def test_method_flags_and_the_paper_preset_reach_the_settings(domains, tmp_path, capsys):
    assert main(["train", "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    for flag in ("--ema-decay", "--upsampling", "--spectral-norm", "--lambda-r1", "--preset"):
        assert flag in out
    for flag in ("--mode", "--lambda-nce"):
        assert flag in out
    base = ["train", "--domain-a", str(domains[0]), "--domain-b", str(domains[1]), *TINY]
    base += ["--steps", "1", "--decay-steps", "0", "--output", str(tmp_path / "m.safetensors")]
    methods = ["--upsampling", "resize", "--spectral-norm", "--gan-mode", "hinge"]
    methods += ["--ema-decay", "0.9", "--lambda-r1", "1", "--r1-every", "2"]
    methods += ["--lambda-structure", "0.5", "--diff-augment", "color,cutout"]
    methods += ["--lambda-nce", "1", "--nce-layers", "0,4", "--nce-patches", "16"]
    assert main([*base, *methods, "--save-config", str(tmp_path / "methods.json")]) == EXIT_OK
    effective = json.loads((tmp_path / "methods.json").read_text())
    assert effective["model"]["upsampling"] == "resize" and effective["model"]["spectral_norm"]
    assert effective["train"]["ema_decay"] == 0.9 and effective["train"]["r1_every"] == 2
    assert effective["train"]["diff_augment"] == "color,cutout"
    assert effective["train"]["nce_layers"] == "0,4" and effective["train"]["nce_patches"] == 16
    # The preset sets the paper's values over --config; flags still win over it.
    config = tmp_path / "config.yaml"
    config.write_text("train:\n  gan_mode: vanilla\n  lambda_structure: 2.0\n  pool_size: 3\n")
    preset = ["--config", str(config), "--preset", "paper", "--lambda-identity", "0.2"]
    argv = [*base, *preset, "--save-config", str(tmp_path / "paper.json")]
    argv.remove("--pool-size"), argv.remove("2")  # TINY's pool: let the preset set it
    assert main(argv) == EXIT_OK
    effective = json.loads((tmp_path / "paper.json").read_text())
    assert effective["train"]["gan_mode"] == "lsgan" and effective["train"]["pool_size"] == 50
    assert (
        effective["train"]["lambda_structure"] == 0
        and effective["train"]["lambda_identity"] == 0.2
    )
