"""Held-out validation: the split, the values in events and provenance, the best model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cyclestyle.checkpoint import TrainingCheckpoint
from napari_cyclestyle.data import Domain
from napari_cyclestyle.model_file import load_model
from napari_cyclestyle.trainer import Trainer

from .conftest import network_weights, tiny_config

MEASURES = {
    "cycle_A",
    "cycle_B",
    "realism_A",
    "realism_B",
    "diversity_A",
    "diversity_B",
    "structure_A",
    "structure_B",
}


def test_split_keeps_a_fraction_of_the_planes_out_evenly():
    images = [np.full((20, 24), value, np.uint8) for value in range(0, 250, 25)]  # 10 planes
    training, held_out = Domain(images).split(0.2)
    held_values = sorted(int(source.planes()[0, 0, 0, 0]) for source in held_out.sources)
    assert held_values == [75, 150]  # spread over the domain, the same every time
    assert len(training.sources) == 8 and training.norm is held_out.norm
    stack_training, stack_held = Domain(np.stack(images)).split(0.2)  # one stack of 10
    assert [s.layout.n_planes for s in stack_held.sources] == [2]
    assert [s.layout.n_planes for s in stack_training.sources] == [8]


def test_split_refuses_a_single_image_plane():
    with pytest.raises(ValueError, match="single image plane"):
        Domain(np.zeros((32, 32), np.uint8)).split(0.5)


def test_validation_values_appear_in_events_and_the_model_provenance(tmp_path, gray_domains):
    config = tiny_config(validation_fraction=0.4, validation_every=4)
    output = tmp_path / "m.safetensors"
    events = list(Trainer(*gray_domains, config, output=output).run())
    measured = [event.step for event in events if event.validation is not None]
    assert measured == [4, 6]  # every 4 steps and at the end
    assert set(events[-1].validation) == MEASURES
    model = load_model(output)
    assert "best validation: cycle " in model.describe()
    validation = model.info["validation"]
    assert validation["last"]["step"] == 6
    assert validation["last"]["cycle_A"] == pytest.approx(events[-1].validation["cycle_A"])
    assert validation["best"]["metric"] == "cycle" and validation["best"]["step"] in (4, 6)


def test_validation_does_not_change_the_training(tmp_path, gray_domains):
    def trained(name: str, **validation) -> dict[str, torch.Tensor]:
        config = tiny_config(validation_every=1, deterministic=True, health_watch=False)
        config.model.dropout = True  # dropout draws random numbers, but not in eval mode
        trainer = Trainer(*gray_domains, config, output=tmp_path / name, **validation)
        list(trainer.run())
        return network_weights(trainer)

    plain = trained("plain.safetensors")
    held = {"validation_a": gray_domains[0][:1], "validation_b": gray_domains[1][:1]}
    validated = trained("validated.safetensors", **held)
    for key, value in plain.items():
        assert torch.equal(value, validated[key]), key


def test_the_best_model_is_kept_when_the_metric_peaked_earlier(tmp_path, gray_domains):
    config = tiny_config(validation_fraction=0.4, validation_every=2, best_metric="cycle")
    output = tmp_path / "m.safetensors"
    trainer = Trainer(*gray_domains, config, output=output)
    train_step = trainer.cyclegan.training_step

    def spoiled_after_step_2(real_a, real_b, learning_rate):
        losses = train_step(real_a, real_b, learning_rate)
        if trainer.cyclegan.updates > 2:  # F forgets how to go back to A
            with torch.no_grad():
                for parameter in trainer.networks.generator_ba.parameters():
                    parameter.add_(torch.randn_like(parameter))
        return losses

    trainer.cyclegan.training_step = spoiled_after_step_2
    events = list(trainer.run())
    assert [e.step for e in events if e.best_model_path is not None] == [2]
    best, last = load_model(trainer.best_path), load_model(output)
    assert trainer.best_path.name == "m.best.safetensors"
    assert best.info["steps"] == 2 and last.info["validation"]["best"]["step"] == 2
    assert not torch.equal(
        next(iter(best.generator_ba.state_dict().values())),
        next(iter(last.generator_ba.state_dict().values())),
    )


def test_paired_validation_measures_psnr_and_ssim_and_picks_ssim(tmp_path, gray_domains):
    image_a, image_b = gray_domains[0][0], gray_domains[1][0, :, :56]
    trainer = Trainer(
        *gray_domains,
        tiny_config(validation_every=0),
        output=tmp_path / "m.safetensors",
        validation_a=image_a,
        validation_b=image_b,
        validation_truth_b=(255 - image_a),
    )
    events = list(trainer.run())
    assert [e.step for e in events if e.validation] == [6]
    assert {"psnr_B", "ssim_B"} <= set(events[-1].validation)
    assert -1 <= events[-1].validation["ssim_B"] <= 1
    assert trainer.best_metric == "ssim"


def test_validation_settings_are_checked_before_training(tmp_path, gray_domains):
    with pytest.raises(ValueError, match="paired validation"):
        Trainer(*gray_domains, tiny_config(validation_fraction=0.4, best_metric="psnr"))
    with pytest.raises(ValueError, match="both domains"):
        Trainer(*gray_domains, tiny_config(), validation_a=gray_domains[0][0])
    with pytest.raises(ValueError, match="same size"):
        Trainer(
            *gray_domains,
            tiny_config(),
            validation_a=gray_domains[0][0],
            validation_b=gray_domains[1][0],
            validation_truth_b=gray_domains[1][0],
        )


def test_a_resumed_run_keeps_the_best_so_far(tmp_path, gray_domains):
    config = tiny_config(validation_fraction=0.4, validation_every=2)
    output = tmp_path / "m.safetensors"
    first = Trainer(*gray_domains, config, output=output)
    for event in first.run():
        if event.step == 4:
            first.stop()
    saved = TrainingCheckpoint.load(first.checkpoint_path).validation
    assert saved == first.validation_record and saved["last"]["step"] == 4
    resumed = Trainer(*gray_domains, config, output=output, resume=first.checkpoint_path)
    assert resumed.validation_record == saved


def test_checkpoints_without_validation_still_load(tmp_path, gray_domains):
    trainer = Trainer(*gray_domains, tiny_config(), output=tmp_path / "m.safetensors")
    list(trainer.run())
    state = torch.load(trainer.checkpoint_path, weights_only=True)
    del state["validation"]  # as written before validation existed
    checkpoint = TrainingCheckpoint.from_state(state, trainer.checkpoint_path)
    assert checkpoint.validation == {}
