"""Translations as layers: how a result is shown, with the input layer's metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._common import OWN_LAYER_KEY

if TYPE_CHECKING:
    import napari.viewer

_SPATIAL_ATTRIBUTES = ("scale", "translate", "axis_labels", "units")


def add_translation(viewer: napari.viewer.Viewer, result, job: dict):
    """Add ``result``, the translation ``job`` describes, as a new layer of ``viewer``
    with the input layer's spatial metadata; return the layer.

    ``job`` holds the input ``layer``, the ``direction``, the ``model``, its
    ``source`` file, the input's ``layout`` and the ``out_channels``.
    """
    layer, direction, model = job["layer"], job["direction"], job["model"]
    result, rgb, dims = result_display(result, layer, job["layout"], job["out_channels"])
    kwargs = {}
    if dims is not None:
        kwargs = {
            name: tuple(getattr(layer, name)[d] for d in dims) for name in _SPATIAL_ATTRIBUTES
        }
    generator = "G" if direction == "AtoB" else "F"
    arrow = "A→B" if direction == "AtoB" else "B→A"
    metadata = {
        OWN_LAYER_KEY: {
            "model": job["source"],
            "direction": direction,
            "generator": generator,
            "architecture": model.config.generator,
            "steps": model.info.get("steps"),
            "input_layer": layer.name,
        }
    }
    return viewer.add_image(
        result,
        name=f"{layer.name} [{generator}: {arrow}]",
        rgb=rgb,
        metadata=metadata,
        **kwargs,
    )


def result_display(result: np.ndarray, layer, layout, out_channels: int):
    """How to show a translation of ``layer``: ``(array, rgb, dims)``.

    Three output channels become an RGB layer (channels moved last). ``dims`` lists the
    input layer's dimensions the result's layer dimensions correspond to (None when
    they do not correspond), so scale, translate, axis labels and units carry over.
    """
    channel_axis = layout.channel_axis
    # the input layer's own dimension holding the channels (RGB layers have none)
    channel_dim = None if channel_axis is None or layer.rgb else channel_axis
    kept = [d for d in range(layer.ndim) if d != channel_dim]
    if out_channels == 3:
        if channel_axis is not None and channel_axis != result.ndim - 1:
            result = np.moveaxis(result, channel_axis, -1)
        return result, True, kept
    if out_channels == 1:
        return result, False, kept
    # other channel counts stay a channel axis of the layer
    return result, False, (list(range(layer.ndim)) if channel_dim is not None else None)
