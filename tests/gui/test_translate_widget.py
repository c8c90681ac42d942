"""The translate widget in a real viewer: 2D and stacks, both directions, bad choices."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cyclestyle._widgets import trained_models


@pytest.mark.parametrize(
    ("layer_kind", "direction", "expected_shape", "expected_rgb"),
    [
        ("gray 2D", "AtoB", (64, 64, 3), True),
        ("rgb 2D", "BtoA", (64, 64), False),
        ("gray stack", "AtoB", (4, 64, 64, 3), True),
        ("rgb stack", "BtoA", (4, 64, 64), False),
    ],
)
def test_translate_adds_a_layer_of_the_right_shape_and_keeps_the_input(
    viewer, loaded, wait_done, sample_arrays, layer_kind, direction, expected_shape, expected_rgb
):
    domain_a, domain_b = sample_arrays
    data = {
        "gray 2D": domain_a[0],
        "rgb 2D": domain_b[0],
        "gray stack": domain_a,
        "rgb stack": domain_b,
    }[layer_kind].copy()
    rgb = layer_kind.startswith("rgb")
    ndim = data.ndim - rgb
    scale = (2.0, 0.5, 0.25)[-ndim:]
    layer = viewer.add_image(
        data, name=layer_kind, rgb=rgb, scale=scale, axis_labels=("z", "y", "x")[-ndim:]
    )
    before = data.copy()
    n_layers = len(viewer.layers)
    steps = []

    loaded.image.value = layer
    loaded.direction.value = direction
    loaded.progressed.connect(steps.append)
    loaded.run()
    wait_done(loaded)

    assert len(viewer.layers) == n_layers + 1
    result = viewer.layers[-1]
    assert result.name == loaded.last_layer.name
    assert result.data.shape == expected_shape
    assert result.rgb == expected_rgb
    assert result.data.dtype == np.uint8
    assert tuple(result.scale) == scale
    assert tuple(result.axis_labels) == ("z", "y", "x")[-ndim:]
    generator = "G" if direction == "AtoB" else "F"
    assert result.name == f"{layer_kind} [{generator}: {'A→B' if generator == 'G' else 'B→A'}]"
    recorded = result.metadata["cyclestyle"]
    assert recorded["direction"] == direction and recorded["generator"] == generator
    assert recorded["model"].endswith("tiny.safetensors")
    # progress over planes, and the input layer untouched
    planes = 4 if "stack" in layer_kind else 1
    assert [step.done for step in steps] == list(range(1, planes + 1))
    assert np.array_equal(layer.data, before)
    assert loaded.progress.value == planes


def test_translate_offers_the_model_just_trained(
    viewer, translate_widget, train_widget, tiny_settings, wait_done, tmp_path
):
    tiny_settings(train_widget, tmp_path / "fresh.safetensors", n_steps=2)
    train_widget.start()
    wait_done(train_widget)

    entry = trained_models.latest()
    assert translate_widget.model.value is entry
    assert translate_widget.loaded_model is entry.model
    assert "trained steps: 2" in translate_widget.model_info.value
    assert not translate_widget.model_file.visible

    translate_widget.image.value = viewer.layers["domain A (brightfield)"]
    translate_widget.direction.value = "AtoB"
    translate_widget.run()
    wait_done(translate_widget)
    assert viewer.layers[-1].data.shape == (4, 64, 64, 3)
    assert viewer.layers[-1].metadata["cyclestyle"]["model"].endswith("fresh.safetensors")


def test_model_info_shows_what_the_model_is(loaded):
    info = loaded.model_info.value
    assert "encoder_decoder" in info
    assert "channels: A 1, B 3" in info
    assert "trained steps: 3" in info


def test_a_labels_layer_shows_an_error_and_adds_no_layer(viewer, loaded, errors):
    labels = viewer.add_labels(np.zeros((64, 64), np.uint8), name="labels")
    n_layers = len(viewer.layers)

    loaded.run(layer=labels)

    assert any("Labels layer" in message for message in errors)
    assert len(viewer.layers) == n_layers
    assert not loaded.is_running


def test_channels_that_do_not_fit_show_an_error_and_add_no_layer(viewer, loaded, errors):
    # G expects gray (1 channel); an RGB layer does not fit
    rgb = viewer.layers["domain B (stained)"]
    n_layers = len(viewer.layers)
    loaded.image.value = rgb
    loaded.direction.value = "AtoB"

    loaded.run()

    assert any("expects 1" in message for message in errors)
    assert len(viewer.layers) == n_layers
    assert not loaded.is_running


def test_a_missing_model_file_shows_an_error_and_adds_no_layer(
    viewer, translate_widget, errors, tmp_path
):
    n_layers = len(viewer.layers)
    translate_widget.model.value = "model file…"
    translate_widget.model_file.value = tmp_path / "missing.safetensors"
    assert any("no such model file" in message for message in errors)
    assert translate_widget.loaded_model is None

    translate_widget.image.value = viewer.layers["domain A (brightfield)"]
    errors.clear()
    translate_widget.run()

    assert errors
    assert len(viewer.layers) == n_layers


def test_cancel_adds_no_layer(viewer, loaded, wait_done):
    stack = np.random.default_rng(0).integers(0, 255, (400, 64, 64), dtype=np.uint8)
    layer = viewer.add_image(stack, name="big stack")
    n_layers = len(viewer.layers)
    loaded.image.value = layer
    loaded.direction.value = "AtoB"

    loaded.run()
    loaded.cancel()
    wait_done(loaded)

    assert len(viewer.layers) == n_layers
    assert loaded.last_layer is None


def test_a_dask_layer_gets_a_lazy_result_computing_only_the_planes_shown(viewer, loaded):
    import dask.array as da
    from qtpy.QtWidgets import QApplication

    stack = np.random.default_rng(0).integers(0, 255, (6, 64, 64), dtype=np.uint8)
    layer = viewer.add_image(da.from_array(stack, chunks=(1, 64, 64)), name="lazy stack")
    forwards = []
    hook = loaded.loaded_model.generator_ab.register_forward_hook(
        lambda *_: forwards.append(viewer.dims.current_step[0])
    )
    loaded.image.value = layer
    loaded.run()
    QApplication.processEvents()  # let the canvas draw the new layer
    hook.remove()

    result = loaded.last_layer
    assert result.name == viewer.layers[-1].name == "lazy stack [G: A→B]"
    assert result.data.shape == (6, 64, 64, 3)
    assert type(result.data).__module__.startswith("dask")
    # the plane on screen, and at most one more that napari reads to check the layer
    assert 1 <= len(forwards) <= 2


def test_closing_the_viewer_during_translation_stops_it_and_adds_nothing(viewer, loaded):
    stack = np.random.default_rng(0).integers(0, 255, (400, 64, 64), dtype=np.uint8)
    layer = viewer.add_image(stack, name="big stack")
    before = stack.copy()
    loaded.image.value = layer
    loaded.run()
    state = loaded._state

    viewer.close()

    # the translation's thread has ended, or will end without translating anything
    assert state.cancelled.is_set() and (state.done.is_set() or not state.started.is_set())
    assert loaded.last_layer is None
    assert np.array_equal(stack, before)
