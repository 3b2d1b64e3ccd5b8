"""How a saved network is described: a registered kind and its JSON-serialisable options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NetworkSpec"]


@dataclass(frozen=True)
class NetworkSpec:
    """How to rebuild a network: a registered ``kind`` and its JSON-serialisable ``options``."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "options": dict(self.options)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "NetworkSpec":
        if not isinstance(value, Mapping) or "kind" not in value:
            raise ValueError(f"A network spec needs a 'kind' field; got {value!r}.")
        return cls(kind=str(value["kind"]), options=dict(value.get("options", {})))
