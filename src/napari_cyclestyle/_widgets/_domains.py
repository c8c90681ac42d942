"""The training widget's choice of images: the two domains and the validation images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, FileEdit, Select

from ._common import image_data, image_layers

if TYPE_CHECKING:
    import napari.viewer

# The fields scripts reach as attributes of the training widget.
DOMAIN_FIELDS = (
    "own_layers",
    "layers_a",
    "folder_a",
    "layers_b",
    "folder_b",
    "validation_layers_a",
    "validation_layers_b",
)


class DomainFields:
    """Layer lists and folders for domains A and B, and the validation layer lists.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose image layers are offered.
    hidden : callable
        The layers never to offer (a run's previews), asked each time the lists fill.
    """

    def __init__(self, viewer: napari.viewer.Viewer, hidden: Callable[[], list]):
        self.viewer = viewer
        self._hidden = hidden
        self.own_layers = CheckBox(text="offer previews and translations too", value=False)
        choices = self.image_choices
        self.layers_a = Select(label="domain A layers", choices=choices, name="layers_a")
        self.folder_a = FileEdit(label="or folder A", mode="d", nullable=True, name="folder_a")
        self.layers_b = Select(label="domain B layers", choices=choices, name="layers_b")
        self.folder_b = FileEdit(label="or folder B", mode="d", nullable=True, name="folder_b")
        self.validation_layers_a = Select(label="validate on A", choices=choices)
        self.validation_layers_b = Select(label="validate on B", choices=choices)
        for select in (
            self.layers_a,
            self.layers_b,
            self.validation_layers_a,
            self.validation_layers_b,
        ):
            select.native.setMaximumHeight(70)

    @property
    def main(self) -> list:
        """The fields shown above the settings, in order."""
        return [self.layers_a, self.folder_a, self.layers_b, self.folder_b, self.own_layers]

    def image_choices(self, _widget=None) -> list[tuple[str, object]]:
        """The image layers to offer: without the plugin's own previews and
        translations unless asked for, never the hidden layers."""
        hidden = self._hidden()
        return [
            (name, layer)
            for name, layer in image_layers(self.viewer, own=bool(self.own_layers.value))
            if layer not in hidden
        ]

    def select_sample_layers(self) -> None:
        """Preselect the sample data's two layers when nothing is chosen yet."""
        for select, tag in ((self.layers_a, "domain A"), (self.layers_b, "domain B")):
            if not select.value:
                found = [layer for _, layer in self.image_choices() if tag in layer.name]
                if found:
                    select.value = found[:1]

    def images(self, layers_a=None, layers_b=None) -> tuple[list, list, dict]:
        """Domain A's and B's images and the validation images (``validation_a`` and
        ``validation_b`` keywords of the trainer, or none).

        ``layers_a``/``layers_b`` replace the selected layers (for scripts).

        Raises
        ------
        ValueError
            If a domain has no images, validation layers are chosen for one domain
            only, or a layer is chosen for both training and validation.
        """
        layers_a = self.layers_a.value if layers_a is None else layers_a
        layers_b = self.layers_b.value if layers_b is None else layers_b
        domain_a = _domain_images("A", layers_a, self.folder_a.value)
        domain_b = _domain_images("B", layers_b, self.folder_b.value)
        return domain_a, domain_b, self._validation_images(layers_a, layers_b)

    def _validation_images(self, layers_a, layers_b) -> dict:
        held = {"A": self.validation_layers_a.value, "B": self.validation_layers_b.value}
        if not held["A"] and not held["B"]:
            return {}
        if not held["A"] or not held["B"]:
            raise ValueError("Choose validation layers for both domains (or for neither).")
        overlap = {layer.name for layer in (*held["A"], *held["B"])}
        overlap &= {layer.name for layer in (*layers_a, *layers_b)}
        if overlap:
            raise ValueError(
                f"{', '.join(sorted(overlap))}: a layer cannot be both trained and "
                "validated on; choose other validation layers."
            )
        return {
            f"validation_{name.lower()}": [image_data(layer) for layer in layers]
            for name, layers in held.items()
        }


def _domain_images(name: str, layers, folder) -> list:
    """The chosen layers' images, and the folder if one is given."""
    images = [image_data(layer) for layer in layers]
    if folder is not None and str(folder).strip():
        images.append(Path(folder))
    if not images:
        raise ValueError(f"Choose one or more image layers or a folder for domain {name}.")
    return images
