"""Where the channels are: from any image layout to a stack of (C, Y, X) planes and back.

Supported layouts: 2D gray ``(Y, X)``; RGB/RGBA ``(..., Y, X, 3|4)`` (alpha is dropped);
multichannel ``(..., C, Y, X)`` or ``(..., Y, X, C)``; and any leading axes (Z, T, ...),
which are treated plane by plane. The last two axes that are not the channel axis are
always the spatial ones.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageLayout:
    """How an image's axes map to planes, channels and pixels.

    Attributes
    ----------
    shape : tuple of int
        The image's full shape.
    channel_axis : int or None
        Non-negative index of the channel axis, or None for a single-channel image.
    n_channels : int
        Channels the network sees (alpha excluded).
    drop_alpha : bool
        True when the channel axis holds RGBA and the alpha channel is ignored.
    """

    shape: tuple[int, ...]
    channel_axis: int | None
    n_channels: int
    drop_alpha: bool = False

    @property
    def spatial_shape(self) -> tuple[int, int]:
        """(Y, X) size of every plane."""
        axes = [a for a in range(len(self.shape)) if a != self.channel_axis]
        return self.shape[axes[-2]], self.shape[axes[-1]]

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Sizes of the axes in front of each plane (Z, T, ...), channel axis excluded."""
        axes = [a for a in range(len(self.shape)) if a != self.channel_axis]
        return tuple(self.shape[a] for a in axes[:-2])

    @property
    def n_planes(self) -> int:
        """Number of 2D planes (product of the leading axes)."""
        return int(np.prod(self.leading_shape, dtype=np.int64))

    def output_shape(self, out_channels: int) -> tuple[int, ...]:
        """Shape of the translated image when the network gives ``out_channels`` channels.

        The channel axis stays where it was; a single-channel result drops it; a
        multichannel result from a single-channel image puts channels last (RGB-like).
        """
        if self.channel_axis is None:
            return self.shape if out_channels == 1 else (*self.shape, out_channels)
        if out_channels == 1:
            return tuple(s for a, s in enumerate(self.shape) if a != self.channel_axis)
        shape = list(self.shape)
        shape[self.channel_axis] = out_channels
        return tuple(shape)


def infer_layout(
    shape: tuple[int, ...],
    channel_axis: int | None = None,
    expected_channels: int | None = None,
) -> ImageLayout:
    """Work out where the channels of an image of ``shape`` are.

    Parameters
    ----------
    shape : tuple of int
        The image's shape.
    channel_axis : int, optional
        Explicit channel axis (negative values count from the end). When None, the
        channel axis is inferred: a last axis of size 3 or 4 is RGB(A); with
        ``expected_channels`` given, the last axis or the third-from-last axis of that
        size is the channel axis; otherwise the image is single-channel.
    expected_channels : int, optional
        Channels the model expects; used to infer the layout and to check it.

    Returns
    -------
    ImageLayout

    Raises
    ------
    ValueError
        If the image has fewer than two spatial axes, the channel axis is out of range,
        or the channels do not match ``expected_channels``.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if channel_axis is not None:
        if not -ndim <= channel_axis < ndim:
            raise ValueError(
                f"channel_axis={channel_axis} is out of range for an image of shape {shape}; "
                "pass the index of its channel axis, or None for a single-channel image."
            )
        channel_axis %= ndim
    else:
        channel_axis = _guess_channel_axis(shape, expected_channels)
    spatial_dims = ndim - (channel_axis is not None)
    if spatial_dims < 2:
        raise ValueError(
            f"An image needs at least two spatial axes (Y, X); got shape {shape}"
            + (f" with channel axis {channel_axis}." if channel_axis is not None else ".")
        )
    n_channels = 1 if channel_axis is None else shape[channel_axis]
    drop_alpha = False
    if channel_axis is not None and n_channels == 4 and expected_channels in (None, 3):
        if channel_axis == ndim - 1:
            drop_alpha, n_channels = True, 3
    if expected_channels is not None and n_channels != expected_channels:
        where = "no channel axis" if channel_axis is None else f"channel axis {channel_axis}"
        raise ValueError(
            f"The image of shape {shape} has {n_channels} channel(s) ({where}) but the model "
            f"expects {expected_channels}. Pass channel_axis=... if the channels are "
            f"elsewhere, or use a model trained on {n_channels}-channel images."
        )
    return ImageLayout(shape, channel_axis, n_channels, drop_alpha)


def _guess_channel_axis(shape: tuple[int, ...], expected_channels: int | None) -> int | None:
    ndim = len(shape)
    if ndim < 3:
        return None
    if expected_channels in (None, 1):
        # A last axis of 3 or 4 is RGB(A) (for a gray model: a mismatch to report).
        return ndim - 1 if shape[-1] in (3, 4) else None
    if shape[-1] == expected_channels or (expected_channels == 3 and shape[-1] == 4):
        return ndim - 1
    if shape[-3] == expected_channels:
        return ndim - 3
    if shape[0] == expected_channels:
        return 0
    return None


def to_planes(image, layout: ImageLayout):
    """Return ``image`` as a ``(P, C, Y, X)`` stack of planes (numpy or dask, no copy if
    possible), dropping alpha when the layout says so."""
    if layout.drop_alpha:
        warnings.warn("The image is RGBA: the alpha channel is ignored.", stacklevel=3)
        image = image[..., :3]
    if layout.channel_axis is None:
        image = image[..., None, :, :]
    else:
        image = _moveaxis(image, layout.channel_axis, -3)
    y, x = layout.spatial_shape
    return image.reshape((layout.n_planes, layout.n_channels, y, x))


def from_planes(planes, layout: ImageLayout):
    """Inverse of :func:`to_planes`: ``(P, C', Y, X)`` back to the image's own layout
    (with ``C'`` channels, see :meth:`ImageLayout.output_shape`)."""
    out_channels = planes.shape[1]
    y, x = layout.spatial_shape
    stacked = planes.reshape((*layout.leading_shape, out_channels, y, x))
    if out_channels == 1:
        return stacked.reshape(layout.output_shape(1))
    target_axis = layout.channel_axis if layout.channel_axis is not None else len(layout.shape)
    return _moveaxis(stacked, -3, target_axis)


def _moveaxis(array, source: int, destination: int):
    if isinstance(array, np.ndarray):
        return np.moveaxis(array, source, destination)
    import dask.array as da

    return da.moveaxis(array, source, destination)
