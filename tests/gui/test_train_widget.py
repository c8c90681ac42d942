"""The training widget in a real viewer: progress, previews, loss plot, stop, resume."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_cyclestyle._widgets import trained_models
from napari_cyclestyle._widgets._previews import PREVIEW_NAMES
from napari_cyclestyle._widgets.train import TrainWidget


def test_widgets_and_sample_data_open_from_the_manifest(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-cyclestyle", "brightfield_stained")
    assert [layer.name for layer in layers] == ["domain A (brightfield)", "domain B (stained)"]
    assert layers[1].rgb

    _, train = viewer.window.add_plugin_dock_widget("napari-cyclestyle", "Train CycleGAN")
    _, translate = viewer.window.add_plugin_dock_widget("napari-cyclestyle", "Translate")

    assert isinstance(train, TrainWidget)
    assert type(translate).__name__ == "TranslateWidget"
    # the sample layers are preselected
    assert train.layers_a.value == [layers[0]]
    assert train.layers_b.value == [layers[1]]
    # auto shows what it picked once torch is imported, in the background
    qtbot.waitUntil(lambda: train.device_info.value.startswith("auto → "), timeout=60_000)
    assert translate.device_info.value.startswith("auto → ")


def test_training_run_shows_progress_previews_losses_and_saves_a_model(
    viewer, train_widget, tiny_settings, wait_done, tmp_path
):
    output = tmp_path / "model.safetensors"
    tiny_settings(train_widget, output, n_steps=6)
    layers_before = list(viewer.layers)
    data_before = [layer.data.copy() for layer in layers_before]
    events = []

    train_widget.progressed.connect(events.append)
    train_widget.start()
    wait_done(train_widget)

    steps = [event.step for event in events]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert events[-1].finished and events[-1].model_path == output
    assert train_widget.progress.value == 6 and train_widget.progress.max == 6
    assert "finished" in train_widget.status.value
    # preview layers G(a) and F(b), updated in place; inputs untouched
    g_preview = viewer.layers[PREVIEW_NAMES["G"]]
    f_preview = viewer.layers[PREVIEW_NAMES["F"]]
    assert g_preview.rgb and g_preview.data.shape == (32, 64, 3)  # a | G(a)
    assert f_preview.rgb and f_preview.data.shape == (32, 64, 3)  # b | F(b)
    assert np.array_equal(g_preview.data, _preview_of(events[-1].preview, "real_A", "fake_B"))
    assert len(viewer.layers) == len(layers_before) + 2
    for layer, before in zip(layers_before, data_before, strict=True):
        assert np.array_equal(layer.data, before)
    # the previews are not offered as training domains
    offered = {layer.name for layer in train_widget.layers_a.choices}
    assert not offered & set(PREVIEW_NAMES.values())
    # the loss plot got every logged step and was drawn
    assert train_widget.loss_plot.steps == steps
    assert train_widget.loss_plot.draw_count >= 1
    # a loadable model, offered to the translate widget
    from napari_cyclestyle import load_model

    model = load_model(output)
    assert model.info["steps"] == 6
    assert trained_models.latest().path == output


def test_a_cut_run_previews_g_alone_and_offers_only_g_to_translate(
    viewer, train_widget, translate_widget, tiny_settings, wait_done, tmp_path
):
    stained = viewer.layers["domain B (stained)"].data
    gray_b = viewer.add_image(stained.mean(axis=-1).astype(np.uint8), name="domain B (gray)")
    output = tmp_path / "cut.safetensors"
    tiny_settings(train_widget, output, n_steps=2, mode="cut", nce_patches=16)
    train_widget.start(layers_a=[viewer.layers["domain A (brightfield)"]], layers_b=[gray_b])
    wait_done(train_widget)

    assert "finished" in train_widget.status.value
    assert PREVIEW_NAMES["G"] in viewer.layers and PREVIEW_NAMES["F"] not in viewer.layers
    assert {"NCE_A", "NCE_identity_B"} <= set(train_widget.last_event.losses)
    assert translate_widget.loaded_model.generator_ba is None
    directions = translate_widget.direction.native
    assert [directions.itemText(i) for i in range(directions.count())] == ["G: A → B"]
    assert "not available: F (B → A)" in translate_widget.model_info.value


def _preview_of(preview, real, fake):
    from napari_cyclestyle._widgets._previews import preview_image

    return preview_image(preview[real], preview[fake])[0]


def _pending_imports(monkeypatch, import_modules=None):
    """Replace the widgets' background imports with fresh ones, which the GUI thread
    sees as unfinished until its event loop runs; ``import_modules`` replaces the
    imports themselves."""
    from napari_cyclestyle._widgets import _startup

    if import_modules is not None:
        monkeypatch.setattr(_startup, "_import_heavy_modules", import_modules)
    imports = _startup._BackgroundImports()
    monkeypatch.setattr(_startup, "_imports", imports)
    return imports


def test_losses_added_before_the_plot_canvas_exists_are_drawn_once_it_is(qtbot, monkeypatch):
    from napari_cyclestyle._widgets._plots import LossPlot

    _pending_imports(monkeypatch)
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.add(1, {"G_adversarial": 0.5, "identity_A": 0.25, "identity_B": 0.5})
    plot.add(2, {"G_adversarial": 0.4})
    assert plot.canvas is None and plot.draw_count == 0

    qtbot.waitUntil(lambda: plot.canvas is not None)
    assert plot.draw_count == 1
    steps, values = plot.raw_lines["G adv"].get_data()
    assert list(steps) == [1, 2] and list(values) == [0.5, 0.4]
    identity = plot.raw_lines["identity"].get_ydata()
    assert identity[0] == 0.75 and np.isnan(identity[1])  # a loss not reported: no point
    # the bold line is the moving average, its latest value in the legend
    assert list(plot.lines["G adv"].get_ydata()) == pytest.approx([0.5, 0.49])
    assert plot.lines["G adv"].get_label() == "G adv 0.49"


def test_the_loss_plot_spans_the_run_and_keeps_every_value_in_view(qtbot):
    from napari_cyclestyle._widgets._plots import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    qtbot.waitUntil(lambda: plot.canvas is not None)
    plot.clear(total_steps=500)
    for step in range(10, 110, 10):
        plot.add(step, {"G_adversarial": 1.0 - step / 1000, "cycle_A": 2.0, "D_A": 0.25})
        plot.redraw()
    axes = plot.axes["generators (adversarial)"]
    assert axes.get_xlim() == (0, 500)  # the whole run from its first step
    low, high = axes.get_ylim()
    assert low <= 0.9 and high >= 1.0
    low, high = plot.axes["discriminators"].get_ylim()
    assert 0.1 < low < 0.25 < high < 0.4  # fitted to the values, not to a default 0-1

    rendered = plot.full_draw_count
    plot.add(110, {"G_adversarial": 0.95, "cycle_A": 2.0})
    plot.redraw()
    assert plot.full_draw_count == rendered  # a value in view: the curves alone drawn
    assert plot.lines["G adv"].get_label() == f"G adv {plot.smoothed['G adv'][-1]:.3g}"
    plot.add(120, {"G_adversarial": 7.5, "cycle_A": 2.0})
    plot.redraw()
    assert axes.get_ylim()[1] >= 7.5 and plot.full_draw_count == rendered + 1

    plot.log_scale.setChecked(True)
    low, high = axes.get_ylim()
    assert 0 < low <= 0.89 and high >= 7.5

    plot.clear(total_steps=200)  # the next run, shorter
    plot.add(1, {"G_adversarial": 0.5})
    plot.redraw()
    assert axes.get_xlim() == (0, 200)


def test_start_during_the_background_imports_waits_in_the_worker(
    monkeypatch, train_widget, tiny_settings, wait_done, tmp_path
):
    release = threading.Event()
    imports = _pending_imports(monkeypatch, lambda: release.wait(30))
    tiny_settings(train_widget, tmp_path / "model.safetensors", n_steps=2)
    events = []
    train_widget.progressed.connect(events.append)

    train_widget.start()

    assert not imports.done and train_widget.is_running  # start() did not wait for them
    release.set()
    wait_done(train_widget)
    assert [event.step for event in events] == [1, 2] and events[-1].finished


def test_stop_mid_run_saves_a_loadable_model(train_widget, tiny_settings, wait_done, tmp_path):
    output = tmp_path / "stopped.safetensors"
    tiny_settings(train_widget, output, n_steps=100_000)
    train_widget.start()
    _wait_for_step(train_widget, 3)

    train_widget.stop()
    wait_done(train_widget)

    from napari_cyclestyle import load_model

    last = train_widget.last_event
    assert last.finished and last.step < 100_000
    assert load_model(output).info["steps"] == last.step
    assert output.with_name("stopped.checkpoint.pt").is_file()
    assert "stopped" in train_widget.status.value


def test_pause_holds_the_step_and_resume_continues(
    qtbot, train_widget, tiny_settings, wait_done, tmp_path
):
    tiny_settings(train_widget, tmp_path / "paused.safetensors", n_steps=100_000)
    train_widget.start()
    _wait_for_step(train_widget, 2)

    train_widget.pause()
    qtbot.waitUntil(lambda: train_widget.worker.is_paused, timeout=10_000)
    qtbot.wait(100)  # events already queued arrive
    held = train_widget.last_event.step
    qtbot.wait(400)
    assert train_widget.last_event.step == held
    assert train_widget.pause_button.text == "Resume"

    train_widget.pause()  # resumes
    _wait_for_step(train_widget, held + 2)
    train_widget.stop()
    wait_done(train_widget)
    assert train_widget.last_event.finished


def test_resume_continues_from_the_checkpoint(train_widget, tiny_settings, wait_done, tmp_path):
    output = tmp_path / "model.safetensors"
    tiny_settings(train_widget, output, n_steps=3)
    train_widget.start()
    wait_done(train_widget)
    checkpoint = output.with_name("model.checkpoint.pt")
    assert checkpoint.is_file()

    train_widget.resume.value = checkpoint
    train_widget.n_steps.value = 5
    events = []
    train_widget.progressed.connect(events.append)
    train_widget.start()
    wait_done(train_widget)

    assert [event.step for event in events] == [4, 5]
    from napari_cyclestyle import load_model

    assert load_model(output).info["steps"] == 5


def test_closing_the_viewer_during_training_stops_and_saves(
    viewer, tiny_settings, qtbot, tmp_path
):
    _, widget = viewer.window.add_plugin_dock_widget("napari-cyclestyle", "Train CycleGAN")
    output = tmp_path / "closed.safetensors"
    tiny_settings(widget, output, n_steps=100_000)
    widget.start()
    _wait_for_step(widget, 2)

    viewer.close()

    assert not widget.is_running
    assert output.is_file()
    assert trained_models.latest().path == output


def test_closing_the_widget_during_training_stops_and_saves(
    viewer, tiny_settings, qtbot, tmp_path
):
    _, widget = viewer.window.add_plugin_dock_widget("napari-cyclestyle", "Train CycleGAN")
    output = tmp_path / "closed.safetensors"
    tiny_settings(widget, output, n_steps=100_000)
    widget.start()
    _wait_for_step(widget, 2)

    viewer.window.remove_dock_widget(widget.native)

    assert not widget.is_running
    assert output.is_file()


def test_bad_layers_show_an_error_and_change_nothing(viewer, train_widget, errors, tmp_path):
    labels = viewer.add_labels(np.zeros((32, 32), np.uint8), name="labels")
    layers_before = list(viewer.layers)

    train_widget.output.value = tmp_path / "never.safetensors"
    train_widget.start(layers_a=[labels])
    train_widget.layers_b.value = []
    train_widget.start()

    assert any("Labels layer" in message for message in errors)
    assert any("domain B" in message for message in errors)
    assert not train_widget.is_running
    assert list(viewer.layers) == layers_before


def test_a_failing_run_shows_an_error_and_removes_its_previews(
    viewer, train_widget, tiny_settings, wait_done, errors, tmp_path
):
    # unet_256 needs 256-pixel crops: the core refuses, from inside the worker
    tiny_settings(train_widget, tmp_path / "bad.safetensors", generator="unet_256")
    layers_before = list(viewer.layers)
    train_widget.start()
    wait_done(train_widget)

    assert errors and errors[-1].startswith("Training failed")
    assert list(viewer.layers) == layers_before
    assert train_widget.start_button.enabled


def test_the_window_stays_responsive_while_training(
    qtbot, train_widget, tiny_settings, wait_done, tmp_path
):
    from qtpy.QtCore import QTimer

    tiny_settings(
        train_widget,
        tmp_path / "responsive.safetensors",
        n_steps=100_000,
        generator="encoder_decoder",
        ngf=8,
        ndf=8,
        crop_size=64,
        preview_every=3,
        log_every=1,
    )
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    # Measured once the preview layers exist: napari adding a layer to this test's
    # hidden window (in software GL under Xvfb) costs 0.3-0.7 s once, which is napari's;
    # benchmarks/bench_viewer.py measures a shown window from Start. From then on:
    # in-place previews, loss plots and progress (gaps of 0.15 s at most here).
    train_widget.start()
    qtbot.waitUntil(lambda: len(train_widget._preview_layers) == 2, timeout=60_000)
    first_step = train_widget.last_event.step
    timer.start()
    started = time.perf_counter()
    while time.perf_counter() - started < 60 and (
        time.perf_counter() - started < 3 or train_widget.last_event.step < first_step + 6
    ):
        qtbot.wait(50)
    timer.stop()
    steps_done = train_widget.last_event.step - first_step
    still_running = train_widget.is_running
    train_widget.stop()
    wait_done(train_widget)

    gaps = np.diff(ticks)
    assert still_running and steps_done >= 3, "training did not run during the measurement"
    worst = int(np.argmax(gaps))
    assert gaps.max() < 0.3, (
        f"the GUI froze for {gaps.max():.2f} s, "
        f"{ticks[worst] - started:.2f} s into the measurement"
    )


def _wait_for_step(widget, step, timeout=60_000):
    from pytestqt.qtbot import QtBot  # noqa: F401  (qtbot's wait loop, without a fixture)
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout / 1000
    while time.monotonic() < deadline:
        QApplication.processEvents()
        event = widget.last_event
        if event is not None and event.step >= step:
            return
        if not widget.is_running:
            raise AssertionError(f"training ended before step {step}")
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout} ms")


def test_the_advanced_fold_offers_the_methods_at_the_configurations_defaults(qtbot):
    from napari_cyclestyle._widgets._train_fields import TrainingFields
    from napari_cyclestyle.config import Config

    fields = TrainingFields()
    qtbot.addWidget(fields.advanced.native)
    config = fields.config()
    defaults = Config()  # the quality benchmark's choice
    assert config.model.upsampling == defaults.model.upsampling == "resize"
    assert config.train.ema_decay == defaults.train.ema_decay
    assert config.train.lambda_structure == defaults.train.lambda_structure
    assert config.train.learning_rate == defaults.train.learning_rate
    assert config.train.mode == "cyclegan" and not config.model.spectral_norm
    fields.upsampling.value, fields.spectral_norm.value = "transposed", True
    fields.ema_decay.value, fields.lambda_r1.value, fields.r1_every.value = 0.99, 1.0, 4
    fields.lambda_structure.value, fields.diff_augment.value = 2.0, "translation, cutout"
    fields.lambda_nce.value, fields.nce_patches.value = 1.0, 64
    fields.mode.value = "fastcut"
    config = fields.config()
    assert (config.model.upsampling, config.model.spectral_norm) == ("transposed", True)
    assert config.train.ema_decay == 0.99 and config.train.r1_every == 4
    assert config.train.lambda_r1 == 1.0 and config.train.lambda_structure == 2.0
    assert config.train.augment_policies == ("translation", "cutout")
    assert config.train.lambda_nce == 1.0 and config.train.nce_patches == 64
    assert config.train.mode == "fastcut"


def test_a_burst_of_events_updates_the_dock_once_and_the_last_event_shows_all(
    train_widget, viewer
):
    from napari_cyclestyle import TrainEvent

    train_widget.panel.min_interval = 3600  # every event after the first comes "too soon"
    train_widget.panel.starting(total_steps=10)

    def event(step, finished=False):
        patch = np.full((1, 8, 8), step / 10, np.float32)
        return TrainEvent(
            step,
            10,
            1e-3,
            step,
            10 - step,
            1.0,
            losses={"G_adversarial": step / 10},
            preview={"real_A": patch, "fake_B": patch},
            finished=finished,
        )

    train_widget._on_yielded(event(1))
    preview = train_widget._preview_layers["G"]
    train_widget._on_yielded(event(2))
    assert train_widget.progress.value == 1 and preview.data.max() == pytest.approx(0.1)
    assert train_widget.loss_plot.steps == [1, 2]  # recorded, drawn with the next update
    train_widget._on_yielded(event(10, finished=True))
    assert train_widget.progress.value == 10 and preview.data.max() == pytest.approx(1.0)
    assert list(train_widget.loss_plot.lines["G adv"].get_xdata()) == [1, 2, 10]


def test_progress_is_shown_a_few_times_a_second_and_always_at_the_end(qtbot):
    from napari_cyclestyle import TrainEvent
    from napari_cyclestyle._widgets._run_panel import RunPanel

    panel = RunPanel(min_interval=3600)
    panel.starting(total_steps=10)

    def event(step, finished=False):
        return TrainEvent(step, 10, 1e-3, step, 10 - step, 1.0, finished=finished)

    panel.show(event(1))
    assert panel.progress.value == 1 and panel.status.value.startswith("step 1/10")
    panel.show(event(2))  # too soon after the last update: the dock is not redrawn
    assert panel.progress.value == 1
    panel.show(event(10, finished=True))
    assert panel.progress.value == 10 and panel.status.value.startswith("step 10/10")


def test_overlapping_background_work_gives_the_gil_interval_back_when_the_last_ends():
    import sys

    from napari_cyclestyle._widgets._background import GIL_SWITCH_INTERVAL, in_the_background

    before = sys.getswitchinterval()
    training, translation = in_the_background(), in_the_background()
    training.__enter__()
    translation.__enter__()
    training.__exit__(None, None, None)  # the training ends first
    assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL  # the translation still runs
    translation.__exit__(None, None, None)
    assert sys.getswitchinterval() == before
