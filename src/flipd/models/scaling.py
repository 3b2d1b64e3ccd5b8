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

import torch
from torch import Tensor

__all__ = ["SCALING_CHOICES", "SPREAD_RATIO_LIMIT", "SPREAD_WARNING_START", "resolve_scaling", "spread_warning", "warn_uneven_spreads"]

#: What ``TrainConfig.standardize`` and ``flipd train --standardize`` accept.
SCALING_CHOICES: tuple[str, ...] = ("auto", "scalar", "per_coordinate", "none")

#: Tables whose largest per-coordinate std exceeds the smallest (non-constant) one by more than
#: this factor get a warning from :func:`warn_uneven_spreads`.
SPREAD_RATIO_LIMIT = 100.0
#: How the warning of :func:`spread_warning` begins (to filter it where spreads are known to be fine).
SPREAD_WARNING_START = "The coordinates' spreads differ"


def resolve_scaling(x: Tensor, mode: str) -> str:
    """The scaling ``mode`` means for training data ``x`` [N, D] or [N, C, H, W].

    "auto" gives "scalar" for tables [N, D], "none" for images whose values all lie in
    [-1, 1], and "scalar" for other images; any other mode is returned as it is.
    """
    if mode not in SCALING_CHOICES:
        raise ValueError(f"Unknown standardisation {mode!r}; use one of {', '.join(SCALING_CHOICES)}.")
    if mode != "auto":
        return mode
    if x.ndim > 2 and float(x.min()) >= -1.0 and float(x.max()) <= 1.0:
        return "none"
    return "scalar"


def spread_warning(x: Tensor, mode: str) -> str | None:
    """The warning for a table ``x`` [N, D] whose coordinate spreads differ by more than
    :data:`SPREAD_RATIO_LIMIT` under the scaling ``mode`` (resolved), or None.

    Constant coordinates are left out (they carry no spread to compare); images never warn
    (their pixels share one unit).
    """
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        return None
    spread = x.to(torch.float64).std(dim=0)
    varying = spread > 1e-12 * (1 + x.to(torch.float64).mean(dim=0).abs())
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
