"""Choosing the torch device a run uses."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | None) -> torch.device:
    """A torch device from "auto", "cpu", "cuda", "cuda:1", "mps"; refuses ones this machine lacks."""
    choice = (device or "auto").strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        resolved = torch.device(choice)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"Unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps.") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Device {device!r} was asked for but CUDA is not available here; use the device 'cpu'.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"Device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"Device {device!r} was asked for but MPS is not available here; use the device 'cpu'.")
    elif resolved.type != "cpu":
        raise ValueError(f"Unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps.")
    return resolved


