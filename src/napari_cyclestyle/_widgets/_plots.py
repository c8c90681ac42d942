"""A live plot of the training: losses in three groups and the validation values.

Four small panels (generators' adversarial losses, cycle and identity losses, the
discriminators, validation), each loss an exponential moving average over its faint
raw values, the latest value in the legend, and a log-scale toggle. Matplotlib in Qt.

New values are drawn incrementally: the axes, ticks and grid are rendered once and kept
as a background, and each update draws only the curves and legends over it (matplotlib's
blitting). The x-axis spans the run's steps from the start, and the value axes widen
with headroom only when a value falls outside them, so the whole figure is rendered
again only then, on a resize or on the log-scale toggle.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from qtpy.QtCore import Slot
from qtpy.QtWidgets import QCheckBox, QSizePolicy, QVBoxLayout, QWidget

from ._startup import when_imported

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

# Panel → curve → the loss names summed into it (identity: both directions). The
# methods' terms (structure, PatchNCE, R1) are drawn only in runs that have them, and a
# one-sided run (no F, D_A or cycle) draws G's, D_B's and PatchNCE's alone.
LOSS_GROUPS = {
    "generators (adversarial)": {"G adv": ("G_adversarial",), "F adv": ("F_adversarial",)},
    "cycle and identity": {
        "cycle A": ("cycle_A",),
        "cycle B": ("cycle_B",),
        "identity": ("identity_A", "identity_B"),
        "structure": ("structure_A", "structure_B"),
        "PatchNCE": ("NCE_A", "NCE_B", "NCE_identity_B"),
    },
    "discriminators": {"D_A": ("D_A",), "D_B": ("D_B",), "R1": ("R1_A", "R1_B")},
}
# The validation panel: curve → validation value (those of a run that has them).
VALIDATION_CURVES = {
    "val cycle A": "cycle_A",
    "val cycle B": "cycle_B",
    "realism A": "realism_A",
    "realism B": "realism_B",
    "SSIM B": "ssim_B",
}
_CURVES = {curve: keys for group in LOSS_GROUPS.values() for curve, keys in group.items()}
# Weight of a new value in the moving average of a loss.
SMOOTHING = 0.1
# Room added on either side of the values when a value axis has to widen, as a
# fraction of their span (of their decades on a log scale): the next values then
# mostly fit, and the figure is not rendered again for each.
HEADROOM = 0.25


class LossPlot(QWidget):
    """Loss and validation curves over training steps.

    :meth:`add` and :meth:`add_validation` record values; :meth:`redraw` draws them.
    The owner decides when (the training widget: with its other parts, at most once a
    second), so a fast training loop cannot flood the GUI thread with drawing. A redraw
    draws the curves over the kept background unless the axes must change (see the
    module's docstring).

    Importing matplotlib takes about a second, so the canvas (``figure``, ``axes``,
    ``lines``, ``raw_lines``, ``canvas``; None or empty until then) is built once the
    widgets' background imports have finished (see
    :func:`._startup.import_in_background`). Values added before are kept and drawn then.

    Attributes
    ----------
    steps, values, smoothed : list, dict
        The steps with losses, each loss curve's raw values and their moving average.
    validation_steps, validation : list, dict
        The steps with validation values, and each validation curve's values.
    total_steps : int or None
        The run's steps, the x-axis's extent (None: it widens with the steps).
    log_scale : QCheckBox
        Log-scaled value axes when checked.
    draw_count, full_draw_count : int
        How many redraws showed new values, and how many of them rendered the whole
        figure (the others drew the curves alone).
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {name: [] for name in _CURVES}
        self.smoothed: dict[str, list[float]] = {name: [] for name in _CURVES}
        self.validation_steps: list[int] = []
        self.validation: dict[str, list[float]] = {name: [] for name in VALIDATION_CURVES}
        self.total_steps: int | None = None
        self.draw_count = 0
        self.full_draw_count = 0
        self._background = None  # the rendered figure without curves and legends
        self._needs_full_draw = True
        self._legend_lines: dict[Axes, list[Line2D]] = {}  # the curves each legend shows
        self._fitted: set[Axes] = set()  # value axes fitted to this run's values
        self._dirty = False
        self.figure: Figure | None = None
        self.axes: dict[str, Axes] = {}
        self.lines: dict[str, Line2D] = {}
        self.raw_lines: dict[str, Line2D] = {}
        self.canvas: FigureCanvasQTAgg | None = None

        self.setMinimumHeight(300)  # the canvas's room, kept while it is not built
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.log_scale = QCheckBox("log scale")
        self.log_scale.toggled.connect(self._set_scale)
        layout.addWidget(self.log_scale)
        when_imported(self._build_canvas)

    @Slot()
    def _build_canvas(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        # a fixed layout: tight/constrained layout would redo text measuring every draw
        self.figure = Figure(figsize=(4, 3.4))
        self.figure.subplots_adjust(
            left=0.1, right=0.98, top=0.93, bottom=0.1, hspace=0.45, wspace=0.25
        )
        self.figure.patch.set_alpha(0.0)
        panels = [*LOSS_GROUPS, "validation"]
        for index, title in enumerate(panels):
            axes = self.figure.add_subplot(2, 2, index + 1)
            _style(axes, title)
            self.axes[title] = axes
        for title, curves in LOSS_GROUPS.items():
            axes = self.axes[title]
            for name in curves:
                (line,) = axes.plot([], [], lw=1.2, label=name)
                self.lines[name] = line
                self.raw_lines[name] = axes.plot(
                    [], [], lw=0.6, alpha=0.25, color=line.get_color()
                )[0]
        for name in VALIDATION_CURVES:
            axes = self.axes["validation"]
            self.lines[name] = axes.plot([], [], lw=1.2, marker="o", ms=2.5, label=name)[0]
        for line in self.lines.values():
            line.set_animated(True)
        for line in self.raw_lines.values():
            line.set_animated(True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.mpl_connect("draw_event", self._keep_background)
        self.canvas.setStyleSheet("background-color: transparent;")
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.layout().addWidget(self.canvas)
        self._apply_scale()
        self._dirty = True
        self.redraw()  # the values added so far

    def clear(self, total_steps: int | None = None) -> None:
        """Forget all values: a new run of ``total_steps`` starts (None: not known)."""
        self.total_steps = total_steps
        self._needs_full_draw = True
        self._fitted.clear()
        self.steps.clear()
        self.validation_steps.clear()
        for series in (self.values, self.smoothed, self.validation):
            for values in series.values():
                values.clear()
        self._dirty = True
        self.redraw()

    def add(self, step: int, losses: dict[str, float]) -> None:
        """Record the losses of ``step`` (drawn by the next :meth:`redraw`)."""
        self.steps.append(step)
        for name, keys in _CURVES.items():
            present = [float(losses[key]) for key in keys if key in losses]
            value = sum(present) if present else math.nan  # NaN: not drawn
            self.values[name].append(value)
            smoothed = self.smoothed[name]
            previous = smoothed[-1] if smoothed else math.nan
            smoothed.append(
                value if math.isnan(previous) else previous + SMOOTHING * (value - previous)
            )
        self._dirty = True

    def add_validation(self, step: int, values: dict[str, float]) -> None:
        """Record a step's validation values (see :data:`VALIDATION_CURVES`)."""
        self.validation_steps.append(step)
        for name, key in VALIDATION_CURVES.items():
            self.validation[name].append(float(values.get(key, float("nan"))))
        self._dirty = True

    def _set_scale(self, _checked: bool = False) -> None:
        self._apply_scale()
        self._dirty = True
        self.redraw()

    def _apply_scale(self) -> None:
        log = self.log_scale.isChecked()
        for axes in self.axes.values():
            axes.set_yscale("log" if log else "linear")
            axes.set_ylim(0.1 if log else 0.0, 1.0)  # any scale can draw; values refit
        self._needs_full_draw = True
        self._fitted.clear()

    def redraw(self) -> None:
        """Draw the recorded values now (no-op when nothing changed, or until the canvas
        is built: it draws them then)."""
        if not self._dirty or self.canvas is None:
            return
        for name in _CURVES:
            self.raw_lines[name].set_data(self.steps, self.values[name])
            self.lines[name].set_data(self.steps, self.smoothed[name])
            self.lines[name].set_label(_latest(name, self.smoothed[name]))
        for name in VALIDATION_CURVES:
            self.lines[name].set_data(self.validation_steps, self.validation[name])
            self.lines[name].set_label(_latest(name, self.validation[name]))
        full = self._needs_full_draw or self._background is None
        full = self._fit_x_axis() or full
        for axes in self.axes.values():
            if _fit_value_axis(axes, self._needs_full_draw or axes not in self._fitted):
                self._fitted.add(axes)  # fitted to values: from now on only widened
                full = True
            full = self._update_legend(axes) or full
        if full:
            self.canvas.draw()  # renders all; _keep_background draws the curves
            self.full_draw_count += 1
            self._needs_full_draw = False
        else:
            self.canvas.restore_region(self._background)
            for axes in self.axes.values():
                _draw_curves(axes)
            # painted with the event loop's other repaints, not at once as blit() does:
            # in napari's window each repaint composes the whole window in OpenGL
            self.canvas.update()
        self.draw_count += 1
        self._dirty = False

    def _keep_background(self, _event) -> None:
        """After each full render (ours, a resize's): keep it, then draw the curves."""
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        for axes in self.axes.values():
            _draw_curves(axes)

    def _update_legend(self, axes: Axes) -> bool:
        """Show the curves with values in ``axes``'s legend, their labels up to date;
        True if it has other entries than before (it is then made anew)."""
        shown = [line for line in axes.get_lines() if line.get_label()[0] != "_"]
        shown = [line for line in shown if any(v == v for v in line.get_ydata())]
        legend = axes.get_legend()
        if self._legend_lines.get(axes) == shown:
            texts = legend.get_texts() if legend is not None else []
            for text, line in zip(texts, shown, strict=True):
                text.set_text(line.get_label())
            return False
        self._legend_lines[axes] = shown
        if shown:
            legend = axes.legend(handles=shown, fontsize=6, loc="upper right", framealpha=0.3)
            legend.set_animated(True)
        elif legend is not None:
            legend.remove()
        return True

    def _fit_x_axis(self) -> bool:
        """Span the run's steps (or widen past the last); True if the axis changed."""
        last = max(self.steps[-1:] + self.validation_steps[-1:], default=1)
        low, high = self.axes["validation"].get_xlim()
        if low == 0 and last <= high and not self._needs_full_draw:
            return False
        if self.total_steps and last <= self.total_steps:
            high = self.total_steps
        else:
            high = _padded(0, last, log=False)[1]
        for axes in self.axes.values():
            axes.set_xlim(0, high)
        return True


def _fit_value_axis(axes: Axes, refit: bool) -> bool:
    """Widen ``axes``'s value range, with :data:`HEADROOM`, if a value falls outside it
    (``refit``: fit it to the values anew); True if it changed."""
    log = axes.get_yscale() == "log"
    values = [
        value
        for line in axes.get_lines()
        for value in line.get_ydata()
        if math.isfinite(value) and (value > 0 or not log)
    ]
    if not values:
        return False
    low, high = axes.get_ylim()
    least, most = min(values), max(values)
    if low <= least and most <= high and not refit:
        return False
    axes.set_ylim(*_padded(least, most, log))
    return True


def _draw_curves(axes: Axes) -> None:
    """Draw ``axes``'s curves and legend (animated artists) onto the canvas."""
    for line in axes.get_lines():
        axes.draw_artist(line)
    if axes.get_legend() is not None:
        axes.draw_artist(axes.get_legend())


def _padded(least: float, most: float, log: bool) -> tuple[float, float]:
    """Limits around the values ``least``…``most`` with :data:`HEADROOM` each side (in
    decades on a log scale); a loss's axis stays at or above 0."""
    if log:
        low, high = _padded(math.log10(least), math.log10(most), log=False)
        return 10**low, 10**high
    room = HEADROOM * ((most - least) or abs(most) or 1.0)
    low = least - room
    return (0.0 if least >= 0 > low else low), most + room


def _latest(name: str, values: list[float]) -> str:
    """A legend entry: the curve's name and its latest value."""
    return f"{name} {values[-1]:.3g}" if values else name


def _style(axes: Axes, title: str) -> None:
    axes.set_facecolor("none")
    color = "#b0b0b0"
    for spine in axes.spines.values():
        spine.set_color(color)
    axes.tick_params(colors=color, labelsize=6)
    axes.set_title(title, color=color, fontsize=7, pad=2)
    axes.grid(alpha=0.2)
