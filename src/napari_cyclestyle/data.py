"""Training data: the images of one domain, random patches drawn from them, and the
training batches of two domains (:class:`PatchStreams`).

A :class:`Domain` holds images given as arrays (numpy, dask, napari layer data), files
or folders. Files are read lazily, a few at a time, so a folder larger than memory can
train. Patches are drawn uniformly over all pixels of all planes of all images, scaled
to [-1, 1] with the domain's :class:`~napari_cyclestyle.intensity.IntensityNorm`, and
randomly flipped/rotated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import Config
from .intensity import IntensityNorm, check_finite, fit_intensity
from .io import TIFF_SUFFIXES, list_images, read_image
from .layout import ImageLayout, infer_layout, to_planes

if TYPE_CHECKING:
    import torch

# Images used to fit a domain's intensity normalisation (chosen evenly from the domain).
_NORM_FIT_IMAGES = 8


class ImageSource:
    """One image of a domain: an in-memory (or dask) array, or a file read on demand."""

    def __init__(self, image, channel_axis: int | None = None, expected_channels=None):
        if isinstance(image, str | os.PathLike):
            self.path: Path | None = Path(image)
            shape, dtype = _file_shape_dtype(self.path)
            self._array = None
        else:
            self.path = None
            if not hasattr(image, "shape") or not hasattr(image, "dtype"):
                image = np.asarray(image)
            shape, dtype = image.shape, np.dtype(image.dtype)
            self._array = image
        if dtype.kind not in "biuf":
            raise ValueError(f"{self.name}: images of dtype {dtype} are not supported.")
        self.dtype = np.dtype(dtype)
        self.layout: ImageLayout = infer_layout(shape, channel_axis, expected_channels)

    @property
    def name(self) -> str:
        """The file name, or a description of the array."""
        return str(self.path) if self.path is not None else "array"

    @property
    def n_pixels(self) -> int:
        """Pixels over all planes (one channel)."""
        y, x = self.layout.spatial_shape
        return self.layout.n_planes * y * x

    def planes(self):
        """The image as a ``(P, C, Y, X)`` array (lazy for dask inputs)."""
        array = _read_file(self.path) if self.path is not None else self._array
        return to_planes(array, self.layout)

    def patch(self, plane: int, top: int, left: int, size: int) -> np.ndarray:
        """Read one ``(C, size, size)`` patch, reflect-padding planes smaller than size."""
        y, x = self.layout.spatial_shape
        data = self.planes()[plane, :, top : top + size, left : left + size]
        data = np.asarray(data)
        pad_y, pad_x = size - data.shape[-2], size - data.shape[-1]
        if pad_y > 0 or pad_x > 0:
            mode = "reflect" if min(y, x) > 1 else "edge"
            data = np.pad(data, ((0, 0), (0, max(pad_y, 0)), (0, max(pad_x, 0))), mode=mode)
        return data


class Domain:
    """The images of one domain, with their intensity normalisation.

    Parameters
    ----------
    images : array, path, or a sequence of them
        Arrays (numpy, dask, a napari layer's data), image files, folders of images
        (TIFF/PNG/JPEG/BMP), or a ``.txt`` file listing image paths one per line.
    name : str
        ``"A"`` or ``"B"``, used in messages.
    channel_axis : int, optional
        Channel axis of every image; inferred (RGB(A) last axis, else single channel)
        when None.
    norm : IntensityNorm or str
        A ready normalisation, or the mode to fit one: ``auto``, ``fixed``, ``percentile``.

    Raises
    ------
    ValueError
        If there are no images, a path does not exist, or the images disagree in
        channel count or dtype.
    """

    def __init__(
        self,
        images,
        name: str = "A",
        channel_axis: int | None = None,
        norm: IntensityNorm | str = "auto",
    ):
        self.name = name
        items = list(_expand(images, name))
        if not items:
            raise ValueError(f"Domain {name} has no images.")
        self._set_sources([ImageSource(item, channel_axis) for item in items], norm)

    def _set_sources(self, sources: list[ImageSource], norm: IntensityNorm | str) -> None:
        """Check that ``sources`` agree, weight them by size and fit (or keep) the norm."""
        name = self.name
        self.sources = sources
        first = self.sources[0]
        for source in self.sources[1:]:
            if source.layout.n_channels != first.layout.n_channels:
                raise ValueError(
                    f"Domain {name} mixes images with {first.layout.n_channels} channel(s) "
                    f"({first.name}) and {source.layout.n_channels} ({source.name}); "
                    "all images of a domain need the same channels."
                )
            if source.dtype != first.dtype:
                raise ValueError(
                    f"Domain {name} mixes dtypes {first.dtype} ({first.name}) and "
                    f"{source.dtype} ({source.name}); convert them to one dtype."
                )
        self.n_channels = first.layout.n_channels
        self.dtype = first.dtype
        self._weights = np.array([s.n_pixels for s in self.sources], np.float64)
        self._weights /= self._weights.sum()
        if isinstance(norm, IntensityNorm):
            self.norm = norm
        else:
            chosen = np.linspace(0, len(self.sources) - 1, _NORM_FIT_IMAGES).round()
            samples = [
                np.asarray(self.sources[i].planes()) for i in sorted(set(chosen.astype(int)))
            ]
            self.norm = fit_intensity(samples, self.dtype, mode=norm)

    def sample(
        self, rng: np.random.Generator, batch_size: int, crop_size: int, augment: bool = True
    ) -> np.ndarray:
        """Draw ``batch_size`` normalised patches, float32 ``(B, C, crop, crop)``."""
        patches = np.empty((batch_size, self.n_channels, crop_size, crop_size), np.float32)
        for i in range(batch_size):
            patch = self.read_patch(self.draw_position(rng, crop_size), crop_size)
            if augment:
                patch = np.rot90(patch, int(rng.integers(4)), axes=(-2, -1))
                if rng.integers(2):
                    patch = patch[..., ::-1]
            patches[i] = patch
        return patches

    def draw_position(self, rng: np.random.Generator, crop_size: int) -> tuple[int, ...]:
        """A random patch position ``(source, plane, top, left)``, uniform over pixels."""
        index = int(rng.choice(len(self.sources), p=self._weights))
        source = self.sources[index]
        y, x = source.layout.spatial_shape
        plane = int(rng.integers(source.layout.n_planes))
        top = int(rng.integers(max(y - crop_size, 0) + 1))
        left = int(rng.integers(max(x - crop_size, 0) + 1))
        return index, plane, top, left

    def read_patch(self, position: tuple[int, ...], crop_size: int) -> np.ndarray:
        """The normalised float32 ``(C, crop, crop)`` patch at a :meth:`draw_position`."""
        index, plane, top, left = position
        raw = self.sources[index].patch(plane, top, left, crop_size)
        check_finite(raw, f"the images of domain {self.name}")
        return self.norm.normalize(raw)

    def split(self, fraction: float) -> tuple[Domain, Domain]:
        """Keep ``fraction`` of the image planes out: ``(training, held_out)`` domains.

        The held-out planes are spread evenly over the domain (the same ones every
        time); both parts keep this domain's normalisation.

        Raises
        ------
        ValueError
            If the domain has a single image plane, which cannot be split.
        """
        units = [(i, p) for i, s in enumerate(self.sources) for p in range(s.layout.n_planes)]
        if len(units) < 2:
            raise ValueError(
                f"Domain {self.name} has a single image plane: it cannot keep a fraction "
                "out for validation; give validation images instead."
            )
        count = min(max(1, round(fraction * len(units))), len(units) - 1)
        chosen = np.linspace(0, len(units) - 1, count + 2)[1:-1].round().astype(int)
        held = {units[i] for i in chosen}
        parts: tuple[list[ImageSource], list[ImageSource]] = ([], [])
        for index, source in enumerate(self.sources):
            planes = range(source.layout.n_planes)
            for part, keep in zip(parts, (False, True), strict=True):
                kept = [p for p in planes if ((index, p) in held) == keep]
                if len(kept) == len(planes):
                    part.append(source)
                elif kept:
                    part.append(ImageSource(source.planes()[kept], channel_axis=1))
        return tuple(self._with_sources(part) for part in parts)  # type: ignore[return-value]

    def _with_sources(self, sources: list[ImageSource]) -> Domain:
        domain = object.__new__(Domain)
        domain.name = self.name
        domain._set_sources(sources, self.norm)
        return domain


def _expand(images, name: str) -> Iterable:
    """Flatten arrays, files, folders and file lists into arrays and file paths."""
    if isinstance(images, str | os.PathLike) or hasattr(images, "shape"):
        images = [images]
    elif not isinstance(images, Sequence):
        images = list(images)
    for item in images:
        if isinstance(item, str | os.PathLike):
            path = Path(item).expanduser()
            if path.is_dir():
                try:
                    yield from list_images(path)
                except ValueError as error:
                    raise ValueError(f"Domain {name}: {error}") from error
            elif path.suffix.lower() == ".txt" and path.is_file():
                lines = path.read_text().splitlines()
                entries = [line.strip() for line in lines if line.strip()]
                yield from _expand([path.parent / entry for entry in entries], name)
            elif path.is_file():
                yield path
            else:
                raise ValueError(f"Domain {name}: {path} does not exist.")
        else:
            yield item


# A few recently used files stay in memory: patches of one image are often drawn in a row.
_read_file = functools.lru_cache(maxsize=4)(read_image)


def _file_shape_dtype(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an image file, from its header where the format allows."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return tuple(series.shape), np.dtype(series.dtype)
        except Exception as error:
            raise ValueError(f"Cannot read {path} as a TIFF image: {error}") from error
    image = _read_file(path)
    return image.shape, image.dtype


class PatchStreams:
    """Training batches of two domains: one random stream per patch of the global batch
    (a patch is the same whichever process draws it, so N processes train exactly like
    one with the same batch), and fixed preview patches.

    Parameters
    ----------
    domain_a, domain_b : Domain
        The two domains.
    train : TrainConfig
        Seed, batch and crop sizes, flips.
    context : DistributedContext
        This process's rank and the number of processes (its share of the batch).

    Raises
    ------
    ValueError
        If the batch cannot be shared equally among the processes.
    """

    def __init__(self, domain_a: Domain, domain_b: Domain, train, context) -> None:
        if train.batch_size % context.world_size:
            raise ValueError(
                f"batch_size {train.batch_size} is the global batch: it must be a "
                f"multiple of the {context.world_size} training processes."
            )
        self.domains, self.train = (domain_a, domain_b), train
        local_batch = train.batch_size // context.world_size
        first = context.rank * local_batch
        self.streams = {
            slot: np.random.default_rng([train.seed, slot])
            for slot in range(first, first + local_batch)
        }
        import torch  # the batches are tensors; this module is torch-free to import

        preview_rng = np.random.default_rng([train.seed, 12345])
        self.preview_a, self.preview_b = (
            torch.from_numpy(domain.sample(preview_rng, 1, train.crop_size, augment=False))
            for domain in self.domains
        )

    def sample(self, device: torch.device, channels_last: bool) -> list[torch.Tensor]:
        """This process's share of a batch of each domain, on ``device``."""
        import torch

        batches = []
        for domain in self.domains:
            patches = [
                domain.sample(stream, 1, self.train.crop_size, self.train.flip)
                for stream in self.streams.values()
            ]
            batch = torch.from_numpy(np.concatenate(patches)).to(device)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            batches.append(batch)
        return batches

    def preview(self, generate: Callable) -> dict[str, np.ndarray]:
        """The fixed preview patches and their translations, in each domain's values.

        Parameters
        ----------
        generate : callable
            ``generate(real_a, real_b)`` → ``(G(real_a)[0], F(real_b)[0] or None)`` as
            ``(C, Y, X)`` arrays (:meth:`~napari_cyclestyle.cyclegan.CycleGAN.preview`).

        Returns
        -------
        dict
            ``real_A``, ``fake_B`` and, with F, ``real_B`` and ``fake_A``.
        """
        domain_a, domain_b = self.domains
        fake_b, fake_a = generate(self.preview_a, self.preview_b)
        preview = {
            "real_A": domain_a.norm.denormalize(self.preview_a.numpy()[0]),
            "fake_B": domain_b.norm.denormalize(fake_b),
        }
        if fake_a is not None:
            preview["real_B"] = domain_b.norm.denormalize(self.preview_b.numpy()[0])
            preview["fake_A"] = domain_a.norm.denormalize(fake_a)
        return preview

    def state(self) -> dict[str, str]:
        """This process's streams' states (``str(slot)`` → JSON)."""
        return {
            str(slot): json.dumps(stream.bit_generator.state)
            for slot, stream in self.streams.items()
        }

    def restore(self, states: dict[str, str]) -> None:
        """Restore the streams of this process found in ``states`` (of any world size)."""
        for slot, stream in self.streams.items():
            if str(slot) in states:
                stream.bit_generator.state = json.loads(states[str(slot)])


def run_settings(
    domain_a, domain_b, config: Config | None, checkpoint, resume, channel_axes
) -> tuple[Config, Domain, Domain]:
    """A training run's configuration and domains.

    Parameters
    ----------
    domain_a, domain_b : Domain, array, path or sequence
        The two domains' images.
    config : Config or None
        The caller's settings (not changed: a new one is returned).
    checkpoint : TrainingCheckpoint or None
        The checkpoint resumed from: its model settings and normalisations are kept.
    resume : path-like or None
        The checkpoint's path, for messages.
    channel_axes : tuple of int or None
        Channel axes of A's and B's images.

    Returns
    -------
    tuple
        The configuration (channel counts from the data) and the two domains.

    Raises
    ------
    ValueError
        If the channels or the mode do not match the checkpoint's, or ``crop_size`` does
        not suit the generator.
    """
    from .networks import size_multiple  # imports torch

    norm_a: IntensityNorm | str = "auto"
    norm_b: IntensityNorm | str = "auto"
    if checkpoint is None:
        config = config or Config()
    else:
        saved = checkpoint.config
        config = Config(model=saved.model, train=(config or saved).train)
        norm_a, norm_b = checkpoint.norm_a, checkpoint.norm_b
        if config.train.mode != saved.train.mode:
            raise ValueError(
                f"The checkpoint {resume} was trained in mode {saved.train.mode!r}, which "
                f"has other networks than mode {config.train.mode!r}: resume in mode "
                f"{saved.train.mode!r}, or start a new run."
            )
    if not isinstance(domain_a, Domain):
        domain_a = Domain(domain_a, "A", channel_axes[0], norm_a)
    if not isinstance(domain_b, Domain):
        domain_b = Domain(domain_b, "B", channel_axes[1], norm_b)
    if checkpoint is None:
        channels = {"channels_a": domain_a.n_channels, "channels_b": domain_b.n_channels}
        config = Config(model=dataclasses.replace(config.model, **channels), train=config.train)
    for domain, expected in (
        (domain_a, config.model.channels_a),
        (domain_b, config.model.channels_b),
    ):
        if domain.n_channels != expected:
            raise ValueError(
                f"Domain {domain.name} has {domain.n_channels} channel(s) but the "
                f"checkpoint {resume} was trained with {expected}."
            )
    multiple = size_multiple(config.model.generator)
    if config.train.crop_size % multiple:
        raise ValueError(
            f"crop_size {config.train.crop_size} does not suit {config.model.generator}: "
            f"use a multiple of {multiple}."
        )
    return config, domain_a, domain_b
