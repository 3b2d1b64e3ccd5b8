"""Which scaling a model is trained in, by default: the geometry of the data is kept.

FLIPD measures the dimension of the data *as the model sees it*: a direction in which the data
barely vary (a 0.001 jitter around a circle) is a thin direction of the manifold, and a scaling
that blows it up to unit spread changes the answer. ``standardize="per_coordinate"`` does just
that (a circle of radius 1 with 0.001 jitter in z reads LID 1.89 instead of 1), so flipd's
default keeps the shape:

* ``"auto"`` (the default): tables [N, D] get ``"scalar"`` scaling (each coordinate centred,
  one common scale, the root-mean-square spread); images [N, C, H, W] whose values lie in
  [-1, 1] (the range diffusion models are trained on) get ``"none"``, other images
  ``"scalar"``.
* ``"scalar"``, ``"per_coordinate"`` (mean and std of each coordinate: for coordinates in
  different units) and ``"none"``, as asked.

Because no scaling can tell a thin direction from a coordinate measured in small units, tables
whose per-coordinate standard deviations differ by more than :data:`SPREAD_RATIO_LIMIT` (100×)
get a warning saying what the chosen scaling does with them and how to choose the other one.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["SCALING_CHOICES", "SPREAD_RATIO_LIMIT", "SPREAD_WARNING_START", "resolve_scaling", "scaling_for", "spread_warning",
           "spreads_warning", "value_range", "warn_uneven_spreads"]

#: What ``TrainConfig.standardize`` and ``flipd train --standardize`` accept.
SCALING_CHOICES: tuple[str, ...] = ("auto", "scalar", "per_coordinate", "none")

#: Tables whose largest per-coordinate std exceeds the smallest (non-constant) one by more than
#: this factor get a warning from :func:`warn_uneven_spreads`.
SPREAD_RATIO_LIMIT = 100.0
#: How the warning of :func:`spread_warning` begins (to filter it where spreads are known to be fine).
SPREAD_WARNING_START = "The coordinates' spreads differ"


def resolve_scaling(x: Any, mode: str) -> str:
    """The scaling ``mode`` means for training data ``x`` [N, D] or [N, C, H, W] (a tensor or
    a point stream: its range is then read block by block unless its reader knows it).

    "auto" gives "scalar" for tables [N, D], "none" for images whose values all lie in
    [-1, 1], and "scalar" for other images; any other mode is returned as it is.
    """
    _check_mode(mode)
    if mode != "auto" or len(x.shape) <= 2:
        return scaling_for(mode, image=False, low=0.0, high=0.0)
    low, high = value_range(x)
    return scaling_for(mode, image=True, low=low, high=high)


def _check_mode(mode: str) -> None:
    if mode not in SCALING_CHOICES:
        raise ValueError(f"Unknown standardisation {mode!r}; use one of {', '.join(SCALING_CHOICES)}.")


def scaling_for(mode: str, *, image: bool, low: float, high: float) -> str:
    """The scaling ``mode`` means for data whose values span [``low``, ``high``]: images
    (``image``) or a table (see :func:`resolve_scaling`)."""
    _check_mode(mode)
    if mode != "auto":
        return mode
    return "none" if image and low >= -1.0 and high <= 1.0 else "scalar"


def value_range(x: Any) -> tuple[float, float]:
    """(smallest, largest) value of points ``x``: a tensor's, a stream's range known to its
    reader (8-bit images: [-1, 1]), or else read batch by batch (``x.batches()``)."""
    if isinstance(x, Tensor):
        return float(x.min()), float(x.max())
    known = getattr(x, "value_range", None)
    if known is not None:
        return float(known[0]), float(known[1])
    low, high = float("inf"), float("-inf")
    for batch in x.batches():
        low, high = min(low, float(batch.min())), max(high, float(batch.max()))
    return low, high


def spread_warning(x: Tensor, mode: str) -> str | None:
    """The warning for a table ``x`` [N, D] whose coordinate spreads differ by more than
    :data:`SPREAD_RATIO_LIMIT` under the scaling ``mode`` (resolved), or None.

    Constant coordinates are left out (they carry no spread to compare); images never warn
    (their pixels share one unit).
    """
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        return None
    return spreads_warning(x.to(torch.float64).std(dim=0), x.to(torch.float64).mean(dim=0), mode)


def spreads_warning(spread: Tensor, mean: Tensor, mode: str) -> str | None:
    """:func:`spread_warning` for a table [N, D] (N >= 2) given the standard deviation
    ``spread`` [D] and the ``mean`` [D] of each coordinate (float64)."""
    if spread.ndim != 1 or spread.shape[0] < 2:
        return None
    varying = spread > 1e-12 * (1 + mean.abs())
    if int(varying.sum()) < 2:
        return None
    columns = torch.nonzero(varying).flatten()
    small, large = columns[spread[columns].argmin()], columns[spread[columns].argmax()]
    ratio = float(spread[large] / spread[small])
    if ratio <= SPREAD_RATIO_LIMIT:
        return None
    spreads = (
        f"{SPREAD_WARNING_START} by a factor of {ratio:.3g} (std {float(spread[small]):.3g} in column "
        f"{int(small)}, {float(spread[large]):.3g} in column {int(large)}; warned above {SPREAD_RATIO_LIMIT:g})"
    )
    if mode == "per_coordinate":
        return (
            f"{spreads}: per_coordinate scaling stretches column {int(small)} {ratio:.3g}× more than column "
            f"{int(large)}, which changes the LID when the small spread is a thin direction of the data (noise "
            "around a manifold). If the coordinates share one unit, use standardize='scalar' (--standardize scalar)."
        )
    return (
        f"{spreads}: {mode} scaling keeps them as they are, which is right when the coordinates share one unit "
        f"(a thin direction is part of the shape). If they are in different units, use "
        "standardize='per_coordinate' (--standardize per_coordinate)."
    )


def warn_uneven_spreads(x: Tensor, mode: str) -> None:
    """Issue :func:`spread_warning` (a ``RuntimeWarning``) for training data ``x``, if there is one."""
    message = spread_warning(x, mode)
    if message is not None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
