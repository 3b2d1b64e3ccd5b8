"""A job's model and points: a loaded model with where it came from, and the points as it takes them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..datasets.sources import PointSet
from ..devices import resolve_device
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
    """

    model: Model
    kind: str
    path: Path
    description: str
    fingerprint: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def schedule(self) -> Any:
        return self.model.schedule

    @property
    def prediction(self) -> str:
        return self.model.prediction

    def prepare(self, points: PointSet) -> Tensor:
        """The points in the model's coordinates (shape-checked, flattened, standardised or
        encoded as the model needs): the tensor FLIPD runs on.

        Raises:
            ValueError: the points do not fit the model (the message names both shapes).
        """
        if isinstance(self.model, DiffusionModel):
            return self.model.encode(self._fit_checkpoint(points))
        return self.model.encode(self._fit_diffusers(points))

    def _fit_checkpoint(self, points: PointSet) -> Tensor:
        data_shape = tuple(int(s) for s in self.model.data_shape)
        x = points.x
        if points.point_shape != data_shape:
            if len(data_shape) == 1 and points.ambient_dim == data_shape[0]:
                x = x.reshape(points.n, -1)  # images flattened, as the model was trained
            else:
                trained_on = _trained_on(self.metadata)
                trained = f" (it was trained on {trained_on!r})" if trained_on else ""
                raise ValueError(
                    f"The model at {str(self.path)!r} takes points of shape {_shape_text(data_shape)} "
                    f"(D = {int(np.prod(data_shape))}){trained}, but {points.spec!r} has points of shape "
                    f"{_shape_text(points.point_shape)} (D = {points.ambient_dim}). Use a model trained on "
                    f"this data: flipd train {points.spec} --out MODEL_DIR."
                )
        return x.to(self.model.shift.device)

    def _fit_diffusers(self, points: PointSet) -> Tensor:
        if points.kind != "images":
            raise ValueError(
                f"The diffusers model at {str(self.path)!r} takes images, but {points.spec!r} holds "
                f"vectors of dimension {points.ambient_dim}; give an image data set or folder."
            )
        images = points.x
        if self.model.is_latent:
            return images
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
                f"has {h}x{w}; resize them (e.g. an image folder with size={size})."
            )
        return images


def _trained_on(metadata: dict[str, Any]) -> str | None:
    data = metadata.get("data")
    return data.get("spec") if isinstance(data, dict) else None


def load_model(path: str | os.PathLike, device: str | torch.device | None = "cpu", *,
               prompt: str | None = None) -> LoadedModel:
    """Load a flipd checkpoint directory or a diffusers folder (:func:`flipd.load`; either may
    be a Hugging Face Hub id ``owner/name``) with its description and fingerprint.

    ``prompt`` is the text of a text-conditioned diffusers model (None: its default, the empty
    prompt); it is part of the fingerprint (another prompt is another model) and the metadata.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: ``path`` is not a model flipd can read (the message says what it expected).
    """
    directory = resolve_source(path)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    kind = model_kind(directory)
    model = load(directory, device=device, prompt=prompt)
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
    if prompt is not None:
        description += f", prompt {prompt!r}"
        metadata["prompt"] = prompt
        fingerprint = hashlib.sha256(f"{fingerprint}\0prompt\0{prompt}".encode()).hexdigest()
    return LoadedModel(
        model=model, kind=kind, path=directory, description=description,
        fingerprint=fingerprint, metadata=metadata,
    )
