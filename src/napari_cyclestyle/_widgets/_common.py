"""Helpers shared by the widgets: layer reading, devices, times, shutdown. (Start-up
workarounds: :mod:`._startup`; workers: :mod:`._workers`.)"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

from napari.layers import Image, Layer
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QApplication, QWidget

from ._startup import import_in_background, imports_done, when_imported


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


# The key of layer.metadata that marks the layers this plugin makes (previews of a
# training run, translations).
OWN_LAYER_KEY = "cyclestyle"


def is_own_layer(layer: Layer) -> bool:
    """Whether the plugin made ``layer`` (a training preview or a translation)."""
    return OWN_LAYER_KEY in layer.metadata


def image_layers(viewer, own: bool = True) -> list[tuple[str, Image]]:
    """(name, layer) choices of the viewer's image layers, in layer-list order; without
    the plugin's own layers (previews, translations) unless ``own``."""
    if viewer is None:
        return []
    return [
        (layer.name, layer)
        for layer in viewer.layers
        if isinstance(layer, Image) and (own or not is_own_layer(layer))
    ]


def show_device_choice(choice, info) -> None:
    """Keep the label ``info`` saying what the device ``choice`` (a combo box) means on
    this machine: once the widgets' background imports have brought torch in, so that
    opening a widget never imports it in the GUI thread."""

    def show(_value=None) -> None:
        if imports_done():  # else the call below shows it when they are
            info.value = describe_device_choice(choice.value)

    import_in_background()
    info.value = "checking the devices…"
    choice.changed.connect(show)
    when_imported(show, owner=info.native)


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
