"""The training widget in a real viewer: cold open, event-loop gaps, in-viewer speed.

Run it under an X server (``xvfb-run -a``), with nothing else running::

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python benchmarks/bench_viewer.py

Every measurement runs in its own fresh process:

- **cold open**: ``add_plugin_dock_widget`` for a widget, to the end of the event
  loop's pass that paints its dock, in a process that has built a viewer but not
  imported torch, as a user's first click is (each widget first in its own process;
  the other is opened next, while the background imports run);
- **viewer run**: the sample data, the training widget with its defaults (``--steps``
  and ``--decay`` shorten it), Start; a 20 ms Qt timer records the event loop's ticks
  from pressing Start to the last event, and the gaps between them are the freezes a
  user sees (``--no-preview`` turns the previews off);
- **plain run**: the same settings from Python, ``Trainer(...).run()`` on the same
  data, with the thread count the widget used.

The speed compared is ``TrainEvent.steps_per_second`` of the last event (steps over
the trainer's own training time), the figure the widget shows. Figures, the CPU and
its ISA are printed (and with ``--json``, written).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import statistics
import subprocess
import sys
import time

PLUGIN = "napari-cyclestyle"
WIDGETS = ("Train CycleGAN", "Translate")


def _child_cold_open(names: list[str]) -> dict:
    import napari
    from qtpy.QtCore import QEvent, QObject

    class FirstPaint(QObject):
        painted = False

        def eventFilter(self, watched, event):  # noqa: N802 (Qt's name)
            self.painted = self.painted or event.type() == QEvent.Type.Paint
            return False

    viewer = napari.Viewer()
    app = napari.qt.get_qapp()
    app.processEvents()
    assert "torch" not in sys.modules, "the viewer alone imported torch"
    opened = {}
    for name in names:
        started = time.perf_counter()
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        paint = FirstPaint()
        widget.native.installEventFilter(paint)
        while not paint.painted:  # to the dock's first paint: usable from then on
            app.processEvents()
        app.processEvents()  # what the paint posted
        opened[name] = time.perf_counter() - started
    viewer.close()
    return {"open_seconds": opened}


def _child_viewer_run(steps: int, decay: int, preview: bool) -> dict:
    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    viewer = napari.Viewer()
    app = napari.qt.get_qapp()
    viewer.open_sample(PLUGIN, "brightfield_stained")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train CycleGAN")
    app.processEvents()
    from napari_cyclestyle._widgets._startup import wait_for_imports

    wait_for_imports()  # the cold open is measured apart; here the run alone
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    widget.n_steps.value, widget.n_steps_decay.value = steps, decay
    if not preview:
        widget.preview_every.value = 0
    for experiment in os.environ.get("BENCH_VIEWER_OFF", "").split(","):
        if experiment == "plot":
            widget.loss_plot.add = lambda *args: None
        elif experiment.startswith("interval"):  # seconds between dock updates
            widget.panel.min_interval = float(experiment[len("interval") :])
        elif experiment.startswith("threads"):
            import torch

            torch.set_num_threads(int(experiment[len("threads") :]))
        elif experiment == "label":
            widget.panel.status = type("L", (), {"value": ""})()
        elif experiment == "bar":
            widget.panel.progress = type("P", (), {"value": 0, "max": 0})()
    widget.output.value = os.path.join(os.environ["BENCH_DIR"], "viewer.safetensors")
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    started = time.perf_counter()
    ticks.append(started)
    window_cpu = _window_cpu_seconds()
    widget.start()
    waiting = QEventLoop()
    widget.worker.finished.connect(waiting.quit)
    waiting.exec()
    ticks.append(time.perf_counter())
    timer.stop()
    window_cpu = [b - a for a, b in zip(window_cpu, _window_cpu_seconds(), strict=True)]
    import numpy as np
    import torch

    gaps = np.diff(ticks)
    worst = np.argsort(gaps)[::-1][:5]
    event = widget.last_event
    result = {
        "threads": torch.get_num_threads(),
        "steps": event.step,
        "steps_per_second": event.steps_per_second,
        "wall_seconds": ticks[-1] - started,
        "largest_gaps": [[float(gaps[i]), float(ticks[i] - started)] for i in worst],
        "gaps_over_0.25s": int((gaps > 0.25).sum()),
        "gui_thread_cpu_seconds": window_cpu[0],
        "gl_threads_cpu_seconds": window_cpu[1],
        "config": widget.config().to_dict(),
    }
    viewer.close()
    return result


def _window_cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far of the GUI thread (call it there) and of Mesa's software
    OpenGL threads (``llvmpipe-N``): the window's work, which the training shares the
    cores with."""
    gl = 0.0
    for stat in glob.glob("/proc/self/task/*/stat"):
        with contextlib.suppress(OSError):
            with open(stat) as file:
                text = file.read()
            name, fields = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1]
            if name.startswith("llvmpipe"):
                utime, stime = fields.split()[11:13]
                gl += (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")
    return time.thread_time(), gl


def _child_plain_run(config: dict, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from napari_cyclestyle import Config, Trainer
    from napari_cyclestyle._sample_data import sample_domains

    config = Config.from_dict(config)
    output = os.path.join(os.environ["BENCH_DIR"], "plain.safetensors")
    *_, event = Trainer(*sample_domains(), config, output=output).run()
    return {"threads": threads, "steps": event.step, "steps_per_second": event.steps_per_second}


def _in_child(kind: str, *arguments) -> dict:
    """Run one measurement in a fresh process; its result."""
    command = [sys.executable, __file__, "--child", kind, json.dumps(arguments)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="n_steps (widget default 300)")
    parser.add_argument("--decay", type=int, default=300, help="n_steps_decay (default 300)")
    parser.add_argument("--no-preview", action="store_true", help="preview_every 0")
    parser.add_argument("--rounds", type=int, default=1, help="viewer/plain pairs")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, arguments = args.child[0], json.loads(args.child[1])
        function = {"cold": _child_cold_open, "viewer": _child_viewer_run}.get(
            kind, _child_plain_run
        )
        print("RESULT " + json.dumps(function(*arguments)), flush=True)
        return

    import tempfile

    import torch
    from bench import machine_facts  # this script's folder is on sys.path

    machine = machine_facts() | {"isa": torch.backends.cpu.get_cpu_capability()}
    results: dict = {"machine": machine, "cold_open": [], "viewer": [], "plain": []}
    with tempfile.TemporaryDirectory() as folder:
        os.environ["BENCH_DIR"] = folder
        for name in WIDGETS:  # each the first widget opened in its process
            results["cold_open"].append(_in_child("cold", [name, *set(WIDGETS) - {name}]))
        for _ in range(args.rounds):
            run = _in_child("viewer", args.steps, args.decay, not args.no_preview)
            results["viewer"].append(run)
            results["plain"].append(_in_child("plain", run["config"], run["threads"]))
    print(f"CPU: {machine['cpu']}, {machine['cpu_count']} cores, ISA {machine['isa']}")
    for name, opened in zip(WIDGETS, results["cold_open"], strict=True):
        first, second = opened["open_seconds"].items()
        print(
            f"cold open '{name}': {first[1]:.2f} s (then '{second[0]}', torch importing "
            f"meanwhile: {second[1]:.2f} s)"
        )
    ratios = [
        viewer["steps_per_second"] / plain["steps_per_second"]
        for viewer, plain in zip(results["viewer"], results["plain"], strict=True)
    ]
    for viewer, plain, ratio in zip(results["viewer"], results["plain"], ratios, strict=True):
        gaps = ", ".join(f"{gap:.2f} s at {at:.1f} s" for gap, at in viewer["largest_gaps"])
        print(
            f"{viewer['steps']} steps, {viewer['threads']} thread(s): viewer "
            f"{viewer['steps_per_second']:.2f} steps/s, plain {plain['steps_per_second']:.2f}"
            f" ({ratio:.0%}); wall {viewer['wall_seconds']:.1f} s; gaps over 0.25 s: "
            f"{viewer['gaps_over_0.25s']}; largest: {gaps}; window CPU: GUI thread "
            f"{viewer['gui_thread_cpu_seconds'] / viewer['wall_seconds']:.1%}, software GL "
            f"{viewer['gl_threads_cpu_seconds'] / viewer['wall_seconds']:.1%} of a core"
        )
    if args.rounds > 1:
        largest = max(run["largest_gaps"][0][0] for run in results["viewer"])
        print(
            f"over {args.rounds} rounds: viewer/plain median {statistics.median(ratios):.0%}"
            f" (min {min(ratios):.0%}); largest gap {largest:.2f} s"
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
