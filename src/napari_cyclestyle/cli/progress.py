"""Progress on stderr: a status line redrawn in place, and how events read in it."""

from __future__ import annotations

import os
import shutil
import time
from typing import TextIO

import numpy as np


class ProgressLine:
    """A status line on a stream: redrawn in place on a terminal, one line per update
    otherwise (logs, pipes).

    Parameters
    ----------
    stream : file-like
        Where to write (stderr).
    min_interval : float
        On a terminal, redraw at most this often (seconds).
    """

    def __init__(self, stream: TextIO, min_interval: float = 0.2):
        self.stream = stream
        self.interactive = stream.isatty()
        self.min_interval = min_interval
        self._last_draw = 0.0
        self._drawn = False

    def update(self, text: str, force: bool = False) -> None:
        """Show ``text`` as the current status (throttled on a terminal unless ``force``)."""
        if not self.interactive:
            print(text, file=self.stream, flush=True)
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.min_interval:
            return
        width = shutil.get_terminal_size().columns - 1
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()
        self._last_draw, self._drawn = now, True

    def message(self, text: str) -> None:
        """Print a permanent line, keeping the status line below it intact."""
        self.close()
        print(text, file=self.stream, flush=True)

    def message_now(self, text: str) -> None:
        """Like :meth:`message`, but safe inside a signal handler: one unbuffered write
        that cannot collide with a write the handler interrupted."""
        prefix = "\n" if self._drawn else ""
        self._drawn = False
        try:
            os.write(self.stream.fileno(), f"{prefix}{text}\n".encode())
        except (OSError, ValueError, AttributeError):  # a stream without a file descriptor
            pass

    def close(self) -> None:
        """End the status line (a newline on a terminal)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def format_duration(seconds: float) -> str:
    """``75.2`` → ``"1:15"``, ``3725`` → ``"1:02:05"``; ``"?"`` when unknown."""
    if not np.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_train_event(event, losses: dict[str, float]) -> str:
    """The training status line: step/total, percent, speed, ETA and the latest losses."""
    percent = 100.0 * event.step / event.total_steps
    text = (
        f"step {event.step}/{event.total_steps} ({percent:3.0f}%) "
        f"{event.steps_per_second:.2f} steps/s, ETA {format_duration(event.seconds_left)}"
    )
    if losses:
        text += " | " + " ".join(f"{name} {value:.3g}" for name, value in losses.items())
    return text


def format_validation(event) -> str:
    """The validation line of an event: its values, and the best model when written."""
    values = ", ".join(f"{name} {value:.3g}" for name, value in event.validation.items())
    text = f"Validation at step {event.step}: {values}"
    if event.best_model_path is not None:
        text += f" (best so far: saved {event.best_model_path})"
    return text
