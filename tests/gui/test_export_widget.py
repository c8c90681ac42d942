"""The translate widget's Export… action: a file per chosen direction, errors shown."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")


def test_export_writes_the_chosen_direction_as_onnx(loaded, wait_done, errors, tmp_path):
    loaded.direction.value = "BtoA"
    loaded.export_format.value = "onnx"
    loaded.export_file.value = tmp_path / "stain.onnx"
    loaded.export_model()
    wait_done(loaded)

    assert errors == []
    assert loaded.last_export == [tmp_path / "stain.onnx"]
    session = ort.InferenceSession(str(tmp_path / "stain.onnx"))
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["direction"] == "BtoA"
    out = session.run(None, {"input": np.zeros((1, 3, 20, 28), np.float32)})[0]
    assert out.shape == (1, 1, 20, 28)
    assert loaded.progress.value == loaded.progress.max == 2
    assert "exported" in loaded.status.value


def test_export_to_an_unwritable_path_shows_an_error(loaded, wait_done, errors, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    loaded.export_format.value = "torchscript"
    loaded.export_file.value = blocker / "model.pt"
    loaded.export_model()
    wait_done(loaded)

    assert len(errors) == 1 and errors[0].startswith("Export failed: Could not write")
    assert loaded.last_export == []
    assert loaded.run_button.enabled and loaded.export_button.enabled


def test_export_without_a_file_asks_for_one(loaded, errors):
    loaded.export_file.value = None
    loaded.export_model()
    assert errors == ["Choose the export file."]
    assert not loaded.is_running


def test_one_sided_reference_model_exports_its_only_direction(
    translate_widget, wait_done, tmp_path, errors
):
    from napari_cyclestyle.networks import build_generator

    path = tmp_path / "latest_net_G.pth"
    torch.save(build_generator("resnet_6blocks", 3, 3, ngf=4).state_dict(), path)
    translate_widget.model.value = "model file…"
    translate_widget.model_file.value = path
    # BtoA cannot be chosen for a model without F
    assert list(translate_widget.direction.choices) == ["AtoB"]
    translate_widget.export_format.value = "torchscript"
    translate_widget.export_file.value = tmp_path / "reference.pt"
    translate_widget.export_model()
    wait_done(translate_widget)
    assert errors == []
    assert translate_widget.last_export == [tmp_path / "reference.pt"]
