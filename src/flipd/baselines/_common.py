"""Input handling shared by the model-based baselines."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..schedules import VP, Schedule

#: The reference schedule in whose time units the default noise levels are phrased.
REFERENCE_SCHEDULE = VP()


def resolve_schedule(schedule: Schedule | None) -> Schedule:
    """The given schedule, or the reference ``VP()`` when None."""
    schedule = REFERENCE_SCHEDULE if schedule is None else schedule
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a flipd.schedules.Schedule; got {type(schedule).__name__}.")
    return schedule


def resolve_time(
    schedule: Schedule,
    *,
    t: float | None,
    sigma: float | None,
    delta: float | None,
    default_delta: float,
) -> float:
    """One noise level, named by at most one of t / sigma / delta, as a time of ``schedule``.

    With none given, ``default_delta`` (a schedule-free log noise-to-signal ratio) is used.
    """
    given = {name: value for name, value in (("t", t), ("sigma", sigma), ("delta", delta)) if value is not None}
    if len(given) > 1:
        raise ValueError(
            "Give the noise level at most once: t= (schedule time), sigma= (noise std) or "
            f"delta= (log sigma/psi); got {', '.join(given)}."
        )
    name, value = next(iter(given.items())) if given else ("delta", default_delta)
    value = torch.as_tensor(value, dtype=torch.float64)
    if value.ndim != 0:
        raise ValueError(f"{name} must be a single number; got shape {tuple(value.shape)}.")
    if name == "t":
        time = schedule.check_t(value, "t")
    elif name == "sigma":
        if value <= 0:
            raise ValueError(f"sigma must be positive; got {value.item():g}.")
        time = schedule.check_t(schedule.t_from_sigma(value), "t (from sigma)")
    else:
        time = schedule.check_t(schedule.t_from_delta(value), "t (from delta)")
    return float(time)


def as_numpy(values: Tensor) -> np.ndarray:
    """A detached float64 numpy copy of ``values``."""
    return values.detach().cpu().to(torch.float64).numpy()
