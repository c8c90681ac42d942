"""The training widget's controls and read-outs: Start, Pause/Resume and Stop, a
progress bar, a status line and the health warnings kept under it."""

from __future__ import annotations

import math
import time

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.utils.notifications import show_warning

from ._common import format_seconds


class RunPanel:
    """The buttons and read-outs of one training run at a time.

    Attributes
    ----------
    start_button, pause_button, stop_button : PushButton
        What the user presses (the widget connects them).
    progress : ProgressBar
        Steps done of the run's steps.
    status : Label
        What the run is doing (speed, time left, where the model went).
    health : Label
        The health watch's warnings of this run, one per line.
    widgets : list
        The panel's widgets in the order they are shown.
    min_interval : float
        Seconds between two updates of the progress and status (the last step's are
        always shown). The training widget updates its plot and previews with them:
        each such update makes napari compose its whole window in OpenGL, ~70 ms of
        CPU with software rendering, taken from the training (at two a second: 15 %
        of a core; at one: 8 %).
    """

    def __init__(self, min_interval: float = 1.0) -> None:
        self.min_interval = min_interval
        self._last_shown = -math.inf
        self.start_button = PushButton(text="Start")
        self.pause_button = PushButton(text="Pause", enabled=False)
        self.stop_button = PushButton(text="Stop", enabled=False)
        buttons = Container(
            layout="horizontal",
            labels=False,
            widgets=[self.start_button, self.pause_button, self.stop_button],
        )
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="", value="ready")
        self.health = Label(label="", value="")
        self.health.native.setWordWrap(True)
        self.widgets = [buttons, self.progress, self.status, self.health]

    def set_running(self, running: bool) -> None:
        """Enable Start, or Pause and Stop."""
        self.start_button.enabled = not running
        self.pause_button.enabled = running
        self.stop_button.enabled = running
        self.pause_button.text = "Pause"

    def starting(self, total_steps: int) -> None:
        """A new run of ``total_steps`` is being prepared: clear the last one's read-outs."""
        self.health.value = ""
        self.progress.max = total_steps
        self.progress.value = 0
        self.status.value = "preparing the data and networks…"
        self._last_shown = -math.inf
        self.set_running(True)

    def show(self, event) -> bool:
        """The step, speed and time left of a :class:`~napari_cyclestyle.TrainEvent`
        (at most every :attr:`min_interval` seconds, and the run's last); whether they
        were shown (the widget repaints its other parts then too)."""
        now = time.monotonic()
        if now - self._last_shown < self.min_interval and not event.finished:
            return False
        self._last_shown = now
        self.progress.max = event.total_steps
        self.progress.value = event.step
        self.status.value = (
            f"step {event.step}/{event.total_steps} · {event.steps_per_second:.1f} steps/s"
            f" · {format_seconds(event.seconds_left)} left"
        )
        return True

    def warn(self, warning) -> None:
        """A health warning: a notification, and a line kept under the status."""
        show_warning(f"Training health: {warning}")
        lines = [line for line in self.health.value.split("\n") if line]
        self.health.value = "\n".join([*lines, f"⚠ {warning}"])

    def stopping(self) -> None:
        """Stop was asked for: the run is saving; nothing more to press."""
        self.status.value = "stopping: saving the model…"
        self.stop_button.enabled = False
        self.pause_button.enabled = False

    def paused(self, step: int) -> None:
        """The run waits at ``step`` until Resume."""
        self.pause_button.text = "Resume"
        self.status.value = f"paused at step {step}"

    def resumed(self) -> None:
        """The run goes on."""
        self.pause_button.text = "Pause"
