"""Start-up workarounds for torch inside napari: the triton guard, and the slow imports
(torch among them) done in a background thread.

They exist because of how torch, Mesa's OpenGL driver and Qt's event loop meet in one
process; the widgets' own helpers are :mod:`._common`. Measurements:
benchmarks/README.md ("Opening the training widget").
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject, QTimer, Signal, Slot
from qtpy.QtWidgets import QWidget

from ._background import in_the_background


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


def import_in_background(after_painting: QWidget | None = None) -> None:
    """Make torch ready for the widgets' workers without holding up the window.

    The quick part happens now, in the GUI thread: the triton guard (napari's viewer
    loads the OpenGL driver when it is built, before any widget, so the check sees the
    clash and the guard is set before the thread below may import triton). The slow
    part, importing torch and the core's torch modules, ``torch._dynamo`` (torch's
    optimisers import it on first use) and matplotlib's Qt backend (the loss plot),
    takes seconds and is done in a background thread, once for all widgets: in a
    thread it stalls the event loop for a fraction of what it froze the window for in
    the GUI thread (figures: benchmarks/README.md, "Opening the training widget"). The
    thread starts once ``after_painting`` (the widget being opened) has been painted,
    or, without one, when the event loop next runs: importing while the dock is laid out
    and painted, the GIL the import holds made opening it 4-6× slower.
    Workers call :func:`wait_for_imports` before they use torch.
    """
    global _imports
    avoid_llvm_clash()
    if _imports is None:
        _imports = _BackgroundImports(after_painting)


def wait_for_imports() -> None:
    """Block until the background imports have finished (at once if none were started).

    Call it from a worker thread: in the GUI thread it would freeze the window.
    """
    if _imports is not None:
        _imports.start()  # if the event loop has not run yet
        _imports.thread.join()


def imports_done() -> bool:
    """Whether the background imports have finished (or were never started)."""
    return _imports is None or _imports.done


def when_imported(slot: Callable[[], None], owner: QObject | None = None) -> None:
    """Call ``slot`` in the GUI thread once the background imports have finished: now
    if they have (or were never started), else from the event loop.

    Give a bound method of a QObject, or the ``owner`` whose deletion ends the wait
    (a widget ``slot`` writes to), so that a closed widget is not called.
    """
    if imports_done():
        slot()
    elif owner is not None:
        _imports.ready.connect(_Call(owner, slot).run)
    else:
        _imports.ready.connect(slot)


class _Call(QObject):
    """``call`` as the slot of a child of ``owner``: deleted, and disconnected, with it."""

    def __init__(self, owner: QObject, call: Callable[[], None]) -> None:
        super().__init__(owner)
        self.call = call

    @Slot()
    def run(self) -> None:
        self.call()


def _import_heavy_modules() -> None:
    from .. import inference, trainer  # noqa: F401

    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # not in every torch build
        pass
    import matplotlib.backends.backend_qtagg  # noqa: F401


# Milliseconds after which the imports start even if the dock has not been painted.
LATEST_START_MS = 1000


class _BackgroundImports(QObject):
    """The thread importing :func:`_import_heavy_modules`; made in the GUI thread, it
    starts from the event loop (see :func:`import_in_background`)."""

    _thread_finished = Signal()  # emitted by the thread, received in the GUI thread
    ready = Signal()  # emitted in the GUI thread once the imports have finished

    def __init__(self, after_painting: QWidget | None = None) -> None:
        super().__init__()
        # Set and read in the GUI thread only, so a slot given to when_imported is
        # either called at once or connected before ``ready`` is emitted.
        self.done = False
        self._thread_finished.connect(self._on_thread_finished)
        self.thread = threading.Thread(
            target=self._run, name="napari-cyclestyle imports", daemon=True
        )
        self._starting = threading.Lock()
        if after_painting is None:
            QTimer.singleShot(0, self.start)
        else:
            after_painting.installEventFilter(_StartAfterPaint(after_painting, self))
            QTimer.singleShot(LATEST_START_MS, self.start)  # a dock never painted (hidden)

    def start(self) -> None:
        """Start the thread, if it has not started (from any thread)."""
        with self._starting:
            if self.thread.ident is None:
                self.thread.start()

    def _run(self) -> None:
        try:  # an error is printed here and raised again by the worker's own import
            with in_the_background():
                _import_heavy_modules()
        finally:
            self._thread_finished.emit()

    @Slot()
    def _on_thread_finished(self) -> None:
        self.done = True
        self.ready.emit()


class _StartAfterPaint(QObject):
    """Starts the imports from the event loop once ``widget`` has been painted."""

    def __init__(self, widget: QWidget, imports: _BackgroundImports) -> None:
        super().__init__(widget)
        self.imports = imports

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's)
        if event.type() == QEvent.Type.Paint:
            watched.removeEventFilter(self)
            QTimer.singleShot(0, self.imports.start)
        return False


_imports: _BackgroundImports | None = None
