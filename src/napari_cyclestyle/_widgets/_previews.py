"""The preview layers of a training run: each domain's fixed patch beside its
translation (a one-sided run: domain A's alone), added beside the data and updated in
place as training goes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._common import OWN_LAYER_KEY

PREVIEW_NAMES = {"G": "preview: a | G(a)", "F": "preview: b | F(b)"}


class PreviewLayers:
    """The ``preview: a | G(a)`` and ``preview: b | F(b)`` layers in ``viewer``.

    ``on_added`` is called after a layer is added (the layer list changed);
    ``is_closed`` says whether the widget has gone (then nothing more is drawn).
    """

    def __init__(self, viewer, on_added: Callable[[], None], is_closed: Callable[[], bool]):
        self.viewer = viewer
        self.layers: dict = {}  # "G"/"F" → the preview layers of the last run
        self.added: list = []  # layers added by the current run
        self._on_added, self._is_closed = on_added, is_closed

    def remove_added(self) -> None:
        """Take the layers this run added out of the viewer (leave it as it was)."""
        for layer in self.added:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.added = []
        self.layers = {k: v for k, v in self.layers.items() if v in self.viewer.layers}

    def show(self, preview: dict, crop_size: int, all_at_once: bool = False) -> bool:
        """Show a training event's ``preview`` (patches of ``crop_size``): G's and F's,
        or a one-sided run's (no F) G's alone. Layers are updated in place; adding one
        takes napari 60-150 ms, so a call adds at most one (``all_at_once``: all), and
        returns False while another is still to add (show a preview again later)."""
        added = False
        for key, real, fake in (("G", "real_A", "fake_B"), ("F", "real_B", "fake_A")):
            if fake not in preview or self._is_closed():
                continue
            image, rgb = preview_image(preview[real], preview[fake])
            layer = self.layers.get(key)
            shown = layer is not None and layer in self.viewer.layers
            if shown and layer.rgb == rgb and layer.data.shape == image.shape:
                layer.data = image
                if not rgb:
                    layer.reset_contrast_limits()
                continue
            if added and not all_at_once:
                return False
            if shown:
                self.viewer.layers.remove(layer)
            self.layers[key] = layer = self.viewer.add_image(
                image,
                name=PREVIEW_NAMES[key],
                rgb=rgb,
                translate=self._origin(key, crop_size),
                metadata={OWN_LAYER_KEY: {"preview": key}},
            )
            self.added.append(layer)
            self._on_added()  # the layer list changed before the preview was known
            added = True
        return True

    def _origin(self, key: str, crop_size: int) -> tuple[float, float]:
        """Beside the data: right of everything else, G above F."""
        others = [layer for layer in self.viewer.layers if layer not in self.layers.values()]
        right, top = 0.0, 0.0
        for layer in others:
            extent = layer.extent.world
            right = max(right, float(extent[1][-1]))
            top = min(top, float(extent[0][-2]))
        return (top + (0 if key == "G" else crop_size + 8), right + 16)


def preview_image(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, bool]:
    """Put a ``(C, Y, X)`` input patch and its translation side by side for display.

    Returns the image and whether it is RGB. Gray beside RGB is shown as RGB; other
    channel counts (or differing dtypes) show the translation alone, channels first.
    """

    def display(patch):
        if patch.shape[0] == 1:
            return patch[0], False
        if patch.shape[0] == 3:
            return np.moveaxis(patch, 0, -1), True
        return patch, False

    (real_view, real_rgb), (fake_view, fake_rgb) = display(real), display(fake)
    usable = real.shape[0] in (1, 3) and fake.shape[0] in (1, 3) and real.dtype == fake.dtype
    if not usable:
        return fake_view, fake_rgb
    rgb = real_rgb or fake_rgb
    if rgb:
        real_view = real_view if real_rgb else np.repeat(real_view[..., None], 3, -1)
        fake_view = fake_view if fake_rgb else np.repeat(fake_view[..., None], 3, -1)
    return np.concatenate([real_view, fake_view], axis=1), rgb
