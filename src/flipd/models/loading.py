"""A model from a path: the one place that decides what a path holds.

A flipd checkpoint holds ``config.json`` with a flipd ``format`` field, ``model.safetensors``
and a model card (written by ``flipd train``; checkpoints of format version 1 hold
``flipd_model.json`` instead); a diffusers folder holds ``model_index.json`` (a pipeline) or a
``config.json`` naming its class in ``_class_name`` (one component). Weights are only ever read from safetensors; pickled checkpoints (.pt, .ckpt,
.bin, .pkl) are refused. A string ``owner/name`` that names nothing on disk is a Hugging Face
Hub id: :func:`resolve_source` fetches it into the hub cache (:mod:`flipd.models.hub`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch

from ..devices import resolve_device
from .base import Model
from .checkpoint import CONFIG_FILE, checkpoint_config_path
from .hub import hub_snapshot, is_hub_id
from .weights import PICKLE_SUFFIXES, check_safetensors_only

__all__ = ["PICKLE_SUFFIXES", "check_safetensors_only", "load", "model_kind", "resolve_source"]


def resolve_source(source: str | os.PathLike) -> Path:
    """The local folder of a model: ``source`` itself, or for a Hugging Face Hub id
    (``owner/name`` naming nothing on disk) its snapshot in the hub cache, fetched if needed.

    Raises:
        flipd.models.hub.HubUnavailableError: a hub id that is not cached and cannot be fetched
            (a FileNotFoundError; the message says what failed and how to get the model).
    """
    if is_hub_id(source):
        return hub_snapshot(os.fspath(source))
    return Path(source)


def model_kind(path: str | os.PathLike) -> Literal["flipd", "diffusers"]:
    """What ``path`` holds: "flipd" (a checkpoint directory) or "diffusers" (a local folder).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a pickle, a file, a diffusers component with only pickled weights, or a
            directory that is neither (the message says what was expected).
    """
    directory = Path(path)
    if not directory.exists():
        raise FileNotFoundError(
            f"No model at {str(directory)!r}. Train one with: flipd train DATA --out {directory}"
        )
    if directory.is_file():
        if directory.suffix.lower() in PICKLE_SUFFIXES:
            raise ValueError(
                f"{str(directory)!r} looks like a pickled checkpoint; flipd never unpickles files (it can run "
                "arbitrary code). Give a flipd checkpoint directory (written by flipd train) or a diffusers folder."
            )
        raise ValueError(
            f"{str(directory)!r} is a file; a model is a directory: a flipd checkpoint (config.json + "
            "model.safetensors, written by flipd train) or a diffusers folder."
        )
    if checkpoint_config_path(directory) is not None:
        return "flipd"
    if (directory / "model_index.json").is_file():
        check_safetensors_only(directory)
        return "diffusers"
    if (directory / CONFIG_FILE).is_file():
        fields = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))  # valid: checked above
        if not (isinstance(fields, dict) and "_class_name" in fields):
            raise ValueError(
                f"{str(directory / CONFIG_FILE)!r} is neither a flipd checkpoint config (it has no 'format' "
                "field) nor a diffusers config (no '_class_name' field). Give a checkpoint written by flipd "
                "train or a diffusers folder written by save_pretrained."
            )
        check_safetensors_only(directory)
        return "diffusers"
    raise ValueError(
        f"{str(directory)!r} is not a flipd checkpoint (no {CONFIG_FILE} with a flipd 'format' field) nor a "
        "diffusers folder (no model_index.json or config.json). Train a model with: flipd train DATA --out DIR"
    )


def load(path: str | os.PathLike, *, device: str | torch.device | None = "cpu", prompt: str | None = None,
         dtype: torch.dtype | None = None) -> Model:
    """Load a flipd checkpoint directory or a diffusers folder as a :class:`Model`; either may
    be named by a Hugging Face Hub id ``owner/name`` (see :func:`resolve_source`).

    The result carries its schedule, prediction type and coordinate map, so
    ``flipd.flipd(flipd.load(path), x)`` takes ``x`` in the units of the data it was trained on.

    Args:
        path: a local folder or a hub id.
        device: where to put the model.
        prompt: the text conditioning of a text-conditioned diffusers model (Stable Diffusion
            v1/v2 style), as ``from_diffusers(path, prompt=...)``; None: its default, the empty
            prompt. Refused for models that take no text.
        dtype: torch.bfloat16 or torch.float16 to run the network and VAE in reduced precision
            (a flipd checkpoint under ``torch.autocast``, a diffusers network and VAE cast to
            it); None or torch.float32 for full precision. Traces and norms stay float32.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: ``path`` is not a model flipd can read (the message says what it expected),
            or a prompt for a model that takes no text.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    path = resolve_source(path)
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string; got {type(prompt).__name__}.")
    if model_kind(path) == "flipd":
        if prompt is not None:
            raise ValueError(
                f"{str(path)!r} is a flipd checkpoint, which takes no text; a prompt applies only to "
                "text-conditioned diffusers models (e.g. Stable Diffusion). Drop the prompt."
            )
        from .checkpoint import DiffusionModel

        return DiffusionModel.load(path, device=device).with_compute_dtype(dtype)
    from .diffusers import from_diffusers

    model = from_diffusers(Path(path), device=device, dtype=None if dtype == torch.float32 else dtype,
                           **({} if prompt is None else {"prompt": prompt}))
    if prompt is not None and model.conditioning_source != "prompt":
        raise ValueError(
            f"The diffusers model at {str(path)!r} ({type(model.network).__name__}) takes no text prompt; a "
            "prompt applies only to text-conditioned models (e.g. Stable Diffusion). Drop the prompt."
        )
    return model
