"""Take the README screenshots in a real napari window (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/images/make_screenshots.py

Trains on the sample data with the training widget's defaults (stopped after
``TRAIN_SECONDS`` if not finished) for the first picture. The second translates domain A
in a fresh viewer with the model file given as second argument (e.g. one trained to the
end with the same defaults), or else with the model just trained.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import napari
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


def main() -> None:
    viewer = napari.Viewer(title="napari-cyclestyle")
    viewer.window.resize(1500, 980)
    viewer.open_sample("napari-cyclestyle", "brightfield_stained")
    _, train = viewer.window.add_plugin_dock_widget("napari-cyclestyle", "Train CycleGAN")
    train.output.value = Path(tempfile.mkdtemp()) / "sample-model.safetensors"
    train.start()
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
