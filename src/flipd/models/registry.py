"""The registry of network kinds that checkpoints can name and :func:`build_network` rebuilds.

A checkpoint describes its network by a :class:`~flipd.models.spec.NetworkSpec`; any
architecture whose builder is registered with :func:`register_network` can be saved and loaded.
Built in: ``"mlp_unet"`` (:class:`flipd.models.mlp.MLPUNet`) and ``"unet2d"``
(:class:`flipd.models.unet.ImageUNet`, needs diffusers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .mlp import MLPUNet, MLPUNetConfig
from .spec import NetworkSpec

__all__ = ["build_network", "network_kinds", "register_network"]


_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}


def register_network(kind: str, builder: Callable[[dict[str, Any]], nn.Module], *, overwrite: bool = False) -> None:
    """Make ``kind`` loadable: ``builder(options)`` must return a freshly initialised network.

    The network built must carry its spec as ``network.spec`` (a :class:`NetworkSpec`) so that
    checkpoints can record it; :func:`build_network` sets it if the builder did not.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string; got {kind!r}.")
    if kind in _BUILDERS and not overwrite:
        raise ValueError(f"A network kind {kind!r} is already registered; pass overwrite=True to replace it.")
    _BUILDERS[kind] = builder


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


register_network("mlp_unet", _build_mlp_unet)


def _build_unet2d(options: dict[str, Any]) -> nn.Module:
    """Builder of the "unet2d" kind (:class:`flipd.models.unet.ImageUNet`); imports diffusers only when used."""
    from .unet import build_unet2d  # diffusers is imported only when used

    return build_unet2d(options)


register_network("unet2d", _build_unet2d)
