"""What an automatic noise level costs: each rule's time over FLIPD's at one fixed level.

For each data set the model the synthetic benchmark trains (its cache, :func:`~flipd.bench.synthetic.train_or_load`)
reads the same ``--points`` points (seed 1, as the synthetic runner's evaluation points) with:

- ``fixed``: ``t0=0.05``, the default noise level (the reference of every ratio);
- ``knee`` and ``plateau``: the per-point rules (a FLIPD curve over :func:`flipd.knee_grid` and
  :func:`flipd.plateau_grid`, 22 and 29 levels for the VP schedule, per point);
- ``calibrated``: one level per data set, chosen from the first 2048 points (forward passes only);
- ``band``: the band rule (``t0="band"``, which ``t0="auto"`` names) on a tensor; ``band stream``: the same points from a
  DataLoader (batches of 512); ``band two calls``: ``calibrated_t0(..., band=True)``, then
  ``estimate(t0=level)``: the choice and the reading done apart, so the sample is read twice.

The band rule reads its 2048-point sample at every level of the band (B levels) to choose, and the
other points at the R levels it reads: its cost is about 2048·B + (N − 2048)·R fixed-level
reads, plus the choice's forward passes. Each repeat runs every rule once, in turn, so every
rule sees the same drift in machine load; a ratio is the median over repeats of the rule's time
over the fixed level's in the same repeat (after one warm-up call at the fixed level). The band
rule's three paths must agree (the largest difference of their estimates is recorded).

Usage (from the repository root):
    python -m flipd.bench rule_cost --threads 2                       # both default sets, 4096 points
    python -m flipd.bench rule_cost --specs mixture:affine:D=100:dims=10,25,50 --rules fixed calibrated band
    python -m flipd.bench rule_cost --tiny --points 64 --repeats 1 --out /tmp/cost   # a smoke run
    python -m flipd.bench rule_cost --report-only                     # the report from its record
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import flipd
from ..calibrated import CALIBRATION_POINTS, calibrated_band
from ..datasets import get_dataset
from ..runs.environment import machine_info, package_versions
from ._report import (BENCH_PACKAGES, check_output_folders, git_revision, markdown_table, positive_int,
                      produced_by, rewrite_report, write_report)
from .synthetic import recipe_for, train_or_load

#: The rules timed, in the order each repeat runs them.
RULES = ("fixed", "knee", "plateau", "calibrated", "band", "band stream", "band two calls")

#: The data sets timed by default: the small and medium suites' three-part affine mixtures.
DEFAULT_SPECS = ("mixture:affine:D=10:dims=2,4,8", "mixture:affine:D=100:dims=10,25,50")

#: Points per batch of the stream the "band stream" rule reads.
STREAM_BATCH = 512


def rule_calls(model, x: torch.Tensor) -> dict[str, Callable[[], flipd.LIDResult]]:
    """One call per rule of :data:`RULES`, each reading every point of ``x`` [N, D]."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=STREAM_BATCH)

    def two_calls() -> flipd.LIDResult:
        level = flipd.calibrated_t0(model, x, band=True)
        return flipd.estimate(model, x, t0=level)

    return {
        "fixed": lambda: flipd.estimate(model, x, t0=0.05),
        "knee": lambda: flipd.estimate(model, x, t0="knee"),
        "plateau": lambda: flipd.estimate(model, x, t0="plateau"),
        "calibrated": lambda: flipd.estimate(model, x, t0="calibrated"),
        "band": lambda: flipd.estimate(model, x, t0="band"),
        "band stream": lambda: flipd.estimate(model, loader, t0="band"),
        "band two calls": two_calls,
    }


def time_rules(model, x: torch.Tensor, rules: Sequence[str], repeats: int) -> dict[str, Any]:
    """Seconds of each rule in every repeat (rules in turn within a repeat), their ratios to the
    fixed level's, and the last repeat's results of the rules."""
    calls = rule_calls(model, x)
    seconds: dict[str, list[float]] = {rule: [] for rule in rules}
    results: dict[str, flipd.LIDResult] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # estimates outside [0, D] and unfound points are not this benchmark's
        calls["fixed"]()  # warm-up: the first call pays for allocations the others reuse
        for _ in range(repeats):
            for rule in rules:
                began = time.perf_counter()
                results[rule] = calls[rule]()
                seconds[rule].append(time.perf_counter() - began)
    ratios = {rule: [spent / fixed for spent, fixed in zip(seconds[rule], seconds["fixed"])] for rule in rules}
    return {"seconds": seconds, "ratios": ratios, "results": results}


def measure(spec: str, *, points: int, rules: Sequence[str], repeats: int, cache_dir: str | Path,
            tiny: bool = False) -> dict[str, Any]:
    """One data set's record: the model's cache entry, the band's size, each rule's times."""
    model, trained = train_or_load(spec, recipe_for(spec, tiny=tiny), cache_dir=cache_dir, progress=False)
    data = get_dataset(spec, points, seed=1)
    x = torch.as_tensor(data.x, dtype=torch.float32)
    timed = time_rules(model, x, rules, repeats)
    record: dict[str, Any] = {
        "spec": spec, "points": points, "ambient_dim": int(x.shape[1]), "repeats": repeats,
        "model": trained,
        "seconds": timed["seconds"],
        "median_seconds": {rule: statistics.median(values) for rule, values in timed["seconds"].items()},
        "median_ratio": {rule: statistics.median(values) for rule, values in timed["ratios"].items()},
    }
    band = [rule for rule in rules if rule.startswith("band")]
    if band:
        level = timed["results"][band[0]].level
        record["band"] = {"sample": min(points, CALIBRATION_POINTS), "levels": int(calibrated_band(level).numel()),
                          "levels_read": int(level.times_read().numel()), "t0": level.t0}
        first = timed["results"][band[0]].lid.double()
        record["band"]["max_difference"] = max(
            (float((timed["results"][rule].lid.double() - first).abs().max()) for rule in band[1:]), default=0.0)
        truth = np.asarray(data.lid, dtype=np.float64)
        record["mae"] = {rule: float(np.mean(np.abs(timed["results"][rule].lid.double().numpy() - truth)))
                         for rule in rules}
    return record


def render(report: dict[str, Any]) -> str:
    """The markdown report of a run's record."""
    lines = ["# What an automatic noise level costs", "", *produced_by(report["command"]),
             f"Commit {report['commit']}, {report['date']}; {report['machine'].get('cpu', '?')}, "
             f"{report['threads']} torch threads.", "",
             "Each cell: the rule's time over FLIPD's at t0 = 0.05 on the same points, the median over repeats of the "
             "ratio within one repeat (seconds of the fixed level in its column). `band two calls` is "
             "`calibrated_t0(band=True)` then `estimate(t0=level)`: the band rule's sample read twice.", ""]
    rules = report["rules"]
    rows = []
    for record in report["records"]:
        rows.append([record["spec"], record["points"], record["median_seconds"]["fixed"],
                     *[record["median_ratio"][rule] for rule in rules if rule != "fixed"]])
    lines.append(markdown_table(["data set", "points", "fixed (s)", *[r for r in rules if r != "fixed"]], rows, digits=2))
    lines += ["", "The band rule's choice, and the MAE of each rule (the last repeat's estimates):", ""]
    rows = []
    for record in report["records"]:
        band = record.get("band")
        if band is None:
            continue
        implied = band["sample"] * band["levels"] + (record["points"] - band["sample"]) * band["levels_read"]
        rows.append([record["spec"], band["levels"], band["levels_read"], implied / record["points"],
                     band["max_difference"], *[record["mae"][rule] for rule in rules]])
    if rows:
        lines.append(markdown_table(["data set", "band levels B", "levels read R", "reads per point",
                                     "paths' largest difference", *[f"MAE {rule}" for rule in rules]], rows, digits=3))
        lines += ["", "Reads per point: (n·B + (N − n)·R) / N with n = min(N, 2048) the sample, the fixed-level reads the band rule makes "
                      "(the choice's forward passes come on top)."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flipd.bench rule_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS), help="data sets (default %(default)s)")
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES),
                        help="rules to time (default all; fixed is always timed)")
    parser.add_argument("--points", type=positive_int, default=4096, help="points per data set (default %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="repeats (default %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--cache-dir", default="cache/models", help="where trained models are kept (default %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="tiny models (seconds to train): a smoke run")
    parser.add_argument("--out", default="benchmarks/results", help="output folder (default %(default)s)")
    parser.add_argument("--name", default="rule_cost", help="base name of the result files (default %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="measure nothing; rewrite the report from its record")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out) / args.name
    if args.report_only:
        return rewrite_report(out.with_suffix(".json"), out.with_suffix(".md"), render)
    check_output_folders(parser, {"--out": args.out, "--cache-dir": args.cache_dir})
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rules = ["fixed", *[rule for rule in RULES if rule in args.rules and rule != "fixed"]]
    records = [measure(spec, points=args.points, rules=rules, repeats=args.repeats, cache_dir=args.cache_dir,
                       tiny=args.tiny) for spec in args.specs]
    report = {
        "command": "python -m flipd.bench rule_cost " + shlex.join(argv), "commit": git_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "packages": package_versions(BENCH_PACKAGES), "threads": torch.get_num_threads(),
        "rules": rules, "records": records,
    }
    write_report(out, report, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
