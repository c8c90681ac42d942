"""The training widget: pick two domains, press Start, watch losses and previews.

The widget is thin: it reads layers, builds a :class:`~napari_cyclestyle.Config`, runs
``Trainer(...).run()`` in a ``napari.qt.threading.thread_worker`` generator and turns
its :class:`~napari_cyclestyle.TrainEvent` stream into a progress bar, a loss plot and
two preview layers. Scripts can do everything the buttons do::

    _, widget = viewer.window.add_plugin_dock_widget("napari-cyclestyle", "Train CycleGAN")
    widget.layers_a.value = [viewer.layers["domain A (brightfield)"]]
    widget.layers_b.value = [viewer.layers["domain B (stained)"]]
    widget.n_steps.value = 200
    widget.start()
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import Container, PushButton
from napari.utils.notifications import show_error, show_info
from psygnal import Signal
from superqt import QCollapsible

from ..config import Config
from ._common import StopOnClose, format_seconds, show_device_choice
from ._domains import DOMAIN_FIELDS, DomainFields
from ._plots import LossPlot
from ._previews import PreviewLayers
from ._registry import trained_models
from ._remembered import RememberedFields
from ._run_panel import RunPanel
from ._startup import avoid_llvm_clash, import_in_background
from ._train_fields import TrainingFields
from ._workers import Failure, TrainingRun, training_worker

if TYPE_CHECKING:
    import napari.viewer


class TrainWidget(Container):
    """Train a CycleGAN between two unpaired domains of image layers and/or folders.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose image layers are offered and where previews appear.

    Notes
    -----
    Fields are attributes (``widget.generator.value = "unet_128"``); :meth:`start`,
    :meth:`pause` and :meth:`stop` do what the buttons do. While a run is going,
    :attr:`worker` is its napari ``GeneratorWorker``; :attr:`progressed` emits every
    :class:`~napari_cyclestyle.TrainEvent` in the GUI thread (connect before ``start``).
    """

    progressed = Signal(object)

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = viewer
        self.worker = None
        self.model_path: Path | None = None
        self.last_event = None
        self._preview: dict | None = None  # the latest preview, shown at the next update
        self._run: TrainingRun | None = None
        self._closed = False
        self.previews = PreviewLayers(viewer, self._refresh_choices, lambda: self._closed)

        # ---------------------------------------------------------------- domains
        self.domains = DomainFields(viewer, lambda: list(self.previews.layers.values()))
        for name in DOMAIN_FIELDS:  # scripts set widget.layers_a.value, ...
            setattr(self, name, getattr(self.domains, name))
        self.own_layers.changed.connect(self._on_layers_changed)

        # ---------------------------------------------------------------- settings
        self.fields = TrainingFields()
        for name, widget in vars(self.fields).items():  # scripts set widget.ngf.value, ...
            if name not in ("main", "advanced"):
                setattr(self, name, widget)
        self.advanced = self.fields.advanced
        self.remembered = RememberedFields("train", self.fields.remembered())
        self.reset_button = PushButton(text="reset to defaults")
        self.advanced.extend(
            [self.validation_layers_a, self.validation_layers_b, self.reset_button]
        )

        # ---------------------------------------------------------------- controls
        self.panel = RunPanel()
        for name in ("start_button", "pause_button", "stop_button", "progress", "status"):
            setattr(self, name, getattr(self.panel, name))  # scripts read widget.status, ...
        self.health = self.panel.health

        self.extend([*self.domains.main, *self.fields.main])
        fold = QCollapsible("advanced")
        fold.addWidget(self.advanced.native)
        self.native.layout().addWidget(fold)
        self.advanced_fold = fold
        self.extend(self.panel.widgets)
        import_in_background(self.native)  # before the loss plot (it waits for them)
        self.loss_plot = LossPlot()
        self.native.layout().addWidget(self.loss_plot)

        self.start_button.changed.connect(self.start)
        self.pause_button.changed.connect(self.pause)
        self.stop_button.changed.connect(self.stop)
        self.reset_button.changed.connect(self.remembered.reset)
        show_device_choice(self.device, self.device_info)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._on_layers_changed)
        self.domains.select_sample_layers()
        self._close_watch = StopOnClose(self.native, self.shutdown)

    # ------------------------------------------------------------------ choices
    @property
    def _preview_layers(self) -> dict:
        """The preview layers of the last run ("G"/"F" → layer)."""
        return self.previews.layers

    def _on_layers_changed(self, _event=None) -> None:
        if self._closed:
            return
        self._refresh_choices()
        self.domains.select_sample_layers()

    def _refresh_choices(self) -> None:
        """Offer the current layers in every list (the advanced fold's too, which is
        not one of this container's widgets)."""
        self.reset_choices()
        self.advanced.reset_choices()

    def config(self) -> Config:
        """The :class:`~napari_cyclestyle.Config` the fields describe.

        Raises
        ------
        ConfigError
            If a value is impossible (the message names it).
        """
        return self.fields.config()

    # ------------------------------------------------------------------ actions
    @property
    def is_running(self) -> bool:
        """True from :meth:`start` until the worker has finished."""
        return self.worker is not None

    def start(self, _=None, *, layers_a=None, layers_b=None) -> None:
        """Start training with the current fields (``layers_a``/``layers_b`` override
        the layer selections, for scripts). Problems are shown as notifications."""
        if self.is_running:
            show_info("Training is already running.")
            return
        try:
            domain_a, domain_b, validation = self.domains.images(layers_a, layers_b)
            config = self.config()
            output = self.output.value
            if output is None or not str(output).strip() or Path(output).is_dir():
                raise ValueError("Choose an output file for the model (*.safetensors).")
            resume = self.resume.value
            if resume is not None and not Path(resume).is_file():
                raise ValueError(f"The checkpoint to resume from, {resume}, does not exist.")
        except ValueError as error:  # includes ConfigError
            show_error(str(error))
            return

        avoid_llvm_clash()
        self._run = run = TrainingRun()
        self.previews.added = []
        self.model_path = None
        self.last_event = None
        self._preview = None
        self.loss_plot.clear(config.train.total_steps)
        self.panel.starting(config.train.total_steps)
        worker = training_worker(
            run,
            domain_a,
            domain_b,
            config,
            Path(output),
            resume,
            self.channel_axis_a.value,
            self.channel_axis_b.value,
            validation,
        )
        worker.yielded.connect(self._on_yielded)
        worker.finished.connect(self._on_finished)
        worker.paused.connect(self._on_paused)
        worker.resumed.connect(self._on_resumed)
        self.worker = worker
        worker.start()

    def pause(self, _=None) -> None:
        """Pause a running training, or resume a paused one."""
        if self.worker is None:
            return
        self.worker.toggle_pause()

    def stop(self, _=None) -> None:
        """Stop after the current step; the model and a checkpoint are saved."""
        if self.worker is None or self._run is None:
            return
        self._run.stop()
        self.worker.resume()
        self.panel.stopping()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop a running training and wait until it has saved (the viewer or this
        widget is closing). Safe to call more than once."""
        self._closed = True  # nothing more is drawn (a preview layer still to add)
        worker, run = self.worker, self._run
        if worker is None or run is None:
            return
        run.stop()
        worker.resume()
        deadline = time.monotonic() + timeout
        while not run.done.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        trainer = run.trainer
        if trainer is not None and trainer.output.is_file():
            self.model_path = trainer.output
            trained_models.add(trainer.output, trainer.model)
        self.worker = None

    # ------------------------------------------------------------------ events
    def _on_yielded(self, event) -> None:
        if self._closed:
            return
        if isinstance(event, Failure):
            self._fail(event)
            return
        self.last_event = event
        self.progressed.emit(event)
        if event.losses:
            self.loss_plot.add(event.step, event.losses)
        if event.validation:
            self.loss_plot.add_validation(event.step, event.validation)
        for warning in event.warnings:
            self.panel.warn(warning)
        if event.preview:
            self._preview = event.preview
        # The dock's parts are updated together, so napari composes its window once
        # (see RunPanel.min_interval for what each composition costs the training).
        if self.panel.show(event):
            self.loss_plot.redraw()
            crop_size, last = int(self.crop_size.value), event.finished
            if self._preview is not None and self.previews.show(
                self._preview, crop_size, all_at_once=last
            ):
                self._preview = None
        if event.finished:
            self._finish(event)

    def _finish(self, event) -> None:
        run = self._run
        if event.model_path is None:
            self.status.value = (
                f"nothing to train: the checkpoint is at step {event.step} of "
                f"{event.total_steps}; raise the steps to continue."
            )
            return
        self.model_path = Path(event.model_path)
        trainer = run.trainer if run is not None else None
        if trainer is not None:
            trained_models.add(self.model_path, trainer.model)
        stopped = event.step < event.total_steps
        verb = "stopped" if stopped else "finished"
        self.status.value = (
            f"{verb} at step {event.step}/{event.total_steps} in "
            f"{format_seconds(event.elapsed)}; model saved to {self.model_path.name}"
        )
        show_info(f"Training {verb}: model saved to {self.model_path}")

    def _fail(self, failure: Failure) -> None:
        show_error(f"Training failed: {failure.message}")
        self.previews.remove_added()  # leave the viewer as it was
        self.status.value = "failed: " + failure.message

    def _on_finished(self) -> None:
        self.worker = None
        if self._closed:
            return
        self.panel.set_running(False)

    def _on_paused(self) -> None:
        if not self._closed:
            self.panel.paused(getattr(self.last_event, "step", 0))

    def _on_resumed(self) -> None:
        if not self._closed:
            self.panel.resumed()
