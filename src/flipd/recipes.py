"""Training recipes: how training times are drawn, how many steps fit a time budget, how wide
the network is for a dimension.

FLIPD reads a model's score at small noise (t0 = 0.05 of the reference VP by default; the knee
and plateau rules read curves down to t0 ≈ 0.006), so what matters is how accurate the score is
there, for the training time one can afford. Three pieces decide it, each a small function
that :func:`flipd.train.train_diffusion` and :func:`flipd.jobs.train.train_model` call:

- **Time sampling** (:func:`sample_reference_times`): every batch draws its times from U(t_min, 1)
  of the reference VP, except a fraction ``low_t_fraction`` drawn from an emphasised range
  [``low_t_min``, ``low_t_max``] of small times, either uniformly in t (``"uniform"``) or
  uniformly in log sigma/psi (``"log_sigma"``: every factor of noise gets the same share, so
  t = 0.01 and t = 0.05 are trained about as often as t = 0.1 and t = 0.3). Emphasis changes the
  weighting of the objective, not its minimiser (the ideal denoiser at each level).
- **A time budget** (:class:`StepBudget`): with ``max_seconds`` and ``fit_steps_to_budget`` the
  number of steps is chosen so that the whole warm-up + cosine learning-rate schedule ends when
  the budget does, rather than the loop being cut off at a high learning rate. The first steps
  are timed, the step count is set from the measured seconds per step, and it is fitted again
  at every validation (validations and a changing machine load are then counted). The step
  count therefore depends on the machine and on what else runs on it.
- **Width per dimension** (:func:`mlp_widths`): the MLP U-net's hidden widths when the user
  gives none.

The defaults of ``flipd train`` (:data:`DEFAULT_TIME_SAMPLING` and its neighbours) were chosen
by ``python -m flipd.bench recipes`` (``benchmarks/results/recipes.md``): denoising error and
FLIPD error against the perfect (closed-form) model of Gaussian mixtures on subspaces, under one
wall-clock budget per recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .schedules import VP

__all__ = [
    "BUDGET_MARGIN",
    "BUDGET_STEP_CAP",
    "BUDGET_TIMING_STEPS",
    "DEFAULT_LOW_T_FRACTION",
    "DEFAULT_STEPS",
    "DEFAULT_TIME_SAMPLING",
    "EMPHASIS_RANGES",
    "StepBudget",
    "TIME_SAMPLINGS",
    "lr_factor",
    "mlp_widths",
    "sample_reference_times",
    "vp_time_from_delta",
]

#: How the emphasised fraction of each batch draws its times: uniformly in t, or uniformly in
#: log(sigma/psi) of the reference VP.
TIME_SAMPLINGS: tuple[str, ...] = ("uniform", "log_sigma")

#: ``flipd train``'s time sampling (see ``benchmarks/results/recipes.md``).
DEFAULT_TIME_SAMPLING = "uniform"
#: Fraction of every batch drawn from the emphasised small times: 0.8 (0.5 before). At equal
#: steps it gave the lower FLIPD error against the perfect model, averaged over t0 = 0.01-0.1,
#: on both data sets of ``python -m flipd.bench recipes`` in both seeds; it trains less at large
#: noise (t0 = 0.5 reads worse). See ``benchmarks/results/recipes*.md``.
DEFAULT_LOW_T_FRACTION = 0.8
#: The emphasised range ``(low_t_min, low_t_max)`` of reference-VP times of each time sampling
#: when none is given (None: the training's ``t_min``): uniform times below 0.2 (the earlier
#: default), log-uniform noise from t = 0.002 (below the plateau grid's smallest level, 0.0055)
#: to t = 0.3 (above its largest, 0.26).
EMPHASIS_RANGES: dict[str, tuple[float | None, float]] = {"uniform": (None, 0.2), "log_sigma": (0.002, 0.3)}
#: ``flipd train``'s optimiser steps when neither ``--steps`` nor ``--max-minutes`` is given.
DEFAULT_STEPS = 4000

#: Steps timed before the first fit of the step count to a budget (the first step, which pays
#: for allocations, is left out of the timing).
BUDGET_TIMING_STEPS = 20
#: Share of the budget kept free for what follows the last step (restoring the best weights,
#: saving) and for the timing's noise.
BUDGET_MARGIN = 0.03
#: Upper bound on a fitted step count when the user gives a budget but no ``--steps``.
BUDGET_STEP_CAP = 1_000_000


def vp_time_from_delta(schedule: VP, delta: Tensor) -> Tensor:
    """Times [T] (float64) of the VP ``schedule`` at which log(sigma/psi) equals ``delta`` [T].

    B(t) = log(1 + e^{2 delta}) solved for t, in the form without cancellation at small t.
    """
    integrated = torch.log1p(torch.exp(2 * delta))
    slope = schedule.beta_max - schedule.beta_min
    return 2 * integrated / (schedule.beta_min + torch.sqrt(schedule.beta_min**2 + 2 * slope * integrated))


def sample_reference_times(
    n: int,
    *,
    t_min: float,
    low_t_fraction: float,
    low_t_max: float,
    generator: torch.Generator,
    sampling: str = "uniform",
    low_t_min: float | None = None,
    reference: VP | None = None,
) -> Tensor:
    """Training times [n] (float64) of the reference VP schedule.

    Each time is drawn from U(t_min, 1); with probability ``low_t_fraction`` it is drawn
    instead from the emphasised range [``low_t_min`` (default ``t_min``), ``low_t_max``]:
    uniformly in t (``sampling="uniform"``) or uniformly in delta = log(sigma/psi), that is
    log-uniformly in the noise-to-signal ratio (``sampling="log_sigma"``). The draws come from
    ``generator`` only; with ``low_t_fraction = 0`` and ``"uniform"`` they are the same draws as
    before the emphasis existed (one uniform per time).

    Raises:
        ValueError: an unknown ``sampling`` or an empty emphasised range.
    """
    if sampling not in TIME_SAMPLINGS:
        raise ValueError(f"Unknown time sampling {sampling!r}; use one of {', '.join(TIME_SAMPLINGS)}.")
    low_end = t_min if low_t_min is None else low_t_min
    if low_t_fraction > 0 and not low_end < low_t_max:
        raise ValueError(f"The emphasised times need low_t_min < low_t_max; got {low_end} and {low_t_max}.")
    t = t_min + (1 - t_min) * torch.rand(n, generator=generator, dtype=torch.float64)
    if low_t_fraction <= 0:
        return t
    unit = torch.rand(n, generator=generator, dtype=torch.float64)
    if sampling == "uniform":
        low = low_end + (low_t_max - low_end) * unit
    else:
        reference = VP() if reference is None else reference
        bounds = reference.delta(torch.tensor([low_end, low_t_max], dtype=torch.float64))
        low = vp_time_from_delta(reference, bounds[0] + (bounds[1] - bounds[0]) * unit)
    pick = torch.rand(n, generator=generator) < low_t_fraction
    return torch.where(pick, low, t)


def lr_factor(step: int, *, steps: int, warmup_steps: int, final_lr_fraction: float) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based) of a schedule of ``steps``:
    linear warm-up over ``warmup_steps``, then a cosine decay to ``final_lr_fraction`` at ``steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def mlp_widths(dim: int) -> tuple[int, int, int]:
    """Hidden widths of the MLP U-net for data of dimension ``dim`` when none are given.

    Three layers of 256 (the widths every earlier ``flipd train`` used) up to D = 256, so the
    hidden layers are never narrower than the input; three of 512 above (flattened images).
    Measured (``python -m flipd.bench recipes``, ``benchmarks/results/recipes_width512.md``): at
    D = 100 under a 60 s budget, 512 wide ran 537 steps against 1363 for 256 wide and ended
    further from the perfect model (FLIPD MAE 21.2 against 18.6 over t0 ≤ 0.1), so widths do not
    grow at D = 100;
    the step up above D = 256 keeps the input from being squeezed through narrower layers and was
    not measured here.
    """
    if dim < 1:
        raise ValueError(f"The data dimension must be positive; got {dim}.")
    width = 256 if dim <= 256 else 512
    return (width, width, width)


@dataclass
class StepBudget:
    """Chooses the number of optimiser steps so that a learning-rate schedule fits ``seconds``.

    Training calls :meth:`observe` after every step with the seconds since training began;
    after :data:`BUDGET_TIMING_STEPS` steps, and again whenever ``refit`` is asked for (at each
    validation), it returns the total number of steps that fits: the steps done plus the
    remaining time (less :data:`BUDGET_MARGIN` of the budget) divided by the measured seconds
    per step (averaged since the end of the first step, so validations are counted in it),
    between the steps done and ``cap``. The result depends on the machine's speed and load.

    Attributes:
        seconds: the wall-clock budget of the training loop.
        cap: the largest step count it may choose.
        timing_steps: steps timed before the first fit.
        margin: share of the budget kept free.
        step_seconds: the latest measured seconds per step (None before the first fit).
        chosen_steps: the latest fitted total (None before the first fit).
        first_fit: ``{"step", "step_seconds", "chosen_steps"}`` of the first fit.
        fits: how many times the total was fitted.
    """

    seconds: float
    cap: int
    timing_steps: int = BUDGET_TIMING_STEPS
    margin: float = BUDGET_MARGIN
    step_seconds: float | None = None
    chosen_steps: int | None = None
    first_fit: dict[str, Any] | None = None
    fits: int = 0
    _after_first: float | None = None

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"The time budget must be positive; got {self.seconds} seconds.")
        if self.cap < 1 or self.timing_steps < 1:
            raise ValueError(f"cap and timing_steps must be positive; got {self.cap} and {self.timing_steps}.")

    def observe(self, step: int, elapsed: float, *, refit: bool = False) -> int | None:
        """After step ``step`` (1-based), ``elapsed`` seconds into training: the new total number
        of steps when it is (re)fitted now, else None."""
        if step == 1:
            self._after_first = elapsed
        first_due = self.chosen_steps is None and (
            step >= 1 + self.timing_steps or elapsed >= 0.1 * self.seconds
        )
        if self._after_first is None or step < 2 or not (first_due or refit and self.chosen_steps is not None):
            return None
        self.step_seconds = max((elapsed - self._after_first) / (step - 1), 1e-9)
        usable = (1 - self.margin) * self.seconds - elapsed
        total = step + max(0, math.floor(usable / self.step_seconds))
        self.chosen_steps = int(min(max(total, step), self.cap))
        if self.first_fit is None:
            self.first_fit = {"step": step, "step_seconds": self.step_seconds, "chosen_steps": self.chosen_steps}
        self.fits += 1
        return self.chosen_steps

    def record(self) -> dict[str, Any]:
        """What the budget measured and chose, JSON-ready (for the model's metadata)."""
        return {
            "seconds": self.seconds, "cap": self.cap, "step_seconds": self.step_seconds,
            "chosen_steps": self.chosen_steps, "first_fit": self.first_fit, "fits": self.fits,
            "note": "the step count was fitted to the time budget on this machine; it depends on its speed and load",
        }
