"""Which weight files flipd reads: safetensors only, never a pickle. Imports nothing of flipd."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PICKLE_SUFFIXES", "check_safetensors_only"]

#: File suffixes of pickled checkpoints, which flipd never loads.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".joblib")


def check_safetensors_only(directory: str | os.PathLike) -> None:
    """Refuse a diffusers folder in which some model component has only pickled weights.

    A component is the folder itself or a subfolder with a ``config.json``; one holding pickled
    weights (.bin, .pt, .ckpt, ...) and no ``.safetensors`` file is refused, naming the files.
    Where both exist, :func:`flipd.from_diffusers` reads only the safetensors.

    Raises:
        ValueError: a component has only pickled weights.
    """
    directory = Path(directory)
    components = [directory] + [p for p in directory.iterdir() if p.is_dir()]
    for component in components:
        if not (component / "config.json").is_file():
            continue
        files = [p for p in component.iterdir() if p.is_file()]
        pickled = [p.name for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickled and not any(p.suffix == ".safetensors" for p in files):
            raise ValueError(
                f"{str(component)!r} holds only pickled weights ({', '.join(sorted(pickled))}); flipd never unpickles "
                "files. Convert them to safetensors (diffusers: save_pretrained(..., safe_serialization=True))."
            )
