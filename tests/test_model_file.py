"""Model files: round trip, reference CycleGAN checkpoints, safety, atomic writes."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from napari_cyclestyle.config import ModelConfig
from napari_cyclestyle.intensity import IntensityNorm
from napari_cyclestyle.model import CycleStyleModel, build_generators
from napari_cyclestyle.model_file import ModelFileError, load_model, save_model
from napari_cyclestyle.networks import build_generator, init_weights


def _model(generator="resnet_6blocks", channels_a=1, channels_b=3) -> CycleStyleModel:
    config = ModelConfig(generator=generator, channels_a=channels_a, channels_b=channels_b, ngf=8)
    torch.manual_seed(0)
    generator_ab, generator_ba = build_generators(config)
    for network in (generator_ab, generator_ba):
        init_weights(network)
        network.eval()
    norm_a = IntensityNorm("percentile", (100.0,), (4000.0,), "uint16")
    norm_b = IntensityNorm("fixed", (0.0,) * 3, (255.0,) * 3, "uint8")
    info = {"steps": 12, "losses": {"cycle_A": 0.5}}
    return CycleStyleModel(config, generator_ab, generator_ba, norm_a, norm_b, info)


def _same_output(network_a, network_b, channels: int, size: int = 64) -> bool:
    x = torch.rand(1, channels, size, size) * 2 - 1
    with torch.no_grad():
        return torch.equal(network_a(x), network_b(x))


@pytest.mark.parametrize("generator", ["resnet_6blocks", "unet_128", "encoder_decoder"])
def test_model_file_round_trip_keeps_weights_config_and_normalisation(tmp_path, generator):
    model = _model(generator)
    path = save_model(model, tmp_path / "model.safetensors")
    loaded = load_model(path)
    assert loaded.config == model.config
    assert (loaded.norm_a, loaded.norm_b) == (model.norm_a, model.norm_b)
    assert loaded.info == model.info
    size = 128
    assert _same_output(model.generator_ab, loaded.generator("G"), 1, size)
    assert _same_output(model.generator_ba, loaded.generator("BtoA"), 3, size)


def _reference_pair(tmp_path, legacy_keys: bool = False):
    """Write latest_net_G_A.pth / latest_net_G_B.pth as the reference code does."""
    torch.manual_seed(1)
    networks = {}
    for name, (c_in, c_out) in {"A": (3, 3), "B": (3, 3)}.items():
        network = build_generator("resnet_9blocks", c_in, c_out, ngf=8)
        init_weights(network)
        state = network.state_dict()
        if legacy_keys:  # old-format files carry InstanceNorm running stats
            for key in [k for k in state if k.endswith("conv_block.1.weight")]:
                prefix = key.replace("1.weight", "2")
                state[f"{prefix}.running_mean"] = torch.zeros(state[key].shape[0])
                state[f"{prefix}.running_var"] = torch.ones(state[key].shape[0])
        torch.save(state, tmp_path / f"latest_net_G_{name}.pth")
        networks[name] = network.eval()
    return networks


def test_reference_checkpoint_pair_loads_and_computes_the_same(tmp_path):
    networks = _reference_pair(tmp_path)
    model = load_model(tmp_path / "latest_net_G_A.pth")
    assert model.config.generator == "resnet_9blocks" and model.config.ngf == 8
    assert model.directions == ["AtoB", "BtoA"]
    assert _same_output(networks["A"], model.generator("G"), 3)
    assert _same_output(networks["B"], model.generator("F"), 3)
    assert model.norm_a is None  # normalised from each input's own range


def test_reference_folder_and_old_format_keys_are_accepted(tmp_path):
    networks = _reference_pair(tmp_path, legacy_keys=True)
    model = load_model(tmp_path)
    assert _same_output(networks["A"], model.generator("AtoB"), 3)


def test_single_direction_pretrained_model_translates_one_way(tmp_path):
    folder = tmp_path / "horse2zebra_pretrained"
    folder.mkdir()
    network = build_generator("resnet_6blocks", 3, 3, ngf=8)
    torch.save(network.state_dict(), folder / "latest_net_G.pth")
    model = load_model(folder / "latest_net_G.pth")
    assert model.directions == ["AtoB"]
    with pytest.raises(ValueError, match="no BtoA generator"):
        model.generator("F")


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "latest_net_G.pth"
    with path.open("wb") as file:
        pickle.dump({"model.1.weight": Exploit()}, file)
    with pytest.raises(ModelFileError, match="could run code"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"not a model at all", "not a loadable weights file")],
)
def test_broken_files_give_a_clear_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message) as error:
        load_model(path)
    assert str(path) in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "nope.safetensors")


def test_a_failed_write_keeps_the_previous_model(tmp_path, monkeypatch):
    path = save_model(_model(), tmp_path / "model.safetensors")
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_model(_model("encoder_decoder"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert load_model(path).config.generator == "resnet_6blocks"


def test_translating_with_a_loaded_reference_model_keeps_uint8(tmp_path):
    from napari_cyclestyle.inference import translate

    _reference_pair(tmp_path)
    image = np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    out = translate(image, tmp_path / "latest_net_G_A.pth", "AtoB", device="cpu")
    assert out.shape == image.shape and out.dtype == np.uint8


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_new_model_file_gets_the_permissions_of_the_users_umask(tmp_path, umask, expected):
    previous = os.umask(umask)
    try:
        path = save_model(_model(), tmp_path / "model.safetensors")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == expected


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_replaced_model_file_keeps_its_permissions(tmp_path):
    path = save_model(_model(), tmp_path / "model.safetensors")
    path.chmod(0o640)
    save_model(_model("encoder_decoder"), path)
    assert path.stat().st_mode & 0o777 == 0o640
    assert load_model(path).config.generator == "encoder_decoder"
