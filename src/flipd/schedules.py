"""Noise schedules: how a diffusion model corrupts data, x_t = psi(t)·x_0 + sigma(t)·eps.

Every schedule maps a time ``t`` (in its own units) to the signal scale ``psi(t)`` and the noise
scale ``sigma(t)``. FLIPD depends on the noise level only through the log noise-to-signal ratio

    delta(t) = log(sigma(t) / psi(t)),

so ``delta`` is a schedule-free way to name a noise level: the same ``delta`` means the same
amount of Gaussian smoothing of the data under every schedule.

All functions take and return ``torch.Tensor`` (any shape); computations run in float64 and the
result keeps that dtype. Python floats are accepted too.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Schedule", "VP", "Cosine", "Discrete", "VE", "RectifiedFlow", "SCHEDULES"]


def _as_float64(value: float | Sequence[float] | Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(dtype=torch.float64, device="cpu")
    return torch.as_tensor(value, dtype=torch.float64)


class Schedule(ABC):
    """A Gaussian noise schedule ``x_t = psi(t)·x_0 + sigma(t)·eps`` on ``[t_min, t_max]``.

    Subclasses implement :meth:`psi` and :meth:`sigma`; conversions from ``sigma`` or ``delta``
    back to ``t`` are solved by bisection (``sigma`` and ``delta`` increase with ``t``), unless a
    subclass provides a closed form.
    """

    #: Smallest valid time (a noise level with sigma > 0 must exist there or just above).
    t_min: float = 0.0
    #: Largest valid time.
    t_max: float = 1.0
    #: Whether ``t_min`` itself is a valid noise level (sigma(t_min) > 0).
    includes_t_min: bool = False

    @abstractmethod
    def psi(self, t: float | Tensor) -> Tensor:
        """Signal scale psi(t) (dimensionless)."""

    @abstractmethod
    def sigma(self, t: float | Tensor) -> Tensor:
        """Noise standard deviation sigma(t), in data units."""

    def delta(self, t: float | Tensor) -> Tensor:
        """Log noise-to-signal ratio, ``log(sigma(t) / psi(t))``."""
        return torch.log(self.sigma(t)) - torch.log(self.psi(t))

    def derivatives(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """``(dpsi/dt, dsigma/dt)`` at ``t``, by forward-mode differentiation of psi and sigma."""
        t = _as_float64(t)
        tangent = torch.ones_like(t)
        dpsi = torch.func.jvp(self.psi, (t,), (tangent,))[1]
        dsigma = torch.func.jvp(self.sigma, (t,), (tangent,))[1]
        return dpsi, dsigma

    def t_from_sigma(self, sigma: float | Tensor) -> Tensor:
        """Time at which the noise standard deviation equals ``sigma``."""
        return self._invert(self.sigma, _as_float64(sigma), "sigma")

    def t_from_delta(self, delta: float | Tensor) -> Tensor:
        """Time at which ``log(sigma / psi)`` equals ``delta``."""
        return self._invert(self.delta, _as_float64(delta), "delta")

    def check_t(self, t: float | Tensor, name: str = "t0") -> Tensor:
        """Return ``t`` as float64, raising ``ValueError`` if any entry is outside the schedule."""
        t = _as_float64(t)
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} must be finite; got {t.flatten()[:5].tolist()}.")
        low_bad = t < self.t_min if self.includes_t_min else t <= self.t_min
        bad = low_bad | (t > self.t_max)
        if bad.any():
            bracket = "[" if self.includes_t_min else "("
            raise ValueError(
                f"{name}={t[bad].flatten()[0].item():g} is outside {self!r}'s time range "
                f"{bracket}{self.t_min:g}, {self.t_max:g}]. Pass a time inside the range, or "
                f"name the noise level schedule-free with sigma= or delta=."
            )
        return t

    def _invert(self, fn, target: Tensor, what: str) -> Tensor:
        low = torch.full_like(target, self.t_min)
        high = torch.full_like(target, self.t_max)
        f_low, f_high = fn(low), fn(high)
        outside = (target < f_low) | (target > f_high) | ~torch.isfinite(target)
        if outside.any():
            bad = target[outside].flatten()[0].item()
            raise ValueError(
                f"{what}={bad:g} is not reached by {self!r}: its {what} ranges over "
                f"[{f_low.min().item():g}, {f_high.max().item():g}]."
            )
        for _ in range(100):
            middle = 0.5 * (low + high)
            above = fn(middle) >= target
            high = torch.where(above, middle, high)
            low = torch.where(above, low, middle)
        return 0.5 * (low + high)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ configuration

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable ``{"kind": ..., **constructor arguments}``; :meth:`from_config` inverts it."""
        return {"kind": type(self).__name__, **self._arguments()}

    def _arguments(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this schedule (JSON-serialisable)."""
        return {}

    @staticmethod
    def from_config(config: Mapping[str, Any]) -> "Schedule":
        """Rebuild a schedule from :meth:`to_config`'s output.

        Raises:
            ValueError: an unknown kind, or arguments the schedule does not take (named).
        """
        if not isinstance(config, Mapping) or not isinstance(config.get("kind"), str):
            raise ValueError(f"A schedule config needs a 'kind' naming one of {', '.join(SCHEDULES)}; got {config!r}.")
        kind = config["kind"]
        if kind not in SCHEDULES:
            raise ValueError(f"Unknown schedule kind {kind!r}; use one of {', '.join(SCHEDULES)}.")
        arguments = {key: value for key, value in config.items() if key != "kind"}
        cls = SCHEDULES[kind]
        accepted = set(inspect.signature(cls).parameters)
        unknown = sorted(set(arguments) - accepted)
        if unknown:
            raise ValueError(f"Schedule {kind} takes {', '.join(sorted(accepted)) or 'no arguments'}; got unknown {', '.join(unknown)}.")
        for key, value in arguments.items():
            numbers = value if isinstance(value, list) else [value]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
                raise ValueError(f"Schedule {kind}: {key} must be a number (or a list of numbers); got {value!r}.")
        return cls(**arguments)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(repr(self.to_config()))


class VP(Schedule):
    """Variance-preserving SDE with linear beta(t) = beta_min + (beta_max - beta_min)·t, t ∈ (0, 1].

    psi = exp(-B/2) and sigma = sqrt(1 - exp(-B)) with B(t) = ∫₀ᵗ beta. The default
    (0.1, 20) is the reference schedule of the FLIPD paper: t = 0.05 gives sigma ≈ 0.172.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"VP needs 0 <= beta_min < beta_max; got {beta_min}, {beta_max}.")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def integrated_beta(self, t: float | Tensor) -> Tensor:
        """B(t) = beta_min·t + (beta_max - beta_min)·t²/2."""
        t = _as_float64(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def beta(self, t: float | Tensor) -> Tensor:
        """Instantaneous beta(t)."""
        return self.beta_min + (self.beta_max - self.beta_min) * _as_float64(t)

    def psi(self, t: float | Tensor) -> Tensor:
        return torch.exp(-0.5 * self.integrated_beta(t))

    def sigma(self, t: float | Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))

    def delta(self, t: float | Tensor) -> Tensor:
        return 0.5 * torch.log(torch.expm1(self.integrated_beta(t)))

    def __repr__(self) -> str:
        return f"VP(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"

    def _arguments(self) -> dict[str, Any]:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}


class Cosine(Schedule):
    """The cosine schedule of improved DDPM: alpha_bar(t) = cos²(π/2·(t+s)/(1+s)) / cos²(π/2·s/(1+s)).

    psi = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), t ∈ (0, t_max] with ``t_max`` just
    below 1, where the signal vanishes.
    """

    def __init__(self, offset: float = 0.008, t_max: float = 0.999) -> None:
        self.offset = float(offset)
        self.t_max = float(t_max)

    def alpha_bar(self, t: float | Tensor) -> Tensor:
        """Cumulative signal fraction alpha_bar(t) = psi(t)²."""
        t = _as_float64(t)
        s = self.offset
        angle = 0.5 * math.pi * (t + s) / (1 + s)
        return torch.cos(angle) ** 2 / math.cos(0.5 * math.pi * s / (1 + s)) ** 2

    def psi(self, t: float | Tensor) -> Tensor:
        return torch.sqrt(self.alpha_bar(t))

    def sigma(self, t: float | Tensor) -> Tensor:
        return torch.sqrt((1 - self.alpha_bar(t)).clamp_min(0))

    def __repr__(self) -> str:
        return f"Cosine(offset={self.offset:g})"

    def _arguments(self) -> dict[str, Any]:
        return {"offset": self.offset, "t_max": self.t_max}


class Discrete(Schedule):
    """A discrete-time schedule given by ``alphas_cumprod`` (diffusers' DDPM/DDIM family).

    Time is the timestep index, ``t ∈ [0, T-1]`` — the same number a diffusers UNet takes as its
    ``timestep`` — with psi_k = sqrt(alphas_cumprod[k]) and sigma_k = sqrt(1 - alphas_cumprod[k]).
    Fractional timesteps interpolate delta = log(sigma/psi) linearly between neighbouring
    indices (psi² + sigma² = 1 is kept). To relate the index to a continuous time in [0, 1]
    use ``t_continuous = k / (T - 1)``; a model trained in continuous time is better served by
    its own continuous schedule.
    """

    includes_t_min = True

    def __init__(self, alphas_cumprod: Sequence[float] | Tensor) -> None:
        alphas_cumprod = _as_float64(alphas_cumprod).flatten()
        if alphas_cumprod.numel() < 2:
            raise ValueError("Discrete needs at least two alphas_cumprod values.")
        if not ((alphas_cumprod > 0) & (alphas_cumprod < 1)).all():
            raise ValueError("alphas_cumprod must lie strictly between 0 and 1.")
        if not (alphas_cumprod[1:] < alphas_cumprod[:-1]).all():
            raise ValueError("alphas_cumprod must decrease strictly with the timestep index.")
        self.alphas_cumprod = alphas_cumprod
        self.delta_table = 0.5 * (torch.log1p(-alphas_cumprod) - torch.log(alphas_cumprod))
        self.t_min = 0.0
        self.t_max = float(alphas_cumprod.numel() - 1)

    @classmethod
    def from_scheduler(cls, scheduler) -> "Discrete":
        """Build from a diffusers scheduler (anything with an ``alphas_cumprod`` attribute)."""
        if not hasattr(scheduler, "alphas_cumprod"):
            raise TypeError(
                f"{type(scheduler).__name__} has no alphas_cumprod; pass a DDPM/DDIM-family "
                "scheduler, or build the schedule yourself."
            )
        return cls(scheduler.alphas_cumprod)

    def delta(self, t: float | Tensor) -> Tensor:
        t = _as_float64(t).clamp(self.t_min, self.t_max)
        lower = t.floor().long().clamp(max=int(self.t_max) - 1)
        weight = t - lower
        table = self.delta_table
        return (1 - weight) * table[lower] + weight * table[lower + 1]

    def psi(self, t: float | Tensor) -> Tensor:
        return torch.rsqrt(1 + torch.exp(2 * self.delta(t)))

    def sigma(self, t: float | Tensor) -> Tensor:
        return torch.exp(self.delta(t)) * self.psi(t)

    def __repr__(self) -> str:
        return f"Discrete(T={self.alphas_cumprod.numel()})"

    def _arguments(self) -> dict[str, Any]:
        return {"alphas_cumprod": self.alphas_cumprod.tolist()}


class VE(Schedule):
    """Variance-exploding schedule in EDM's convention: psi = 1, sigma = t, t ∈ (0, sigma_max]."""

    def __init__(self, sigma_max: float = 80.0) -> None:
        self.t_max = float(sigma_max)

    def psi(self, t: float | Tensor) -> Tensor:
        return torch.ones_like(_as_float64(t))

    def sigma(self, t: float | Tensor) -> Tensor:
        return _as_float64(t).clone()

    def t_from_sigma(self, sigma: float | Tensor) -> Tensor:
        return self.check_t(sigma, "sigma")

    def __repr__(self) -> str:
        return f"VE(sigma_max={self.t_max:g})"

    def _arguments(self) -> dict[str, Any]:
        return {"sigma_max": self.t_max}


class RectifiedFlow(Schedule):
    """Rectified flow / flow matching: x_t = (1 - t)·x_0 + t·eps, so psi = 1 - t, sigma = t.

    t ∈ (0, t_max] with ``t_max`` just below 1, where the signal vanishes.
    """

    def __init__(self, t_max: float = 0.999) -> None:
        self.t_max = float(t_max)

    def psi(self, t: float | Tensor) -> Tensor:
        return 1 - _as_float64(t)

    def sigma(self, t: float | Tensor) -> Tensor:
        return _as_float64(t).clone()

    def __repr__(self) -> str:
        return f"RectifiedFlow(t_max={self.t_max:g})"

    def _arguments(self) -> dict[str, Any]:
        return {"t_max": self.t_max}


#: Every schedule class by the ``kind`` its config names.
SCHEDULES: dict[str, type[Schedule]] = {cls.__name__: cls for cls in (VP, Cosine, Discrete, VE, RectifiedFlow)}
