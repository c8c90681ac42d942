"""The training loop: events, schedule, stopping, checkpoints and exact resume."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_cyclestyle.checkpoint import TrainingCheckpoint
from napari_cyclestyle.choices import PRECISIONS
from napari_cyclestyle.config import TrainConfig
from napari_cyclestyle.cyclegan import STRUCTURE_LOSS_NAMES
from napari_cyclestyle.inference import translate
from napari_cyclestyle.model_file import load_model
from napari_cyclestyle.trainer import (
    LOSS_NAMES,
    Trainer,
    TrainingDiverged,
    TrainingOutOfMemory,
    train,
)

from .conftest import (
    DEVICES,
    assert_trained_alike,
    needs_cuda,
    network_weights,
    tiny_config,
    train_straight_and_resumed,
)


def test_training_yields_one_event_per_step_and_writes_the_model(tmp_path, gray_domains):
    output = tmp_path / "model.safetensors"
    events = list(train(*gray_domains, tiny_config(log_every=2), output=output))
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert all(e.total_steps == 6 for e in events)
    assert [e.losses is not None for e in events] == [False, True, False, True, False, True]
    assert set(events[-1].losses) == {*LOSS_NAMES, *STRUCTURE_LOSS_NAMES}
    assert events[-1].finished and not any(e.finished for e in events[:-1])
    assert events[-1].model_path == output and output.is_file()
    assert events[-1].checkpoint.is_file()
    assert all(e.seconds_left >= 0 for e in events)
    model = load_model(output)
    assert model.info["steps"] == 6


def test_preview_shows_g_and_f_on_fixed_patches_in_domain_values(tmp_path, gray_domains):
    events = list(train(*gray_domains, tiny_config(), output=tmp_path / "m.safetensors"))
    previews = [e.preview for e in events if e.preview is not None]
    assert len(previews) == 3  # steps 2, 4, 6
    for preview in previews:
        assert set(preview) == {"real_A", "fake_B", "real_B", "fake_A"}
        assert preview["fake_B"].shape == (1, 32, 32)
        assert preview["fake_B"].dtype == np.uint8
    assert np.array_equal(previews[0]["real_A"], previews[-1]["real_A"])
    assert not np.array_equal(previews[0]["fake_B"], previews[-1]["fake_B"])


def test_learning_rate_is_constant_then_decays_linearly_toward_zero(gray_domains, tmp_path):
    config = tiny_config(n_steps=4, n_steps_decay=4, learning_rate=1e-3)
    trainer = Trainer(*gray_domains, config, output=tmp_path / "m.safetensors")
    rates = [trainer.learning_rate(step) for step in range(8)]
    assert rates[:3] == [1e-3] * 3
    steps = np.diff(rates[3:])
    assert np.allclose(steps, steps[0]) and steps[0] < 0
    assert 0 < rates[-1] < 1e-3 / 4


def test_stop_finishes_the_step_saves_and_yields_a_final_event(tmp_path, gray_domains):
    output = tmp_path / "stopped.safetensors"
    trainer = Trainer(*gray_domains, tiny_config(n_steps=50), output=output)
    events = []
    for event in trainer.run():
        events.append(event)
        if event.step == 2:
            trainer.stop()
    assert [e.step for e in events] == [1, 2, 2]
    assert events[-1].finished and events[-1].model_path == output
    assert load_model(output).info["steps"] == 2


def test_abandoning_the_loop_keeps_a_usable_model(tmp_path, gray_domains):
    output = tmp_path / "abandoned.safetensors"
    for event in train(*gray_domains, tiny_config(n_steps=50), output=output):
        if event.step == 3:
            break
    model = load_model(output)
    assert model.info["steps"] == 3
    assert TrainingCheckpoint.load(tmp_path / "abandoned.checkpoint.pt").step == 3


def test_checkpoints_are_written_every_n_steps(tmp_path, gray_domains):
    config = tiny_config(checkpoint_every=2, n_steps=5, n_steps_decay=0)
    events = list(train(*gray_domains, config, output=tmp_path / "m.safetensors"))
    assert [e.step for e in events if e.checkpoint] == [2, 4, 5]


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("device", "precision", "channels_last"),
    [
        ("cpu", "auto", False),
        ("cpu", "auto", True),  # the optimiser's state resumes in the weights' layout
        *(pytest.param("cuda", p, False, marks=needs_cuda) for p in PRECISIONS),
        pytest.param("cuda", "auto", True, marks=needs_cuda),
    ],
)
def test_resume_continues_exactly(tmp_path, gray_domains, device, precision, channels_last):
    config = tiny_config(
        n_steps=3,
        n_steps_decay=3,
        deterministic=True,
        pool_size=2,
        device=device,
        precision=precision,  # on CUDA, fp16 resumes its loss scale too
        channels_last=channels_last,
    )
    config.model.dropout = True  # dropout draws from torch's RNG: its state must resume too
    straight, resumed = train_straight_and_resumed(tmp_path, gray_domains, config)

    expected, actual = network_weights(straight), network_weights(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_resume_refuses_domains_with_other_channels(tmp_path, gray_domains):
    output = tmp_path / "m.safetensors"
    list(train(*gray_domains, tiny_config(), output=output))
    rgb = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="has 3 channel"):
        Trainer(rgb, gray_domains[1], tiny_config(), resume=tmp_path / "m.checkpoint.pt")


def test_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(
    tmp_path, gray_domains, monkeypatch
):
    config = tiny_config(checkpoint_every=2, n_steps=10)
    trainer = Trainer(*gray_domains, config, output=tmp_path / "m.safetensors")
    original_step = trainer.cyclegan.training_step

    def step_that_diverges(*batches_and_learning_rate):
        losses = original_step(*batches_and_learning_rate)
        if trainer.step >= 2:  # the third step goes wrong
            losses["cycle_A"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(trainer.cyclegan, "training_step", step_that_diverges)
    with pytest.raises(TrainingDiverged, match="cycle_A is not finite"):
        list(trainer.run())
    assert TrainingCheckpoint.load(tmp_path / "m.checkpoint.pt").step == 2


def test_identity_loss_is_off_when_channel_counts_differ(tmp_path, gray_domains):
    rgb = np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    events = list(train(gray_domains[0], rgb, tiny_config(), output=tmp_path / "m.safetensors"))
    assert events[-1].losses["identity_A"] == 0.0
    assert events[-1].preview["fake_B"].shape == (3, 32, 32)


def _train_weights(
    tmp_path, domains, name: str, steps: int = 2, **settings
) -> dict[str, torch.Tensor]:
    config = tiny_config(n_steps=steps, n_steps_decay=0, batch_size=2, **settings)
    trainer = Trainer(*domains, config, output=tmp_path / f"{name}.safetensors")
    list(trainer.run())
    return network_weights(trainer)


@pytest.mark.numerics
@pytest.mark.parametrize("device", DEVICES)
def test_batched_forward_gives_the_same_weights_as_one_call_per_image_set(tmp_path, device):
    rng = np.random.default_rng(3)
    domains = (rng.integers(0, 256, (40, 40), np.uint8), rng.integers(0, 256, (40, 40), np.uint8))
    # One step: the two paths compute the same gradients up to rounding (the kernels sum
    # a batch of two in another order than two batches of one), and from the second step
    # on Adam's near sign-like updates (beta1 0.5) amplify that rounding into differences
    # of about the learning rate, by amounts that depend on the CPU's kernels.
    trained = {
        batched: _train_weights(
            tmp_path,
            domains,
            str(batched),
            steps=1,
            batched_forward=batched,
            device=device,
            precision="fp32",
            deterministic=True,
        )
        for batched in (False, True)
    }
    assert_trained_alike(trained[False], trained[True], TrainConfig().learning_rate, steps=1)


@pytest.mark.numerics
@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_gives_the_same_weights_and_a_usable_model(tmp_path, device):
    rng = np.random.default_rng(4)
    domains = (rng.integers(0, 256, (40, 40), np.uint8), rng.integers(0, 256, (40, 40), np.uint8))
    # One step: oneDNN (and cuDNN) pick other kernels for NHWC, whose rounding depends
    # on the CPU's instruction set (equal results with AVX-512, 24 % of the conv weights
    # off by more than 1e-5 after three steps with AVX2), and from the second step on
    # Adam amplifies it (see test_batched_forward_gives_the_same_weights_...).
    settings = {"steps": 1, "device": device, "precision": "fp32", "deterministic": True}
    plain = _train_weights(tmp_path, domains, "plain", **settings)
    nhwc = _train_weights(tmp_path, domains, "nhwc", channels_last=True, **settings)
    assert_trained_alike(plain, nhwc, TrainConfig().learning_rate, steps=1)
    translated = translate(domains[0], load_model(tmp_path / "nhwc.safetensors"), device="cpu")
    assert translated.shape == domains[0].shape


def test_out_of_memory_becomes_advice_and_keeps_the_steps_done(tmp_path, gray_domains):
    trainer = Trainer(*gray_domains, tiny_config(n_steps=10), output=tmp_path / "m.safetensors")
    original_step = trainer.cyclegan.training_step

    def step_that_runs_out_of_memory(*batches_and_learning_rate):
        if trainer.step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original_step(*batches_and_learning_rate)

    trainer.cyclegan.training_step = step_that_runs_out_of_memory
    with pytest.raises(TrainingOutOfMemory, match="smaller crop_size or batch_size"):
        list(trainer.run())
    assert load_model(tmp_path / "m.safetensors").info["steps"] == 2


def test_a_crop_the_generator_cannot_take_is_refused_up_front(gray_domains):
    config = tiny_config(crop_size=64)
    config.model.generator = "unet_128"
    with pytest.raises(ValueError, match="use a multiple of 128"):
        Trainer(*gray_domains, config)


def test_resume_without_a_config_continues_with_the_checkpoints_settings(tmp_path, gray_domains):
    output = tmp_path / "m.safetensors"
    for event in train(*gray_domains, tiny_config(n_steps=5, crop_size=24), output=output):
        if event.step == 2:
            break
    resumed = Trainer(*gray_domains, resume=tmp_path / "m.checkpoint.pt", output=output)
    assert resumed.config.train.crop_size == 24
    assert [event.step for event in resumed.run()] == [3, 4, 5, 6, 7]


def test_time_the_consumer_holds_the_loop_does_not_count_as_training(
    tmp_path, gray_domains, monkeypatch
):
    import napari_cyclestyle.trainer as trainer_module

    now = [0.0]
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: now[0])
    trainer = Trainer(
        *gray_domains, tiny_config(n_steps=3, n_steps_decay=0), output=tmp_path / "m"
    )
    original_step = trainer.cyclegan.training_step

    def step_taking_two_seconds(*batches_and_learning_rate):
        now[0] += 2.0
        return original_step(*batches_and_learning_rate)

    trainer.cyclegan.training_step = step_taking_two_seconds
    events = []
    for event in trainer.run():
        events.append(event)
        now[0] += 100.0  # a paused GUI worker holds the loop
    assert [e.elapsed for e in events] == [2.0, 4.0, 6.0]
    assert events[0].steps_per_second == 0.5 and events[0].seconds_left == 4.0


def test_a_checkpoint_with_damaged_training_state_is_a_clear_error(tmp_path, gray_domains):
    from napari_cyclestyle.model_file import ModelFileError

    list(train(*gray_domains, tiny_config(), output=tmp_path / "m.safetensors"))
    state = TrainingCheckpoint.load(tmp_path / "m.checkpoint.pt").to_state()
    state["data_streams"] = "{not json"
    torch.save(state, tmp_path / "damaged.checkpoint.pt")
    with pytest.raises(ModelFileError, match="damaged.checkpoint.pt: a damaged training"):
        Trainer(*gray_domains, resume=tmp_path / "damaged.checkpoint.pt")


@needs_cuda
@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_trains_on_cuda_a_model_the_cpu_can_use(tmp_path, gray_domains, precision):
    output = tmp_path / "m.safetensors"
    trainer = Trainer(
        *gray_domains, tiny_config(device="cuda", precision=precision), output=output
    )
    events = list(trainer.run())
    mixed = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert trainer.cyclegan.precision == (mixed if precision == "auto" else precision)
    scaled = trainer.cyclegan.optimisers.scaler is not None
    assert scaled == (trainer.cyclegan.precision == "fp16")
    losses = [value for event in events if event.losses for value in event.losses.values()]
    assert losses and np.isfinite(losses).all()
    plane = gray_domains[0][0]
    translated = translate(plane, load_model(output), device="cpu")
    assert translated.shape == plane.shape and translated.dtype == np.uint8


@needs_cuda
@pytest.mark.parametrize("autotune", [False, True])
def test_cudnn_autotuning_on_cuda_follows_its_switch(
    tmp_path, gray_domains, monkeypatch, autotune
):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not autotune)
    config = tiny_config(device="cuda", cudnn_benchmark=autotune)
    Trainer(*gray_domains, config, output=tmp_path / "m.safetensors")
    assert torch.backends.cudnn.benchmark is autotune


def test_networks_that_cannot_be_compiled_train_uncompiled(tmp_path, gray_domains, monkeypatch):
    def broken_compile(network, **options):
        def compiled(batch):
            raise RuntimeError("no C compiler found")

        return compiled

    expected = _train_weights(tmp_path, gray_domains, "plain")
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning) as warned:
        actual = _train_weights(tmp_path, gray_domains, "fallback", compile=True)
    messages = [str(warning.message) for warning in warned]
    for name in ("G", "F", "D_A", "D_B"):  # each network says so once
        said = [m for m in messages if f"could not compile {name} " in m]
        assert len(said) == 1 and "no C compiler found" in said[0], messages
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.numerics
@pytest.mark.slow
def test_a_compiled_step_gives_the_same_weights(tmp_path, gray_domains):
    # One step: the compiler computes the norms in another order, and from the second
    # step on Adam's near sign-like updates (beta1 0.5) amplify such rounding differences
    # (measured: none of the conv weights off by 1e-5 after one step, 32 % after two).
    expected = _train_weights(tmp_path, gray_domains, "plain", steps=1)
    actual = _train_weights(tmp_path, gray_domains, "compiled", steps=1, compile=True)
    assert_trained_alike(expected, actual, TrainConfig().learning_rate, steps=1)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_the_model_and_checkpoint_get_the_permissions_of_the_users_umask(tmp_path, gray_domains):
    previous = os.umask(0o002)  # a lab's shared folder: the group may read and write
    try:
        list(
            train(
                *gray_domains,
                tiny_config(n_steps=1, n_steps_decay=0),
                output=tmp_path / "m.safetensors",
            )
        )
    finally:
        os.umask(previous)
    written = sorted(tmp_path.iterdir())
    assert [p.name for p in written] == ["m.checkpoint.pt", "m.safetensors"]
    assert [p.stat().st_mode & 0o777 for p in written] == [0o664, 0o664]
