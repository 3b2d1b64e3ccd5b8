"""Tests for flipd.datasets.images: loaders, PNG sizes, file round trips, errors."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flipd.datasets import images as im
from flipd.datasets.images import (
    IMAGE_DATASET_NAMES,
    NATURAL_PATCH_SOURCES,
    ImageData,
    digits8,
    get_image_dataset,
    lfw_faces,
    load_image_array,
    load_image_folder,
    mnist_subset,
    natural_patches,
    png_size,
    png_sizes,
)


def assert_valid(data: ImageData, n: int, shape: tuple[int, int, int]) -> None:
    assert isinstance(data, ImageData)
    assert len(data) == n
    assert tuple(data.images.shape) == (n, *shape)
    assert data.images.dtype == torch.float32
    assert data.images.min() >= -1.0 and data.images.max() <= 1.0
    assert data.png_bytes.shape == (n,) and data.png_bytes.dtype == np.int64
    assert (data.png_bytes > 0).all()
    assert len(data.names) == n and len(set(data.names)) == n
    pixels = data.to_uint8()
    assert pixels.dtype == np.uint8 and pixels.shape == (n, shape[1], shape[2], shape[0])
    # images is exactly uint8 / 127.5 - 1 and PNG sizes describe those pixels.
    expected = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    assert torch.equal(data.images, expected)
    np.testing.assert_array_equal(data.png_bytes, png_sizes(pixels))


def rng_pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# --------------------------------------------------------------------------- PNG sizes


def pillow_png_bytes(image: np.ndarray, compress_level: int) -> int:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=compress_level)
    return len(buffer.getvalue())


def test_png_size_matches_pillow_file_at_level_9() -> None:
    rows, cols = np.mgrid[:32, :32]
    pattern = (rows * cols % 251).astype(np.uint8)  # compresses differently at levels 1 and 9
    assert pillow_png_bytes(pattern, 1) != pillow_png_bytes(pattern, 9)
    assert png_size(pattern) == pillow_png_bytes(pattern, 9)
    colour = np.stack([pattern, pattern.T, 255 - pattern], axis=2)
    assert png_size(colour) == pillow_png_bytes(colour, 9)


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_constant_image_compresses_smaller_than_noise(channels: int | None) -> None:
    shape = (32, 32) if channels is None else (32, 32, channels)
    constant = np.full(shape, 128, dtype=np.uint8)
    assert png_size(constant) < png_size(rng_pixels(shape)) / 5


def test_smooth_image_compresses_smaller_than_textured() -> None:
    ramp = np.tile(np.linspace(0, 255, 32).round().astype(np.uint8), (32, 1))
    textured = (ramp.astype(np.int64) + rng_pixels((32, 32)) % 64).clip(0, 255).astype(np.uint8)
    assert png_size(ramp) < png_size(textured)


def test_smooth_natural_patches_compress_smaller_than_textured() -> None:
    data = natural_patches(n=40, size=32, sources=["moon", "gravel"])
    smooth = data.png_bytes[data.labels == 0]
    textured = data.png_bytes[data.labels == 1]
    assert np.median(smooth) < np.median(textured)


def test_png_sizes_batch_matches_single_and_greyscale_axis_is_optional() -> None:
    batch = rng_pixels((4, 9, 7))
    sizes = png_sizes(batch)
    assert sizes.tolist() == [png_size(image) for image in batch]
    np.testing.assert_array_equal(png_sizes(batch[..., None]), sizes)


def test_png_size_rejects_float_and_channels_first() -> None:
    with pytest.raises(TypeError, match="uint8"):
        png_size(np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="channels last"):
        png_size(np.zeros((3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        png_sizes(np.zeros((8, 8), dtype=np.uint8))


# --------------------------------------------------------------------------- bundled sources


def test_mnist_subset_shape_labels_and_size() -> None:
    data = mnist_subset(n=60, seed=1)
    assert_valid(data, 60, (1, 28, 28))
    assert data.labels is not None and set(data.labels.tolist()) <= set(range(10))
    assert data.label_names == tuple(str(d) for d in range(10))
    mnist_pixels, mnist_digits = im._mnist_raw()
    assert mnist_pixels.shape == (5000, 28, 28)
    assert np.bincount(mnist_digits).tolist() == [500] * 10
    with pytest.raises(ValueError, match="1 <= n <= 5000"):
        mnist_subset(n=5001)


def test_digits8_full_set() -> None:
    data = digits8()
    assert_valid(data, 1797, (1, 8, 8))
    pixels = data.to_uint8()
    assert pixels.max() == 255 and pixels.min() == 0
    assert data.labels is not None and set(data.labels.tolist()) == set(range(10))
    # Values 0-16 map to round(v * 255 / 16); v = 1 gives 16.
    assert set(np.unique(pixels).tolist()) <= {round(v * 255 / 16) for v in range(17)}


def test_lfw_faces_and_non_faces() -> None:
    faces = lfw_faces()
    assert_valid(faces, 100, (1, 25, 25))
    assert faces.labels is not None and (faces.labels == 1).all()
    everything = lfw_faces(include_non_faces=True)
    assert_valid(everything, 200, (1, 25, 25))
    assert everything.labels is not None and np.bincount(everything.labels).tolist() == [100, 100]
    assert everything.label_names == ("non-face", "face")
    with pytest.raises(ValueError, match="1 <= n <= 100"):
        lfw_faces(n=150)


def test_natural_patches_match_their_named_source_position() -> None:
    import skimage.data

    data = natural_patches(n=2 * len(NATURAL_PATCH_SOURCES), size=24, seed=3)
    assert_valid(data, 2 * len(NATURAL_PATCH_SOURCES), (3, 24, 24))
    assert data.label_names == NATURAL_PATCH_SOURCES
    assert data.labels is not None
    assert np.bincount(data.labels).tolist() == [2] * len(NATURAL_PATCH_SOURCES)
    pixels = data.to_uint8()
    for patch, name, label in zip(pixels, data.names, data.labels):
        source, top, left = re.fullmatch(r"(\w+)\[y=(\d+),x=(\d+)\]", name).groups()  # type: ignore[union-attr]
        assert source == NATURAL_PATCH_SOURCES[label]
        photo = getattr(skimage.data, source)()
        crop = photo[int(top) : int(top) + 24, int(left) : int(left) + 24]
        if crop.ndim == 2:
            crop = np.repeat(crop[..., None], 3, axis=2)
        np.testing.assert_array_equal(patch, crop)


def test_natural_patches_greyscale_sources_have_equal_channels() -> None:
    pixels = natural_patches(n=4, size=8, sources=["brick", "grass"]).to_uint8()
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


@pytest.mark.parametrize(
    ("loader", "kwargs"),
    [
        (mnist_subset, {"n": 20}),
        (digits8, {"n": 20}),
        (lfw_faces, {"n": 20}),
        (natural_patches, {"n": 20, "size": 16}),
    ],
)
def test_loaders_are_deterministic_by_seed(loader, kwargs) -> None:
    first, again, other = loader(seed=5, **kwargs), loader(seed=5, **kwargs), loader(seed=6, **kwargs)
    assert first.names == again.names
    assert torch.equal(first.images, again.images)
    assert first.names != other.names


def test_natural_patches_errors() -> None:
    with pytest.raises(ValueError, match="unknown natural-patch sources.*valid: astronaut"):
        natural_patches(n=4, sources=["lena"])
    with pytest.raises(ValueError, match="size <= 300"):
        natural_patches(n=4, size=301)
    with pytest.raises(ValueError, match="positive int"):
        natural_patches(n=0)
    with pytest.raises(ValueError, match="sources is empty"):
        natural_patches(n=4, sources=[])


def test_subset_and_validation() -> None:
    data = digits8(n=10)
    part = data.subset([3, 0])
    assert part.names == [data.names[3], data.names[0]]
    assert torch.equal(part.images[1], data.images[0])
    with pytest.raises(IndexError):
        data.subset([10])
    with pytest.raises(ValueError, match="names must have"):
        ImageData(data.images, data.png_bytes, data.names[:-1], None, "x")


# --------------------------------------------------------------------------- image folders


def write_images(folder: Path, pixels: np.ndarray, suffix: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(pixels):
        Image.fromarray(image.squeeze()).save(folder / f"img_{i:02d}{suffix}")


@pytest.mark.parametrize("shape", [(5, 9, 7), (5, 9, 7, 3)])
def test_png_folder_round_trip_is_exact(tmp_path: Path, shape: tuple[int, ...]) -> None:
    pixels = rng_pixels(shape)
    write_images(tmp_path, pixels)
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path)
    channels = 1 if len(shape) == 3 else 3
    assert_valid(data, 5, (channels, 9, 7))
    np.testing.assert_array_equal(data.to_uint8(), pixels.reshape(5, 9, 7, channels))
    assert data.names == [f"img_{i:02d}.png" for i in range(5)]
    assert data.labels is None


def test_jpeg_folder_loads_close_to_original(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 255, 16).round().astype(np.uint8), (16, 1))
    pixels = np.stack([np.stack([ramp, ramp.T, 255 - ramp], axis=2)] * 2)
    write_images(tmp_path, pixels, suffix=".jpg")
    Image.fromarray(pixels[0]).save(tmp_path / "upper.JPEG")
    data = load_image_folder(tmp_path)
    assert_valid(data, 3, (3, 16, 16))
    assert data.names == ["img_00.jpg", "img_01.jpg", "upper.JPEG"]
    assert np.abs(data.to_uint8().astype(int) - pixels[0].astype(int)).mean() < 8


def test_folder_channels_and_resize(tmp_path: Path) -> None:
    write_images(tmp_path, rng_pixels((2, 10, 12, 3)))
    Image.fromarray(rng_pixels((6, 6))).save(tmp_path / "small.png")
    grey = load_image_folder(tmp_path, size=8, channels=1)
    assert_valid(grey, 3, (1, 8, 8))
    rect = load_image_folder(tmp_path, size=(4, 5))
    assert_valid(rect, 3, (3, 4, 5))
    # a greyscale image in a colour folder is replicated to equal channels
    small = rect.to_uint8()[rect.names.index("small.png")]
    assert (small[..., 0] == small[..., 2]).all()


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "file.npy").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="load_image_array"):
        load_image_folder(tmp_path / "file.npy")
    with pytest.raises(ValueError, match=r"no image files.*\.png"):
        load_image_folder(tmp_path)
    Image.fromarray(rng_pixels((8, 8))).save(tmp_path / "a.png")
    Image.fromarray(rng_pixels((9, 8))).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"different sizes.*a\.png: 8x8.*b\.png: 9x8.*size="):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match="channels must be"):
        load_image_folder(tmp_path, size=8, channels=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size must be"):
        load_image_folder(tmp_path, size=0)
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*c\.png"):
        load_image_folder(tmp_path, size=8)


# --------------------------------------------------------------------------- arrays


def test_npy_round_trip_in_all_layouts(tmp_path: Path) -> None:
    grey = rng_pixels((4, 6, 5))
    colour = rng_pixels((4, 6, 5, 3), seed=1)
    np.save(tmp_path / "grey.npy", grey)
    np.save(tmp_path / "nhwc.npy", colour)
    np.save(tmp_path / "nchw.npy", colour.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(load_image_array(tmp_path / "grey.npy").to_uint8()[..., 0], grey)
    for name in ("nhwc.npy", "nchw.npy"):
        data = load_image_array(tmp_path / name)
        assert_valid(data, 4, (3, 6, 5))
        np.testing.assert_array_equal(data.to_uint8(), colour)


def test_npz_keys(tmp_path: Path) -> None:
    pixels = rng_pixels((3, 4, 4, 1))
    np.savez(tmp_path / "one.npz", images=pixels)
    np.savez(tmp_path / "two.npz", train=pixels, test=pixels[:1])
    np.testing.assert_array_equal(load_image_array(tmp_path / "one.npz").to_uint8(), pixels)
    assert len(load_image_array(tmp_path / "two.npz", key="test")) == 1
    with pytest.raises(ValueError, match=r"holds arrays \['train', 'test'\]; pass key="):
        load_image_array(tmp_path / "two.npz")
    with pytest.raises(KeyError, match="no array 'val'"):
        load_image_array(tmp_path / "two.npz", key="val")


def test_float_arrays_in_both_ranges_map_to_the_same_pixels(tmp_path: Path) -> None:
    pixels = rng_pixels((3, 5, 5))
    pixels[0, 0, 0], pixels[0, 0, 1] = 0, 255
    np.save(tmp_path / "unit.npy", pixels.astype(np.float32) / 255)
    np.save(tmp_path / "signed.npy", pixels.astype(np.float64) / 127.5 - 1)
    np.save(tmp_path / "int.npy", pixels.astype(np.int64))
    for name in ("unit.npy", "signed.npy", "int.npy"):
        np.testing.assert_array_equal(load_image_array(tmp_path / name).to_uint8()[..., 0], pixels)
    # non-negative [-1, 1] data needs the range stated
    half = np.full((2, 4, 4), 0.5, dtype=np.float32)
    np.save(tmp_path / "half.npy", half)
    assert (load_image_array(tmp_path / "half.npy").to_uint8() == 128).all()
    assert (load_image_array(tmp_path / "half.npy", value_range="-1-1").to_uint8() == 191).all()


def test_array_layout_ambiguity_and_override(tmp_path: Path) -> None:
    pixels = rng_pixels((2, 3, 5, 3))
    np.save(tmp_path / "ambiguous.npy", pixels)
    with pytest.raises(ValueError, match="ambiguous: pass layout="):
        load_image_array(tmp_path / "ambiguous.npy")
    assert load_image_array(tmp_path / "ambiguous.npy", layout="NHWC").image_shape == (3, 3, 5)
    assert load_image_array(tmp_path / "ambiguous.npy", layout="NCHW").image_shape == (3, 5, 3)


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        (np.full((2, 4, 4), 200.0), ValueError, "ambiguous; if it holds 0-255 pixels cast it to uint8"),
        (np.full((2, 4, 4), -2.0), ValueError, r"outside \[0, 1\] and \[-1, 1\]"),
        (np.full((2, 4, 4), np.nan), ValueError, "NaN"),
        (np.full((2, 4, 4), 300), ValueError, "outside value_range 0-255"),
        (np.zeros((2, 4, 4), dtype=bool), TypeError, "not supported"),
        (np.zeros((4, 4), dtype=np.uint8), ValueError, "add a leading axis"),
        (np.zeros((0, 4, 4), dtype=np.uint8), ValueError, "no images"),
        (np.zeros((2, 4, 4, 4), dtype=np.uint8), ValueError, "no channel axis of size 1 or 3"),
    ],
)
def test_array_value_and_shape_errors(tmp_path: Path, values: np.ndarray, error: type, message: str) -> None:
    np.save(tmp_path / "bad.npy", values)
    with pytest.raises(error, match=message):
        load_image_array(tmp_path / "bad.npy")


def test_array_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_array(tmp_path / "missing.npy")
    (tmp_path / "pixels.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"expected \.npy or \.npz"):
        load_image_array(tmp_path / "pixels.csv")
    np.save(tmp_path / "ok.npy", rng_pixels((1, 4, 4)))
    with pytest.raises(ValueError, match="only to .npz"):
        load_image_array(tmp_path / "ok.npy", key="x")
    with pytest.raises(ValueError, match="value_range must be one of"):
        load_image_array(tmp_path / "ok.npy", value_range="0-100")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- registry


def test_registry_names_and_parameters() -> None:
    assert IMAGE_DATASET_NAMES == ("mnist-subset", "digits8", "lfw-faces", "natural-patches")
    assert_valid(get_image_dataset("digits8", n=7, seed=2), 7, (1, 8, 8))
    assert get_image_dataset("digits8", n=7, seed=2).names == digits8(n=7, seed=2).names
    patches = get_image_dataset("natural-patches:size=16,sources=moon+brick", n=6)
    assert_valid(patches, 6, (3, 16, 16))
    assert patches.label_names == ("moon", "brick")
    assert len(get_image_dataset("natural-patches:size=8")) == 512
    assert len(get_image_dataset("lfw-faces:include_non_faces=true")) == 200


def test_registry_paths(tmp_path: Path) -> None:
    pixels = rng_pixels((6, 5, 5))
    np.save(tmp_path / "pixels.npy", pixels)
    write_images(tmp_path / "folder", pixels)
    np.testing.assert_array_equal(get_image_dataset(str(tmp_path / "pixels.npy")).to_uint8()[..., 0], pixels)
    assert len(get_image_dataset(str(tmp_path / "folder"), n=4, seed=1)) == 4
    assert get_image_dataset(f"{tmp_path / 'folder'}:size=3,channels=3").image_shape == (3, 3, 3)


def test_registry_names_win_over_same_named_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_images(tmp_path / "digits8", rng_pixels((2, 5, 5)))
    monkeypatch.chdir(tmp_path)
    assert get_image_dataset("digits8", n=3).image_shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("cifar10", ValueError, r"unknown image data set 'cifar10'; valid names: mnist-subset, digits8"),
        ("", ValueError, "non-empty string"),
        ("natural-patches:depth=3", ValueError, "unknown parameter 'depth'.*valid parameters: size, sources"),
        ("natural-patches:size=big", ValueError, "bad value for 'size'"),
        ("natural-patches:size", ValueError, "write name=value"),
        ("digits8:size=4", ValueError, "valid parameters: none"),
        ("lfw-faces:include_non_faces=maybe", ValueError, "true/false"),
        ("no/such/folder", FileNotFoundError, "no such file or folder"),
        ("missing.npz", FileNotFoundError, "no such file or folder"),
    ],
)
def test_registry_errors(spec: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        get_image_dataset(spec)


def test_package_exports_image_names_lazily() -> None:
    import flipd.datasets

    assert flipd.datasets.get_image_dataset is get_image_dataset
    assert flipd.datasets.ImageData is ImageData
    with pytest.raises(AttributeError):
        flipd.datasets.no_such_name  # noqa: B018
