"""Data sets: synthetic manifolds with ground-truth LID, and images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Synthetic benchmark data with ground-truth LID.
from flipd.datasets.synthetic import (
    DIFFEOMORPHISMS,
    LATENT_DISTRIBUTIONS,
    ManifoldMixture,
    SyntheticData,
    get_dataset,
    list_datasets,
    lollipop,
    manifold_mixture,
    mixture_from_spec,
    string_within_doughnut,
    swiss_roll,
)

# Image data sets (flipd.datasets.images), imported on first use so that the
# package imports without the optional `images` dependencies.
_IMAGE_NAMES = (
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
)

if TYPE_CHECKING:
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

__all__ = [
    "DIFFEOMORPHISMS",
    "LATENT_DISTRIBUTIONS",
    "ManifoldMixture",
    "SyntheticData",
    "get_dataset",
    "list_datasets",
    "lollipop",
    "manifold_mixture",
    "mixture_from_spec",
    "string_within_doughnut",
    "swiss_roll",
    *_IMAGE_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _IMAGE_NAMES:
        from flipd.datasets import images

        return getattr(images, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
