"""The npe2 manifest is valid and names what the plugin offers."""

from npe2 import PluginManifest


def test_manifest_is_valid_and_declares_the_widgets_and_sample_data():
    manifest = PluginManifest.from_distribution("napari-cyclestyle")
    assert manifest.name == "napari-cyclestyle"
    widgets = {widget.display_name for widget in manifest.contributions.widgets}
    assert widgets == {"Train CycleGAN", "Translate"}
    assert [sample.key for sample in manifest.contributions.sample_data] == ["brightfield_stained"]
    for command in manifest.contributions.commands:
        assert command.python_name.startswith("napari_cyclestyle.")


def test_importing_the_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, napari_cyclestyle; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False"
