"""Configuration: paper defaults, JSON/YAML round trip, clear errors."""

import json
import re

import pytest

from napari_cyclestyle.config import Config, ConfigError, ModelConfig, TrainConfig


def test_defaults_follow_the_cyclegan_paper_but_for_the_benchmarks_choices():
    config = Config()
    assert config.model.generator == "resnet_9blocks"
    assert config.model.norm == "instance"
    assert config.train.gan_mode == "lsgan"
    assert (config.train.beta1, config.train.beta2) == (0.5, 0.999)
    assert config.train.lambda_cycle_a == config.train.lambda_cycle_b == 10.0
    assert config.train.lambda_identity == 0.5
    assert config.train.pool_size == 50
    # chosen by benchmarks/quality.py (the paper's: 2e-4; presets.PAPER keeps it)
    assert config.train.learning_rate == 5e-4


def test_config_round_trips_through_json():
    config = Config(
        model=ModelConfig(generator="unet_128", channels_a=1, channels_b=3, ngf=16),
        train=TrainConfig(n_steps=7, gan_mode="vanilla", crop_size=64, seed=3),
    )
    again = Config.from_json(config.to_json())
    assert again == config
    assert json.loads(config.to_json())["model"]["generator"] == "unet_128"


def test_config_reads_yaml_files(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  generator: resnet_6blocks\ntrain:\n  n_steps: 5\n")
    config = Config.from_file(path)
    assert config.model.generator == "resnet_6blocks"
    assert config.train.n_steps == 5


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("model", {"generator": "resnet_12blocks"}, "generator='resnet_12blocks' is not valid"),
        ("model", {"ngf": 0}, "ngf must be > 0"),
        ("model", {"ngf": 8.5}, "ngf must be an integer"),
        ("model", {"channels": 3}, "Unknown model setting"),
        ("train", {"learning_rate": -1}, "learning_rate must be > 0"),
        ("train", {"beta1": 1.0}, "beta1 must be in [0, 1)"),
        ("train", {"crop_size": 8}, "crop_size must be at least 16"),
        ("train", {"gan_mode": "wgan"}, "gan_mode='wgan' is not valid"),
        ("train", {"n_steps": 0, "n_steps_decay": 0}, "must be at least 1"),
        ("train", {"batch_size": "4"}, "batch_size must be an integer"),
    ],
)
def test_impossible_values_are_refused_with_the_field_named(section, values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config.from_dict({section: values})


def test_invalid_json_is_a_config_error():
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.from_json("{model: ")


def test_total_steps_is_constant_plus_decay():
    assert TrainConfig(n_steps=30, n_steps_decay=20).total_steps == 50


def test_every_setting_says_what_it_does_and_offers_its_choices_and_bounds():
    from napari_cyclestyle import choices
    from napari_cyclestyle.config import settings

    for kind in (ModelConfig, TrainConfig):
        for name, setting in settings(kind).items():
            assert setting.help, name
            assert setting.default == getattr(kind(), name)
            if setting.bounds is not None:
                low, high = setting.bounds
                assert low <= setting.default <= high, name
    assert settings(ModelConfig)["generator"].choices == choices.GENERATORS
    assert settings(TrainConfig)["device"].choices == choices.DEVICES
    with pytest.raises(ConfigError, match="choose one of lsgan, vanilla"):
        TrainConfig(gan_mode="wgan")
