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

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info
from psygnal import Signal
from qtpy.QtCore import QTimer
from superqt import QCollapsible

from ..config import Config, ModelConfig, TrainConfig, settings
from ._common import (
    StopOnClose,
    describe_device_choice,
    format_seconds,
    image_data,
    image_layers,
)
from ._plots import LossPlot
from ._registry import trained_models
from ._startup import avoid_llvm_clash, import_in_background
from ._workers import Failure, TrainingRun, training_worker

if TYPE_CHECKING:
    import napari.viewer

# A first try on a laptop CPU: visibly learns the sample domains in about a minute. The
# other fields start at the configuration's defaults, within its bounds (config.py).
DEFAULTS = {
    "generator": "resnet_6blocks",
    "ngf": 16,
    "ndf": 16,
    "crop_size": 64,
    "n_steps": 300,
    "n_steps_decay": 300,
    "preview_every": 25,
    "log_every": 10,
}
CHANNEL_AXIS_CHOICES = [
    ("auto (RGB last, else gray)", None),
    ("last axis (…, Y, X, C)", -1),
    ("before Y, X (…, C, Y, X)", -3),
    ("first axis (C, …)", 0),
]
PREVIEW_NAMES = {"G": "preview: a | G(a)", "F": "preview: b | F(b)"}


def _initial(section: type, setting: str):
    """A field's facts and its first value (the widget's own first try, else the
    configuration's default)."""
    facts = settings(section)[setting]
    return facts, DEFAULTS.get(setting, facts.default)


def _number(section: type, setting: str, label: str, **options) -> SpinBox | FloatSpinBox:
    """A spin box for a numeric setting, within the bounds the configuration gives it."""
    facts, value = _initial(section, setting)
    kind = FloatSpinBox if isinstance(facts.default, float) else SpinBox
    low, high = facts.bounds
    return kind(label=label, min=low, max=high, value=value, **options)


def _choice(section: type, setting: str, label: str, **options) -> ComboBox:
    """A combo box offering a setting's choices."""
    facts, value = _initial(section, setting)
    return ComboBox(label=label, choices=facts.choices, value=value, **options)


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
        self._run: TrainingRun | None = None
        self._closed = False
        self._added_layers: list = []
        self._preview_layers: dict = {}  # "G"/"F" → the preview layers of the last run

        # ---------------------------------------------------------------- domains
        choices = self._image_choices
        self.layers_a = Select(label="domain A layers", choices=choices, name="layers_a")
        self.folder_a = FileEdit(label="or folder A", mode="d", nullable=True, name="folder_a")
        self.layers_b = Select(label="domain B layers", choices=choices, name="layers_b")
        self.folder_b = FileEdit(label="or folder B", mode="d", nullable=True, name="folder_b")
        for select in (self.layers_a, self.layers_b):
            select.native.setMaximumHeight(70)

        # ---------------------------------------------------------------- settings
        self.generator = _choice(ModelConfig, "generator", "generator", name="generator")
        self.ngf = _number(ModelConfig, "ngf", "width (ngf)")
        self.crop_size = _number(TrainConfig, "crop_size", "crop size", step=16)
        self.n_steps = _number(TrainConfig, "n_steps", "steps")
        self.device = _choice(TrainConfig, "device", "device")
        self.device_info = Label(label="")
        self.output = FileEdit(
            label="output file",
            mode="w",
            filter="*.safetensors",
            value=Path.home() / "cyclestyle-model.safetensors",
        )

        # ---------------------------------------------------------------- advanced
        self.ndf = _number(ModelConfig, "ndf", "width D (ndf)")
        self.batch_size = _number(TrainConfig, "batch_size", "batch size")
        self.n_steps_decay = _number(TrainConfig, "n_steps_decay", "decay steps")
        self.learning_rate = _number(TrainConfig, "learning_rate", "learning rate", step=1e-5)
        self.learning_rate.native.setDecimals(6)
        self.lambda_cycle = _number(TrainConfig, "lambda_cycle_a", "λ cycle")
        self.lambda_identity = _number(TrainConfig, "lambda_identity", "λ identity", step=0.1)
        self.gan_mode = _choice(TrainConfig, "gan_mode", "adversarial loss")
        self.norm = _choice(ModelConfig, "norm", "normalisation")
        self.preview_every = _number(TrainConfig, "preview_every", "preview every")
        self.log_every = _number(TrainConfig, "log_every", "plot losses every")
        self.checkpoint_every = _number(TrainConfig, "checkpoint_every", "checkpoint every")
        self.seed = _number(TrainConfig, "seed", "seed")
        self.channel_axis_a = ComboBox(label="channels A", choices=CHANNEL_AXIS_CHOICES)
        self.channel_axis_b = ComboBox(label="channels B", choices=CHANNEL_AXIS_CHOICES)
        self.resume = FileEdit(
            label="resume from", mode="r", nullable=True, filter="*.checkpoint.pt"
        )
        self.advanced = Container(
            labels=True,
            widgets=[
                self.ndf,
                self.batch_size,
                self.n_steps_decay,
                self.learning_rate,
                self.lambda_cycle,
                self.lambda_identity,
                self.gan_mode,
                self.norm,
                self.preview_every,
                self.log_every,
                self.checkpoint_every,
                self.seed,
                self.channel_axis_a,
                self.channel_axis_b,
                self.resume,
            ],
        )

        # ---------------------------------------------------------------- controls
        self.start_button = PushButton(text="Start")
        self.pause_button = PushButton(text="Pause", enabled=False)
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.buttons = Container(
            layout="horizontal",
            labels=False,
            widgets=[self.start_button, self.pause_button, self.stop_button],
        )
        self.buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="", value="ready")

        self.extend(
            [
                self.layers_a,
                self.folder_a,
                self.layers_b,
                self.folder_b,
                self.generator,
                self.ngf,
                self.crop_size,
                self.n_steps,
                self.device,
                self.device_info,
                self.output,
            ]
        )
        fold = QCollapsible("advanced")
        fold.addWidget(self.advanced.native)
        self.native.layout().addWidget(fold)
        self.advanced_fold = fold
        self.extend([self.buttons, self.progress, self.status])
        import_in_background()  # before the loss plot, which waits for matplotlib
        self.loss_plot = LossPlot()
        self.native.layout().addWidget(self.loss_plot)

        self.start_button.changed.connect(self.start)
        self.pause_button.changed.connect(self.pause)
        self.stop_button.changed.connect(self.stop)
        self.device.changed.connect(self._show_device)
        self._show_device()
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._on_layers_changed)
        self._select_sample_layers()
        self._close_watch = StopOnClose(self.native, self.shutdown)

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget=None):
        previews = list(self._preview_layers.values())
        return [
            (name, layer) for name, layer in image_layers(self.viewer) if layer not in previews
        ]

    def _on_layers_changed(self, _event=None) -> None:
        if self._closed:
            return
        self.reset_choices()
        self._select_sample_layers()

    def _select_sample_layers(self) -> None:
        """Preselect the sample data's two layers when nothing is chosen yet."""
        for select, tag in ((self.layers_a, "domain A"), (self.layers_b, "domain B")):
            if not select.value:
                found = [layer for _, layer in self._image_choices() if tag in layer.name]
                if found:
                    select.value = found[:1]

    def _show_device(self, _value=None) -> None:
        self.device_info.value = describe_device_choice(self.device.value)

    # ------------------------------------------------------------------ reading
    def config(self) -> Config:
        """The :class:`~napari_cyclestyle.Config` the fields describe.

        Raises
        ------
        ConfigError
            If a value is impossible (the message names it).
        """
        lambda_cycle = float(self.lambda_cycle.value)
        return Config(
            model=ModelConfig(
                generator=self.generator.value,
                ngf=int(self.ngf.value),
                ndf=int(self.ndf.value),
                norm=self.norm.value,
            ),
            train=TrainConfig(
                n_steps=int(self.n_steps.value),
                n_steps_decay=int(self.n_steps_decay.value),
                batch_size=int(self.batch_size.value),
                crop_size=int(self.crop_size.value),
                learning_rate=float(self.learning_rate.value),
                gan_mode=self.gan_mode.value,
                lambda_cycle_a=lambda_cycle,
                lambda_cycle_b=lambda_cycle,
                lambda_identity=float(self.lambda_identity.value),
                seed=int(self.seed.value),
                device=self.device.value,
                checkpoint_every=int(self.checkpoint_every.value),
                preview_every=int(self.preview_every.value),
                log_every=int(self.log_every.value),
            ),
        )

    def _domain(self, name: str, layers, folder) -> list:
        images = [image_data(layer) for layer in layers]
        if folder is not None and str(folder).strip():
            images.append(Path(folder))
        if not images:
            raise ValueError(f"Choose one or more image layers or a folder for domain {name}.")
        return images

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
            domain_a = self._domain(
                "A", self.layers_a.value if layers_a is None else layers_a, self.folder_a.value
            )
            domain_b = self._domain(
                "B", self.layers_b.value if layers_b is None else layers_b, self.folder_b.value
            )
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
        self._added_layers = []
        self.model_path = None
        self.last_event = None
        self.loss_plot.clear()
        self.progress.max = config.train.total_steps
        self.progress.value = 0
        self.status.value = "preparing the data and networks…"
        worker = training_worker(
            run,
            domain_a,
            domain_b,
            config,
            Path(output),
            resume,
            self.channel_axis_a.value,
            self.channel_axis_b.value,
        )
        worker.yielded.connect(self._on_yielded)
        worker.finished.connect(self._on_finished)
        worker.paused.connect(self._on_paused)
        worker.resumed.connect(self._on_resumed)
        self.worker = worker
        self._set_controls(running=True)
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
        self.status.value = "stopping: saving the model…"
        self.stop_button.enabled = False
        self.pause_button.enabled = False

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop a running training and wait until it has saved (the viewer or this
        widget is closing). Safe to call more than once."""
        worker, run = self.worker, self._run
        if worker is None or run is None:
            return
        self._closed = True
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
        self.progress.max = event.total_steps
        self.progress.value = event.step
        self.status.value = (
            f"step {event.step}/{event.total_steps} · {event.steps_per_second:.1f} steps/s"
            f" · {format_seconds(event.seconds_left)} left"
        )
        if event.losses:
            self.loss_plot.add(event.step, event.losses)
        if event.preview:
            self._show_preview(event.preview)
        if event.finished:
            self.loss_plot.redraw()
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
        for layer in self._added_layers:  # leave the viewer as it was
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._added_layers = []
        self._preview_layers = {
            k: v for k, v in self._preview_layers.items() if v in self.viewer.layers
        }
        self.status.value = "failed: " + failure.message

    def _on_finished(self) -> None:
        self.worker = None
        if self._closed:
            return
        self._set_controls(running=False)

    def _on_paused(self) -> None:
        if not self._closed:
            self.pause_button.text = "Resume"
            self.status.value = "paused at step " + str(getattr(self.last_event, "step", 0))

    def _on_resumed(self) -> None:
        if not self._closed:
            self.pause_button.text = "Pause"

    def _set_controls(self, running: bool) -> None:
        self.start_button.enabled = not running
        self.pause_button.enabled = running
        self.stop_button.enabled = running
        self.pause_button.text = "Pause"

    # ------------------------------------------------------------------ previews
    def _show_preview(self, preview: dict) -> None:
        pending = [
            (key, *preview_image(preview[real], preview[fake]))
            for key, real, fake in (("G", "real_A", "fake_B"), ("F", "real_B", "fake_A"))
        ]
        self._update_previews(pending)

    def _update_previews(self, pending: list) -> None:
        """Update preview layers in place; adding a layer is slow, so at most one is
        added per turn of the event loop (the window keeps responding)."""
        while pending and not self._closed:
            key, image, rgb = pending.pop(0)
            layer = self._preview_layers.get(key)
            if layer is not None and layer in self.viewer.layers:
                if layer.rgb == rgb and layer.data.shape == image.shape:
                    layer.data = image
                    if not rgb:
                        layer.reset_contrast_limits()
                    continue
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_image(
                image, name=PREVIEW_NAMES[key], rgb=rgb, translate=self._preview_origin(key)
            )
            self._preview_layers[key] = layer
            self._added_layers.append(layer)
            self.reset_choices()  # the layer list changed before the preview was known
            if pending:
                QTimer.singleShot(0, lambda: self._update_previews(pending))
                return

    def _preview_origin(self, key: str) -> tuple[float, float]:
        """Beside the data: right of everything else, G above F."""
        others = [
            layer for layer in self.viewer.layers if layer not in self._preview_layers.values()
        ]
        right, top = 0.0, 0.0
        for layer in others:
            extent = layer.extent.world
            right = max(right, float(extent[1][-1]))
            top = min(top, float(extent[0][-2]))
        crop = int(self.crop_size.value)
        return (top + (0 if key == "G" else crop + 8), right + 16)


def preview_image(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, bool]:
    """Put a ``(C, Y, X)`` input patch and its translation side by side for display.

    Returns the image and whether it is RGB. Gray beside RGB is shown as RGB; other
    channel counts (or differing dtypes) show the translation alone, channels first.
    """

    def display(patch):
        if patch.shape[0] == 1:
            return patch[0], False
        if patch.shape[0] == 3:
            return np.moveaxis(patch, 0, -1), True
        return patch, False

    (real_view, real_rgb), (fake_view, fake_rgb) = display(real), display(fake)
    usable = real.shape[0] in (1, 3) and fake.shape[0] in (1, 3) and real.dtype == fake.dtype
    if not usable:
        return fake_view, fake_rgb
    rgb = real_rgb or fake_rgb
    if rgb:
        real_view = real_view if real_rgb else np.repeat(real_view[..., None], 3, -1)
        fake_view = fake_view if fake_rgb else np.repeat(fake_view[..., None], 3, -1)
    return np.concatenate([real_view, fake_view], axis=1), rgb
