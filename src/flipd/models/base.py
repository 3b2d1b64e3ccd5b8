"""The one model concept: :class:`Model`, what every diffusion model looks like to flipd.

A model is

* a callable ``model(y, t) -> tensor shaped like y``, with ``y`` [N, ...] noised points in the
  model's own coordinates and ``t`` a float tensor [N] in the schedule's time units;
* its noise ``schedule`` (:mod:`flipd.schedules`) and its ``prediction`` type (what the
  network outputs: "score", "epsilon", "sample", "v_prediction" or "flow_velocity");
* ``encode(x)``: the map from the user's coordinates to the model's (a flipd checkpoint's
  standardisation, a latent model's VAE encoder; the identity for most others).

flipd checkpoints (:class:`flipd.models.checkpoint.DiffusionModel`), diffusers models
(:class:`flipd.models.diffusers.DiffusersModel`) and wrapped callables (:func:`as_model`) all
implement it; :func:`flipd.load` returns one. Given a :class:`Model`, :func:`flipd.flipd` takes
its schedule, prediction and coordinate map from it. A plain callable still works, with the
schedule and prediction passed beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import Tensor

from ..parameterization import check_prediction
from ..schedules import VP, Schedule

__all__ = ["CallableModel", "Model", "as_model"]


@runtime_checkable
class Model(Protocol):
    """A diffusion model with its schedule, its prediction type and its coordinate map."""

    schedule: Schedule
    prediction: str

    def __call__(self, y: Tensor, t: Tensor) -> Tensor:
        """Network output for noised points ``y`` [N, ...] (model coordinates) at times ``t`` [N]."""
        ...

    def encode(self, x: Tensor) -> Tensor:
        """Clean points ``x`` [N, ...] in the user's coordinates -> the model's coordinates."""
        ...


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass(eq=False)
class CallableModel:
    """A user's callable ``fn(y, t)`` as a :class:`Model` (see :func:`as_model`)."""

    fn: Callable[[Tensor, Tensor], Tensor]
    schedule: Schedule = field(default_factory=VP)
    prediction: str = "epsilon"
    encoder: Callable[[Tensor], Tensor] = _identity

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"as_model needs a callable fn(y, t); got {type(self.fn).__name__}.")
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be a flipd.schedules.Schedule; got {type(self.schedule).__name__}.")
        check_prediction(self.prediction)

    def __call__(self, y: Tensor, t: Tensor) -> Tensor:
        return self.fn(y, t)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)


def as_model(
    fn: Callable[[Tensor, Tensor], Tensor],
    *,
    schedule: Schedule | None = None,
    prediction: str = "epsilon",
    encode: Callable[[Tensor], Tensor] | None = None,
) -> Model:
    """``fn(y, t)`` with its schedule (default the reference ``VP()``), prediction type and
    coordinate map (default the identity) as one :class:`Model`. A :class:`Model` is returned
    as it is.

    Example:
        >>> model = flipd.as_model(network, schedule=Cosine(), prediction="v_prediction")  # doctest: +SKIP
        >>> flipd.flipd(model, x)  # doctest: +SKIP
    """
    if isinstance(fn, Model) and schedule is None and prediction == "epsilon" and encode is None:
        return fn
    return CallableModel(fn, VP() if schedule is None else schedule, prediction, encode or _identity)
