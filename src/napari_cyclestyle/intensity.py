"""Intensity normalisation: a domain's pixel values to the network's [-1, 1] and back.

Each domain gets one :class:`IntensityNorm`, chosen at training time and stored in the
model file, so that translation maps input values exactly as training did and maps the
network's output back into the target domain's range and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

NORM_MODES = ("auto", "fixed", "percentile")
DEFAULT_PERCENTILES = (1.0, 99.8)
# Pixels drawn per image when fitting percentiles: enough for stable 0.2 % tails.
_SAMPLES_PER_IMAGE = 200_000


@dataclass(frozen=True)
class IntensityNorm:
    """Linear map of each channel from ``[low, high]`` to ``[-1, 1]``.

    Attributes
    ----------
    mode : str
        ``fixed`` (the dtype's or a given range) or ``percentile`` (fitted on data).
    low, high : tuple of float
        Per-channel values mapped to -1 and +1.
    dtype : str
        The domain's dtype (``uint8``, ``uint16``, ``float32``...): translated images
        into this domain are returned in it.
    """

    mode: str
    low: tuple[float, ...]
    high: tuple[float, ...]
    dtype: str

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high):
            raise ValueError("IntensityNorm needs as many low as high values.")
        for lo, hi in zip(self.low, self.high, strict=True):
            if not hi > lo:
                raise ValueError(f"IntensityNorm needs high > low, got low={lo}, high={hi}.")

    @property
    def n_channels(self) -> int:
        """Channels this normalisation describes."""
        return len(self.low)

    def _bounds(self, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
        low, high = np.asarray(self.low, np.float32), np.asarray(self.high, np.float32)
        if len(low) != n_channels:
            if len(low) != 1:
                raise ValueError(
                    f"This intensity normalisation has {len(low)} channels, "
                    f"the image {n_channels}."
                )
            low, high = np.repeat(low, n_channels), np.repeat(high, n_channels)
        return low[:, None, None], high[:, None, None]

    def normalize(self, planes: np.ndarray) -> np.ndarray:
        """Map ``(..., C, Y, X)`` values to float32 in [-1, 1] (values outside the range
        are clipped, as in training)."""
        low, high = self._bounds(planes.shape[-3])
        scaled = (np.asarray(planes, np.float32) - low) * (2.0 / (high - low)) - 1.0
        return np.clip(scaled, -1.0, 1.0, out=scaled)

    def denormalize(self, planes: np.ndarray) -> np.ndarray:
        """Map network output in [-1, 1] back to this domain's values and dtype.

        Integer dtypes are rounded and clipped to the dtype's range.
        """
        low, high = self._bounds(planes.shape[-3])
        values = (np.asarray(planes, np.float32) + 1.0) * ((high - low) / 2.0) + low
        dtype = np.dtype(self.dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.rint(values), info.min, info.max).astype(dtype)
        if dtype == np.bool_:
            return values > (low + high) / 2
        return values.astype(dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for model files."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IntensityNorm:
        """Inverse of :meth:`to_dict`."""
        return cls(
            mode=str(data["mode"]),
            low=tuple(float(v) for v in data["low"]),
            high=tuple(float(v) for v in data["high"]),
            dtype=str(data["dtype"]),
        )


def fit_intensity(
    samples: Sequence[np.ndarray],
    dtype: np.dtype | str,
    mode: str = "auto",
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    value_range: tuple[float, float] | None = None,
    seed: int = 0,
) -> IntensityNorm:
    """Choose the normalisation of a domain from some of its planes.

    Parameters
    ----------
    samples : sequence of ndarray
        Arrays of shape ``(P, C, Y, X)`` (or ``(C, Y, X)``) from the domain.
    dtype : numpy dtype
        The domain's dtype.
    mode : str
        ``fixed``: the dtype's full range for 8-bit and boolean data, ``value_range``
        when given, else the data's min and max. ``percentile``: per-channel
        ``percentiles`` of the data (robust to hot pixels). ``auto``: ``fixed`` for
        uint8/bool, ``percentile`` otherwise.
    percentiles : (float, float)
        Lower and upper percentile for ``percentile`` mode.
    value_range : (float, float), optional
        Explicit range for ``fixed`` mode.
    seed : int
        Seed for subsampling large images.

    Returns
    -------
    IntensityNorm

    Raises
    ------
    ValueError
        On an unknown mode, no samples, or samples holding NaN/Inf.
    """
    if mode not in NORM_MODES:
        raise ValueError(f"Unknown normalisation mode {mode!r}; choose one of {NORM_MODES}.")
    dtype = np.dtype(dtype)
    if mode == "auto":
        mode = "fixed" if dtype in (np.uint8, np.bool_) or value_range else "percentile"
    if not samples:
        raise ValueError("No images to fit the intensity normalisation on.")
    n_channels = samples[0].shape[-3]
    if mode == "fixed":
        if value_range is not None:
            low, high = (
                (float(value_range[0]),) * n_channels,
                (float(value_range[1]),) * n_channels,
            )
        elif dtype == np.uint8:
            low, high = (0.0,) * n_channels, (255.0,) * n_channels
        elif dtype == np.bool_:
            low, high = (0.0,) * n_channels, (1.0,) * n_channels
        else:
            values = _channel_values(samples, n_channels, seed)
            low = tuple(float(v.min()) for v in values)
            high = tuple(float(v.max()) for v in values)
    else:
        values = _channel_values(samples, n_channels, seed)
        low = tuple(float(np.percentile(v, percentiles[0])) for v in values)
        high = tuple(float(np.percentile(v, percentiles[1])) for v in values)
    # A constant channel would divide by zero: give it a unit-wide range around its value.
    high = tuple(hi if hi > lo else lo + 1.0 for lo, hi in zip(low, high, strict=True))
    return IntensityNorm(mode, low, high, dtype.name)


def _channel_values(samples: Sequence[np.ndarray], n_channels: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    per_channel: list[list[np.ndarray]] = [[] for _ in range(n_channels)]
    for sample in samples:
        flat = np.asarray(sample).reshape(-1, n_channels, sample.shape[-2] * sample.shape[-1])
        flat = np.moveaxis(flat, 1, 0).reshape(n_channels, -1)
        if flat.shape[1] > _SAMPLES_PER_IMAGE:
            flat = flat[:, rng.choice(flat.shape[1], _SAMPLES_PER_IMAGE, replace=False)]
        check_finite(flat, "the training images")
        for channel in range(n_channels):
            per_channel[channel].append(flat[channel].astype(np.float64))
    return [np.concatenate(values) for values in per_channel]


def check_finite(array: np.ndarray, what: str = "the image") -> None:
    """Raise ValueError if a float ``array`` holds NaN or Inf."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(
            f"{what.capitalize()} contain(s) NaN or Inf values; replace them "
            "(e.g. numpy.nan_to_num) before training or translating."
        )
