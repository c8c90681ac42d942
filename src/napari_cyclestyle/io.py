"""Reading and writing image files: TIFF (tifffile), PNG/JPEG/BMP (imageio) and zarr.

Training data (:mod:`napari_cyclestyle.data`) and the command line read images here;
the command line and the demo write them here. Torch-free; the readers are imported
when first used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")


def list_images(folder: Path) -> list[Path]:
    """The image files (see ``IMAGE_SUFFIXES``) in ``folder``, sorted by name.

    Raises
    ------
    ValueError
        If the folder holds none.
    """
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"the folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (TIFF with tifffile, others with imageio) into a numpy array.

    Raises
    ------
    ValueError
        If the file cannot be read as an image.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            return tifffile.imread(path)
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    except FileNotFoundError as error:
        raise ValueError(f"{path} does not exist.") from error
    except Exception as error:  # the readers raise many kinds for a corrupt file
        raise ValueError(f"Cannot read {path} as an image: {error}") from error


def open_zarr_image(path: str | os.PathLike):
    """The image in a zarr store, opened lazily (read only): the array at ``path``, or in
    a group (e.g. OME-Zarr) its full-resolution level ``"0"``.

    Raises
    ------
    ValueError
        If ``path`` is not a zarr store, or a group without an array ``"0"``.
    """
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:  # zarr raises several kinds for a missing or bad store
        raise ValueError(f"Cannot open {path} as a zarr array: {error}") from error
    if isinstance(node, zarr.Array):
        return node
    if isinstance(node.get("0"), zarr.Array):
        return node["0"]
    names = ", ".join(sorted(name for name, _ in node.arrays())) or "none"
    raise ValueError(
        f"{path} is a zarr group without an array '0' (its arrays: {names}); "
        f"give the array's own path, e.g. {Path(path) / 'name'}."
    )


def write_image(path: Path, image: np.ndarray) -> None:
    """Write a TIFF (any dtype, tifffile) or a PNG/JPEG (uint8/uint16 gray or RGB(A)).

    Raises
    ------
    ValueError
        If the format cannot hold the image's dtype or channels.
    OSError
        If the file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        rgb = image.ndim >= 3 and image.shape[-1] in (3, 4)
        tifffile.imwrite(path, image, photometric="rgb" if rgb else "minisblack")
        return
    if not fits_png(image):
        raise ValueError(
            f"{path}: a {path.suffix} file cannot hold a {image.dtype} image of shape "
            f"{image.shape}; name the output .tif instead."
        )
    import imageio.v3 as iio

    iio.imwrite(path, image)


def fits_png(image: np.ndarray) -> bool:
    shape_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))
    return shape_ok and image.dtype in (np.uint8, np.uint16)


def image_to_rgb8(image: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """An image made displayable: ``(Y, X, 3)`` uint8, scaled to its own range unless
    it is uint8 already. One channel becomes gray; two or more than three show the
    first channel."""
    image = np.asarray(image)
    if image.ndim == 3 and channels_first:
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] != 3:
        image = np.repeat(image[..., :1], 3, axis=-1)
    if image.dtype != np.uint8:
        values = image.astype(np.float32)
        low, high = float(values.min()), float(values.max())
        image = np.clip((values - low) * (255.0 / max(high - low, 1e-12)), 0, 255)
        image = image.astype(np.uint8)
    return image


def image_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Stitch rows of ``(Y, X, 3)`` uint8 images (all the same size) with white gaps."""
    height, width = rows[0][0].shape[:2]
    n_columns = max(len(row) for row in rows)
    grid = np.full(
        (len(rows) * (height + gap) - gap, n_columns * (width + gap) - gap, 3), 255, np.uint8
    )
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            grid[top : top + height, left : left + width] = image
    return grid
