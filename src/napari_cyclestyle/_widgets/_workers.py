"""The widgets' workers: generators run in napari thread workers, and what they share
with the GUI thread. The panels (:mod:`.train`, :mod:`.translate`) start them and show
what they yield; the core does the work.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from napari.qt.threading import thread_worker

from ._background import in_the_background
from ._startup import wait_for_imports


@dataclass
class Failure:
    """Yielded by a worker generator instead of raising, so the widget shows the error
    itself (once, as a notification) and napari does not re-raise it in the GUI."""

    error: BaseException

    @property
    def message(self) -> str:
        from ..devices import is_out_of_memory
        from ..errors import OutOfMemory

        text = str(self.error) or type(self.error).__name__
        # The core's own out-of-memory errors carry advice already; raw ones get it here.
        if isinstance(self.error, OutOfMemory):
            return text
        if isinstance(self.error, MemoryError) or is_out_of_memory(self.error):
            text += (
                " — out of memory: try a smaller crop size, batch size or width, or device 'cpu'."
            )
        return text


def failures_yielded(steps: Iterator) -> Iterator:
    """Pass ``steps`` through, turning an exception into a final :class:`Failure`.

    superqt workers treat a ``RuntimeError`` (which torch raises for out-of-memory) as
    "the worker was deleted" and drop it silently; catching here keeps every error.
    """
    try:
        yield from steps
    except Exception as error:  # any failure of the core becomes a notification
        yield Failure(error)


class TrainingRun:
    """What the GUI thread and the training thread share for one run."""

    def __init__(self) -> None:
        self.trainer = None  # set by the worker as soon as it is built
        self.stop_requested = threading.Event()
        self.done = threading.Event()

    def stop(self) -> None:
        """Ask the trainer to finish after the current step (it then saves)."""
        self.stop_requested.set()
        if self.trainer is not None:
            self.trainer.stop()


@thread_worker(ignore_errors=True)
def training_worker(
    run: TrainingRun,
    domain_a,
    domain_b,
    config,
    output,
    resume,
    axis_a,
    axis_b,
    validation: dict | None = None,
):
    """Build the trainer and yield its events; errors come out as :class:`Failure`.
    ``validation`` holds the trainer's ``validation_a``/``validation_b`` images, if any."""

    def steps():
        wait_for_imports()
        from ..trainer import Trainer

        trainer = Trainer(
            domain_a,
            domain_b,
            config,
            output=output,
            resume=resume,
            channel_axis_a=axis_a,
            channel_axis_b=axis_b,
            **(validation or {}),
        )
        run.trainer = trainer
        if run.stop_requested.is_set():
            trainer.stop()
        yield from trainer.run()

    try:
        with in_the_background():
            yield from failures_yielded(steps())
    finally:
        run.done.set()


class TranslationRun:
    """What the GUI thread and a translation's (or an export's) worker thread share.

    Cancelling goes through ``cancelled`` rather than the worker's ``quit()``: superqt
    abandons a quit generator without closing it, which would leave the core's
    translation (and its scratch files) open; here the worker ends its own loop.
    """

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.done = threading.Event()

    def cancel_and_wait(self, timeout: float) -> None:
        """Cancel; if the work has begun, wait until it has ended. Work that has not
        begun sees the cancellation first thing and does nothing."""
        self.cancelled.set()
        if self.started.is_set():
            self.done.wait(timeout)


@thread_worker(ignore_errors=True)
def translate_worker(data, model, direction: str, device: str, channel_axis, state):
    """Yield the core's per-plane progress; errors come out as :class:`Failure`."""
    wait_for_imports()
    from ..inference import translate_steps

    state.started.set()
    try:
        if state.cancelled.is_set():
            return
        steps = failures_yielded(
            translate_steps(data, model, direction, device=device, channel_axis=channel_axis)
        )
        try:
            with in_the_background():
                for step in steps:
                    if state.cancelled.is_set():
                        return
                    yield step
        finally:
            steps.close()  # ends the core's translation: its scratch files go
    finally:
        state.done.set()


@thread_worker(ignore_errors=True)
def export_worker(model, path, format_name: str, direction: str, state: TranslationRun):
    """Yield the core's export steps; errors come out as :class:`Failure`."""
    wait_for_imports()
    from ..exporting import export_steps

    state.started.set()
    try:
        for step in failures_yielded(export_steps(model, path, format_name, direction)):
            if state.cancelled.is_set():
                return
            yield step
    finally:
        state.done.set()
