"""The train job: a diffusion model trained on named data and saved as a flipd checkpoint."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..datasets.sources import PointSet
from ..datasets.streaming import PointStream
from ..models.checkpoint import CHECKPOINT_FORMAT, CONFIG_FILE, checkpoint_config_path
from ..models.mlp import MLPUNetConfig
from ..models.scaling import SCALING_CHOICES, SPREAD_WARNING_START, resolve_scaling
from ..models.spec import NetworkSpec
from ..recipes import (
    BUDGET_STEP_CAP,
    DEFAULT_LOW_T_FRACTION,
    DEFAULT_STEPS,
    DEFAULT_TIME_SAMPLING,
    EMPHASIS_RANGES,
    mlp_widths,
)
from ..runs.files import atomic_directory, check_writable_directory, fingerprint_array
from ..schedules import VE, VP, Cosine, RectifiedFlow, Schedule
from ..train import TrainConfig, train_diffusion

__all__ = [
    "AUTO_PREDICTION", "NETWORK_CHOICES", "SCALING_CHOICES", "SCHEDULE_CHOICES", "check_checkpoint_target",
    "resolve_prediction", "train_model", "training_config",
]

#: Schedules ``flipd train --schedule`` names, each with its default parameters.
SCHEDULE_CHOICES: dict[str, type[Schedule]] = {"vp": VP, "cosine": Cosine, "ve": VE, "rectified-flow": RectifiedFlow}


def schedule_named(schedule: str | Schedule) -> Schedule:
    """The schedule for a :data:`SCHEDULE_CHOICES` name (a Schedule is returned as it is)."""
    if isinstance(schedule, Schedule):
        return schedule
    if schedule not in SCHEDULE_CHOICES:
        raise ValueError(f"Unknown schedule {schedule!r}; use one of {', '.join(SCHEDULE_CHOICES)}.")
    return SCHEDULE_CHOICES[schedule]()


def _is_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a flipd checkpoint (a config with the flipd format)."""
    path = checkpoint_config_path(directory)
    if path is None:
        return False
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == CHECKPOINT_FORMAT


def check_checkpoint_target(target: str | os.PathLike, *, force: bool) -> Path:
    """Check, before training, that a checkpoint can be written to ``target``.

    ``target`` may be missing or an empty folder; an existing flipd checkpoint is replaced only
    with ``force``; anything else (a file, a folder of other things) is never replaced, with or
    without ``force``. Its parent must be writable.

    Raises:
        FileExistsError: ``target`` exists and may not be replaced (the message says why).
        NotADirectoryError, PermissionError: the checkpoint cannot be written there.
    """
    target = Path(target)
    if target.is_file() or target.is_symlink() and not target.is_dir():
        raise FileExistsError(f"{str(target)!r} is a file, not a checkpoint folder; choose another --out.")
    if target.is_dir() and any(target.iterdir()):
        if not _is_checkpoint(target):
            raise FileExistsError(
                f"{str(target)!r} is a folder that is not a flipd checkpoint (no {CONFIG_FILE} of the flipd "
                "format); flipd train replaces only its own checkpoints or empty folders: choose another --out."
            )
        if not force:
            raise FileExistsError(f"{str(target)!r} already exists; choose another --out or pass --force to overwrite it.")
    check_writable_directory(target.parent, "the checkpoint")
    return target


#: Networks ``flipd train`` can build: "mlp" for vectors (and flattened images), "unet" for images.
NETWORK_CHOICES: tuple[str, ...] = ("mlp", "unet")


#: What each network predicts under ``prediction="auto"`` (``flipd train --prediction auto``, the
#: default): the convolutional U-net predicts the clean image (x0, "sample"); trained as long as
#: one predicting the noise, its FLIPD at the default noise level lies in [0, D] for every MNIST
#: image where the noise predictor's is negative for every one
#: (``python -m flipd.bench images --datasets mnist``). The MLP predicts the noise.
AUTO_PREDICTION: dict[str, str] = {"mlp": "epsilon", "unet": "sample"}


def resolve_prediction(network: str, prediction: str) -> str:
    """The prediction ``network`` trains with: :data:`AUTO_PREDICTION` for "auto", else ``prediction``."""
    if prediction == "auto":
        if network not in AUTO_PREDICTION:
            raise ValueError(f"Unknown network {network!r}; use one of {', '.join(NETWORK_CHOICES)}.")
        return AUTO_PREDICTION[network]
    return prediction


def _training_input(
    points: PointSet, network: str, widths: tuple[int, ...] | None, channels: tuple[int, ...]
) -> tuple[torch.Tensor | PointStream, Any]:
    """The training points (a tensor, or a stream for streamed points) and the network spec
    for ``network`` on ``points`` (MLP widths by :func:`flipd.recipes.mlp_widths` when ``widths``
    is None)."""
    if network == "mlp":
        x = points.x.flattened() if isinstance(points.x, PointStream) else points.x.reshape(points.n, -1)
        dim = int(x.shape[1])
        widths = mlp_widths(dim) if widths is None else tuple(widths)
        return x, NetworkSpec("mlp_unet", MLPUNetConfig(data_dim=dim, widths=widths).to_json())
    if network == "unet":
        if points.kind != "images":
            raise ValueError(f"The unet network is for images, but {points.spec!r} holds vectors; use the mlp network.")
        from ..models.unet import UNET_KIND, UNetConfig

        config = UNetConfig(image_shape=points.point_shape, block_out_channels=tuple(channels))
        return points.x, NetworkSpec(UNET_KIND, config.to_json())
    raise ValueError(f"Unknown network {network!r}; use one of {', '.join(NETWORK_CHOICES)}.")


def training_config(*, steps: int | None, max_seconds: float | None, **options: Any) -> TrainConfig:
    """The :class:`flipd.train.TrainConfig` of ``flipd train`` for ``steps`` and a time budget
    ``max_seconds`` (either may be None), with the other TrainConfig fields from ``options``.

    ``steps`` None with a budget: the steps are fitted to it (``fit_steps_to_budget``, at most
    :data:`flipd.recipes.BUDGET_STEP_CAP`); None without one: :data:`flipd.recipes.DEFAULT_STEPS`.
    The warm-up is a tenth of the steps (at most 500), a validation every quarter (at most 500
    steps apart); with a fitted budget both are a tenth of the fitted steps.
    """
    fit = steps is None and max_seconds is not None
    steps = (BUDGET_STEP_CAP if fit else DEFAULT_STEPS) if steps is None else steps
    return TrainConfig(
        steps=steps, max_seconds=max_seconds, fit_steps_to_budget=fit,
        warmup_steps=min(500, max(1, steps // 10)), eval_every=max(1, min(500, steps // 4)), **options,
    )


def train_model(
    points: PointSet,
    out: str | os.PathLike,
    *,
    steps: int | None = None,
    batch_size: int = 512,
    lr: float = 2e-3,
    widths: tuple[int, ...] | None = None,
    network: str = "mlp",
    channels: tuple[int, ...] = (16, 32, 64),
    standardize: str = "auto",
    max_seconds: float | None = None,
    low_t_fraction: float = DEFAULT_LOW_T_FRACTION,
    low_t_max: float | None = None,
    schedule: str | Schedule = "vp",
    prediction: str = "auto",
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    time_sampling: str = DEFAULT_TIME_SAMPLING,
    low_t_min: float | None = None,
) -> Any:
    """Train a diffusion model on ``points`` and save it as a flipd checkpoint in ``out``.

    ``network`` "mlp" is an MLP U-net (:class:`flipd.models.MLPUNet`) with hidden
    ``widths`` (None: :func:`flipd.recipes.mlp_widths` of the data's dimension, 256 wide up to
    D = 256 and 512 above), for vectors and for images flattened to vectors; "unet" is a convolutional
    U-net (:class:`flipd.models.unet.ImageUNet`) with ``channels`` per resolution level, for images.
    ``standardize`` is how the data are rescaled before training: "auto" (the default:
    "scalar" for tables, "none" for images in [-1, 1], also when the MLP sees them flattened;
    :mod:`flipd.models.scaling`), "scalar"
    (one scale for all coordinates: keeps the data's shape), "per_coordinate" (for coordinates
    in different units) or "none". The checkpoint
    is written into a temporary directory next to ``out`` and moved into place when complete,
    so ``out`` never holds a half-written model; ``out`` must be missing, empty or a flipd
    checkpoint (:func:`check_checkpoint_target`). The data's name, size and fingerprint are
    recorded in the checkpoint's metadata under "data".

    Streamed points (``points.streamed``: ``load_points(..., stream=True, workers=N)``) are
    never held in memory whole: :func:`flipd.train.train_diffusion` reads them block by block
    and batch by batch through the stream's workers, and the fingerprint is that of the
    source (:meth:`PointSet.fingerprint`).

    ``steps`` are the optimiser steps. When it is None: with a time budget ``max_seconds`` the
    step count is fitted to the budget, so that the warm-up and cosine learning-rate schedule
    end when the budget does (:class:`flipd.recipes.StepBudget`; the steps then depend on the
    machine and its load, and the measured seconds per step and the chosen steps are recorded
    in the metadata under "budget"); without one, :data:`flipd.recipes.DEFAULT_STEPS` (4000).
    An explicit ``steps`` with ``max_seconds`` trains that schedule and stops it at the budget.

    ``low_t_fraction`` of every batch draws its times from [``low_t_min``, ``low_t_max``] rather
    than U(t_min, 1), uniformly in t (``time_sampling="uniform"``) or in log sigma/psi
    (``"log_sigma"``); either end left None is that of :data:`flipd.recipes.EMPHASIS_RANGES` for
    the sampling (uniform: t_min to 0.2; log_sigma: 0.002 to 0.3): FLIPD reads the score at small t0 (0.05 by default), where
    uniform times spend few steps (:func:`flipd.recipes.sample_reference_times`). Pass 0 for the
    reference uniform sampling. All are reference-VP times, carried to the schedule's own times
    through delta. The defaults are the recipe ``python -m flipd.bench recipes`` measured best.

    ``schedule`` is a :data:`SCHEDULE_CHOICES` name ("vp", "cosine", "ve", "rectified-flow",
    each with its default parameters) or a :class:`flipd.schedules.Schedule`; ``prediction``
    is what the network outputs ("auto": :data:`AUTO_PREDICTION`, x0 for the unet and the noise for
    the MLP; or "epsilon", "score", "sample", "v_prediction" or
    "flow_velocity"). Both are saved in the checkpoint, so ``flipd estimate`` needs neither.

    Returns:
        The trained :class:`flipd.train.DiffusionModel`.
    """
    check_checkpoint_target(out, force=True)
    x, network_spec = _training_input(points, network, widths, channels)
    if points.kind == "images":  # images flattened for the MLP are still images under "auto"
        standardize = resolve_scaling(points.x, standardize)
    if time_sampling not in EMPHASIS_RANGES:
        raise ValueError(f"Unknown time sampling {time_sampling!r}; use one of {', '.join(EMPHASIS_RANGES)}.")
    default_min, default_max = EMPHASIS_RANGES[time_sampling]
    low_t_min = default_min if low_t_min is None else low_t_min
    low_t_max = default_max if low_t_max is None else low_t_max
    config = training_config(
        steps=steps, max_seconds=max_seconds, batch_size=batch_size, lr=lr, seed=seed, standardize=standardize,
        low_t_fraction=low_t_fraction, low_t_max=low_t_max, low_t_min=low_t_min, time_sampling=time_sampling,
        schedule=schedule_named(schedule).to_config(), prediction=resolve_prediction(network, prediction),
    )
    with warnings.catch_warnings():
        if points.kind == "images":  # flattened pixels share one unit: uneven spreads are the images' own
            warnings.filterwarnings("ignore", message=SPREAD_WARNING_START, category=RuntimeWarning)
        model = train_diffusion(x, network=network_spec, config=config, progress=progress, device=device)
    model.metadata["data"] = {
        "spec": points.spec, "n_points": points.n, "point_shape": list(points.point_shape),
        "fingerprint": points.fingerprint() if points.streamed else fingerprint_array(x), "description": points.description,
    }
    with atomic_directory(out) as staging:
        model.save(staging)
    return model
