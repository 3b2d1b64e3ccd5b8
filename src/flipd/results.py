"""The one result type of every LID estimator: FLIPD and each baseline.

An :class:`LIDResult` holds one entry per point (the estimate, the noise level it was read at,
its standard error) and the facts of the run (method, trace, probes, ambient dimension, the
resolved settings). FLIPD returns one from :func:`flipd.estimate`; every method of
:data:`flipd.methods.METHODS` returns one; the estimate job writes its table from one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .calibrated import CalibratedLevel

__all__ = ["FLIPDResult", "LIDResult", "SCALE_FLAGS"]

#: The per-point flags a noise-level rule sets (result attribute and table column: the rule it
#: belongs to); ``reliable`` is the calibrated rule's check, which the band rule shares.
SCALE_FLAGS: dict[str, str] = {"knee_found": "knee", "plateau_found": "plateau", "reliable": "calibrated"}


def _numpy(values: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().to(torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


@dataclass
class LIDResult:
    """Per-point LID estimates and how they were made.

    Attributes:
        lid: estimates, [N] (dimensions); a tensor in the model's dtype for FLIPD (with the
            graph when ``differentiable=True``), float64 for baselines.
        t0: noise level per point in the schedule's time units, [N] float64 (NaN where a method
            reads no single level, e.g. classical estimators, or where the knee was not found).
        sigma: noise standard deviation sigma(t0), [N] float64 (NaN likewise).
        delta: log(sigma/psi) at t0, [N] float64 (NaN likewise).
        stderr: standard error of each estimate, [N] (NaN for one probe and for methods without
            one; zeros for the exact trace).
        trace: "exact", "hutchinson", "gaussian", or "none" for methods without a trace.
        n_probes: trace probes per point (D for the exact trace, 0 without a trace).
        mode: differentiation mode that ran ("reverse", "forward", or "none").
        method: the estimator, "flipd" or a baseline name.
        ambient_dim: D, the number of coordinates per point the estimator saw (None if unknown).
        knee_found: per point whether the knee rule found a knee, [N] bool (None unless
            ``t0="knee"``); where it did not, ``lid`` is D and the noise level is NaN.
        settings: the settings the method ran with, resolved (defaults filled in), JSON-ready.
        batch_size: FLIPD: points per forward pass at the end of the run (smaller than asked
            for when a batch ran out of GPU memory and was halved); None for other methods.
        chunk_rows: FLIPD: (point, probe) pairs per vectorised call at the end of the run.
        plateau_found: per point whether the plateau rule found a plateau, [N] bool (None unless
            ``t0="plateau"``); where it did not, ``lid`` is FLIPD on the flattest stretch.
        flatness: the plateau rule's flatness at the chosen stretch, [N] float64 (relative
            change of FLIPD per unit of log sigma; None unless ``t0="plateau"``).
        reliable: per point whether the model denoises it reliably at the level the calibrated
            rule chose for the data set, [N] bool (None unless ``t0="calibrated"``, ``"band"``
            or ``"auto"``).
        level: the data set's level that the calibrated or band rule chose (None for other
            noise levels). Pass it as ``t0=`` to read more points at the same level (and the
            same levels averaged), with no second choice: ``flipd.estimate(model, x_new,
            t0=result.level)``.
    """

    lid: Tensor
    t0: Tensor
    sigma: Tensor
    delta: Tensor
    stderr: Tensor
    trace: str
    n_probes: int
    mode: str
    method: str = "flipd"
    ambient_dim: int | None = None
    knee_found: Tensor | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    chunk_rows: int | None = None
    plateau_found: Tensor | None = None
    flatness: Tensor | None = None
    reliable: Tensor | None = None
    level: CalibratedLevel | None = None

    @property
    def found(self) -> Tensor | None:
        """Whether the automatic rule found a scale for each point, [N] bool (knee: a knee;
        plateau: a plateau; calibrated: the model denoises the point reliably at the chosen
        level); None for a fixed noise level and for methods without one."""
        for flags in (self.knee_found, self.plateau_found, self.reliable):
            if flags is not None:
                return flags
        return None

    def _rule(self) -> str:
        if self.knee_found is not None:
            return "knee"
        if self.plateau_found is not None:
            return "plateau"
        return "band" if self.settings.get("rule") == "band" else "calibrated"

    def __len__(self) -> int:
        return int(self.lid.shape[0])

    def columns(self) -> dict[str, np.ndarray]:
        """The per-point arrays as float64 numpy arrays [N]: lid, t0, sigma, delta, stderr."""
        return {name: _numpy(getattr(self, name)) for name in ("lid", "t0", "sigma", "delta", "stderr")}

    def to_pandas(self, index=None):
        """A :class:`pandas.DataFrame` with one row per point.

        Columns: lid, t0, sigma, delta, stderr (float64), knee_found (bool, with the knee rule),
        plateau_found and flatness (with ``t0="plateau"``) or reliable (``t0="calibrated"``, "band", "auto"),
        then method, trace, n_probes and ambient_dim repeated on every row, so the frame stands
        on its own. ``index`` (default 0..N-1) labels the rows, e.g. the points' global indices.
        """
        import pandas as pd

        n = len(self)
        data: dict[str, Any] = self.columns()
        for name in SCALE_FLAGS:
            flags = getattr(self, name)
            if flags is not None:
                data[name] = np.asarray(flags.cpu().numpy() if isinstance(flags, Tensor) else flags, dtype=bool)
        if self.flatness is not None:
            data["flatness"] = _numpy(self.flatness)
        data.update({
            "method": [self.method] * n,
            "trace": [self.trace] * n,
            "n_probes": np.full(n, self.n_probes, dtype=np.int64),
            "ambient_dim": pd.array([self.ambient_dim] * n, dtype="Int64"),
        })
        frame = pd.DataFrame(data, index=pd.RangeIndex(n) if index is None else pd.Index(np.asarray(index)))
        frame.index.name = "index"
        return frame

    def __repr__(self) -> str:
        lid = _numpy(self.lid)
        finite = lid[np.isfinite(lid)]
        if finite.size:
            summary = (f"lid mean {finite.mean():.3g} ± {finite.std():.2g} (std), "
                       f"range [{finite.min():.3g}, {finite.max():.3g}]")
        else:
            summary = "no finite estimates"
        times = _numpy(self.t0)
        times = times[np.isfinite(times)]
        if times.size and np.all(times == times[0]):
            level = f", t0={times[0]:.4g}"
        elif times.size:
            level = f", t0 in [{times.min():.3g}, {times.max():.3g}]"
        else:
            level = ""
        dim = "" if self.ambient_dim is None else f", D={self.ambient_dim}"
        probes = "" if self.trace in ("none", "exact") else f", n_probes={self.n_probes}"
        missing = ""
        if self.found is not None:
            lost = int((~torch.as_tensor(self.found, dtype=torch.bool)).sum())
            missing = f", not found by the {self._rule()} rule for {lost}" if lost else ""
        return (f"LIDResult(method={self.method!r}, n={len(self)}{dim}, {summary}{level}, "
                f"trace={self.trace!r}{probes}{missing})")

    @classmethod
    def from_arrays(
        cls,
        lid: np.ndarray,
        *,
        method: str,
        ambient_dim: int | None,
        settings: Mapping[str, Any],
        t0: float | np.ndarray = math.nan,
        sigma: float | np.ndarray = math.nan,
        delta: float | np.ndarray = math.nan,
        trace: str = "none",
        n_probes: int = 0,
    ) -> LIDResult:
        """A result of a method that returns plain estimates [N]; noise levels broadcast to [N]."""
        values = torch.as_tensor(np.asarray(lid, dtype=np.float64))
        n = values.shape[0]

        def full(value) -> Tensor:
            return torch.as_tensor(np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy())

        return cls(
            lid=values, t0=full(t0), sigma=full(sigma), delta=full(delta), stderr=full(math.nan),
            trace=trace, n_probes=n_probes, mode="none", method=method, ambient_dim=ambient_dim,
            settings=dict(settings),
        )


#: FLIPD's results are :class:`LIDResult` objects with ``method="flipd"`` (the former name).
FLIPDResult = LIDResult
