"""The command line of the image study: ``python -m flipd.bench images [options]``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from .._report import check_output_folders, positive_int
from .plan import PRESETS
from .report import compile_report
from .study import run_study

__all__ = ["DEFAULT_CHECKPOINTS", "DEFAULT_OUT", "main"]

#: Where results go and where trained models are kept, relative to the working directory.
DEFAULT_OUT = Path("benchmarks/results")
DEFAULT_CHECKPOINTS = Path("cache/images")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flipd.bench images",
        description="Image complexity study: Spearman correlation of LID estimates with PNG size.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full", help="study plan (default: full)")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated subset of the preset's data sets (e.g. mnist,digits8)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS,
                        help=f"folder of trained models, reused when the plan matches (default: {DEFAULT_CHECKPOINTS})")
    parser.add_argument("--no-checkpoints", action="store_true", help="neither save nor reuse trained models")
    parser.add_argument("--retrain", action="store_true", help="train even when a matching checkpoint exists")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=None, help="seed of data subsets, training and probes")
    parser.add_argument("--report-only", action="store_true",
                        help="only rebuild images.{md,json,csv} from the images_<name>.json records in --out")
    args = parser.parse_args(argv)
    check_output_folders(parser, {"--out": args.out, "--checkpoints": None if args.no_checkpoints else args.checkpoints})
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flipd.bench images``; returns the exit status."""
    args = _parse(argv)
    if args.report_only:
        try:
            compile_report(args.out)
        except FileNotFoundError as error:
            print(error, file=sys.stderr)
            return 2
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    plan = PRESETS[args.preset]
    if args.seed is not None:
        plan = replace(plan, seed=args.seed)
    if args.datasets:
        wanted = [name.strip() for name in args.datasets.split(",") if name.strip()]
        known = {d.name: d for d in plan.datasets}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            print(f"Unknown data sets {unknown}; the {args.preset} preset has {', '.join(known)}.", file=sys.stderr)
            return 2
        plan = replace(plan, datasets=tuple(known[name] for name in wanted))
    if argv is None:
        argv = sys.argv[1:]
    command = "python -m flipd.bench images " + " ".join(shlex.quote(a) for a in argv)
    run_study(
        plan, out=args.out, checkpoints=None if args.no_checkpoints else args.checkpoints,
        retrain=args.retrain, command=command.strip(), preset=args.preset,
        log=lambda message: print(message, flush=True),
    )
    return 0
