"""A model from a path: the one place that decides what a path holds.

A flipd checkpoint holds ``flipd_model.json`` and ``model.safetensors`` (written by ``flipd
train``); a diffusers folder holds ``model_index.json`` (a pipeline) or ``config.json`` (one
component). Weights are only ever read from safetensors; pickled checkpoints (.pt, .ckpt,
.bin, .pkl) are refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

from ..devices import resolve_device
from .base import Model
from .checkpoint import CONFIG_FILE
from .weights import PICKLE_SUFFIXES, check_safetensors_only

__all__ = ["PICKLE_SUFFIXES", "check_safetensors_only", "load", "model_kind"]

#: File suffixes of pickled checkpoints, which flipd never loads.
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
            f"{str(directory)!r} is a file; a model is a directory: a flipd checkpoint (flipd_model.json + "
            "model.safetensors, written by flipd train) or a diffusers folder."
        )
    if (directory / CONFIG_FILE).is_file():
        return "flipd"
    if (directory / "model_index.json").is_file() or (directory / "config.json").is_file():
        check_safetensors_only(directory)
        return "diffusers"
    raise ValueError(
        f"{str(directory)!r} is not a flipd checkpoint (no {CONFIG_FILE}) nor a diffusers folder "
        "(no model_index.json or config.json). Train a model with: flipd train DATA --out DIR"
    )


def load(path: str | os.PathLike, *, device: str | torch.device | None = "cpu", dtype: torch.dtype | None = None) -> Model:
    """Load a flipd checkpoint directory or a local diffusers folder as a :class:`Model`.

    The result carries its schedule, prediction type and coordinate map, so
    ``flipd.flipd(flipd.load(path), x)`` takes ``x`` in the units of the data it was trained on.

    Args:
        path: the checkpoint directory or diffusers folder.
        device: where the network (and VAE) run.
        dtype: torch.bfloat16 or torch.float16 to run the network and VAE in reduced precision
            (a flipd checkpoint under ``torch.autocast``, a diffusers network and VAE cast to
            it); None or torch.float32 for full precision. Traces and norms stay float32.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: ``path`` is not a model flipd can read (the message says what it expected).
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    if model_kind(path) == "flipd":
        from .checkpoint import DiffusionModel

        return DiffusionModel.load(path, device=device).with_compute_dtype(dtype)
    from .diffusers import from_diffusers

    return from_diffusers(Path(path), device=device, dtype=None if dtype == torch.float32 else dtype)
