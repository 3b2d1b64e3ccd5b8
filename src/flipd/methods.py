"""One registry of LID estimators: FLIPD and every baseline, one calling convention, one result.

Every entry of :data:`METHODS` is called the same way,

    METHODS[name](x, model=None, *, t0=None, sigma=None, delta=None, seed=0, indices=None,
                  batch_size=None, progress=None, encoded=False, **settings) -> LIDResult

with ``x`` [N, ...] the points, ``model`` a :class:`flipd.Model` (or a plain callable with
``schedule=``/``prediction=`` among the settings) for the methods that need one, the noise level
for the methods that read one (FLIPD, NB), and the method's own settings (``trace``,
``n_probes``, ``n_neighbors``, ...) last. The result is a :class:`flipd.results.LIDResult` whose
``settings`` are the resolved ones (defaults filled in), so a table or a sidecar can say exactly
what ran. A new baseline is added to :data:`flipd.baselines.BASELINES`; it appears here, in
``flipd estimate --method`` and in the shared estimator tests because it exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from .baselines import BASELINES, NB_REFERENCE_DELTA, Baseline
from .baselines.classical import CLASSICAL_METHODS
from .estimator import estimate, resolve_model, warn_about_results
from .noise import resolve_time
from .progress import Progress, progress_callback
from .results import LIDResult
from .schedules import Schedule

__all__ = ["METHODS", "MODEL_METHODS", "NOISE_LEVEL_METHODS", "Method"]

_NOISE_NAMES = ("t0", "sigma", "delta")


@dataclass(frozen=True)
class Method:
    """One LID estimator behind the common calling convention (see the module notes).

    Attributes:
        name: registry key, "flipd" or a baseline name.
        needs_model: whether it needs a diffusion model.
        reads_noise_level: whether it takes ``t0``/``sigma``/``delta`` (FLIPD, NB).
        description: one line on what it does and what it costs.
        defaults: its own settings and their defaults (beyond the common arguments).
        run: ``run(x, model, noise, common, settings) -> LIDResult``.
    """

    name: str
    needs_model: bool
    reads_noise_level: bool
    description: str
    defaults: Mapping[str, Any]
    run: Callable[..., LIDResult]

    def __call__(
        self,
        x,
        model=None,
        *,
        t0: float | str | None = None,
        sigma: float | None = None,
        delta: float | None = None,
        seed: int = 0,
        indices=None,
        batch_size: int | None = None,
        progress: Progress = None,
        encoded: bool = False,
        **settings: Any,
    ) -> LIDResult:
        """LID of each point of ``x`` [N, ...]; see the module notes for the arguments."""
        noise = {name: value for name, value in zip(_NOISE_NAMES, (t0, sigma, delta)) if value is not None}
        if noise and not self.reads_noise_level:
            raise ValueError(f"The {self.name} method takes no noise level; drop {next(iter(noise))}=.")
        if self.needs_model and model is None:
            raise ValueError(f"The {self.name} method needs a diffusion model; pass model=.")
        unknown = sorted(set(settings) - set(self.defaults) - {"schedule", "prediction"})
        if unknown:
            raise TypeError(
                f"The {self.name} method got unknown settings {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(self.defaults)) or 'none'}."
            )
        with progress_callback(progress, len(x), self.name) as report:
            common = {"seed": seed, "indices": indices, "batch_size": batch_size, "progress": report, "encoded": encoded}
            result = self.run(x, model, noise, common, {**self.defaults, **settings})
        if self.name != "flipd" and result.ambient_dim is not None:  # FLIPD's estimate checks its own
            named = torch.arange(len(result)) if indices is None else torch.as_tensor(np.asarray(indices))
            warn_about_results(result.lid, None, result.ambient_dim, named, f"the {self.name} estimates of points")
        return result


def _run_flipd(x, model, noise, common, settings) -> LIDResult:
    result = estimate(model, x, **noise, **common, **settings)
    result.settings = {**result.settings, "batch_size": common["batch_size"]}
    return result


def _model_schedule(model, x, settings) -> Schedule:
    first = x[:1] if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x[:1]))
    return resolve_model(
        model, first, schedule=settings.get("schedule"), prediction=settings.get("prediction"), encoded=True,
    )[2]


def _level_columns(schedule: Schedule, noise: Mapping[str, Any], default_delta: float) -> dict[str, float]:
    time = resolve_time(schedule, **noise, default_delta=default_delta)
    t = torch.tensor(time, dtype=torch.float64)
    return {"t0": time, "sigma": float(schedule.sigma(t)), "delta": float(schedule.delta(t))}


def _ambient_dim(x) -> int:
    return int(np.prod(tuple(x.shape[1:])))


def _run_model_baseline(baseline: Baseline) -> Callable[..., LIDResult]:
    def run(x, model, noise, common, settings) -> LIDResult:
        progress = common["progress"]
        options = {"seed": common["seed"], "indices": common["indices"], "encoded": common["encoded"], **settings}
        if baseline.name == "fpregress":
            options["batch_size"] = common["batch_size"]
        if baseline.name == "nb":
            options.update({("t" if name == "t0" else name): value for name, value in noise.items()})
        with torch.no_grad():
            lid = np.asarray(baseline(x, model=model, **options), dtype=np.float64)
        levels: dict[str, float] = {}
        if baseline.name == "nb":
            levels = _level_columns(_model_schedule(model, x, settings), noise, NB_REFERENCE_DELTA)
        if progress is not None:
            progress(lid.shape[0])
        resolved = {key: value for key, value in settings.items() if key not in ("schedule", "prediction")}
        resolved.update({"seed": common["seed"], **({"batch_size": common["batch_size"]} if "batch_size" in options else {})})
        if baseline.name == "nb" and resolved.get("n_copies") is None:
            resolved["n_copies"] = 4 * _ambient_dim(x)
        trace = settings.get("trace", "none")
        n_probes = settings.get("n_probes", 0) if trace != "none" else 0
        if trace == "auto":
            from .estimator import resolve_trace

            trace, n_probes = resolve_trace(trace, tuple(x.shape[1:]), n_probes)
        return LIDResult.from_arrays(
            lid, method=baseline.name, ambient_dim=_ambient_dim(x), settings={**resolved, **levels},
            trace=trace, n_probes=n_probes, **levels,
        )

    return run


def _run_classical(baseline: Baseline) -> Callable[..., LIDResult]:
    def run(x, model, noise, common, settings) -> LIDResult:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        settings = {key: value for key, value in settings.items() if key not in ("schedule", "prediction")}
        lid = np.asarray(baseline(x, **settings), dtype=np.float64)
        if common["progress"] is not None:
            common["progress"](lid.shape[0])
        resolved = dict(settings)
        if resolved.get("n_neighbors") is not None:
            resolved["n_neighbors"] = int(min(resolved["n_neighbors"], x.shape[0] - 1))
        return LIDResult.from_arrays(lid, method=baseline.name, ambient_dim=_ambient_dim(x), settings=resolved)

    return run


def _registry() -> Mapping[str, Method]:
    methods = {
        "flipd": Method(
            name="flipd", needs_model=True, reads_noise_level=True,
            description=(
                "FLIPD (Kamkari et al. 2024): D + sigma² (tr ∇s + ‖s‖²) at one noise level; one forward "
                "pass and one Jacobian-vector product per probe."
            ),
            defaults=MappingProxyType({"trace": "auto", "n_probes": 1, "mode": "auto", "chunk_rows": None}),
            run=_run_flipd,
        ),
    }
    for name, baseline in BASELINES.items():
        defaults = dict(baseline.defaults)
        defaults.pop("seed", None)
        methods[name] = Method(
            name=name, needs_model=baseline.needs_model, reads_noise_level=name == "nb",
            description=baseline.description, defaults=MappingProxyType(defaults),
            run=_run_classical(baseline) if name in CLASSICAL_METHODS else _run_model_baseline(baseline),
        )
    return MappingProxyType(methods)


#: Every LID estimator by name: "flipd", then the baselines of :data:`flipd.baselines.BASELINES`.
METHODS: Mapping[str, Method] = _registry()
#: Methods that need a diffusion model.
MODEL_METHODS: tuple[str, ...] = tuple(name for name, method in METHODS.items() if method.needs_model)
#: Methods that read a noise level (``t0``/``sigma``/``delta``).
NOISE_LEVEL_METHODS: tuple[str, ...] = tuple(name for name, method in METHODS.items() if method.reads_noise_level)
