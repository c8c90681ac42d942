"""Take the README screenshots in a real napari window (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/images/make_screenshots.py

Trains on the sample data with the training widget's defaults but for a quarter of the
images kept out to validate on every 20 steps and 150 + 150 steps (stopped after
``TRAIN_SECONDS`` if not finished) for the first picture. So that the picture shows a
health warning, F is rigged as in ``tests/test_health.py``: it returns the inverted
luminance of its input, which the health watch reports as content inversion. The second
translates domain A in a fresh viewer with the model file given as second argument
(e.g. one trained to the end with the widget's defaults), or else with the model just
trained.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import napari
from qtpy.QtCore import QSettings
from qtpy.QtWidgets import QApplication

HERE = Path(__file__).parent
TRAIN_SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
MODEL = Path(sys.argv[2]) if len(sys.argv) > 2 else None


def spin(seconds: float) -> None:
    app = QApplication.instance()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def save(viewer, name: str) -> None:
    spin(0.5)
    image = viewer.screenshot(canvas_only=False, flash=False)
    iio.imwrite(HERE / name, image)
    print("wrote", HERE / name, image.shape)


def invert_f_when_built(train) -> None:
    """Rig F of the run just started: the inverted luminance of its input."""
    while train._run.trainer is None:
        spin(0.05)
    generator_ba = train._run.trainer.cyclegan.shown_generators()[1]  # what validation sees
    generator_ba.forward = lambda batch: -batch.mean(dim=1, keepdim=True)


def main() -> None:
    # The widget remembers its settings in Qt's store: keep this run's out of the user's.
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, tempfile.mkdtemp())
    viewer = napari.Viewer(title="napari-cyclestyle")
    viewer.window.resize(1500, 980)
    viewer.open_sample("napari-cyclestyle", "brightfield_stained")
    _, train = viewer.window.add_plugin_dock_widget("napari-cyclestyle", "Train CycleGAN")
    train.output.value = Path(tempfile.mkdtemp()) / "sample-model.safetensors"
    train.n_steps.value = train.n_steps_decay.value = 150
    train.validation_fraction.value = 0.25
    train.validation_every.value = 20
    train.start()
    invert_f_when_built(train)
    started = time.monotonic()
    while train.is_running and time.monotonic() - started < TRAIN_SECONDS:
        spin(0.2)
    viewer.layers["domain B (stained)"].visible = False
    viewer.reset_view()
    save(viewer, "train-widget.png")
    train.stop()
    while train.is_running:
        spin(0.1)
    print("trained:", train.status.value)

    viewer.close()

    viewer = napari.Viewer(title="napari-cyclestyle")
    viewer.window.resize(1500, 980)
    (domain_a, domain_b) = viewer.open_sample("napari-cyclestyle", "brightfield_stained")
    _, translate = viewer.window.add_plugin_dock_widget("napari-cyclestyle", "Translate")
    if MODEL is not None:
        translate.model.value = "model file…"
        translate.model_file.value = MODEL
    translate.image.value = domain_a
    translate.direction.value = "AtoB"
    translate.run()
    while translate.is_running:
        spin(0.1)
    domain_b.visible = False
    (viewer.canvas if hasattr(viewer, "canvas") else viewer).grid.enabled = True
    viewer.dims.set_current_step(0, 0)
    viewer.reset_view()
    save(viewer, "translate-widget.png")
    viewer.close()


if __name__ == "__main__":
    main()
