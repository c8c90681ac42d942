"""The training widget helps judge a run: validation curves, health warnings, remembered
settings, and domain lists without the plugin's own layers."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_cyclestyle.health import HealthWarning
from napari_cyclestyle.trainer import TrainEvent

PLUGIN = "napari-cyclestyle"


def test_validation_values_are_plotted_beside_the_losses(
    train_widget, tiny_settings, wait_done, tmp_path
):
    tiny_settings(train_widget, tmp_path / "m.safetensors", validation_fraction=0.25)
    train_widget.validation_every.value = 2
    train_widget.start()
    wait_done(train_widget)
    plot = train_widget.loss_plot
    assert plot.validation_steps == [2, 4]
    assert all(np.isfinite(plot.validation["val cycle A"]))
    assert (tmp_path / "m.best.safetensors").is_file()
    plot.log_scale.setChecked(True)
    assert all(axes.get_yscale() == "log" for axes in plot.axes.values())


def test_a_health_warning_is_a_notification_and_a_line(train_widget):
    seen = []

    def record(notification):
        if notification.severity == NotificationSeverity.WARNING:
            seen.append(str(notification.message))

    warning = HealthWarning("mode_collapse", 7, "Mode collapse: G's outputs ...", "a lower lr.")
    event = TrainEvent(7, 10, 2e-4, 1.0, 1.0, 7.0, warnings=[warning])
    notification_manager.notification_ready.connect(record)
    try:
        train_widget._on_yielded(event)
    finally:
        notification_manager.notification_ready.disconnect(record)
    assert seen and "Mode collapse" in seen[0] and "Try: a lower lr." in seen[0]
    assert "Mode collapse" in train_widget.health.value


def test_settings_survive_closing_and_reopening_in_a_fresh_viewer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train CycleGAN")
    defaults = {"ngf": widget.ngf.value, "learning_rate": widget.learning_rate.value}
    widget.generator.value = "unet_128"
    widget.ngf.value = 24
    widget.learning_rate.value = 1e-3
    widget.keep_best.value = False
    widget.output.value = tmp_path / "remembered.safetensors"
    viewer.close()

    fresh = make_napari_viewer()
    _, reopened = fresh.window.add_plugin_dock_widget(PLUGIN, "Train CycleGAN")
    assert reopened.generator.value == "unet_128"
    assert reopened.ngf.value == 24
    assert reopened.learning_rate.value == pytest.approx(1e-3)
    assert reopened.keep_best.value is False
    assert reopened.output.value == tmp_path / "remembered.safetensors"

    reopened.reset_button.clicked.emit()
    assert reopened.ngf.value == defaults["ngf"]
    assert reopened.learning_rate.value == pytest.approx(defaults["learning_rate"])
    _, again = fresh.window.add_plugin_dock_widget(PLUGIN, "Train CycleGAN", tabify=True)
    assert again.ngf.value == defaults["ngf"] and again.keep_best.value is True


def test_domain_lists_leave_out_the_plugins_own_layers(viewer, train_widget):
    translated = viewer.add_image(
        np.zeros((8, 8)), name="x [G: A→B]", metadata={"cyclestyle": {"direction": "AtoB"}}
    )
    offered = [layer.name for layer in train_widget.layers_a.choices]
    assert translated.name not in offered and "domain A (brightfield)" in offered
    train_widget.own_layers.value = True
    assert translated.name in [layer.name for layer in train_widget.layers_b.choices]


def test_validation_layers_are_kept_out_and_validated_on(
    viewer, train_widget, tiny_settings, wait_done, errors, sample_arrays, tmp_path
):
    held_a = viewer.add_image(sample_arrays[0][:1].copy(), name="held A")
    held_b = viewer.add_image(sample_arrays[1][:1].copy(), name="held B", rgb=True)
    tiny_settings(train_widget, tmp_path / "m.safetensors", n_steps=2)
    train_widget.validation_layers_a.value = [viewer.layers["domain A (brightfield)"]]
    train_widget.validation_layers_b.value = [held_b]
    train_widget.start()
    assert not train_widget.is_running and "both trained and validated" in errors[-1]

    train_widget.validation_layers_a.value = [held_a]
    train_widget.start()
    wait_done(train_widget)
    assert train_widget.loss_plot.validation_steps == [2]
    assert train_widget.last_event.validation is not None


def test_the_methods_terms_are_plotted_only_in_runs_that_have_them(qtbot):
    from napari_cyclestyle._widgets._plots import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plain = {"G_adversarial": 0.9, "cycle_A": 2.0, "identity_A": 0.5, "identity_B": 0.25}
    plot.add(1, plain)
    plot.add(2, {**plain, "structure_A": 0.5, "structure_B": 0.25, "R1_A": 0.125})
    assert plot.values["identity"] == [0.75, 0.75]
    assert np.isnan(plot.values["structure"][0]) and plot.values["structure"][1] == 0.75
    assert plot.smoothed["structure"][1] == 0.75  # the average starts at the first value
    assert plot.values["R1"][1] == 0.125 and np.isnan(plot.values["PatchNCE"]).all()
