"""A flipd image model as a diffusers pipeline folder (``DDPMPipeline``: ``unet/`` + ``scheduler/``).

What can be exported: a :class:`~flipd.models.checkpoint.DiffusionModel` whose network is the
convolutional U-net (:class:`~flipd.models.unet.ImageUNet`, a diffusers ``UNet2DModel`` inside),
with no standardisation (shift 0, scale 1: ``flipd train --standardize none``, images in
[-1, 1] as diffusers pipelines take them), predicting the noise ("epsilon") or the clean image
("sample"). Everything else is refused, saying why: an MLP network (diffusers has no class
for it), a standardisation (the pipeline would feed the network images in other coordinates,
and a per-coordinate or scalar rescaling changes the noise level, which no diffusers scheduler
expresses), or other predictions.

The schedule. The network sees the reference VP schedule (VP with beta_min = 0.1, beta_max =
20, continuous time u ∈ [0, 1]) whatever schedule it was trained with (see
:func:`flipd.models.checkpoint.reference_inputs`: noise and clean image are the same in every
schedule at the same delta, so epsilon and sample outputs carry over unchanged); a checkpoint
written before that (``network_input="schedule"``) sees its own VP schedule. ImageUNet calls
the diffusers network with ``timestep = T·u`` (T = ``time_scale``, 1000 by default). So the
exported ``DDPMScheduler`` has ``num_train_timesteps = T`` and ``trained_betas`` chosen so that

    alphas_cumprod[k] = psi(k / T)²   for k = 1 .. T-1,

exactly (up to float32) the continuous schedule at the times the network took for those
timesteps: timestep k of the pipeline is continuous time u = k/T. The continuous schedule has
no noise at u = 0, which a DDPMScheduler cannot hold (alphas_cumprod must be below 1), so
timestep 0 gets the noise of half a step, alphas_cumprod[0] = psi(1 / (2T))². Stored as
float32 by diffusers, these alphas_cumprod are within 1e-6 (relative) of psi(k/T)². This is not
diffusers' "linear" beta schedule (beta_start = 1e-4, beta_end = 0.02, the first-order
discretisation of the same VP), whose alphas_cumprod differ from psi(k/T)² by 0.06% at
k = 50, 1.6% at k = 500 and 8% at k = 999 (both measured by
``tests/test_export_diffusers.py::test_trained_betas_match_the_continuous_schedule``).
flipd reads the exported scheduler as :class:`~flipd.schedules.Discrete` (time = timestep
index, delta interpolated linearly between indices), so FLIPD at one noise level agrees
between the original model and the exported pipeline when the level is given as delta (or is
the default level, which is defined by delta; sigma means the same only when the original
schedule is variance preserving, psi² + sigma² = 1). For a model trained with the reference VP schedule, time
t0 = u of the original is timestep t0 = T·u of the export.

diffusers is imported only when a model is exported. Weights are written as safetensors.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from ..noise import REFERENCE_SCHEDULE
from ..runs.files import atomic_directory
from ..schedules import VP, Schedule
from .unet import UNET_KIND

__all__ = ["EXPORTABLE_PREDICTIONS", "ExportError", "check_exportable", "ddpm_alphas_cumprod", "export_diffusers"]

#: flipd predictions and the diffusers ``prediction_type`` each is exported as.
EXPORTABLE_PREDICTIONS: dict[str, str] = {"epsilon": "epsilon", "sample": "sample"}


class ExportError(ValueError):
    """A model cannot be exported as a diffusers pipeline (the message says why and what to do)."""


def ddpm_alphas_cumprod(schedule: Schedule, steps: int) -> torch.Tensor:
    """``alphas_cumprod`` [steps] float64 of the DDPM scheduler that matches a continuous
    schedule on [0, 1] sampled at u = k/steps: psi(k/steps)² for k ≥ 1 and psi(1/(2·steps))²
    for k = 0 (see the module notes)."""
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2; got {steps!r}.")
    times = torch.arange(steps, dtype=torch.float64) / steps
    times[0] = 0.5 / steps
    return schedule.psi(times) ** 2


def _network_schedule(model: Any) -> Schedule:
    """The continuous schedule the network itself sees (in its time u ∈ [0, 1])."""
    if model.network_input == "reference":
        return REFERENCE_SCHEDULE
    if isinstance(model.schedule, VP):
        return model.schedule
    raise ExportError(
        f"The network of this checkpoint takes the times of its {model.schedule!r} schedule as they come "
        "(an older checkpoint); only VP schedules can be exported from such checkpoints. Retrain it with "
        "this flipd version."
    )


def check_exportable(model: Any) -> tuple[int, str, Schedule]:
    """``(num_train_timesteps, diffusers prediction_type, network schedule)`` for a model that
    can be exported; raises :class:`ExportError` (naming the reason and the fix) otherwise."""
    spec = getattr(model.network, "spec", None)
    kind = getattr(spec, "kind", None)
    if kind != UNET_KIND or not hasattr(model.network, "unet"):
        name = {"mlp_unet": "an MLP U-net on flattened points"}.get(kind, f"a {type(model.network).__name__}")
        raise ExportError(
            f"Only image models with the convolutional U-net can be exported as a diffusers pipeline; this "
            f"model's network is {name}, which diffusers has no class for. Train one with: flipd train IMAGES "
            "--network unet --standardize none --out DIR"
        )
    shift, scale = model.shift, model.scale
    if not (bool((shift == 0).all()) and bool((scale == 1).all())):
        raise ExportError(
            f"The model standardises its inputs (mode {model.standardize_mode!r}: z = (x - shift) / scale); a "
            "diffusers pipeline feeds the network images in [-1, 1] as they are, and a rescaling changes the "
            "noise level, which no diffusers scheduler expresses. Retrain with --standardize none (images in "
            "[-1, 1] need no standardisation)."
        )
    if model.prediction not in EXPORTABLE_PREDICTIONS:
        raise ExportError(
            f"The model predicts {model.prediction!r}; export supports {', '.join(EXPORTABLE_PREDICTIONS)} "
            "(the same noise and clean image in every schedule). Retrain with --prediction epsilon."
        )
    scale_in_time = float(model.network.config.time_scale)
    steps = int(round(scale_in_time))
    if steps != scale_in_time or steps < 2:
        raise ExportError(
            f"The network's timestep is {scale_in_time:g}·t; a DDPM scheduler needs an integer number of "
            "training timesteps (time_scale a whole number >= 2, 1000 by default)."
        )
    return steps, EXPORTABLE_PREDICTIONS[model.prediction], _network_schedule(model)


def export_diffusers(model: Any, directory: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``model`` as a diffusers ``DDPMPipeline`` folder: ``model_index.json``, ``unet/``
    (config + safetensors weights) and ``scheduler/`` (a ``DDPMScheduler`` matching its schedule).

    Args:
        model: a :class:`~flipd.models.checkpoint.DiffusionModel` that :func:`check_exportable`
            accepts (convolutional U-net, no standardisation, epsilon or sample prediction).
        directory: the folder to write; it must not exist or be empty, unless ``force`` and it
            holds a pipeline (``model_index.json``), which is then replaced. Written atomically.
        force: replace an existing pipeline folder.

    Returns:
        The folder. ``flipd.from_diffusers(directory)`` and ``DDPMPipeline.from_pretrained``
        load it.

    Raises:
        ExportError: the model cannot be exported (see the module notes).
        FileExistsError: ``directory`` holds something that may not be replaced.
    """
    steps, prediction_type, schedule = check_exportable(model)
    target = Path(directory)
    if target.is_file():
        raise FileExistsError(f"{str(target)!r} is a file; choose another output folder.")
    if target.is_dir() and any(target.iterdir()):
        if not (target / "model_index.json").is_file():
            raise FileExistsError(
                f"{str(target)!r} is a folder that is not a diffusers pipeline; it is never replaced: choose another output folder."
            )
        if not force:
            raise FileExistsError(f"{str(target)!r} already exists; choose another output folder or pass force=True (--force).")
    from diffusers import DDPMPipeline, DDPMScheduler

    alphas_cumprod = ddpm_alphas_cumprod(schedule, steps)
    betas = 1.0 - alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    scheduler = DDPMScheduler(
        num_train_timesteps=steps, trained_betas=betas.tolist(), prediction_type=prediction_type,
        variance_type="fixed_small", clip_sample=True, clip_sample_range=1.0,
    )
    unet = copy.deepcopy(model.network.unet).to(device="cpu", dtype=torch.float32)
    with atomic_directory(target) as staging:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(staging, safe_serialization=True)
    return target
