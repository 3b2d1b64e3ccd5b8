"""Command line of the benchmark runners: ``python -m flipd.bench synthetic --suite toy``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from .synthetic import DEFAULT_T0, METHODS, SUITES, run_synthetic


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flipd.bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    synthetic = commands.add_parser(
        "synthetic",
        help="LID estimators on synthetic data with known LID (method notes §8)",
        description="Train (or load cached) diffusion models on synthetic data sets and compare FLIPD "
        "with FPRegress, the normal bundle and classical estimators on held-out points.",
    )
    synthetic.add_argument("--suite", choices=sorted(SUITES), required=True, help="which data sets")
    synthetic.add_argument("--datasets", nargs="+", metavar="SPEC", help="only these data sets of the suite (or other specs)")
    synthetic.add_argument("--methods", nargs="+", choices=METHODS, help="only these methods (default all)")
    synthetic.add_argument("--n-eval", type=int, default=None, help="evaluation points per data set (default 4096; 64 with --tiny)")
    synthetic.add_argument("--t0", type=float, default=DEFAULT_T0, help="fixed t0 of FLIPD (default %(default)s)")
    synthetic.add_argument("--tiny", action="store_true", help="a minutes-long smoke configuration (tiny models and data)")
    synthetic.add_argument("--cache-dir", default="cache/models", help="where trained models are kept (default %(default)s)")
    synthetic.add_argument("--out-dir", default="benchmarks/results", help="where result files go (default %(default)s)")
    synthetic.add_argument("--retrain", action="store_true", help="ignore cached models")
    synthetic.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    synthetic.add_argument("--seed", type=int, default=0, help="seed of training (data and optimisation); evaluation data use seed+1")
    synthetic.add_argument("--name", default=None, help="base name of the result files (default synthetic_<suite>[_tiny])")
    synthetic.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "synthetic":
        run_synthetic(
            args.suite,
            datasets=args.datasets,
            methods=args.methods,
            n_eval=args.n_eval,
            t0=args.t0,
            tiny=args.tiny,
            cache_dir=args.cache_dir,
            out_dir=args.out_dir,
            retrain=args.retrain,
            threads=args.threads,
            seed=args.seed,
            name=args.name,
            progress=not args.quiet,
            command="python -m flipd.bench " + shlex.join(argv),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
