"""A registry of the baseline estimators, so that a benchmark can loop over them uniformly."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any

import numpy as np

from ..estimator import ModelLike
from ..schedules import Schedule
from .classical import DEFAULT_NEIGHBORS, DEFAULT_OPTIONS, estimate_classical
from .fpregress import DEFAULT_STDS, DEFAULT_SUBSTEPS, estimate_fpregress
from .normal_bundle import DEFAULT_ROWS_PER_FORWARD, estimate_nb

__all__ = ["BASELINES", "Baseline"]


@dataclass(frozen=True)
class Baseline:
    """One baseline estimator and its default settings.

    Attributes:
        name: registry key, e.g. "nb" or "lpca".
        needs_model: whether it needs a diffusion model (``model``, ``schedule``, ``prediction``).
        description: one line on what it does and what it costs.
        defaults: keyword arguments passed to ``function`` unless overridden.
        function: the estimator; ``function(model, x, schedule=, prediction=, **settings)``
            when ``needs_model``, else ``function(x, **settings)``.
    """

    name: str
    needs_model: bool
    description: str
    defaults: Mapping[str, Any]
    function: Callable[..., np.ndarray] = field(repr=False)

    def __call__(
        self,
        x,
        *,
        model: ModelLike | None = None,
        schedule: Schedule | None = None,
        prediction: str | None = None,
        **overrides: Any,
    ) -> np.ndarray:
        """LID estimates [N] for the points ``x`` [N, ...].

        ``model``, ``schedule`` and ``prediction`` are used by model-based baselines and
        ignored by the others, so a runner can pass the same arguments to every baseline.
        ``overrides`` replace entries of :attr:`defaults`.
        """
        settings = {**self.defaults, **overrides}
        if not self.needs_model:
            return self.function(x, **settings)
        if model is None:
            raise ValueError(f"Baseline {self.name!r} needs a diffusion model; pass model=.")
        return self.function(model, x, schedule=schedule, prediction=prediction, **settings)


def _classical(method: str, description: str, n_jobs: int) -> Baseline:
    defaults = {"n_neighbors": DEFAULT_NEIGHBORS[method], "n_jobs": n_jobs, **DEFAULT_OPTIONS[method]}
    return Baseline(
        name=method, needs_model=False, description=description,
        defaults=MappingProxyType(defaults), function=partial(estimate_classical, method=method),
    )


#: All baselines by name: "nb", "fpregress", "lpca", "mle", "ess", "twonn".
BASELINES: Mapping[str, Baseline] = MappingProxyType({
    "nb": Baseline(
        name="nb", needs_model=True,
        description=(
            "Normal bundle (Stanczuk et al. 2024): SVD of the scores of K = 4D noisy copies at "
            "t = 0.01 of the reference VP schedule (delta-matched under others); K forwards and "
            "an O(K·D²) SVD per point."
        ),
        defaults=MappingProxyType({"n_copies": None, "rows_per_forward": DEFAULT_ROWS_PER_FORWARD, "seed": 0}),
        function=estimate_nb,
    ),
    "fpregress": Baseline(
        name="fpregress", needs_model=True,
        description=(
            "LIDL regression with log densities integrated by the Fokker-Planck ODE on 8 stds "
            "geomspace(0.01, 0.1); 28 FLIPD evaluations per point."
        ),
        defaults=MappingProxyType({
            "stds": DEFAULT_STDS, "substeps": DEFAULT_SUBSTEPS, "trace": "auto", "n_probes": 1, "seed": 0,
        }),
        function=estimate_fpregress,
    ),
    "lpca": _classical("lpca", "skdim local PCA ('FO') on the k = 1000 nearest neighbours.", n_jobs=1),
    "mle": _classical("mle", "skdim Levina-Bickel MLE from the distances to the k = 1000 nearest neighbours.", n_jobs=1),
    "ess": _classical(
        "ess", "skdim expected simplex skewness on the k = 100 nearest neighbours; slow (about 0.08 s CPU per point).",
        n_jobs=-1,
    ),
    "twonn": _classical("twonn", "skdim TwoNN fitted on each point's k = 100 nearest neighbours.", n_jobs=1),
})
