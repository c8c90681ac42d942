"""A live plot of the training losses (matplotlib in Qt, redrawn only on new values)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from qtpy.QtCore import Slot
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from ._startup import when_imported

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

# Drawn as lines, in this order; identity losses are summed into one line.
_CURVES = {
    "G adv": ("G_adversarial",),
    "F adv": ("F_adversarial",),
    "cycle A": ("cycle_A",),
    "cycle B": ("cycle_B",),
    "identity": ("identity_A", "identity_B"),
    "D_A": ("D_A",),
    "D_B": ("D_B",),
}


class LossPlot(QWidget):
    """Loss curves over training steps.

    :meth:`add` records values; the canvas is redrawn at most every
    ``min_interval`` seconds (and always by :meth:`redraw`), so a fast training loop
    cannot flood the GUI thread with drawing.

    Importing matplotlib takes about a second, so the canvas (``figure``, ``axes``,
    ``lines``, ``canvas``; None or empty until then) is built once the widgets'
    background imports have finished (see :func:`._startup.import_in_background`).
    Values added before are kept and drawn then.
    """

    def __init__(self, parent: QWidget | None = None, min_interval: float = 0.5):
        super().__init__(parent)
        self.min_interval = min_interval
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {name: [] for name in _CURVES}
        self.draw_count = 0
        self._last_draw = 0.0
        self._dirty = False
        self.figure: Figure | None = None
        self.axes: Axes | None = None
        self.lines: dict[str, Line2D] = {}
        self.canvas: FigureCanvasQTAgg | None = None

        self.setMinimumHeight(180)  # the canvas's room, kept while it is not built
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        when_imported(self._build_canvas)

    @Slot()
    def _build_canvas(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        # a fixed layout: tight/constrained layout would redo text measuring every draw
        self.figure = Figure(figsize=(4, 2.4))
        self.figure.subplots_adjust(left=0.13, right=0.98, top=0.97, bottom=0.17)
        self.figure.patch.set_alpha(0.0)
        self.axes = self.figure.add_subplot()
        self._style_axes()
        self.lines = {name: self.axes.plot([], [], label=name, lw=1)[0] for name in _CURVES}
        self.axes.legend(fontsize=7, ncol=4, loc="upper right", framealpha=0.3)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setStyleSheet("background-color: transparent;")
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.layout().addWidget(self.canvas)
        self.redraw()  # the values added so far

    def _style_axes(self) -> None:
        axes = self.axes
        axes.set_facecolor("none")
        color = "#b0b0b0"
        for spine in axes.spines.values():
            spine.set_color(color)
        axes.tick_params(colors=color, labelsize=7)
        axes.set_xlabel("step", color=color, fontsize=8)
        axes.set_ylabel("loss", color=color, fontsize=8)
        axes.grid(alpha=0.2)

    def clear(self) -> None:
        """Forget all values (a new run starts)."""
        self.steps.clear()
        for values in self.values.values():
            values.clear()
        self._dirty = True
        self.redraw()

    def add(self, step: int, losses: dict[str, float]) -> None:
        """Record the losses of ``step``; redraw if the last draw is old enough."""
        self.steps.append(step)
        for name, keys in _CURVES.items():
            self.values[name].append(sum(float(losses.get(key, 0.0)) for key in keys))
        self._dirty = True
        if time.perf_counter() - self._last_draw >= self.min_interval:
            self.redraw()

    def redraw(self) -> None:
        """Draw the recorded values now (no-op when nothing changed, or until the canvas
        is built: it draws them then)."""
        if not self._dirty or self.canvas is None:
            return
        for name, line in self.lines.items():
            line.set_data(self.steps, self.values[name])
        self.axes.relim()
        self.axes.autoscale_view()
        self.canvas.draw_idle()
        self.draw_count += 1
        self._dirty = False
        self._last_draw = time.perf_counter()
