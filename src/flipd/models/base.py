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

import functools
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from ..parameterization import check_prediction
from ..schedules import VP, Schedule

__all__ = ["CallableModel", "Model", "as_model", "layers_in_training_mode", "warn_if_training"]


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


# --------------------------------------------------------------------------- training mode

#: Layers whose output depends on ``module.training``: dropout (with p > 0) draws a new mask
#: per call and batch norm normalises by the batch's own statistics.
_MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)

#: How deep :func:`_held_modules` looks through wrappers (a flipd Model around an adapter
#: around a network is depth 2).
_WRAPPER_DEPTH = 3
#: Longest list or tuple attribute looked through (a list of networks, not a list of data).
_MAX_SEQUENCE = 16


def _referenced(function) -> list[object]:
    """What a function uses by name from outside: its closure cells and the module-level
    objects its code names (``lambda y, t: net(y, t)`` in a notebook refers to a global)."""
    values = []
    for cell in function.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    namespace = getattr(function, "__globals__", {})
    values += [namespace[name] for name in function.__code__.co_names if name in namespace]
    return [value for value in values if _worth_following(value)]


def _worth_following(value: object) -> bool:
    """Whether ``value`` may hold a network: a module, a bound method or an object with
    attributes, but not a Python module, a class or a function."""
    if isinstance(value, (nn.Module, functools.partial, types.MethodType)):
        return True
    plain = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType)
    return not isinstance(value, plain) and hasattr(value, "__dict__")


def _held_modules(obj: object, depth: int, seen: set[int]) -> Iterator[nn.Module]:
    """The :class:`torch.nn.Module` objects a model is or holds: itself, the ``__self__`` of a
    bound method, the variables a function or lambda closes over, the function and arguments
    of a ``functools.partial``, and the attributes of wrappers (``network``, ``fn``, ``unet``,
    ...), ``depth`` levels deep. Functions a function calls are not followed."""
    if id(obj) in seen or depth < 0:
        return
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        yield obj
        return
    if isinstance(obj, functools.partial):
        children = [obj.func, *obj.args, *obj.keywords.values()]
    elif hasattr(obj, "__self__") and callable(obj):
        children = [obj.__self__]
    elif callable(obj) and hasattr(obj, "__code__"):  # a function or lambda
        children = _referenced(obj)
    else:
        try:
            children = list(vars(obj).values())
        except TypeError:  # no __dict__ (a builtin, a tensor, a number)
            return
    for child in children:
        if isinstance(child, (list, tuple)) and len(child) <= _MAX_SEQUENCE:
            for item in child:
                yield from _held_modules(item, depth - 1, seen)
        else:
            yield from _held_modules(child, depth - 1, seen)


def layers_in_training_mode(model: object) -> list[str]:
    """Names of the mode-dependent layers of ``model`` that are in training mode.

    ``model`` is a :class:`torch.nn.Module`, or anything holding one (a :class:`Model`, a
    :class:`flipd.ModelAdapter`, a bound ``forward``, a ``functools.partial``). Counted are
    dropout layers with ``p > 0`` and batch-norm layers (their output depends on the call in
    training mode); a module's own code that reads ``self.training`` cannot be seen. Names are
    ``"<class of the held module>.<layer path>"``, e.g. ``"MLP.body.2"``.
    """
    found = []
    for module in _held_modules(model, _WRAPPER_DEPTH, set()):
        for name, layer in module.named_modules():
            if not layer.training or not isinstance(layer, _MODE_DEPENDENT):
                continue
            if isinstance(layer, nn.modules.dropout._DropoutNd) and layer.p == 0:
                continue
            found.append(f"{type(module).__name__}{'.' + name if name else ''}")
    return found


_PACKAGE_DIRECTORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _first_frame_outside_flipd() -> int:
    """The ``stacklevel`` of :func:`warnings.warn` that points at the first caller outside flipd."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIRECTORY + os.sep):
        level, frame = level + 1, frame.f_back
    return level


def warn_if_training(model: object) -> None:
    """Warn (``RuntimeWarning``) when ``model`` has dropout or batch-norm layers in training
    mode (:func:`layers_in_training_mode`): their output then changes from call to call (a new
    dropout mask, the batch's own statistics), so two FLIPD runs with one seed disagree and
    each estimate depends on the other points of its batch. The fix is ``model.eval()``."""
    layers = layers_in_training_mode(model)
    if not layers:
        return
    shown = ", ".join(layers[:5]) + (f" and {len(layers) - 5} more" if len(layers) > 5 else "")
    warnings.warn(
        f"The model is in training mode with dropout or batch norm active ({shown}): its output "
        "changes from call to call, so LID estimates are not reproducible and depend on the batch. "
        "Call model.eval() (on the torch module) before estimating.",
        RuntimeWarning,
        stacklevel=_first_frame_outside_flipd(),
    )
