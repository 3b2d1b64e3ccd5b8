"""A job's model and points: a loaded model with where it came from, and the points as it takes them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..datasets.sources import PointSet
from ..datasets.streaming import PointStream, PreparedPoints
from ..devices import resolve_device, resolve_dtype
from ..models.base import Model
from ..models.checkpoint import DiffusionModel
from ..models.loading import load, model_kind, resolve_source
from ..runs.files import fingerprint_path

__all__ = ["LoadedModel", "load_model"]


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


@dataclass(eq=False)
class LoadedModel:
    """A :class:`~flipd.models.Model` loaded from a path, with what a job records about it.

    Attributes:
        model: the model (callable, schedule, prediction, coordinate map).
        kind: "flipd" (a flipd checkpoint) or "diffusers".
        path: where it was loaded from.
        description: one line saying what the model is.
        fingerprint: hash of the model's files (to refuse resuming a run with another model).
        metadata: what the model records about itself (training settings, data, ...).
        dtype: the precision its network and VAE run in ("float32", "bfloat16", "float16").
    """

    model: Model
    kind: str
    path: Path
    description: str
    fingerprint: str
    metadata: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"

    @property
    def schedule(self) -> Any:
        return self.model.schedule

    @property
    def prediction(self) -> str:
        return self.model.prediction

    @property
    def device(self) -> torch.device:
        """Where the model runs (its points are prepared there too)."""
        if isinstance(self.model, DiffusionModel):
            return self.model.shift.device
        network = getattr(self.model, "network", None)
        parameter = next(network.parameters(), None) if isinstance(network, torch.nn.Module) else None
        return torch.device("cpu") if parameter is None else parameter.device

    def prepare(self, points: PointSet) -> Tensor | PreparedPoints:
        """The points in the model's coordinates (shape-checked, flattened, standardised or
        encoded as the model needs), on the model's device: the tensor FLIPD runs on, or for
        streamed points a :class:`~flipd.datasets.streaming.PreparedPoints` whose slices are
        read and prepared (e.g. VAE-encoded) batch by batch on the device.

        Raises:
            ValueError: the points do not fit the model (the message names both shapes), or
                some become non-finite in its coordinates (named by their index).
        """
        transform = self._fit_checkpoint(points) if isinstance(self.model, DiffusionModel) else self._fit_diffusers(points)

        def check(x: Tensor, start: int, stop: int) -> None:
            finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1).cpu().numpy()
            if finite.all():
                return
            bad = points.index[start:stop][~finite]
            shown = ", ".join(map(str, bad[:10].tolist())) + (", ..." if bad.size > 10 else "")
            read = "" if stop - start == points.n else f" (of {points.n}; those after them are not read yet)"
            raise ValueError(
                f"{bad.size} of {stop - start} points{read} of {points.spec!r} (at index {shown}) become NaN or inf "
                f"in the coordinates of the model at {str(self.path)!r} (its standardisation or encoder overflows): "
                "they lie far outside the data it was trained on; remove them or train a model on this data."
            )

        if isinstance(points.x, PointStream):  # read, prepared and checked slice by slice
            return PreparedPoints(points.x, transform, self.device, check=check)
        with torch.no_grad():
            x = transform(points.x.to(self.device))
        check(x, 0, points.n)
        return x

    def _fit_checkpoint(self, points: PointSet) -> Callable[[Tensor], Tensor]:
        data_shape = tuple(int(s) for s in self.model.data_shape)
        flatten = False
        if points.point_shape != data_shape:
            if len(data_shape) == 1 and points.ambient_dim == data_shape[0]:
                flatten = True  # images flattened, as the model was trained
            else:
                trained_on = _trained_on(self.metadata)
                trained = f" (it was trained on {trained_on!r})" if trained_on else ""
                raise ValueError(
                    f"The model at {str(self.path)!r} takes points of shape {_shape_text(data_shape)} "
                    f"(D = {int(np.prod(data_shape))}){trained}, but {points.spec!r} has points of shape "
                    f"{_shape_text(points.point_shape)} (D = {points.ambient_dim}). Use a model trained on "
                    f"this data: flipd train {points.spec} --out MODEL_DIR."
                )
        model = self.model

        def transform(batch: Tensor) -> Tensor:
            return model.encode(batch.reshape(batch.shape[0], -1) if flatten else batch)

        return transform

    def _fit_diffusers(self, points: PointSet) -> Callable[[Tensor], Tensor]:
        if points.kind != "images":
            raise ValueError(
                f"The diffusers model at {str(self.path)!r} takes images, but {points.spec!r} holds "
                f"vectors of dimension {points.ambient_dim}; give an image data set or folder."
            )
        if self.model.is_latent:
            return self.model.encode
        config = getattr(self.model.network, "config", {})
        channels, size = getattr(config, "in_channels", None), getattr(config, "sample_size", None)
        c, h, w = points.point_shape
        if channels is not None and c != channels:
            raise ValueError(
                f"The diffusers model at {str(self.path)!r} takes {channels}-channel images, but "
                f"{points.spec!r} has {c} channel(s); convert the images (e.g. a folder with channels={channels})."
            )
        if isinstance(size, int) and (h, w) != (size, size):
            raise ValueError(
                f"The diffusers model at {str(self.path)!r} takes {size}x{size} images, but {points.spec!r} "
                f"has {h}x{w}; resize them (--resize {size} --center-crop {size} for an image folder)."
            )
        return self.model.encode


def _trained_on(metadata: dict[str, Any]) -> str | None:
    data = metadata.get("data")
    return data.get("spec") if isinstance(data, dict) else None


def load_model(
    path: str | os.PathLike, device: str | torch.device | None = "cpu", *, prompt: str | None = None,
    scheduler: str | os.PathLike | None = None, dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load a flipd checkpoint directory or a diffusers folder (:func:`flipd.load`; either may
    be a Hugging Face Hub id ``owner/name``) with its description and fingerprint.

    ``prompt`` is the text of a text-conditioned diffusers model (None: its default, the empty
    prompt); it is part of the fingerprint (another prompt is another model) and the metadata.

    Args:
        path: the model's folder.
        device: where to put it.
        scheduler: a diffusers scheduler folder (``scheduler_config.json``) for a diffusers model
            folder that has none (a single model, not a pipeline); part of the fingerprint.
        dtype: "float32", "bfloat16" or "float16": the precision of the network and VAE (see
            :func:`flipd.load`).

    Raises:
        FileNotFoundError: nothing at ``path`` (or ``scheduler``).
        ValueError: ``path`` is not a model flipd can read (the message says what it expected),
            or ``scheduler`` was given for a flipd checkpoint.
    """
    directory = resolve_source(path)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    kind = model_kind(directory)
    precision = resolve_dtype(dtype)
    if scheduler is not None and kind == "flipd":
        raise ValueError(
            f"a scheduler (--scheduler) applies only to diffusers models; the flipd checkpoint at {str(directory)!r} "
            "brings its own schedule: drop the scheduler."
        )
    if scheduler is not None:
        from ..models.diffusers import from_diffusers

        model = from_diffusers(directory, scheduler=Path(scheduler), device=device,
                               dtype=None if precision == torch.float32 else precision,
                               **({} if prompt is None else {"prompt": prompt}))
    else:
        model = load(directory, device=device, prompt=prompt, dtype=precision)
    if kind == "flipd":
        spec_kind = getattr(getattr(model.network, "spec", None), "kind", None)
        architecture = {"mlp_unet": "MLP U-net", "unet2d": "convolutional U-net"}.get(spec_kind, spec_kind or "network")
        description = f"flipd checkpoint: {architecture} on points of shape {_shape_text(model.data_shape)}"
        if _trained_on(model.metadata):
            description += f", trained on {_trained_on(model.metadata)}"
        metadata = dict(model.metadata)
    else:
        description, metadata = f"diffusers {model!r}", {}
    if directory != Path(path):
        description += f" (Hugging Face Hub {os.fspath(path)}, cached in {directory})"
    fingerprint = fingerprint_path(directory)
    if scheduler is not None:
        description += f", scheduler from {scheduler}"
        fingerprint = f"{fingerprint}+{fingerprint_path(scheduler)}"
    if prompt is not None:
        description += f", prompt {prompt!r}"
        metadata["prompt"] = prompt
        fingerprint = hashlib.sha256(f"{fingerprint}\0prompt\0{prompt}".encode()).hexdigest()
    if precision != torch.float32:
        description += f", in {str(precision).removeprefix('torch.')}"
    return LoadedModel(
        model=model, kind=kind, path=directory, description=description,
        fingerprint=fingerprint, metadata=metadata, dtype=str(precision).removeprefix("torch."),
    )
