"""PIL images as a batch tensor, in the convention of diffusers image models.

:func:`as_tensor_if_pil` turns a ``PIL.Image.Image`` or a list (or tuple) of them into a float32
tensor [N, C, H, W] with values in [-1, 1]: ``pixel / 127.5 - 1`` for 8-bit pixels, C = 1 for
greyscale (mode ``"L"``) and 3 for colour (``"RGB"``). That is the range diffusers image
pipelines feed their UNets and VAEs, and the range of flipd's own image data sets. Anything
else is returned unchanged, so the estimator can call it on every input.

All images of a batch must share one size and one mode; other modes (RGBA, palette, 16-bit,
...) are refused with the conversion that fixes them. PIL is never imported here: an object
can only be a PIL image if the caller's program has imported PIL already. Imports nothing of flipd.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["PIL_MODES", "as_tensor_if_pil", "is_pil_image", "pil_to_tensor"]

#: PIL modes accepted, with their channel counts.
PIL_MODES: dict[str, int] = {"L": 1, "RGB": 3}


def is_pil_image(value: Any) -> bool:
    """Whether ``value`` is a ``PIL.Image.Image`` (without importing PIL)."""
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(value, module.Image)


def _is_pil_batch(value: Any) -> bool:
    return is_pil_image(value) or (
        isinstance(value, (list, tuple)) and len(value) > 0 and any(is_pil_image(item) for item in value)
    )


def pil_to_tensor(images: Any) -> Tensor:
    """A float32 tensor [N, C, H, W] in [-1, 1] (``pixel / 127.5 - 1``) from PIL images.

    Args:
        images: one ``PIL.Image.Image`` (N = 1) or a non-empty list/tuple of them, all of one
            size (W x H) and one mode: "L" (C = 1) or "RGB" (C = 3).

    Raises:
        TypeError: a list mixes PIL images with other objects.
        ValueError: an unsupported mode, or images of different modes or sizes (the message
            names the first two that differ and the conversion that fixes it).
    """
    batch = [images] if is_pil_image(images) else list(images)
    if not batch:
        raise ValueError("The list of images is empty; pass at least one image.")
    for index, image in enumerate(batch):
        if not is_pil_image(image):
            raise TypeError(
                f"The images mix PIL images with other objects: item {index} is a {type(image).__name__}. "
                "Pass only PIL images, or one tensor/array [N, C, H, W]."
            )
        if image.mode not in PIL_MODES:
            raise ValueError(
                f"Image {index} has mode {image.mode!r}; flipd takes 8-bit greyscale ('L') or colour ('RGB') "
                "images. Convert it, e.g. image.convert('RGB') (which drops an alpha channel)."
            )
    first = batch[0]
    for index, image in enumerate(batch[1:], start=1):
        if image.mode != first.mode:
            raise ValueError(
                f"The images have different modes (image 0: {first.mode!r}, image {index}: {image.mode!r}); "
                "convert them all to one, e.g. [image.convert('RGB') for image in images]."
            )
        if image.size != first.size:
            raise ValueError(
                f"The images have different sizes (image 0: {first.size[0]}x{first.size[1]}, image {index}: "
                f"{image.size[0]}x{image.size[1]}, width x height); resize them to one, e.g. "
                f"[image.resize(({first.size[0]}, {first.size[1]})) for image in images]."
            )
    pixels = np.stack([np.asarray(image, dtype=np.uint8) for image in batch])  # [N, H, W] or [N, H, W, 3]
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    return tensor.to(torch.float32) / 127.5 - 1.0


def as_tensor_if_pil(value: Any) -> Any:
    """:func:`pil_to_tensor` of ``value`` if it is a PIL image or a list/tuple holding PIL
    images; ``value`` itself otherwise."""
    return pil_to_tensor(value) if _is_pil_batch(value) else value
