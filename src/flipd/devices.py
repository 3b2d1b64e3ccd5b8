"""Choosing the torch device a run uses."""

from __future__ import annotations

import torch

__all__ = ["DTYPES", "resolve_device", "resolve_dtype"]


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




#: Names of the precisions a network and VAE can run in.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype:
    """A torch dtype from "float32", "bfloat16" or "float16" (or fp32, bf16, fp16; None: float32)."""
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ValueError(f"Unsupported dtype {name}; use float32, bfloat16 or float16.")
        return name
    choice = str(name).strip().lower().removeprefix("torch.")
    if choice not in DTYPES:
        raise ValueError(f"Unknown dtype {name!r}; use float32, bfloat16 or float16.")
    return DTYPES[choice]
