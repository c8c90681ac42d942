"""Fixtures for the GUI tests: a real napari viewer (under Xvfb), small sample data, a
tiny trained model, and a record of error notifications."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402

PLUGIN = "napari-cyclestyle"
SIZE = 64  # sample images are SIZE × SIZE: quick to train on, still real images


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/gui" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gui)


@pytest.fixture(scope="session")
def sample_arrays():
    """Domain A: gray uint8 (4, SIZE, SIZE); domain B: RGB uint8 (4, SIZE, SIZE, 3)."""
    from napari_cyclestyle._sample_data import sample_domains

    return sample_domains(SIZE)


@pytest.fixture
def viewer(make_napari_viewer, sample_arrays):
    """A viewer holding the two sample domains as layers (as the sample data menu does)."""
    viewer = make_napari_viewer()
    domain_a, domain_b = sample_arrays
    viewer.add_image(domain_a.copy(), name="domain A (brightfield)")
    viewer.add_image(domain_b.copy(), name="domain B (stained)", rgb=True)
    return viewer


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, sample_arrays):
    """A model file from a 3-step training of a tiny network: gray A ↔ RGB B."""
    from napari_cyclestyle import Config, ModelConfig, TrainConfig, Trainer

    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    config = Config(
        ModelConfig(generator="encoder_decoder", ngf=4, ndf=4),
        TrainConfig(n_steps=3, n_steps_decay=0, crop_size=32, device="cpu", preview_every=0),
    )
    for _ in Trainer(*sample_arrays, config, output=path).run():
        pass
    return path


@pytest.fixture
def errors():
    """Messages of the error notifications shown during the test."""
    seen: list[str] = []

    def record(notification):
        if notification.severity == NotificationSeverity.ERROR:
            seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture(autouse=True)
def settings_folder(tmp_path_factory):
    """Qt's settings store in a fresh folder for each test: no test sees another's
    remembered settings, nor the machine's."""
    from qtpy.QtCore import QSettings

    folder = tmp_path_factory.mktemp("settings")
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder))
    return folder


@pytest.fixture(autouse=True)
def _fresh_registry():
    from napari_cyclestyle._widgets import trained_models

    trained_models.clear()
    yield
    trained_models.clear()


def _tiny_settings(widget, output, n_steps=4, **overrides):
    """Set a training widget to a tiny, fast network; overrides by field name."""
    values = {
        "generator": "encoder_decoder",
        "ngf": 4,
        "ndf": 4,
        "crop_size": 32,
        "n_steps": n_steps,
        "n_steps_decay": 0,
        "preview_every": 2,
        "log_every": 1,
        "checkpoint_every": 0,
        "device": "cpu",
        "output": output,
    }
    values.update(overrides)
    for name, value in values.items():
        getattr(widget, name).value = value
    return widget


@pytest.fixture
def tiny_settings():
    """``tiny_settings(widget, output, n_steps=4, **fields)``: a tiny, fast training."""
    return _tiny_settings


@pytest.fixture
def wait_done(qtbot):
    """``wait_done(widget)``: wait until the widget's worker has finished."""

    def wait(widget, timeout=60_000):
        qtbot.waitUntil(lambda: not widget.is_running, timeout=timeout)

    return wait


@pytest.fixture
def train_widget(viewer, wait_done):
    """The training widget, opened from the plugin's manifest; its worker is stopped
    and awaited in teardown so no thread outlives the test."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train CycleGAN")
    yield widget
    widget.stop()
    wait_done(widget)


@pytest.fixture
def translate_widget(viewer, wait_done):
    """The translate widget, opened from the plugin's manifest."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Translate")
    yield widget
    widget.cancel()
    wait_done(widget)


@pytest.fixture
def loaded(translate_widget, tiny_model_path):
    """The translate widget with the tiny model file chosen and loaded."""
    translate_widget.model.value = "model file…"
    translate_widget.model_file.value = tiny_model_path
    assert translate_widget.loaded_model is not None
    return translate_widget
