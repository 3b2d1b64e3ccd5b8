"""Training diffusion models on data arrays, and saving and loading them.

:func:`train_diffusion` fits a denoising network to data of shape [N, D] (tabular) or
[N, C, H, W] (images). By default it uses the reference variance-preserving schedule of the
FLIPD paper (beta from 0.1 to 20, ``flipd.schedules.VP()``) and the epsilon objective: with
``y = psi(t)·z + sigma(t)·eps`` and ``t ~ U(t_min, 1)``, minimise the unweighted squared error
``‖network(y, t) − eps‖²`` summed over the coordinates of each point and averaged over points.

Any schedule of :mod:`flipd.schedules` and any prediction of :mod:`flipd.parameterization` can
be trained (``TrainConfig.schedule`` and ``TrainConfig.prediction``), with the same objective in
noise space: the network output f gives the score ``a·f + b·y`` (:func:`score_coefficients`),
hence the noise estimate ``eps_hat = −sigma·(a·f + b·y)``, and the loss is ``‖eps_hat − eps‖²``
(for epsilon, f itself). Times are drawn as reference-VP times and carried to the schedule's
own times through delta = log(sigma/psi), so every schedule is trained on the same distribution
of smoothing levels, and the network sees every schedule as the reference VP
(:func:`flipd.models.checkpoint.reference_inputs`).

Standardisation and where FLIPD is computed
-------------------------------------------
Before training, the data are standardised once, ``z = (x − shift) / scale``, and the network
learns the noise of ``z``. By default (``standardize="auto"``, :mod:`flipd.models.scaling`)
tables are centred and divided by one common scale, which keeps their shape, and images in
[-1, 1] are left as they are; ``"per_coordinate"`` divides each coordinate by its own
standard deviation (for coordinates in different units). Tables whose coordinate spreads
differ by more than 100× get a warning. The returned :class:`DiffusionModel` therefore works in *standardised
coordinates*: ``model(y, t)`` expects ``y = psi·z + sigma·eps``. FLIPD must be computed in the
coordinates the model was trained in: inside FLIPD the trace term and the norm term scale
differently under a rescaling of the input, so rescaling inside the callable changes the
estimate. Compute it as

    flipd.flipd(model, x, t0=0.05)   # a flipd.Model: standardises x, brings VP() and "epsilon"

or simply ``model.lid(x, t0=0.05)``. The local intrinsic dimension itself is unchanged by the
invertible affine map ``x → z``, so the estimate is one of LID(x); only the noise level t0 is
measured in standardised units (sigma(t0) is a fraction of each coordinate's spread).

Reproducibility: every random draw (split, batches, times, noise, network initialisation)
comes from generators seeded by ``TrainConfig.seed``; the global random state is left as it
was.

Data larger than memory
-----------------------
``data`` may be a :class:`~flipd.datasets.streaming.PointStream` (``load_points(...,
stream=True)``: image folders, ``.npy``/``.npz`` arrays, CSV/parquet tables). One pass checks
every value and accumulates the moments of the training points block by block in float64
(:func:`flipd.datasets.moments.point_moments`), the held-out points (at most
``max_val_points``) are read once, and each step's batch is read from the stream, the next
ones decoded ahead by its DataLoader workers (:class:`~flipd.datasets.streaming.OrderedBatches`).
Tensors go through the same pass and the same permutations, so a stream and the tensor of its
points train to the same weights, whatever the number of workers.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .datasets.moments import PointMoments, point_moments
from .datasets.streaming import OrderedBatches, PointStream
from .models.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    DiffusionModel,
    fit_standardization,
    load,
    reference_inputs,
    standardization_from_moments,
)
from .models.mlp import MLPUNet, MLPUNetConfig, count_parameters
from .models.scaling import SCALING_CHOICES, scaling_for, spreads_warning
from .models.registry import build_network
from .models.spec import NetworkSpec
from .recipes import TIME_SAMPLINGS, StepBudget, lr_factor, sample_reference_times, vp_time_from_delta
from .runs.environment import package_versions
from .noise import REFERENCE_SCHEDULE, delta_range, is_reference
from .parameterization import PREDICTIONS, score_coefficients
from .schedules import VE, VP, Cosine, RectifiedFlow, Schedule

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "DiffusionModel",
    "TrainConfig",
    "fit_standardization",
    "load",
    "train_diffusion",
]

# --------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Everything that controls :func:`train_diffusion` (all JSON-serialisable).

    Attributes:
        steps: optimiser steps (upper bound; early stopping may end sooner).
        batch_size: points per step.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: steps of linear learning-rate warm-up (per step, from lr/warmup_steps).
        final_lr_fraction: the cosine decay ends at ``lr·final_lr_fraction``.
        ema_decay: decay of the exponential moving average of the weights; the EMA weights
            are the ones evaluated and returned.
        grad_clip: maximum global gradient norm (None: no clipping).
        t_min: training times are drawn from U(t_min, 1) (times of the reference VP schedule;
            see ``schedule``).
        low_t_fraction: fraction of each batch whose times are drawn from U(t_min, low_t_max)
            instead (0: the reference uniform sampling). Emphasising small times changes the
            weighting of the objective, not its minimiser.
        low_t_max: upper end of the emphasised times (a reference-VP time).
        val_fraction: fraction of the points held out for validation and early stopping.
        max_val_points: cap on the number of held-out points.
        eval_every: steps between validation losses.
        patience: stop after this many validations without improvement (None: never stop).
        min_improvement: relative decrease of the validation loss that counts as improvement.
        restore_best: return the EMA weights with the lowest validation loss.
        max_seconds: stop training after this much wall-clock time (None: no limit). Alone it
            cuts the loop off wherever the schedule is; with ``fit_steps_to_budget`` the step
            count is fitted so that the schedule ends with the budget.
        seed: seed of every random draw of training.
        standardize: "auto" (default: "scalar" for tables [N, D], "none" for images with
            values in [-1, 1], "scalar" for other images; :mod:`flipd.models.scaling`),
            "scalar" (mean of each coordinate, one std for all: keeps the data's shape),
            "per_coordinate" (mean and std of each coordinate: for coordinates in different
            units) or "none". The trained model records the mode it resolved to.
        schedule: the noise schedule as a ``Schedule.to_config()`` dict (a Schedule object is
            accepted and stored as its config); default the reference ``VP()``. Times are drawn
            as reference-VP times (``t_min``, ``low_t_*``) and carried to the schedule's own
            times with the same delta = log(sigma/psi), clamped into the schedule's range.
        prediction: what the network outputs: "epsilon" (default), "score", "sample",
            "v_prediction" or "flow_velocity" (:mod:`flipd.parameterization`).
        beta_min, beta_max: the VP schedule's betas, kept for configurations written before
            ``schedule`` existed (beta fields alone mean ``VP(beta_min, beta_max)``); filled in
            from ``schedule`` when it is a VP, None otherwise.
        time_sampling: how the emphasised ``low_t_fraction`` draws its times: "uniform" in t
            (the default) or "log_sigma", uniform in log(sigma/psi)
            (:func:`flipd.recipes.sample_reference_times`).
        low_t_min: lower end of the emphasised times (a reference-VP time; None: ``t_min``).
        fit_steps_to_budget: with ``max_seconds``, time the first steps and set the number of
            steps (at most ``steps``), the warm-up (at most ``warmup_steps``, a tenth of the
            steps) and the validation interval (at most ``eval_every``, a tenth of the steps) so
            that the whole learning-rate schedule ends when the budget does; the step count is
            fitted again at every validation (:class:`flipd.recipes.StepBudget`). The steps run
            then depend on the machine and its load; the measured seconds per step and the
            chosen steps are recorded in the model's metadata under "budget".
    """

    steps: int = 20_000
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    final_lr_fraction: float = 0.01
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    t_min: float = 1e-4
    low_t_fraction: float = 0.0
    low_t_max: float = 0.3
    val_fraction: float = 0.05
    max_val_points: int = 8192
    eval_every: int = 500
    patience: int | None = 10
    min_improvement: float = 1e-3
    restore_best: bool = True
    max_seconds: float | None = None
    seed: int = 0
    standardize: str = "auto"
    schedule: dict[str, Any] | Schedule | None = None
    prediction: str = "epsilon"
    beta_min: float | None = None
    beta_max: float | None = None
    time_sampling: str = "uniform"
    low_t_min: float | None = None
    fit_steps_to_budget: bool = False

    def __post_init__(self) -> None:
        positive_ints = {"steps": self.steps, "batch_size": self.batch_size, "eval_every": self.eval_every}
        for name, value in positive_ints.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer; got {value!r}.")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be positive; got {self.lr}.")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0; got {self.warmup_steps}.")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1); got {self.ema_decay}.")
        if not 0 < self.t_min < 1:
            raise ValueError(f"TrainConfig.t_min must be in (0, 1); got {self.t_min}.")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"TrainConfig.val_fraction must be in [0, 1); got {self.val_fraction}.")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"TrainConfig.patience must be a positive integer or None; got {self.patience}.")
        if self.standardize not in SCALING_CHOICES:
            raise ValueError(
                f"TrainConfig.standardize must be one of {', '.join(SCALING_CHOICES)}; got {self.standardize!r}."
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"TrainConfig.grad_clip must be positive or None; got {self.grad_clip}.")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"TrainConfig.prediction must be one of {', '.join(PREDICTIONS)}; got {self.prediction!r}.")
        self._check_recipe()
        self._resolve_schedule()

    def _check_recipe(self) -> None:
        """Check the time sampling and the time budget (:mod:`flipd.recipes`)."""
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(
                f"TrainConfig.time_sampling must be one of {', '.join(TIME_SAMPLINGS)}; got {self.time_sampling!r}."
            )
        if not 0 <= self.low_t_fraction <= 1:
            raise ValueError(f"TrainConfig.low_t_fraction must be in [0, 1]; got {self.low_t_fraction}.")
        low_end = self.t_min if self.low_t_min is None else self.low_t_min
        if self.low_t_fraction > 0 and not 0 < low_end < self.low_t_max <= 1:
            raise ValueError(
                f"TrainConfig needs 0 < low_t_min (or t_min) < low_t_max <= 1; got {low_end} and {self.low_t_max}."
            )
        if self.fit_steps_to_budget and not (self.max_seconds is not None and self.max_seconds > 0):
            raise ValueError(
                f"TrainConfig.fit_steps_to_budget needs a positive max_seconds (the budget to fit the steps to); "
                f"got {self.max_seconds}."
            )

    def _resolve_schedule(self) -> None:
        """Normalise ``schedule`` to a config dict and reconcile it with the legacy beta fields."""
        betas = {name: value for name, value in (("beta_min", self.beta_min), ("beta_max", self.beta_max)) if value is not None}
        if self.schedule is None:
            try:
                schedule: Schedule = VP(**betas)
            except (TypeError, ValueError) as error:
                raise ValueError(f"TrainConfig.beta_min/beta_max: {error}") from None
        else:
            try:
                schedule = self.schedule if isinstance(self.schedule, Schedule) else Schedule.from_config(self.schedule)
            except (TypeError, ValueError) as error:
                raise ValueError(f"TrainConfig.schedule: {error}") from None
            if betas and not (isinstance(schedule, VP) and all(getattr(schedule, k) == v for k, v in betas.items())):
                raise ValueError(
                    f"TrainConfig.beta_min/beta_max ({betas}) contradict TrainConfig.schedule {schedule!r}; "
                    "give the schedule only."
                )
        self.schedule = schedule.to_config()
        if isinstance(schedule, VP):
            self.beta_min, self.beta_max = schedule.beta_min, schedule.beta_max

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict; the recipe fields added last (time_sampling,
        low_t_min, fit_steps_to_budget) only when they differ from their defaults, so configs of
        earlier recipes (and the cache keys built from them) are unchanged."""
        record = asdict(self)
        for name in _RECIPE_FIELDS:
            if record[name] == _RECIPE_FIELDS[name]:
                del record[name]
        return record

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"Unknown TrainConfig fields: {', '.join(unknown)}.")
        return cls(**value)

    def noise_schedule(self) -> Schedule:
        """The :class:`~flipd.schedules.Schedule` that ``schedule`` describes."""
        return Schedule.from_config(self.schedule)


#: The TrainConfig fields of :mod:`flipd.recipes` and their defaults (left out of ``to_json`` at the default).
_RECIPE_FIELDS: dict[str, Any] = {"time_sampling": "uniform", "low_t_min": None, "fit_steps_to_budget": False}


# --------------------------------------------------------------------------- training


def _as_data(data) -> Tensor | PointStream:
    """The training points as a tensor or a stream [N, ...], checked for shape and size (their
    values are checked by :func:`point_moments`)."""
    if isinstance(data, PointStream):
        if len(data.shape) < 2:
            raise ValueError(f"data must have shape [N, D] or [N, C, H, W]; got a stream of shape {tuple(data.shape)}.")
        if data.shape[0] < 2:
            raise ValueError(f"Training needs at least 2 points; got {data.shape[0]}.")
        return data
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if not isinstance(data, Tensor):
        raise TypeError(
            "data must be a torch.Tensor, a numpy array or a flipd PointStream of shape [N, D] or [N, C, H, W]; "
            f"got {type(data).__name__}."
        )
    if data.ndim < 2:
        raise ValueError(f"data must have shape [N, D] or [N, C, H, W]; got shape {tuple(data.shape)}. Use data[:, None] for 1-D data.")
    if not data.is_floating_point():
        data = data.to(torch.get_default_dtype())
    if data.shape[0] < 2:
        raise ValueError(f"Training needs at least 2 points; got {data.shape[0]}.")
    return data


def _held_out_count(n: int, config: TrainConfig) -> int:
    """How many of ``n`` points are held out for validation (at most ``config.max_val_points``)."""
    n_val = min(config.max_val_points, int(round(config.val_fraction * n))) if config.val_fraction > 0 else 0
    if config.val_fraction > 0 and n_val == 0:
        n_val = 1
    if n - n_val < 1:
        raise ValueError(f"No training points left after holding out {n_val} of {n}; lower val_fraction.")
    return n_val


def _fit_scaling(x: Tensor | PointStream, held_out: Tensor, config: TrainConfig) -> tuple[TrainConfig, Tensor, Tensor, PointMoments]:
    """One pass over ``x``: every point checked to be finite, the moments of the training points
    (all but the ``held_out`` positions), the scaling resolved (``config.standardize``), the
    uneven-spread warning, and ``(shift, scale)`` (float32, one point's shape)."""
    n = x.shape[0]
    keep = torch.ones(n, dtype=torch.bool)
    keep[held_out] = False
    moments = point_moments(x, keep)
    mode = scaling_for(config.standardize, image=len(x.shape) > 2, low=moments.low, high=moments.high)
    if len(x.shape) == 2 and moments.count >= 2:
        message = spreads_warning(moments.std, moments.mean, mode)
        if message is not None:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
    shift, scale = standardization_from_moments(moments.mean, moments.variance, mode, stacklevel=3)
    return dataclasses.replace(config, standardize=mode), shift.float(), scale.float(), moments


class _TensorBatches:
    """Training batches of points held in memory: ``z`` [n, ...] (standardised, on the device)
    in a permutation drawn from ``generator``, a new one whenever fewer than a batch are left."""

    def __init__(self, z: Tensor, batch_size: int, generator: torch.Generator) -> None:
        self.z, self.batch_size, self.generator = z, batch_size, generator
        self.permutation, self.cursor = torch.randperm(z.shape[0], generator=generator), 0

    def next(self) -> Tensor:
        """The next batch [batch_size, ...]."""
        if self.cursor + self.batch_size > self.z.shape[0]:
            self.permutation, self.cursor = torch.randperm(self.z.shape[0], generator=self.generator), 0
        index = self.permutation[self.cursor : self.cursor + self.batch_size].to(self.z.device)
        self.cursor += self.batch_size
        return self.z[index]

    def close(self) -> None:
        """Nothing to release."""


class _StreamBatches:
    """Training batches read from a stream: the points at ``positions`` [n] in the same
    permutations, drawn at the same moments, as :class:`_TensorBatches` (so the same batches),
    each epoch's batches read ahead by the stream's workers, standardised, moved to ``device``."""

    def __init__(self, stream: PointStream, positions: Tensor, shift: Tensor, scale: Tensor, device: torch.device | str,
                 batch_size: int, generator: torch.Generator) -> None:
        self.positions, self.shift, self.scale, self.device = positions.numpy(), shift, scale, device
        self.batch_size, self.generator = batch_size, generator
        self.reader = OrderedBatches(stream)
        self._new_epoch()

    def _new_epoch(self) -> None:
        chosen = self.positions[torch.randperm(len(self.positions), generator=self.generator).numpy()]
        size = self.batch_size
        self.epoch = self.reader.reads(chosen[i * size:(i + 1) * size] for i in range(len(chosen) // size))

    def next(self) -> Tensor:
        """The next batch [batch_size, ...], standardised, on the device."""
        batch = next(self.epoch, None)
        if batch is None:
            self._new_epoch()
            batch = next(self.epoch)
        return _standardized(batch, self.shift, self.scale).to(self.device)

    def close(self) -> None:
        """Stop the reading workers."""
        self.reader.close()


def _training_batches(x: Tensor | PointStream, positions: Tensor, shift: Tensor, scale: Tensor,
                      device: torch.device | str, batch_size: int, generator: torch.Generator) -> _TensorBatches | _StreamBatches:
    """The batches of the points at ``positions`` of ``x`` that the training loop takes."""
    if isinstance(x, PointStream):
        return _StreamBatches(x, positions, shift, scale, device, batch_size, generator)
    return _TensorBatches(_standardized(x[positions], shift, scale).to(device), batch_size, generator)


def _standardized(points: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``(points − shift) / scale`` on the points' device."""
    return (points - shift.to(points.device)) / scale.to(points.device)


@dataclass
class _StepPlan:
    """The learning-rate schedule's length, warm-up and validation interval (fitted to a budget
    by :class:`flipd.recipes.StepBudget` when ``fit_steps_to_budget``)."""

    steps: int
    warmup_steps: int
    eval_every: int

    def lr_factor(self, step: int, config: TrainConfig) -> float:
        """Learning-rate multiplier at optimiser step ``step`` (0-based): linear warm-up, cosine decay."""
        return lr_factor(step, steps=self.steps, warmup_steps=self.warmup_steps, final_lr_fraction=config.final_lr_fraction)

    def fit(self, steps: int, config: TrainConfig, *, first: bool) -> None:
        """Take the fitted total ``steps``; the first fit also sets the warm-up and the
        validation interval to at most a tenth of it."""
        self.steps = steps
        if first:
            self.warmup_steps = min(config.warmup_steps, max(1, steps // 10))
            self.eval_every = min(config.eval_every, max(1, steps // 10))


def _sample_times(n: int, config: TrainConfig, generator: torch.Generator, schedule: Schedule) -> Tensor:
    """Training times [n] (float64) of ``schedule``: reference-VP times from
    :func:`flipd.recipes.sample_reference_times`, carried to ``schedule`` by :func:`schedule_times`."""
    t = sample_reference_times(
        n, t_min=config.t_min, low_t_fraction=config.low_t_fraction, low_t_max=config.low_t_max,
        low_t_min=config.low_t_min, sampling=config.time_sampling, generator=generator, reference=REFERENCE_SCHEDULE,
    )
    return schedule_times(schedule, t)


def schedule_times(schedule: Schedule, reference_t: Tensor) -> Tensor:
    """Times of ``schedule`` [T] (float64) with the smoothing (delta = log(sigma/psi)) of the
    reference-VP times ``reference_t`` [T]; levels the schedule does not reach are clamped to
    its ends (e.g. VE's sigma_max = 80 for reference times above about 0.93). The reference
    schedule's own times are returned as they are."""
    if is_reference(schedule):
        return reference_t
    low, high = delta_range(schedule)
    delta = REFERENCE_SCHEDULE.delta(reference_t).clamp(low, high)
    inverse = _DELTA_INVERSES.get(type(schedule))
    if inverse is None:
        return schedule.t_from_delta(delta)
    return inverse(schedule, delta).clamp(schedule.t_min, schedule.t_max)


def _cosine_t(schedule: Cosine, delta: Tensor) -> Tensor:
    # alpha_bar = 1 / (1 + e^{2 delta}) = cos²(angle) / cos²(angle at 0), solved for t.
    s = schedule.offset
    cosine = torch.rsqrt(1 + torch.exp(2 * delta)) * math.cos(0.5 * math.pi * s / (1 + s))
    return torch.acos(cosine) * (1 + s) / (0.5 * math.pi) - s


#: Closed forms of ``t_from_delta`` for the time draws of training (every step draws a batch;
#: the schedules' bisection is exact but slow). Other schedules fall back to the bisection.
_DELTA_INVERSES: dict[type, Callable[[Any, Tensor], Tensor]] = {
    VP: vp_time_from_delta,
    Cosine: _cosine_t,
    VE: lambda schedule, delta: torch.exp(delta),
    RectifiedFlow: lambda schedule, delta: torch.sigmoid(delta),
}


def _noise_coefficients(prediction: str, schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(c_f, c_y)`` [N] (float64) with the noise estimate ``eps_hat = c_f·f + c_y·y`` of a
    network output f: ``−sigma·(a, b)`` for the score coefficients (a, b) of ``prediction``."""
    sigma = schedule.sigma(t)
    a, b = score_coefficients(prediction, schedule, t, sigma=sigma)
    return -sigma * a, -sigma * b


def _denoising_loss(
    network: nn.Module, z: Tensor, t: Tensor, noise: Tensor, schedule: Schedule, prediction: str = "epsilon"
) -> Tensor:
    """Per-point noise-space loss ``‖eps_hat − eps‖²`` summed over coordinates, [N].

    ``z`` [N, ...] standardised points, ``t`` [N] float64 times of ``schedule``, ``noise`` like
    ``z``. The network gets :func:`reference_inputs` of ``y = psi·z + sigma·eps``; for epsilon
    ``eps_hat`` is its output, otherwise :func:`_noise_coefficients` turn the output into one.
    """
    shape = (-1,) + (1,) * (z.ndim - 1)
    psi = schedule.psi(t).to(z).reshape(shape)
    sigma = schedule.sigma(t).to(z).reshape(shape)
    y = psi * z + sigma * noise
    y_in, t_in = reference_inputs(schedule, y, t)
    output = network(y_in, t_in.to(z))
    if prediction == "epsilon":
        estimate = output
    else:
        c_f, c_y = _noise_coefficients(prediction, schedule, t)
        estimate = c_f.to(z).reshape(shape) * output + c_y.to(z).reshape(shape) * y
    return (estimate - noise).pow(2).flatten(1).sum(1)


@torch.no_grad()
def _validation_loss(
    network: nn.Module, z: Tensor, t: Tensor, noise: Tensor, schedule: Schedule, prediction: str, batch_size: int
) -> float:
    total = 0.0
    for start in range(0, z.shape[0], batch_size):
        stop = start + batch_size
        total += float(_denoising_loss(network, z[start:stop], t[start:stop], noise[start:stop], schedule, prediction).sum())
    return total / z.shape[0]


@torch.no_grad()
def _update_ema(ema: nn.Module, online: nn.Module, decay: float) -> None:
    for averaged, current in zip(ema.parameters(), online.parameters()):
        averaged.lerp_(current, 1 - decay)
    for averaged, current in zip(ema.buffers(), online.buffers()):
        averaged.copy_(current)


class _Progress:
    """A rich progress bar with the running loss and ETA, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if not enabled:
            return
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        except ImportError:  # rich is an optional dependency
            warnings.warn("Install rich for a progress bar (pip install rich).", RuntimeWarning, stacklevel=3)
            return
        self.bar = Progress(
            TextColumn("training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.bar.add_task("training", total=total, loss="-", val="-")
        self.bar.start()

    def update(self, completed: int, total: int | None = None, **fields: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, total=total, **fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train_diffusion(
    data,
    *,
    network: nn.Module | NetworkSpec | None = None,
    config: TrainConfig | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> DiffusionModel:
    """Fit a diffusion model to ``data`` (schedule and prediction from ``config``; default VP, epsilon).

    Args:
        data: training points, tensor or array [N, D] or [N, C, H, W], in original units, or a
            :class:`~flipd.datasets.streaming.PointStream` of them (data larger than memory:
            one pass checks the values and fits the standardisation block by block, the
            held-out points are read once, every batch is read from the stream by its workers;
            the same points as a tensor train to the same weights).
        network: the denoising network ``network(y, t) -> like y``: a module (trained in
            place; its current weights are the initialisation), a :class:`NetworkSpec` (built
            and initialised from ``config.seed``), or None for an :class:`MLPUNet` with the
            default :class:`MLPUNetConfig` (only for [N, D] data).
        config: training options (:class:`TrainConfig`).
        progress: show a progress bar with the loss and ETA (needs ``rich``).
        device: where to train.
        callback: called after every validation with a dict (step, train_loss, val_loss, lr,
            seconds).

    Returns:
        The trained :class:`DiffusionModel` (EMA weights; the best by validation loss when
        ``config.restore_best``), in eval mode on ``device``, with its training record in
        ``.metadata``. It works in standardised coordinates: use ``model.lid(x, t0=...)`` or
        ``flipd.flipd(model, x, t0=...)`` (x in data units).
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}.")
    x = _as_data(data)
    generator = torch.Generator().manual_seed(config.seed)
    n = x.shape[0]
    order = torch.randperm(n, generator=generator)
    n_val = _held_out_count(n, config)
    config, shift, scale, moments = _fit_scaling(x, order[:n_val], config)
    z_val = _standardized(x[order[:n_val]], shift, scale).to(device)  # the held-out points, read once

    online = _make_network(network, x, config, data_std=moments.standardized_std(shift, scale))
    online.to(device).train()
    ema = copy.deepcopy(online).requires_grad_(False).eval()
    schedule = config.noise_schedule()
    optimizer = torch.optim.AdamW(online.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    plan = _StepPlan(config.steps, config.warmup_steps, config.eval_every)
    budget = StepBudget(config.max_seconds, cap=config.steps) if config.fit_steps_to_budget else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: plan.lr_factor(step, config))

    # Validation noise is drawn once, so successive validation losses are comparable.
    val_generator = torch.Generator().manual_seed(config.seed + 1)
    val_t = config.t_min + (1 - config.t_min) * torch.rand(n_val, generator=val_generator, dtype=torch.float64)
    val_t = schedule_times(schedule, val_t)
    val_noise = torch.randn(z_val.shape, generator=val_generator).to(z_val)

    n_train = n - n_val
    batch_size = min(config.batch_size, n_train)
    batches = _training_batches(x, order[n_val:], shift, scale, device, batch_size, generator)
    history: list[dict[str, float]] = []
    best_val, best_state, best_step, stale = math.inf, None, 0, 0
    running, running_count = 0.0, 0
    stopped_early, stop_reason = False, "steps"
    bar = _Progress(progress, config.steps)
    start_time, start_cpu = time.perf_counter(), time.process_time()
    step = 0
    try:
        while step < plan.steps:
            step += 1
            z = batches.next()
            t = _sample_times(batch_size, config, generator, schedule)
            noise = torch.randn(z.shape, generator=generator).to(z)
            loss = _denoising_loss(online, z, t, noise, schedule, config.prediction).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(online.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            _update_ema(ema, online, min(config.ema_decay, (1 + step) / (10 + step)))
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"The training loss became {loss_value} at step {step}; lower TrainConfig.lr or "
                    "check the data's scale (standardize='per_coordinate')."
                )
            running += loss_value
            running_count += 1
            elapsed = time.perf_counter() - start_time
            if budget is not None:
                fitted = budget.observe(step, elapsed, refit=step % plan.eval_every == 0)
                if fitted is not None:
                    plan.fit(fitted, config, first=budget.fits == 1)
                    bar.update(step, total=plan.steps)
            last_step = step >= plan.steps
            out_of_time = config.max_seconds is not None and elapsed > config.max_seconds
            if step % plan.eval_every == 0 or last_step or out_of_time:
                train_loss = running / running_count
                running, running_count = 0.0, 0
                val_loss = (
                    _validation_loss(ema, z_val, val_t, val_noise, schedule, config.prediction, max(batch_size, 1024))
                    if n_val else math.nan
                )
                record = {
                    "step": step, "train_loss": train_loss, "val_loss": val_loss,
                    "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start_time,
                }
                history.append(record)
                if callback is not None:
                    callback(record)
                bar.update(step, loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
                if n_val:
                    if val_loss < best_val * (1 - config.min_improvement):
                        stale = 0
                    else:
                        stale += 1
                    if val_loss < best_val:
                        best_val, best_step = val_loss, step
                        best_state = {k: v.detach().clone() for k, v in ema.state_dict().items()}
                    if config.patience is not None and stale >= config.patience:
                        stopped_early, stop_reason = True, "patience"
                        break
                if out_of_time:
                    stopped_early, stop_reason = True, "max_seconds"
                    break
            elif step % 10 == 0:
                bar.update(step, loss=f"{loss_value:.4f}")
    finally:
        bar.close()
        batches.close()
    seconds, cpu_seconds = time.perf_counter() - start_time, time.process_time() - start_cpu
    if config.restore_best and best_state is not None:
        ema.load_state_dict(best_state)
    online.eval().requires_grad_(False)
    metadata = {
        "train_config": config.to_json(),
        "steps_run": step,
        "stopped_early": stopped_early,
        "stop_reason": stop_reason,
        "best_step": best_step if best_state is not None else step,
        "best_val_loss": best_val if math.isfinite(best_val) else None,
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "final_val_loss": history[-1]["val_loss"] if history and n_val else None,
        "history": history,
        "n_train": n_train,
        "n_val": n_val,
        "seed": config.seed,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(online),
        "versions": package_versions(("torch", "numpy")),
    }
    if budget is not None:
        metadata["budget"] = {**budget.record(), "warmup_steps": plan.warmup_steps, "eval_every": plan.eval_every}
    return DiffusionModel(
        ema, shift=shift, scale=scale, schedule=schedule, prediction=config.prediction, standardize_mode=config.standardize,
        metadata=metadata, online_network=online,
    ).to(device)


def _make_network(network, x: Tensor | PointStream, config: TrainConfig, *, data_std: float) -> nn.Module:
    """The network to train: given, built from a spec, or the default MLP U-net."""
    if isinstance(network, nn.Module):
        return network
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if network is None:
            if len(x.shape) != 2:
                raise ValueError(
                    f"The default network is an MLP for [N, D] data; got data of shape {tuple(x.shape)}. "
                    "Pass network= (a module or NetworkSpec) for images."
                )
            # The network sees every schedule as the reference VP (reference_inputs), so its
            # input preconditioning uses the reference betas.
            return MLPUNet(MLPUNetConfig(
                data_dim=x.shape[1], data_std=data_std,
                beta_min=REFERENCE_SCHEDULE.beta_min, beta_max=REFERENCE_SCHEDULE.beta_max,
            ))
        if isinstance(network, NetworkSpec):
            return build_network(network)
    raise TypeError(f"network must be an nn.Module, a NetworkSpec or None; got {type(network).__name__}.")
