"""Helpers shared by the widgets: background imports, layer reading, worker failures,
devices, shutdown."""

from __future__ import annotations

import math
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from napari.layers import Image, Layer
from qtpy.QtCore import QEvent, QObject, QTimer, Signal, Slot
from qtpy.QtWidgets import QApplication, QWidget

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def avoid_llvm_clash() -> bool:
    """Keep torch from importing triton when an OpenGL driver's LLVM is loaded.

    napari's canvas makes Mesa load ``libLLVM`` into the process; triton's
    ``libtriton.so`` carries its own LLVM and importing it afterwards crashes the
    interpreter (SIGSEGV in its initialisers). torch imports triton lazily, e.g. when
    the first optimiser is built. The widgets never use ``torch.compile``, so when that
    clash is possible we make ``import triton`` raise ImportError instead, which torch
    handles. Call it before anything may import triton, once the viewer exists (napari
    makes the driver load its LLVM while it builds the viewer, before any widget opens:
    measured with napari 0.9 under Xvfb). Returns True when the guard is set.
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


def import_in_background() -> None:
    """Make torch ready for the widgets' workers without holding up the window.

    The quick parts happen now, in the GUI thread: the triton guard (napari's viewer
    loads the OpenGL driver when it is built, before any widget, so the check sees the
    clash and the guard is set before the thread below may import triton) and torch's
    thread count. The slow part, importing the core's torch modules, ``torch._dynamo``
    (torch's optimisers import it on first use) and matplotlib's Qt backend (the loss
    plot), takes seconds and is started in a background thread, once for all widgets.
    A thread does not freeze the window (measured on 2 cores, with a 5 ms timer in the
    GUI thread: ``torch._dynamo`` imported in a thread stalls the event loop at most
    0.12 s, matplotlib 0.04 s; all of these together 0.2 s, the full garbage collections
    their allocations set off), where importing them in the GUI thread froze it for
    1.5 s. Workers call :func:`wait_for_imports` before they use torch.
    """
    global _imports
    avoid_llvm_clash()
    leave_a_core_for_the_viewer()
    if _imports is None:
        _imports = _BackgroundImports()


def wait_for_imports() -> None:
    """Block until the background imports have finished (at once if none were started).

    Call it from a worker thread: in the GUI thread it would freeze the window.
    """
    if _imports is not None:
        _imports.thread.join()


def when_imported(slot: Callable[[], None]) -> None:
    """Call ``slot`` in the GUI thread once the background imports have finished: now
    if they have (or were never started), else from the event loop.

    Give a bound method of a QObject: the connection ends when that object is deleted.
    """
    if _imports is None or _imports.done:
        slot()
    else:
        _imports.ready.connect(slot)


def _import_heavy_modules() -> None:
    from .. import inference, trainer  # noqa: F401

    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # not in every torch build
        pass
    import matplotlib.backends.backend_qtagg  # noqa: F401


class _BackgroundImports(QObject):
    """The thread importing :func:`_import_heavy_modules`; made in the GUI thread."""

    _thread_finished = Signal()  # emitted by the thread, received in the GUI thread
    ready = Signal()  # emitted in the GUI thread once the imports have finished

    def __init__(self) -> None:
        super().__init__()
        # Set and read in the GUI thread only, so a slot given to when_imported is
        # either called at once or connected before ``ready`` is emitted.
        self.done = False
        self._thread_finished.connect(self._on_thread_finished)
        self.thread = threading.Thread(
            target=self._run, name="napari-cyclestyle imports", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        try:  # an error is printed here and raised again by the worker's own import
            _import_heavy_modules()
        finally:
            self._thread_finished.emit()

    @Slot()
    def _on_thread_finished(self) -> None:
        self.done = True
        self.ready.emit()


_imports: _BackgroundImports | None = None


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
