"""Adapting networks with other call signatures to flipd's ``model(y, t) -> tensor``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

__all__ = ["ModelAdapter"]


class ModelAdapter:
    """Wrap a network so that it can be called as ``model(y, t)`` with t [N] in schedule units.

    Args:
        network: the callable to wrap, called as ``network(y, time_scale·t, **kwargs)``.
        time_scale: factor applied to t before the call (e.g. 1000 for a network trained on
            ``timestep = 1000·t`` with a continuous schedule on [0, 1]).
        time_fn: a general map of t instead of ``time_scale`` (e.g. EDM's ``c_noise = log(sigma)/4``).
        kwargs: extra keyword arguments for every call (conditioning, class labels, ...).
        output: picks the tensor out of what the network returns; by default a tensor is used as
            is and objects with a ``sample`` attribute (diffusers' outputs) give ``.sample``.

    Example:
        >>> model = ModelAdapter(unet, time_scale=1000)  # doctest: +SKIP
        >>> flipd.flipd(model, x, t0=0.05)  # doctest: +SKIP
    """

    def __init__(
        self,
        network: Callable[..., Any],
        *,
        time_scale: float = 1.0,
        time_fn: Callable[[Tensor], Tensor] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        output: Callable[[Any], Tensor] | None = None,
    ) -> None:
        self.network = network
        self.time_scale = float(time_scale)
        self.time_fn = time_fn
        self.kwargs = dict(kwargs or {})
        self.output = output

    def __call__(self, y: Tensor, t: Tensor) -> Tensor:
        time = self.time_fn(t) if self.time_fn is not None else t * self.time_scale
        result = self.network(y, time, **self.kwargs)
        if self.output is not None:
            return self.output(result)
        if isinstance(result, Tensor):
            return result
        if hasattr(result, "sample"):
            return result.sample
        if isinstance(result, (tuple, list)) and result and isinstance(result[0], Tensor):
            return result[0]
        raise TypeError(
            f"Cannot find the output tensor in a {type(result).__name__}; pass output=... to ModelAdapter."
        )
