"""The registry of network kinds that checkpoints can name and :func:`build_network` rebuilds.

A checkpoint describes its network by a :class:`~flipd.models.spec.NetworkSpec`; any
architecture whose builder is registered with :func:`register_network` can be saved and loaded.
Built in: ``"mlp_unet"`` (:class:`flipd.models.mlp.MLPUNet`) and ``"unet2d"``
(:class:`flipd.models.unet.ImageUNet`, needs diffusers).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .mlp import MLPUNet, MLPUNetConfig
from .spec import NetworkSpec
from .unet import UNetConfig  # the options dataclass only; diffusers is imported when building

__all__ = ["build_network", "check_network_options", "network_kinds", "register_network"]


_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}
#: The options dataclass of each kind that has one (its fields name and type the options).
_OPTIONS: dict[str, type] = {}


def register_network(
    kind: str,
    builder: Callable[[dict[str, Any]], nn.Module],
    *,
    overwrite: bool = False,
    options: type | None = None,
) -> None:
    """Make ``kind`` loadable: ``builder(options)`` must return a freshly initialised network.

    The network built must carry its spec as ``network.spec`` (a :class:`NetworkSpec`) so that
    checkpoints can record it; :func:`build_network` sets it if the builder did not. ``options``,
    a dataclass whose fields are the builder's options, lets :func:`check_network_options`
    refuse unknown or wrongly typed options by name.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string; got {kind!r}.")
    if kind in _BUILDERS and not overwrite:
        raise ValueError(f"A network kind {kind!r} is already registered; pass overwrite=True to replace it.")
    _BUILDERS[kind] = builder
    if options is not None:
        _OPTIONS[kind] = options
    else:
        _OPTIONS.pop(kind, None)


def _json_fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a value of type ``hint`` (unknown hints: yes)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_json_fits(value, argument) for argument in arguments)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and arguments and arguments[-1] is not Ellipsis:
            return len(value) == len(arguments) and all(map(_json_fits, value, arguments))
        return all(_json_fits(item, arguments[0]) for item in value) if arguments else True
    return True


def check_network_options(kind: str, options: Mapping[str, Any]) -> None:
    """Refuse options that the options dataclass of ``kind`` does not have or cannot take.

    Raises:
        ValueError: naming the unknown option, or the option whose value has the wrong type.
    """
    config = _OPTIONS.get(kind)
    if config is None:
        return
    hints = typing.get_type_hints(config)
    fields = {field.name: field for field in dataclasses.fields(config)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for a {kind!r} network; known: {', '.join(fields)}")
    for name, value in options.items():
        if not _json_fits(value, hints[name]):
            raise ValueError(f"option {name!r} is {value!r} ({type(value).__name__}); expected {hints[name]}")
    required = [name for name, field in fields.items() if field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING and name not in options]
    if required:
        raise ValueError(f"missing option(s) {', '.join(required)} for a {kind!r} network")


def network_kinds() -> list[str]:
    """The registered network kinds."""
    return sorted(_BUILDERS)


def build_network(spec: NetworkSpec | Mapping[str, Any]) -> nn.Module:
    """Build a freshly initialised network from a spec (or its JSON form)."""
    if not isinstance(spec, NetworkSpec):
        spec = NetworkSpec.from_json(spec)
    if spec.kind not in _BUILDERS:
        raise ValueError(
            f"Unknown network kind {spec.kind!r}; registered kinds: {', '.join(network_kinds())}. "
            "Register a builder with flipd.models.register_network before loading."
        )
    network = _BUILDERS[spec.kind](dict(spec.options))
    if getattr(network, "spec", None) is None:
        network.spec = spec
    return network


def _build_mlp_unet(options: dict[str, Any]) -> nn.Module:
    return MLPUNet(MLPUNetConfig(**options))


register_network("mlp_unet", _build_mlp_unet, options=MLPUNetConfig)


def _build_unet2d(options: dict[str, Any]) -> nn.Module:
    """Builder of the "unet2d" kind (:class:`flipd.models.unet.ImageUNet`); imports diffusers only when used."""
    from .unet import build_unet2d  # diffusers is imported only when used

    return build_unet2d(options)


register_network("unet2d", _build_unet2d, options=UNetConfig)
