"""The export job: a flipd image model (a checkpoint folder or hub id) written as a diffusers pipeline folder."""

from __future__ import annotations

import os
from pathlib import Path

from ..models.export import ExportError, export_diffusers
from ..runs.files import check_writable_directory
from .inputs import LoadedModel, load_model

__all__ = ["export_model"]


def export_model(model: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> tuple[Path, LoadedModel]:
    """Load the flipd checkpoint ``model`` and write it to ``out`` as a diffusers ``DDPMPipeline``
    folder (:func:`flipd.models.export.export_diffusers`).

    Returns:
        ``(out, the loaded model)``.

    Raises:
        ExportError: the model is a diffusers model already, or cannot be exported (the message says why).
        FileExistsError: ``out`` holds something that may not be replaced.
    """
    target = Path(out)
    check_writable_directory(target.parent, "the exported pipeline")
    loaded = load_model(model)
    if loaded.kind != "flipd":
        raise ExportError(
            f"{os.fspath(model)!r} is a diffusers model already; export writes flipd checkpoints as diffusers "
            "pipelines. Use it as it is."
        )
    return export_diffusers(loaded.model, target, force=force), loaded
