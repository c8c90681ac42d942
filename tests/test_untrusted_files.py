"""Model and checkpoint files from strangers: nothing runs, every problem is one clear error.

Each broken file must give a single :class:`ModelFileError` whose message names the file
and the problem; a fuzz test checks that mutated valid files give nothing else.
"""

from __future__ import annotations

import io
import json
import os
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cyclestyle.checkpoint import TrainingCheckpoint
from napari_cyclestyle.config import Config, ConfigError
from napari_cyclestyle.model import CycleStyleModel
from napari_cyclestyle.model_file import (
    FORMAT_NAME,
    ModelFileError,
    load_model,
    save_model,
)
from napari_cyclestyle.networks import build_discriminator, build_generator
from napari_cyclestyle.trainer import Trainer

from .conftest import tiny_config
from .test_model_file import _model


class _RunsACommand:
    """Unpickling this runs ``touch <marker>``: what a malicious .pth would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _rewrite_description(path, change) -> None:
    """Rewrite the JSON description of our model file at ``path`` with ``change(dict)``."""
    from safetensors.torch import load, save

    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + size])["__metadata__"]
    description = json.loads(metadata[FORMAT_NAME])
    change(description)
    metadata[FORMAT_NAME] = json.dumps(description)
    path.write_bytes(save(load(data), metadata=metadata))


@pytest.fixture
def model_file(tmp_path):
    return save_model(_model(), tmp_path / "model.safetensors")


@pytest.fixture
def checkpoint_file(tmp_path, gray_domains):
    trainer = Trainer(*gray_domains, tiny_config(), output=tmp_path / "m.safetensors")
    return trainer.save_checkpoint()


# ---------------------------------------------------------------- code in pickles
@pytest.mark.parametrize("loader", [load_model, TrainingCheckpoint.load])
def test_a_torch_file_whose_pickle_would_run_a_command_is_refused(tmp_path, loader):
    marker = tmp_path / "command-ran"
    path = tmp_path / "latest_net_G.pth"
    torch.save({"model.1.weight": _RunsACommand(marker)}, path)  # a zip like any .pth
    with pytest.raises(ModelFileError, match="could run code") as error:
        loader(path)
    assert str(path) in str(error.value)
    assert not marker.exists()


# ---------------------------------------------------------------- broken bytes
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path):
    path.write_bytes(b"")


def _random_bytes(path):
    path.write_bytes(os.urandom(4096))


@pytest.mark.parametrize("damage", [_empty, _truncate, _random_bytes])
@pytest.mark.parametrize("kind", ["safetensors", "pth", "checkpoint"])
def test_empty_truncated_and_random_files_give_one_clear_error(
    tmp_path, model_file, checkpoint_file, damage, kind
):
    if kind == "safetensors":
        path, loader = model_file, load_model
    elif kind == "pth":
        path, loader = tmp_path / "latest_net_G.pth", load_model
        torch.save(build_generator("resnet_6blocks", 1, 1, ngf=4).state_dict(), path)
    else:
        path, loader = checkpoint_file, TrainingCheckpoint.load
    damage(path)
    with pytest.raises(ModelFileError) as error:
        loader(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert any(
        word in message for word in ("empty", "truncated", "damaged", "not a", "not readable")
    ), message


# ---------------------------------------------------------------- valid, but not this
def test_a_discriminator_checkpoint_is_recognised_as_not_a_generator(tmp_path):
    path = tmp_path / "latest_net_D_A.pth"
    torch.save(build_discriminator("basic", 3, 8).state_dict(), path)
    with pytest.raises(ModelFileError, match="discriminator") as error:
        load_model(path)
    assert str(path) in str(error.value)


def test_weights_of_another_architecture_than_requested_are_refused(tmp_path):
    path = tmp_path / "latest_net_G.pth"
    torch.save(build_generator("resnet_6blocks", 3, 3, ngf=4).state_dict(), path)
    with pytest.raises(ModelFileError, match="resnet_6blocks generator, not unet_256"):
        load_model(path, generator="unet_256")


def test_a_foreign_safetensors_file_is_not_taken_for_a_model(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"embedding.weight": torch.zeros(4, 4)}, path, metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not a napari-cyclestyle model"):
        load_model(path)


def test_a_model_file_and_a_checkpoint_are_not_confused(model_file, checkpoint_file):
    with pytest.raises(ModelFileError, match="a training checkpoint, not a model"):
        load_model(checkpoint_file)
    with pytest.raises(ModelFileError, match="a model file, not a training checkpoint"):
        TrainingCheckpoint.load(model_file)


def test_weights_of_another_architecture_than_described_are_refused(model_file):
    _rewrite_description(model_file, lambda d: d["model"].update(generator="unet_128"))
    with pytest.raises(ModelFileError, match="do not fit the described network") as error:
        load_model(model_file)
    assert f"{model_file} (G)" in str(error.value)


# ---------------------------------------------------------------- wrong shapes and values
def test_a_state_dict_with_wrong_shapes_names_the_tensor(tmp_path):
    state = build_generator("resnet_6blocks", 3, 3, ngf=4).state_dict()
    state["model.10.conv_block.1.weight"] = torch.zeros(16, 16, 3, 5)
    path = tmp_path / "latest_net_G.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match="model.10.conv_block.1.weight") as error:
        load_model(path)
    assert str(path) in str(error.value)


def test_a_model_file_with_wrong_shapes_names_the_tensor(tmp_path):
    from safetensors.torch import save_file

    model = _model()
    tensors = {f"G.{k}": v for k, v in model.generator_ab.state_dict().items()}
    tensors |= {f"F.{k}": v for k, v in model.generator_ba.state_dict().items()}
    tensors["F.model.1.weight"] = torch.zeros(8, 3, 7, 6)
    path = tmp_path / "model.safetensors"
    header = {"format_version": 1, "model": model.config.__dict__}
    save_file(tensors, path, metadata={FORMAT_NAME: json.dumps(header)})
    with pytest.raises(ModelFileError, match=r"model.1.weight has shape \(8, 3, 7, 6\)"):
        load_model(path)


def test_weights_holding_nan_are_refused(tmp_path):
    state = build_generator("resnet_6blocks", 1, 1, ngf=4).state_dict()
    state["model.1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "latest_net_G.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match="model.1.weight hold NaN or Inf"):
        load_model(path)


def test_a_tensor_claiming_more_values_than_it_stores_is_refused(tmp_path):
    state = build_generator("resnet_6blocks", 1, 1, ngf=4).state_dict()
    state["model.1.weight"] = torch.zeros(1).expand(100_000, 1, 7, 7)  # 4 bytes stored
    path = tmp_path / "latest_net_G.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match="claims .* but stores fewer"):
        load_model(path)


def test_a_description_of_an_enormous_network_is_refused_without_building_it(model_file):
    _rewrite_description(model_file, lambda d: d["model"].update(ngf=10**6))
    with pytest.raises(ModelFileError, match="do not fit the described network"):
        load_model(model_file)  # a real ngf=1e6 network would need terabytes
    _rewrite_description(model_file, lambda d: d["model"].update(ngf=10**9))
    with pytest.raises(ModelFileError, match="a network that cannot be built"):
        load_model(model_file)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ({"G.x": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}, "overflow"),
        ({"G.x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 2**60]}}, "invalid"),
        ({"G.x": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, "invalid"),
        ({"G.x": {"dtype": "XYZ", "shape": [4], "data_offsets": [0, 16]}}, "unknown variant"),
    ],
)
def test_a_safetensors_header_declaring_absurd_sizes_is_refused(tmp_path, header, problem):
    path = tmp_path / "model.safetensors"
    path.write_bytes(_safetensors_bytes(header, bytes(16)))
    with pytest.raises(ModelFileError, match=problem) as error:
        load_model(path)
    assert str(error.value).startswith(f"{path}: not a readable safetensors file")


def test_a_safetensors_header_size_beyond_the_file_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(path)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["model"].update(ngf="8"), "ngf must be an integer"),
        (lambda d: d["model"].update(generator=7), "generator=7 is not valid"),
        (lambda d: d["model"].update(colour="blue"), "colour"),
        (lambda d: d.update(model=[1, 2]), "'model' entry must be a JSON object"),
        (lambda d: d.pop("model"), "'model' entry must be a JSON object"),
        (lambda d: d.update(format_version="1"), "format_version must be an integer"),
        (lambda d: d["norm_a"].update(dtype="object"), "norm_a has dtype 'object'"),
        (lambda d: d["norm_a"].update(dtype="no-such-type"), "no-such-type"),
        (lambda d: d["norm_b"].update(high=[float("inf")] * 3), "non-finite"),
        (lambda d: d["norm_b"].update(low=[0.0] * 2, high=[1.0] * 2), "norm_b describes 2"),
        (lambda d: d["norm_a"].update(low=["a"]), "could not convert"),
        (lambda d: d.update(info="text"), "'info' entry must be a JSON object"),
    ],
)
def test_a_description_with_wrong_types_or_values_says_what_is_wrong(model_file, change, problem):
    _rewrite_description(model_file, change)
    with pytest.raises(ModelFileError, match=problem) as error:
        load_model(model_file)
    assert str(error.value).startswith(f"{model_file}: the model description is invalid")


def test_a_model_file_from_a_newer_version_asks_for_an_upgrade(model_file):
    _rewrite_description(model_file, lambda d: d.update(format_version=99))
    with pytest.raises(ModelFileError, match="newer napari-cyclestyle .* upgrade the package"):
        load_model(model_file)


def test_a_configuration_file_with_wrong_types_names_the_file_and_field(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"train": {"crop_size": "256"}}))
    with pytest.raises(ConfigError, match="crop_size must be an integer") as error:
        Config.from_file(path)
    assert str(path) in str(error.value)


# ---------------------------------------------------------------- damaged checkpoints
def _rewrite_checkpoint(path, change) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s.pop("networks"), "missing entry 'networks'"),
        (lambda s: s.update(step="3"), "step is a str"),
        (lambda s: s.update(step=-1), "step is -1"),
        (lambda s: s.update(config='{"model": {"ngf": -4}}'), "ngf must be > 0"),
        (lambda s: s.update(norm_a="{}"), "missing entry 'mode'"),
        (lambda s: s.update(torch_rng=torch.zeros(3)), "damaged training checkpoint"),
        (lambda s: s["networks"].pop("D_B"), "no D_B weights"),
        (lambda s: s["networks"]["D_A"].update(x=torch.zeros(1)), r"\(D_A\).*unexpected x"),
        (
            lambda s: s["networks"]["G"].update({"model.1.weight": torch.zeros(2, 2)}),
            r"\(G\).*model.1.weight has shape \(2, 2\)",
        ),
    ],
)
def test_a_damaged_checkpoint_says_what_is_wrong(checkpoint_file, change, problem):
    _rewrite_checkpoint(checkpoint_file, change)
    with pytest.raises(ModelFileError, match=problem) as error:
        TrainingCheckpoint.load(checkpoint_file)
    assert str(error.value).startswith(f"{checkpoint_file}")


def test_resuming_from_a_damaged_checkpoint_fails_before_training(
    tmp_path, checkpoint_file, gray_domains
):
    _rewrite_checkpoint(checkpoint_file, lambda s: s["networks"]["F"].clear())
    with pytest.raises(ModelFileError, match="missing"):
        Trainer(
            *gray_domains, tiny_config(), output=tmp_path / "m.safetensors", resume=checkpoint_file
        )


# ---------------------------------------------------------------- fuzzing
def _mutations(size: int, header: int):
    """Byte edits of a file of ``size`` bytes, biased toward its first ``header`` bytes
    (the safetensors header or the torch archive's pickle) and its end (the zip index)."""
    position = st.one_of(
        st.integers(0, min(header, size) - 1),
        st.integers(max(0, size - 512), size - 1),
        st.integers(0, size - 1),
    )
    edit = st.one_of(
        st.tuples(st.just("set"), position, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), position, st.integers(1, 64)),
        st.tuples(st.just("truncate"), position, st.just(b"")),
    )
    return st.lists(edit, min_size=1, max_size=4)


def _apply(data: bytes, edits) -> bytes:
    for kind, position, value in edits:
        position = min(position, len(data))
        if kind == "set":
            data = data[:position] + value + data[position + len(value) :]
        elif kind == "insert":
            data = data[:position] + value + data[position:]
        elif kind == "delete":
            data = data[:position] + data[position + value :]
        else:
            data = data[:position]
    return data


def _fuzz(loader, path, header: int) -> None:
    original = path.read_bytes()

    @settings(
        max_examples=120,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(_mutations(len(original), header))
    def load_mutated(edits):
        path.write_bytes(_apply(original, edits))
        try:
            result = loader(path)
        except ModelFileError as error:
            assert str(path) in str(error)
        else:
            assert isinstance(result, CycleStyleModel | TrainingCheckpoint)

    load_mutated()


def test_fuzzed_model_files_give_only_model_file_errors(model_file):
    header = 8 + int.from_bytes(model_file.read_bytes()[:8], "little")
    _fuzz(load_model, model_file, header)


def test_fuzzed_reference_checkpoints_give_only_model_file_errors(tmp_path):
    path = tmp_path / "latest_net_G.pth"
    buffer = io.BytesIO()
    torch.save(build_generator("resnet_6blocks", 1, 1, ngf=2).state_dict(), buffer)
    path.write_bytes(buffer.getvalue())
    _fuzz(lambda p: load_model(p, generator="resnet_6blocks"), path, 2048)


def test_fuzzed_training_checkpoints_give_only_model_file_errors(checkpoint_file):
    _fuzz(TrainingCheckpoint.load, checkpoint_file, 4096)
