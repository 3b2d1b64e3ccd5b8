"""The environment record written with every run: versions, threads, device, machine, caches."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEMO_DEFAULT_OUT",
    "RECORDED_PACKAGES",
    "cache_directories",
    "device_info",
    "environment_info",
    "machine_info",
    "package_versions",
]

#: Where ``flipd demo`` writes unless told otherwise (its models go to ``models/`` inside).
DEMO_DEFAULT_OUT = "runs/demo"


#: Packages whose versions are recorded with every run (None when not installed).
RECORDED_PACKAGES: tuple[str, ...] = (
    "torch", "numpy", "scipy", "kneed", "safetensors", "pandas", "pyarrow", "matplotlib",
    "typer", "rich", "diffusers", "pillow", "scikit-learn", "scikit-dimension", "zuko",
)


def package_versions(names: Sequence[str] = RECORDED_PACKAGES) -> dict[str, str | None]:
    """Versions of flipd, Python and the packages ``names`` (None for those not installed)."""
    from .._version import __version__

    versions: dict[str, str | None] = {"flipd": __version__, "python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU model, core count, torch threads, OS, Python, load average and GPU."""
    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1_5_15min": load,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def cache_directories() -> dict[str, str]:
    """Where models are kept between runs (the folders are not created here).

    ``demo_models``: models trained by ``flipd demo`` (relative to the working directory, see
    its ``--out``); ``bench_models``: models trained by the benchmarks (``cache/`` relative to the
    working directory, see their ``--checkpoints`` or ``--cache-dir``); ``huggingface_hub`` and
    ``torch_hub``: where those libraries keep downloaded models (flipd downloads only models
    named by a Hugging Face Hub id, into the first; see :mod:`flipd.models.hub`).
    """
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", home / ".cache"))
    hf_home = Path(os.environ.get("HF_HOME", xdg / "huggingface"))
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or str(hf_home / "hub")
    return {
        "demo_models": str(Path(DEMO_DEFAULT_OUT) / "models"),
        "bench_models": "cache",
        "huggingface_hub": hub,
        "torch_hub": torch.hub.get_dir(),
    }


def device_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """The device a run uses and what accelerators the machine has."""
    info: dict[str, Any] = {"device": str(device) if device is not None else "cpu"}
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    info["mps_available"] = bool(mps is not None and mps.is_available())
    return info


def environment_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """Versions, threads, device and machine: recorded with every run and shown by ``flipd info``."""
    return {
        "versions": package_versions(),
        "threads": {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "device": device_info(device),
        "caches": cache_directories(),
    }


