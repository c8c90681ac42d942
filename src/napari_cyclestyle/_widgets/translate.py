"""The translate widget: apply G (A→B) or F (B→A) to an image layer, as a new layer.

The widget reads the chosen layer's data, runs ``translate_steps`` (the core's tiled,
plane-by-plane translation) in a ``thread_worker`` and adds the result as a new layer
with the input's spatial metadata. The input layer is never modified. Scripts::

    _, widget = viewer.window.add_plugin_dock_widget("napari-cyclestyle", "Translate")
    widget.model_file.value = "model.safetensors"
    widget.direction.value = "AtoB"
    widget.image.value = viewer.layers["domain A (brightfield)"]
    widget.run()

The "Export…" button writes the chosen model's direction as ONNX, TorchScript or a
bioimage.io package (``export_format``, ``export_file``; :meth:`export_model`), in a
worker too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error
from psygnal import Signal

from ..choices import DEVICES
from ..layout import infer_layout
from ._common import (
    StopOnClose,
    image_data,
    image_layers,
    show_device_choice,
)
from ._model_choice import ModelChoice
from ._registry import TrainedModel, trained_models
from ._results import add_translation
from ._startup import avoid_llvm_clash, import_in_background
from ._workers import Failure, TranslationRun, export_worker, translate_worker

if TYPE_CHECKING:
    import napari.viewer

DIRECTIONS = {"AtoB": "G: A → B", "BtoA": "F: B → A"}


EXPORT_FORMATS = {
    "onnx": "ONNX",
    "torchscript": "TorchScript",
    "bioimageio": "bioimage.io package",
}


class TranslateWidget(Container):
    """Translate an image layer with a trained CycleGAN generator.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose image layers are offered and which receives the result.

    Notes
    -----
    ``model`` lists the models trained in this session and ``model file…`` (then
    ``model_file`` is used: our ``.safetensors`` or a reference CycleGAN ``.pth``).
    :meth:`run` and :meth:`cancel` do what the buttons do; :attr:`last_layer` is the
    layer the last run added; :attr:`progressed` emits each plane's progress in the GUI
    thread (connect before ``run``).
    """

    progressed = Signal(object)

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.worker = None
        self.last_layer = None
        self.last_export: list[Path] = []
        self._closed = False

        self.models = ModelChoice(self._offer_directions)
        self.model, self.model_file, self.model_info = self.models.widgets
        self.direction = ComboBox(
            label="direction", choices=[(text, key) for key, text in DIRECTIONS.items()]
        )
        self.image = ComboBox(label="input layer", choices=self._image_choices)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.device_info = Label(label="")
        self.run_button = PushButton(text="Translate")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.buttons = Container(
            layout="horizontal", labels=False, widgets=[self.run_button, self.cancel_button]
        )
        self.buttons.margins = (0, 0, 0, 0)
        self.export_format = ComboBox(
            label="export as", choices=[(text, key) for key, text in EXPORT_FORMATS.items()]
        )
        self.export_file = FileEdit(label="export file", mode="w", nullable=True)
        self.export_button = PushButton(text="Export…")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="", value="")
        self.extend(
            [
                *self.models.widgets,
                self.direction,
                self.image,
                self.device,
                self.device_info,
                self.buttons,
                self.export_format,
                self.export_file,
                self.export_button,
                self.progress,
                self.status,
            ]
        )

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.export_button.changed.connect(self.export_model)
        import_in_background(self.native)  # before the device line (it waits for them)
        show_device_choice(self.device, self.device_info)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._on_layers_changed)
        trained_models.changed.connect(self._on_model_trained)
        self._close_watch = StopOnClose(self.native, self.shutdown)
        self.models.on_choice()

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget=None):
        return image_layers(self.viewer)

    def _on_layers_changed(self, _event=None) -> None:
        if not self._closed:
            self.image.reset_choices()

    def _on_model_trained(self, entry: TrainedModel) -> None:
        if self._closed:
            return
        self.model.reset_choices()
        self.model.value = entry  # the model just trained is the one to try
        self.models.on_choice()

    @property
    def loaded_model(self):
        """The model in use (a CycleStyleModel), or None."""
        return self.models.loaded_model

    def _offer_directions(self, model) -> None:
        """Offer the directions ``model`` has, keeping the chosen one if it has it."""
        current = self.direction.value
        self.direction.choices = [(DIRECTIONS[d], d) for d in model.directions]
        if current in model.directions:
            self.direction.value = current

    # ------------------------------------------------------------------ actions
    @property
    def is_running(self) -> bool:
        """True while a translation runs."""
        return self.worker is not None

    def run(self, _=None, *, layer=None) -> None:
        """Translate the chosen input layer (``layer`` overrides it, for scripts).
        Problems are shown as notifications and add no layer."""
        if self.is_running:
            return
        layer = self.image.value if layer is None else layer
        try:
            model = self.models.load()
            if layer is None:
                raise ValueError("Choose an input image layer.")
            data = image_data(layer)
            direction = self.direction.value
            channel_axis = -1 if layer.rgb else None
            in_channels, out_channels = model.channels(direction)
            # checked here, before a worker starts: do the layer's channels fit?
            layout = infer_layout(data.shape, channel_axis, expected_channels=in_channels)
        except ValueError as error:
            show_error(str(error))
            return
        job = {
            "layer": layer,
            "direction": direction,
            "model": model,
            "source": self.models.source,
            "layout": layout,
            "out_channels": out_channels,
        }
        avoid_llvm_clash()
        if type(data).__module__.startswith("dask."):
            self._add_lazy(data, job, channel_axis)
            return
        self.progress.value = 0
        self.status.value = f"translating {layer.name}…"
        self._state = TranslationRun()
        worker = translate_worker(
            data, model, direction, self.device.value, channel_axis, self._state
        )
        worker.yielded.connect(lambda step: self._on_yielded(step, job))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_controls(running=True)
        worker.start()

    def export_model(self, _=None) -> None:
        """Export the chosen model's direction to ``export_file`` as ``export_format``.
        Problems are shown as notifications; :attr:`last_export` lists the files."""
        if self.is_running:
            return
        try:
            model = self.models.load()
            path = self.export_file.value
            if path is None or not str(path).strip():
                raise ValueError("Choose the export file.")
        except ValueError as error:
            show_error(str(error))
            return
        self.progress.value = 0
        self.status.value = "exporting…"
        self._state = TranslationRun()
        worker = export_worker(
            model, Path(path), self.export_format.value, self.direction.value, self._state
        )
        worker.yielded.connect(self._on_export_step)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_controls(running=True)
        worker.start()

    def _on_export_step(self, step) -> None:
        if self._closed or self.worker is None or self._state.cancelled.is_set():
            return
        if isinstance(step, Failure):
            show_error(f"Export failed: {step.message}")
            self.status.value = "export failed: " + step.message
            return
        self.progress.max = step.total
        self.progress.value = step.done
        self.status.value = step.message
        if step.done == step.total:
            self.last_export = step.paths
            self.status.value = "exported " + ", ".join(str(p) for p in step.paths)

    def _add_lazy(self, data, job: dict, channel_axis) -> None:
        """A dask-backed layer gives a lazy result: napari computes the planes it shows."""
        from ..inference import translate

        try:
            lazy = translate(
                data, job["model"], job["direction"], device=self.device.value,
                channel_axis=channel_axis,
            )  # fmt: skip
        except ValueError as error:
            show_error(str(error))
            return
        self.last_layer = add_translation(self.viewer, lazy, job)
        self.status.value = f"added '{self.last_layer.name}' (lazy: planes computed when shown)"

    def cancel(self, _=None) -> None:
        """Cancel the running translation; no layer is added."""
        if self.worker is not None:
            self._state.cancelled.set()
            self.status.value = "cancelled"

    def shutdown(self, timeout: float = 60.0) -> None:
        """Cancel a running translation and wait until its thread has let go (the
        viewer or this widget is closing)."""
        trained_models.changed.disconnect(self._on_model_trained)
        if self.worker is not None:
            self._closed = True
            self._state.cancel_and_wait(timeout)

    # ------------------------------------------------------------------ events
    def _on_yielded(self, step, job: dict) -> None:
        if self._closed or self.worker is None or self._state.cancelled.is_set():
            return
        if isinstance(step, Failure):
            show_error(f"Translation failed: {step.message}")
            self.status.value = "failed: " + step.message
            return
        self.progressed.emit(step)
        self.progress.max = step.total
        self.progress.value = step.done
        self.status.value = f"plane {step.done}/{step.total}"
        if step.result is not None:
            self.last_layer = add_translation(self.viewer, step.result, job)
            self.status.value = f"added '{self.last_layer.name}'"

    def _on_finished(self) -> None:
        self.worker = None
        if not self._closed:
            self._set_controls(running=False)

    def _set_controls(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.export_button.enabled = not running
        self.cancel_button.enabled = running
