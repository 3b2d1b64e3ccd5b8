"""``python -m flipd.bench NAME [options]``: run one benchmark module's ``main``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: Benchmark name -> module with a ``main(argv) -> int``.
BENCHMARKS: dict[str, str] = {
    "calibrated_variants": "flipd.bench.calibrated_variants",
    "distributed": "flipd.bench.distributed",
    "export": "flipd.bench.export",
    "images": "flipd.bench.images",
    "oracle": "flipd.bench.oracle",
    "recipes": "flipd.bench.recipes",
    "rule_cost": "flipd.bench.rule_cost",
    "rules": "flipd.bench.rules",
    "sampling": "flipd.bench.sampling",
    "scale": "flipd.bench.scale",
    "scaling": "flipd.bench.scaling",
    "sd_scale_gpu": "flipd.bench.sd_scale_gpu",
    "speed": "flipd.bench.speed",
    "stream_memory": "flipd.bench.stream_memory",
    "synthetic": "flipd.bench.synthetic",
    "trace_cost": "flipd.bench.trace_cost",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m flipd.bench {{{','.join(sorted(BENCHMARKS))}}} [options]", file=sys.stderr)
        if argv:
            print(f"error: unknown benchmark {argv[0]!r}; choose one of {', '.join(sorted(BENCHMARKS))}.", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
