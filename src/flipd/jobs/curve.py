"""The curve job: FLIPD across noise levels for every point, with the knee of each curve."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..datasets.sources import PointSet
from ..estimator import EstimateWarning, flipd_curve, resolve_trace
from ..knee import knee
from ..models.base import Model
from ..noise import KNEE_WINDOW, to_reference_time
from .records import known_columns

__all__ = ["CurveResult", "compute_curves", "curve_table_columns"]


@dataclass
class CurveResult:
    """FLIPD curves of N points at T noise levels, with the knee chosen on each.

    Attributes:
        times, sigma, delta: the T noise levels (schedule time, noise std, log sigma/psi).
        curves: FLIPD estimates [N, T].
        knee_t0, knee_lid: [N] noise level and FLIPD at each point's knee (NaN t0 where none
            was found; the LID then falls back to the ambient dimension).
        knee_found: [N] bool.
        window: the window of reference times searched for knees (None: the whole grid).
        trace, n_probes: the trace estimator used.
    """

    times: np.ndarray
    sigma: np.ndarray
    delta: np.ndarray
    curves: np.ndarray
    knee_t0: np.ndarray
    knee_lid: np.ndarray
    knee_found: np.ndarray
    window: tuple[float, float] | None
    trace: str
    n_probes: int


def compute_curves(
    model: Model,
    x: torch.Tensor,
    times: torch.Tensor,
    *,
    trace: str = "auto",
    n_probes: int = 1,
    seed: int = 0,
    indices=None,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> CurveResult:
    """FLIPD curves of the points ``x`` (in the model's coordinates) and their knees.

    The knees are found by :func:`flipd.knee` on the reference-time axis, as ``t0="auto"``
    finds them; when fewer than 3 of ``times`` lie in the knee rule's window, the whole grid
    is searched. ``progress`` is called with the number of points done after every batch of
    every noise level (N·T in all).
    """
    dim = int(x[0].numel())
    resolved_trace, resolved_probes = resolve_trace(trace, dim, n_probes)
    with torch.no_grad(), warnings.catch_warnings():  # the caller reports results by the table's index
        warnings.simplefilter("ignore", EstimateWarning)
        curves = flipd_curve(
            model, x, times, trace=trace, n_probes=n_probes, seed=seed, indices=indices,
            batch_size=batch_size, progress=progress, encoded=True,
        ).detach().cpu().to(torch.float64)
    reference = to_reference_time(model.schedule, times)
    window: tuple[float, float] | None = KNEE_WINDOW
    if int(((reference > KNEE_WINDOW[0]) & (reference < KNEE_WINDOW[1])).sum()) < 3:
        window = None
    found = knee(curves, times, schedule=model.schedule, ambient_dim=dim, window=window)
    return CurveResult(
        times=times.numpy(), sigma=model.schedule.sigma(times).numpy(), delta=model.schedule.delta(times).numpy(),
        curves=curves.numpy(), knee_t0=found.t0.numpy(), knee_lid=found.lid.numpy(),
        knee_found=found.found.numpy(), window=window, trace=resolved_trace, n_probes=resolved_probes,
    )


def curve_table_columns(points: PointSet, curves: CurveResult) -> dict[str, Any]:
    """Long format, one row per (point, noise level): index, t0, sigma, delta, lid, knee (True
    on the row of the point's chosen knee), and ground truth when known."""
    n, t = curves.curves.shape
    knee_rows = np.zeros((n, t), dtype=bool)
    for i in range(n):
        if curves.knee_found[i]:
            knee_rows[i, int(np.argmin(np.abs(curves.times - curves.knee_t0[i])))] = True
    columns: dict[str, Any] = {
        "index": np.repeat(points.index, t),
        "t0": np.tile(curves.times, n),
        "sigma": np.tile(curves.sigma, n),
        "delta": np.tile(curves.delta, n),
        "lid": curves.curves.reshape(-1),
        "knee": knee_rows.reshape(-1),
    }
    if points.names is not None:
        columns["name"] = [name for name in points.names for _ in range(t)]
    for name, values in known_columns(points).items():
        columns[name] = np.repeat(np.asarray(values), t)
    return columns
