"""The sample job: points drawn from a flipd checkpoint, written as .npy (or a PNG grid of images),
and the training data they should resemble."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.sources import PointSet, load_points
from ..models.checkpoint import DiffusionModel
from ..models.sampling import SAMPLERS
from ..runs.files import atomic_path
from .inputs import LoadedModel

__all__ = ["SAMPLE_SUFFIXES", "Samples", "check_sampleable", "check_samples_path", "draw_samples", "point_shape", "training_points", "write_samples"]

#: What ``flipd sample --out`` writes: an array of points, or (image models) a PNG grid.
SAMPLE_SUFFIXES: tuple[str, ...] = (".npy", ".png")


@dataclass
class Samples:
    """Points drawn from a model.

    Attributes:
        values: float32 [n, *point_shape] in the data's units (images [n, C, H, W] in [-1, 1],
            also when the model was trained on flattened images).
        kind: "vectors" or "images".
        settings: how they were drawn (n, steps, sampler, eta, seed, batch_size).
    """

    values: np.ndarray
    kind: str
    settings: dict[str, Any]


def point_shape(loaded: LoadedModel) -> tuple[int, ...]:
    """The shape of one data point: the model's, or the image shape of the data it was trained
    on when it saw those images flattened."""
    model_shape = tuple(int(s) for s in getattr(loaded.model, "data_shape", ()))
    data = loaded.metadata.get("data")
    recorded = data.get("point_shape") if isinstance(data, dict) else None
    if isinstance(recorded, list) and len(recorded) == 3 and int(np.prod(recorded)) == int(np.prod(model_shape)):
        return tuple(int(s) for s in recorded)
    return model_shape


def check_samples_path(path: str | os.PathLike, *, images: bool) -> Path:
    """``path`` if it names a file ``flipd sample`` can write: .npy, or .png for an image model.

    Raises:
        ValueError: another suffix, or a PNG for a model of vectors.
    """
    target = Path(path)
    if target.suffix.lower() not in SAMPLE_SUFFIXES:
        raise ValueError(f"{str(target)!r}: samples are written as .npy (or a .png grid for image models); got {target.suffix or 'no suffix'!r}.")
    if target.suffix.lower() == ".png" and not images:
        raise ValueError(f"{str(target)!r}: a PNG grid needs an image model; this model draws vectors, write them as .npy.")
    return target


def check_sampleable(loaded: LoadedModel) -> DiffusionModel:
    """The model of ``loaded`` if it is a flipd checkpoint (the models ``flipd sample`` draws from).

    Raises:
        ValueError: another kind of model (a diffusers folder), naming what to use instead.
    """
    if not isinstance(loaded.model, DiffusionModel):
        raise ValueError(
            f"{str(loaded.path)!r} is a {loaded.kind} model; flipd sample draws from flipd checkpoints "
            "(from flipd train). Use the diffusers pipeline itself to sample it."
        )
    return loaded.model


def draw_samples(
    loaded: LoadedModel,
    n: int,
    *,
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Samples:
    """Draw ``n`` points from a flipd checkpoint with :meth:`DiffusionModel.sample`.

    Raises:
        ValueError: the model is not a flipd checkpoint, or a setting is invalid.
    """
    model = check_sampleable(loaded)
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}.")
    drawn = model.sample(n, steps=steps, sampler=sampler, eta=eta, seed=seed, batch_size=batch_size, progress=progress)
    shape = point_shape(loaded)
    values = drawn.detach().cpu().float().numpy().reshape((n, *shape))
    settings = {"n": n, "steps": steps, "sampler": sampler, "eta": eta, "seed": seed, "batch_size": batch_size}
    return Samples(values=values, kind="images" if len(shape) == 3 else "vectors", settings=settings)


def training_points(loaded: LoadedModel, data: str | None, n: int, seed: int = 0) -> PointSet:
    """Up to ``n`` points of the data to show beside the samples: ``data`` if given, else the
    data set the checkpoint records it was trained on.

    Raises:
        ValueError: no ``data`` and the checkpoint names none (the message says to pass --data).
        FileNotFoundError: the data cannot be found (a recorded path that has moved).
    """
    if data is None:
        record = loaded.metadata.get("data")
        data = record.get("spec") if isinstance(record, dict) else None
        if not isinstance(data, str):
            raise ValueError(
                f"The checkpoint at {str(loaded.path)!r} does not record its training data; pass --data "
                "(a data set name or file) to show the samples beside it."
            )
    return load_points(data, n=n, seed=seed, at_most=True)


def write_samples(path: str | os.PathLike, samples: Samples, *, title: str = "Samples of the model") -> Path:
    """Write samples atomically: .npy (float32 [n, *point_shape]) or, for images, a PNG grid."""
    target = check_samples_path(path, images=samples.kind == "images")
    if target.suffix.lower() == ".npy":
        with atomic_path(target) as temporary:
            np.save(temporary, samples.values)
        return target
    from ..plots import plot_samples, save_figure

    return save_figure(plot_samples(samples.values, max_images=min(len(samples.values), 100), title=title), target)
