"""Image folders read lazily: every PNG, JPEG and WebP file under a folder (recursively), as
a :class:`~flipd.datasets.streaming.RowReader` that decodes only the rows asked for.

Opening a folder lists its files (sorted by relative path; the names are the relative
paths) and reads each file's header (mode and size, no pixels) in the DataLoader workers;
the PNG size of each image, as the model sees it (converted, resized, cropped), is measured
by decoding it in the workers too. Neither pass keeps pixels, so memory does not grow with
the number of images beyond a few numbers and a name per image.

Geometry: ``size=N`` resizes to exactly N x N (aspect ratio not kept); ``resize=N`` scales
the shorter side to N (aspect ratio kept); ``center_crop=N`` then cuts the central N x N
(for models with a fixed resolution, e.g. ``resize=512, center_crop=512``). Without any,
all images must share one size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .images import _GREYSCALE_MODES, _SUPPORTED_MODES, DEFAULT_MAX_PIXELS, _open_image, too_many_pixels
from .streaming import RowReader, read_batches

__all__ = ["FOLDER_IMAGE_SUFFIXES", "ImageFolderRows", "list_image_files", "open_image_folder"]

#: Image files read from folders (any case).
FOLDER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: Files whose header or PNG size one worker task handles.
SCAN_ROWS = 256


def list_image_files(folder: Path) -> list[str]:
    """Relative paths (POSIX, sorted) of the image files anywhere under ``folder``."""
    names = []
    for directory, _, files in os.walk(folder):
        for name in files:
            if os.path.splitext(name)[1].lower() in FOLDER_IMAGE_SUFFIXES:
                names.append(os.path.relpath(os.path.join(directory, name), folder).replace(os.sep, "/"))
    return sorted(names)


def _output_size(height: int, width: int, size: tuple[int, int] | None, resize: int | None,
                 center_crop: int | None) -> tuple[int, int]:
    if size is not None:
        height, width = size
    elif resize is not None:
        scale = resize / min(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    if center_crop is not None:
        if min(height, width) < center_crop:
            raise ValueError(f"an image of {height}x{width} is smaller than the crop {center_crop}x{center_crop}")
        height, width = center_crop, center_crop
    return height, width


class _Headers(RowReader):
    """Rows -> [k, 3] int64: (1 if greyscale else 0, height, width), from the file headers;
    an image of more than ``max_pixels`` is refused before anything decodes it."""

    def __init__(self, folder: str, names: list[str], max_pixels: int) -> None:
        self.folder, self.names, self.n_rows, self.max_pixels = folder, names, len(names), max_pixels

    def read(self, rows: Sequence[int]) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        found = np.zeros((len(rows), 3), dtype=np.int64)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb check replaced by max_pixels (this process's setting)
        try:
            for k, row in enumerate(rows):
                path = os.path.join(self.folder, self.names[row])
                try:
                    with Image.open(path) as image:
                        mode, (width, height) = image.mode, image.size
                except (UnidentifiedImageError, OSError, ValueError) as error:
                    raise ValueError(f"cannot read image {path!r}: {error}") from None
                if width * height > self.max_pixels:
                    raise too_many_pixels(Path(path), width, height, self.max_pixels, Path(self.folder))
                self._check_mode(path, mode)
                found[k] = (int(mode in _GREYSCALE_MODES), height, width)
        finally:
            Image.MAX_IMAGE_PIXELS = previous
        return found

    @staticmethod
    def _check_mode(path: str, mode: str) -> None:
        if mode not in _SUPPORTED_MODES:
            raise ValueError(f"image {path!r} has mode {mode!r}; only 8-bit greyscale/colour images are supported")


class ImageFolderRows(RowReader):
    """Images of a folder, decoded on demand to uint8 [k, C, H, W]; points are in [-1, 1].

    Args:
        folder: the folder.
        names: relative paths of its images (see :func:`list_image_files`).
        channels: 1 (greyscale, Pillow ``L``) or 3 (RGB).
        height, width: the size every image has after the geometry options.
        size, resize, center_crop: the geometry options (see the module notes).
        max_pixels: images larger than this are refused before decoding (decompression bombs).
    """

    #: 8-bit pixels mapped to [-1, 1]: every point lies in it, known without reading.
    value_range = (-1.0, 1.0)

    def __init__(self, folder: str, names: list[str], *, channels: int, height: int, width: int,
                 size: tuple[int, int] | None = None, resize: int | None = None, center_crop: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.folder, self.names, self.n_rows, self.max_pixels = folder, names, len(names), max_pixels
        self.channels = channels
        self.point_shape = (channels, height, width)
        self.size, self.resize, self.center_crop = size, resize, center_crop

    def decode(self, row: int) -> np.ndarray:
        """One image as uint8 [H, W, C] after conversion and geometry."""
        from PIL import Image

        path = os.path.join(self.folder, self.names[row])
        image = _open_image(Path(path), self.max_pixels)  # decoded, refused by name if damaged
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA")
        image = image.convert("L" if self.channels == 1 else "RGB")
        height, width = _output_size(image.height, image.width, self.size, self.resize, None)
        if (image.height, image.width) != (height, width):
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        if self.center_crop is not None:
            top, left = (height - self.center_crop) // 2, (width - self.center_crop) // 2
            image = image.crop((left, top, left + self.center_crop, top + self.center_crop))
        pixels = np.asarray(image, dtype=np.uint8)
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
        if pixels.shape[:2] != self.point_shape[1:]:
            raise ValueError(
                f"image {path!r} is {pixels.shape[0]}x{pixels.shape[1]}, the others "
                f"{self.point_shape[1]}x{self.point_shape[2]}; pass --resize/--center-crop (or size=) to give them one size"
            )
        return pixels

    def read(self, rows: Sequence[int]) -> np.ndarray:
        return np.stack([self.decode(row).transpose(2, 0, 1) for row in rows])

    def to_points(self, batch: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(batch)).to(torch.float32) / 127.5 - 1.0

    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for name in self.names:
            stat = os.stat(os.path.join(self.folder, name))
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        return {"folder": digest.hexdigest(), "channels": self.channels, "size": self.size,
                "resize": self.resize, "center_crop": self.center_crop}


class _PngSizes(RowReader):
    """Rows -> [k] int64 lossless PNG size of each image as the model sees it."""

    def __init__(self, images: ImageFolderRows) -> None:
        self.images, self.n_rows = images, images.n_rows

    def read(self, rows: Sequence[int]) -> np.ndarray:
        from .images import png_size

        return np.array([png_size(self.images.decode(row)) for row in rows], dtype=np.int64)


def _scan(reader: RowReader, workers: int) -> np.ndarray:
    return np.concatenate(list(read_batches(reader, np.arange(reader.n_rows), batch_rows=SCAN_ROWS, workers=workers)))


def open_image_folder(
    folder: Path, *, channels: int | None = None, size: tuple[int, int] | None = None, resize: int | None = None,
    center_crop: int | None = None, workers: int = 0, pick: Callable[[int], np.ndarray] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[ImageFolderRows, np.ndarray]:
    """A reader of the images under ``folder`` and their PNG sizes [N] (int64).

    Args:
        pick: given the number of images found, the positions (in sorted order) of those to
            keep (e.g. ``-n`` chosen by a seed); only those are opened. Default: all.
        max_pixels: refuse any image of more pixels than this, before decoding it (a guard
            against decompression bombs; the folder parameter ``max_pixels=``).
        channels: 1 or 3; None gives 1 if every image is greyscale and 3 otherwise.
        size, resize, center_crop: geometry (see the module notes).
        workers: DataLoader worker processes for the header and PNG-size passes.

    Raises:
        FileNotFoundError, NotADirectoryError: no such folder.
        ValueError: no images, an unreadable image, or images of different sizes (the message
            names two files and the options that give them one size).
    """
    if not folder.exists():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{str(folder)!r} is not a folder")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer (pixels per image); got {max_pixels!r}")
    for name, value in (("resize", resize), ("center_crop", center_crop)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive number of pixels; got {value!r}")
    names = list_image_files(folder)
    if not names:
        raise ValueError(
            f"no image files in {str(folder)!r} or its subfolders: expected files ending in "
            f"{', '.join(FOLDER_IMAGE_SUFFIXES)} (any case)"
        )
    if pick is not None:
        names = [names[i] for i in pick(len(names))]
    headers = _scan(_Headers(str(folder), names, int(max_pixels)), workers)
    if channels is None:
        channels = 1 if bool(headers[:, 0].all()) else 3
    try:
        sizes = [_output_size(int(h), int(w), size, resize, center_crop) for h, w in headers[:, 1:]]
    except ValueError as error:
        small = next(i for i, (h, w) in enumerate(headers[:, 1:]) if min(_output_size(int(h), int(w), size, resize, None)) < (center_crop or 0))
        raise ValueError(f"image {str(folder / names[small])!r}: {error}; use a smaller --center-crop or a larger --resize") from None
    first = sizes[0]
    other = next((i for i, s in enumerate(sizes) if s != first), None)
    if other is not None:
        raise ValueError(
            f"images in {str(folder)!r} have different sizes ({names[0]}: {first[0]}x{first[1]}, "
            f"{names[other]}: {sizes[other][0]}x{sizes[other][1]}); pass --resize N --center-crop N "
            "(or size=N) to give them one size"
        )
    reader = ImageFolderRows(str(folder), names, channels=channels, height=first[0], width=first[1],
                             size=size, resize=resize, center_crop=center_crop, max_pixels=int(max_pixels))
    return reader, _scan(_PngSizes(reader), workers)
