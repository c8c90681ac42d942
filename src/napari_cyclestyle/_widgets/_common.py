"""Helpers shared by the widgets: layer reading, worker failures, devices, shutdown."""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from napari.layers import Image, Layer
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QApplication, QWidget

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def avoid_llvm_clash() -> bool:
    """Keep torch from importing triton when an OpenGL driver's LLVM is loaded.

    napari's canvas makes Mesa load ``libLLVM`` into the process; triton's
    ``libtriton.so`` carries its own LLVM and importing it afterwards crashes the
    interpreter (SIGSEGV in its initialisers). torch imports triton lazily, e.g. when
    the first optimiser is built. The widgets never use ``torch.compile``, so when that
    clash is possible we make ``import triton`` raise ImportError instead, which torch
    handles. Call it just before torch work starts (the driver loads its LLVM only
    once a canvas is drawn). Returns True when the guard is set.
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/maps") as maps:
            clash = any("libLLVM" in line for line in maps)
    except OSError:
        return False
    if clash:
        sys.modules["triton"] = None  # import triton → ImportError, not a crash
    return clash


def import_torch_modules() -> None:
    """Import the core's torch modules now, in the GUI thread, while a widget opens.

    Imports are pure Python holding the GIL: done in a worker they would freeze the
    window for seconds. torch's optimisers import ``torch._dynamo`` on first use (about
    a second of imports), so that one is done here too.
    """
    avoid_llvm_clash()
    from .. import inference, trainer  # noqa: F401

    leave_a_core_for_the_viewer()

    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # not in every torch build
        pass


def leave_a_core_for_the_viewer() -> None:
    """Run torch on one core fewer than the machine has.

    torch's OpenMP threads spin-wait for each other; when one of them shares its core
    with napari's drawing, every operation waits for it (measured: training 30× slower
    on 2 cores). Done once, in the GUI thread, before any worker starts.
    """
    import os

    import torch

    cores = os.cpu_count() or 1
    if torch.get_num_threads() >= cores:
        torch.set_num_threads(max(1, cores - 1))


@dataclass
class Failure:
    """Yielded by a worker generator instead of raising, so the widget shows the error
    itself (once, as a notification) and napari does not re-raise it in the GUI."""

    error: BaseException

    @property
    def message(self) -> str:
        from ..devices import is_out_of_memory

        text = str(self.error) or type(self.error).__name__
        # The core's own out-of-memory errors carry advice already; raw ones get it here.
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


def image_data(layer: Layer):
    """The array behind an image layer (the full-resolution level of a multiscale one).

    Raises
    ------
    ValueError
        If ``layer`` is not an image layer.
    """
    if not isinstance(layer, Image):
        kind = type(layer).__name__
        raise ValueError(
            f"Layer '{layer.name}' is a {kind} layer; choose an image layer "
            "(gray, RGB or multichannel)."
        )
    return layer.data[0] if layer.multiscale else layer.data


def image_layers(viewer) -> list[tuple[str, Image]]:
    """(name, layer) choices of the viewer's image layers, in layer-list order."""
    if viewer is None:
        return []
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image)]


def describe_device_choice(choice: str) -> str:
    """What a device choice means on this machine, e.g. ``auto → cpu (2 threads)``."""
    from ..devices import describe_device, resolve_device

    try:
        device = resolve_device(choice)
    except ValueError:
        return f"{choice}: not available here"
    described = describe_device(device)
    return f"auto → {described}" if choice == "auto" else described


def format_seconds(seconds: float) -> str:
    """``75.2`` → ``"1 min 15 s"``; infinite or NaN → ``"?"``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class StopOnClose(QObject):
    """Call ``callback`` once the widget is taken out of the viewer (its dock closed),
    its window (the viewer) closes, or the application quits.

    The callback must be idempotent; it runs before the window actually closes.
    """

    def __init__(self, widget: QWidget, callback: Callable[[], None]):
        super().__init__(widget)
        self._callback = callback
        self._watched: weakref.WeakSet = weakref.WeakSet()
        widget.installEventFilter(self)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._fire)

    def _widget(self) -> QWidget | None:
        return self.parent()

    def _watch_window(self) -> None:
        widget = self._widget()
        if widget is None:
            return
        window = widget.window()
        if window is not widget and window not in self._watched:
            window.installEventFilter(self)
            self._watched.add(window)

    def _fire(self) -> None:
        self._callback()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt)
        kind = event.type()
        if watched is self._widget():
            if kind == QEvent.Type.ParentChange:
                if watched.parent() is None:
                    self._fire()
                else:  # the dock joins the main window just after this event
                    QTimer.singleShot(0, self._watch_window)
            elif kind == QEvent.Type.Show:
                self._watch_window()
        elif kind == QEvent.Type.Close:
            self._fire()
        return False
