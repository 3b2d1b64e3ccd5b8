"""How much the calibrated rule's choice depends on its two settings, on trained models.

The calibrated rule (:mod:`flipd.calibrated`) summarises the model's denoising check at each
level of :func:`flipd.plateau_grid` by one number, the *median* over the points of
|calibration|, and reads every point at the smallest level whose number is within
``ratio = 1.5`` times the best one. This benchmark trains (or loads from the cache) the same
models as ``python -m flipd.bench synthetic`` for a suite, computes each point's FLIPD at every
level of that grid and the two sums behind its calibration once
(:func:`flipd.reliability.denoising_terms`), and then applies variants of the rule to those
numbers, so that every variant is judged on the same model, points and probes:

* ``median, ratio r`` for r in :data:`RATIOS`: the rule with another ratio (1.5 is the
  library's; 1.0 reads every point at the level where the model denoises best);
* ``size-weighted, ratio 1.5``: the per-level number is ``Σ_n |inner_n| / Σ_n size_n``, the
  mean |calibration| weighted by the size of each point's predicted noise (about its
  codimension), so points where the model predicts almost no noise (full-dimensional parts)
  count little.
* ``band mean, ratio 1.5``: not one level but every level whose median is within 1.5 times the
  best (:func:`flipd.calibrated.calibrated_band`), each point's FLIPD averaged over them. An
  imperfect model's FLIPD wobbles from level to level, and the mean cancels part of that.
* ``band rule, ratio 1.5``: the library's ``t0="band"`` (:func:`flipd.calibrated.band_reading`):
  the band mean, unless the points' FLIPD at the calibrated level differ by more than
  :data:`flipd.noise.BAND_CONTRAST` times their wobble over the band; then only over the band's
  first levels, before the spread of the points' FLIPD shrinks by more than
  :data:`flipd.noise.BAND_SPREAD_LOSS`.

Each variant's MAE is compared with FLIPD at the best fixed level of {0.01, 0.02, 0.05, 0.1}
(the rule target: within 0.1) and with the best level of the grid (found with the true LIDs, so
no rule; the floor of any rule that reads a data set at one level). Each variant also chooses
its level from :data:`RESAMPLES` bootstrap resamples of the points, which shows how much its
result depends on the points it chose from. The median variants are
:func:`flipd.calibrated.calibrated_level` itself at each ratio.

    python -m flipd.bench calibrated_variants --suite small --cache-dir cache/models \
        --out benchmarks/results/calibrated_variants_small
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..calibrated import band_reading, calibrated_band, calibrated_level, smallest_within
from ..checks import resolve_model
from ..datasets import get_dataset
from ..estimator import flipd_curve
from ..noise import BAND_CONTRAST, CALIBRATED_RATIO, plateau_grid
from ..reliability import calibration_of, denoising_terms
from ..runs.environment import machine_info, package_versions
from ._report import (BENCH_PACKAGES, RULE_MARGIN, check_output_folders, git_revision, markdown_table, positive_int,
                      produced_by, write_report)
from .rules import FIXED_T0, _mae
from .synthetic import SUITES, Recipe, _with_budget, train_or_load

__all__ = ["RATIOS", "VARIANTS", "level_profile", "run_variants", "summarize"]

#: Ratios of the median variant.
RATIOS: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 3.0)


def _size_weighted_error(inner: np.ndarray, size: np.ndarray) -> np.ndarray:
    return np.abs(inner).sum(axis=0) / np.maximum(size.sum(axis=0), 1e-300)


class Variant(NamedTuple):
    """One variant of the rule: the per-level error from the [N, T] sums (None: the library's
    median), its ratio, and whether it reads the whole band within that ratio (the mean of each
    point's FLIPD over it) instead of its smallest level, always or (``max_contrast``) as the
    band rule decides."""

    error_of: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    ratio: float
    band: bool = False
    #: with the band: the band rule's contrast threshold (:func:`flipd.calibrated.band_reading`)
    max_contrast: float | None = None


#: The variants by name.
VARIANTS: dict[str, Variant] = {
    **{f"median, ratio {ratio:g}": Variant(None, ratio) for ratio in RATIOS},
    f"size-weighted, ratio {CALIBRATED_RATIO:g}": Variant(_size_weighted_error, CALIBRATED_RATIO),
    f"band mean, ratio {CALIBRATED_RATIO:g}": Variant(None, CALIBRATED_RATIO, band=True),
    f"band rule, ratio {CALIBRATED_RATIO:g}": Variant(None, CALIBRATED_RATIO, band=True, max_contrast=BAND_CONTRAST),  # BAND_VARIANT
}
#: Bootstrap resamples of the points each variant also chooses its level from.
RESAMPLES = 20
#: The library's rule among the variants.
LIBRARY_VARIANT = f"median, ratio {CALIBRATED_RATIO:g}"
#: The library's band rule (``t0="band"``) among the variants.
BAND_VARIANT = f"band rule, ratio {CALIBRATED_RATIO:g}"


def level_profile(model, x: np.ndarray, *, seed: int = 0) -> dict[str, np.ndarray]:
    """FLIPD and the denoising check of every point at every level of the model's plateau grid.

    Args:
        model: a :class:`flipd.DiffusionModel`.
        x: points [N, D] in data units.
        seed: Hutchinson probes and noisy copies (as ``flipd.estimate(..., seed=)``).

    Returns:
        ``times`` [T] (the grid), ``curve`` [N, T] FLIPD, ``fixed`` [N, len(FIXED_T0)] FLIPD at the
        fixed levels, and ``inner``, ``size`` [N, T] (:func:`flipd.reliability.denoising_terms`).
    """
    points = torch.as_tensor(x)
    grid = plateau_grid(model.schedule).to(torch.float64)
    times = torch.cat([grid, torch.tensor(FIXED_T0, dtype=torch.float64)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # points outside [0, D] at some levels are expected here
        curve = flipd_curve(model, points, times, seed=seed).to(torch.float64).numpy()
    fn, standardized, schedule, prediction = resolve_model(model, points, schedule=None, prediction=None, encoded=False)
    inner, size = denoising_terms(fn, standardized, grid, schedule=schedule, prediction=prediction, seed=seed,
                                  indices=torch.arange(points.shape[0]), batch_size=min(points.shape[0], 1024))
    return {"times": grid.numpy(), "curve": curve[:, : grid.numel()], "fixed": curve[:, grid.numel():],
            "inner": inner.numpy(), "size": size.numpy()}


def _chosen_levels(name: str, profile: dict[str, np.ndarray], points: np.ndarray | slice) -> tuple[np.ndarray, int]:
    """The level indices variant ``name`` reads (one, or its band) when it chooses from ``points``,
    and the index of the model's best level."""
    variant = VARIANTS[name]
    inner, size = profile["inner"][points], profile["size"][points]
    if variant.error_of is None:  # the median: the library's own rule at this ratio
        calibration = calibration_of(torch.from_numpy(inner), torch.from_numpy(size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # few points: the library's warning, not ours
            level = calibrated_level(calibration, profile["times"], ratio=variant.ratio)
        best = int(np.flatnonzero(profile["times"] == level.best_t0)[0])
        if variant.band:
            band = np.flatnonzero(np.isin(profile["times"], calibrated_band(level).numpy()))
            if variant.max_contrast is not None:  # the library's band rule, on these points' curves
                read = band_reading(level, profile["curve"][points][:, band], max_contrast=variant.max_contrast)
                band = band[: read.times_read().numel()]
            return band, best
        return np.array([level.index]), best
    error = variant.error_of(inner, size)
    chosen, best = smallest_within(np.where(np.isfinite(error), error, np.inf), variant.ratio)
    return np.array([chosen]), best


def score_variants(profile: dict[str, np.ndarray], true: np.ndarray, *, resamples: int = RESAMPLES,
                   seed: int = 0) -> dict[str, Any]:
    """Each variant's level and MAE on one data set's profile (:func:`level_profile`), against the
    MAE at each fixed level; one JSON-ready record.

    Each variant also chooses its level from ``resamples`` bootstrap resamples of the points
    (drawn from ``seed``); ``resampled`` gives the fraction of them that choose the same level as
    all the points and the range of the MAE (over all points) at the levels they choose: how much
    the result depends on which points the level was chosen from.
    """
    fixed = {str(t0): _mae(profile["fixed"][:, k], true) for k, t0 in enumerate(FIXED_T0)}
    best_fixed = min(fixed.values())

    def mae_reading(levels: np.ndarray) -> float:  # each point's FLIPD averaged over these levels
        return _mae(profile["curve"][:, levels].mean(axis=1), true)

    grid_mae = [mae_reading(np.array([k])) for k in range(profile["times"].size)]
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, true.size, true.size) for _ in range(resamples)]
    variants = {}
    for name in VARIANTS:
        levels, best = _chosen_levels(name, profile, slice(None))
        mae = mae_reading(levels)
        chosen = [_chosen_levels(name, profile, points)[0] for points in draws]
        variants[name] = {"t0": float(profile["times"][levels[0]]), "best_t0": float(profile["times"][best]),
                          "mae": mae, "within_0.1_of_best_fixed": bool(mae <= best_fixed + RULE_MARGIN)}
        if VARIANTS[name].band:
            variants[name]["band"] = {"t0_last": float(profile["times"][levels[-1]]), "levels": int(levels.size)}
        if chosen:
            maes = [mae_reading(c) for c in chosen]
            variants[name]["resampled"] = {
                "same_level_fraction": float(np.mean([np.array_equal(c, levels) for c in chosen])),
                "mae_min": min(maes), "mae_max": max(maes)}
    best_level = int(np.nanargmin(grid_mae))
    return {"fixed": fixed, "best_fixed": best_fixed, "variants": variants, "grid_mae": grid_mae,
            "best_grid_level": {"t0": float(profile["times"][best_level]), "mae": grid_mae[best_level]}}


def run_variants(specs: Sequence[str], *, recipe: Callable[..., Recipe], cache_dir: str | Path, n_eval: int,
                 seed: int = 0, tiny: bool = False) -> list[dict[str, Any]]:
    """One record per data set: train or load its model (the synthetic benchmark's cache; ``tiny``:
    its smoke-test recipes), profile ``n_eval`` held-out points (seed ``seed + 1``) and score
    every variant."""
    rows = []
    for spec in specs:
        began = time.perf_counter()
        model, cache_record = train_or_load(spec, recipe(spec, tiny=tiny, seed=seed), cache_dir=cache_dir, progress=False)
        data = get_dataset(spec, n_eval, seed=seed + 1)
        row = {"dataset": spec, "n_eval": n_eval, "model": cache_record["cache"],
               "loaded_from_cache": cache_record["loaded_from_cache"],
               **score_variants(level_profile(model, data.x, seed=seed), data.lid.astype(np.float64), seed=seed)}
        row["seconds"] = time.perf_counter() - began
        print(f"[{spec}] best fixed {row['best_fixed']:.3f}; "
              + "; ".join(f"{name} {v['mae']:.3f}" for name, v in row["variants"].items()), flush=True)
        rows.append(row)
    return rows


def _markdown(report: dict[str, Any]) -> str:
    names = list(VARIANTS)
    header = ["data set", "best fixed t0 MAE", *[f"{name} (its t0)" for name in names], "best grid level (its t0)"]
    body = []
    for row in report["datasets"]:
        cells = [f"{v['mae']:.3f}{' ✓' if v['within_0.1_of_best_fixed'] else ''} ({_levels_read(v)})"
                 for v in (row["variants"][name] for name in names)]
        level = row["best_grid_level"]
        body.append([row["dataset"], row["best_fixed"], *cells, f"{level['mae']:.3f} ({level['t0']:.3f})"])
    counts = [sum(row["variants"][name]["within_0.1_of_best_fixed"] for row in report["datasets"]) for name in names]
    body.append(["**within 0.1 (sets)**", f"of {len(report['datasets'])}", *counts, ""])
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
    return "\n".join([
        f"# The calibrated rule's settings on trained models: {report['suite']} suite",
        "",
        *produced_by(report["command"]),
        f"Finished {report['finished_utc']} (UTC); code at commit `{report['git_revision']}`. Versions: {versions}.",
        "",
        "Models: those of `python -m flipd.bench synthetic` with the same suite, budget options and cache. "
        "Each variant is applied to the same FLIPD values and denoising checks (one computation per data set), "
        f"{report['datasets'][0]['n_eval'] if report['datasets'] else 0} held-out points per set. "
        f"`{LIBRARY_VARIANT}` is the library's `t0=\"calibrated\"`. ✓: within 0.1 of FLIPD's MAE at the best "
        f"fixed level of t0 in {list(FIXED_T0)} (the rule target). \"size-weighted\": the mean |calibration| "
        "weighted by each point's predicted-noise size instead of the median. \"band mean\": each point's FLIPD "
        "averaged over every level within the ratio of the best (the first and last of them and their number in "
        f"brackets). `{BAND_VARIANT}` is the library's `t0=\"band\"` (= `t0=\"auto\"`): the band mean, over the "
        "band's first levels only where the points differ in dimension. \"best grid level\": the one level "
        "of the rule's grid with the lowest MAE, found with the true LIDs: the floor of any rule that reads a data set "
        "at one level, with this model.",
        "",
        markdown_table(header, body, 3),
        "",
        *_resampled_section(report, names),
    ])


def _levels_read(variant: dict[str, Any]) -> str:
    """The level a variant read, or the first and last of its band and their number."""
    if "band" in variant:
        return f"{variant['t0']:.3f}–{variant['band']['t0_last']:.3f}, {variant['band']['levels']} levels"
    return f"{variant['t0']:.3f}"


def _resampled_section(report: dict[str, Any], names: list[str]) -> list[str]:
    """The table of how each variant's choice moves under bootstrap resamples of the points."""
    rows = [row for row in report["datasets"] if all("resampled" in row["variants"][name] for name in names)]
    if not rows:
        return []
    body = []
    for row in rows:
        cells = []
        for name in names:
            r = row["variants"][name]["resampled"]
            cells.append(f"{r['same_level_fraction']:.2f}: {r['mae_min']:.3f}–{r['mae_max']:.3f}")
        body.append([row["dataset"], *cells])
    return [
        f"## The level chosen from {RESAMPLES} bootstrap resamples of the points",
        "",
        "Each cell: the fraction of resamples whose level (for the band mean: whose band) is the one chosen from "
        "all the points, then the range of the MAE (over all the points) at the levels the resamples choose.",
        "",
        markdown_table(["data set", *names], body),
        "",
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flipd.bench calibrated_variants",
        description="The calibrated rule with other ratios and another per-level statistic, on a suite's trained models.",
    )
    parser.add_argument("--suite", choices=sorted(SUITES), help="the synthetic suite whose models to use (required "
                        "unless --summarize)")
    parser.add_argument("--summarize", nargs="+", metavar="RECORD", default=None,
                        help="measure nothing: count, over these records (.json) of earlier runs, the sets where each "
                        "variant is within 0.1, with all the points and at the worst and best resample")
    parser.add_argument("--datasets", nargs="+", default=None, metavar="SPEC", help="data sets instead of the whole suite")
    parser.add_argument("--cache-dir", default="cache/models", help="the synthetic benchmark's model cache (default %(default)s)")
    parser.add_argument("--n-eval", type=positive_int, default=1000, help="held-out points per data set (default %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=None, help="as for `flipd.bench synthetic`")
    parser.add_argument("--n-train", type=positive_int, default=None, help="as for `flipd.bench synthetic`")
    parser.add_argument("--widths", type=positive_int, nargs="+", default=None, help="as for `flipd.bench synthetic`")
    parser.add_argument("--low-t-fraction", type=float, default=None, help="as for `flipd.bench synthetic`")
    parser.add_argument("--tiny", action="store_true", help="tiny models and budgets (a smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="training seed; points use seed+1 (default %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="base path of the .md and .json results")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.summarize is not None:
        return _write_summary(parser, args.summarize, Path(args.out), argv)
    if args.suite is None:
        parser.error("--suite is required (or --summarize RECORD ... to combine earlier runs)")
    if args.low_t_fraction is not None and not 0.0 <= args.low_t_fraction < 1.0:
        parser.error(f"--low-t-fraction must be in [0, 1); got {args.low_t_fraction}")
    check_output_folders(parser, {"--out": Path(args.out).parent, "--cache-dir": args.cache_dir})
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    recipe = _with_budget(steps=args.steps, n_train=args.n_train, widths=args.widths, low_t_fraction=args.low_t_fraction)
    specs = list(SUITES[args.suite] if args.datasets is None else args.datasets)
    rows = run_variants(specs, recipe=recipe, cache_dir=args.cache_dir, n_eval=args.n_eval, seed=args.seed,
                        tiny=args.tiny)
    report = {
        "command": "python -m flipd.bench calibrated_variants " + shlex.join(argv),
        "suite": args.suite,
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(Path(__file__).parent),
        "machine": machine_info(),
        "versions": package_versions(BENCH_PACKAGES),
        "seed": args.seed,
        "datasets": rows,
    }
    write_report(Path(args.out), report, _markdown)
    return 0


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per record (one suite's run) and over all of them: for each variant, the number of sets
    within 0.1 of the best fixed level with the level chosen from all the points, at the worst and
    at the best of the resamples, and the mean MAE; JSON-ready rows, the total last."""
    groups = [(record["suite"], record["datasets"]) for record in records]
    groups.append(("all", [row for _, rows in groups for row in rows]))
    out = []
    for name, rows in groups:
        entry: dict[str, Any] = {"suite": name, "sets": len(rows), "variants": {}}
        for variant in VARIANTS:
            values = [row["variants"][variant] for row in rows]
            limits = [row["best_fixed"] + RULE_MARGIN for row in rows]
            entry["variants"][variant] = {
                "within": sum(v["within_0.1_of_best_fixed"] for v in values),
                "within_worst_resample": sum(v["resampled"]["mae_max"] <= limit for v, limit in zip(values, limits)),
                "within_best_resample": sum(v["resampled"]["mae_min"] <= limit for v, limit in zip(values, limits)),
                "mean_mae": float(np.mean([v["mae"] for v in values])),
            }
        entry["mean_best_grid_level_mae"] = float(np.mean([row["best_grid_level"]["mae"] for row in rows]))
        out.append(entry)
    return out


def _write_summary(parser: argparse.ArgumentParser, paths: Sequence[str], out: Path, argv: Sequence[str]) -> int:
    records = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            parser.error(f"--summarize: cannot read {path} as a calibrated_variants record ({error})")
        if not all("resampled" in v and "best_grid_level" in row for row in record.get("datasets", [])
                   for v in row["variants"].values()):
            parser.error(f"--summarize: {path} was written before the resamples and the best grid level were "
                         "recorded; run its command again")
        records.append(record)
    check_output_folders(parser, {"--out": out.parent})
    report = {"command": "python -m flipd.bench calibrated_variants " + shlex.join(argv),
              "records": list(paths), "rows": summarize(records)}
    write_report(out, report, _summary_markdown)
    return 0


def _summary_markdown(report: dict[str, Any]) -> str:
    names = list(VARIANTS)
    header = ["suite (sets)", *names, "best grid level"]
    body = []
    for row in report["rows"]:
        cells = [f"{v['within']} ({v['within_worst_resample']}–{v['within_best_resample']}); {v['mean_mae']:.3f}"
                 for v in (row["variants"][name] for name in names)]
        body.append([f"{row['suite']} ({row['sets']})", *cells, f"{row['mean_best_grid_level_mae']:.3f}"])
    return "\n".join([
        "# The calibrated rule's settings over several suites",
        "",
        *produced_by(report["command"]),
        "Each cell: the sets within 0.1 of FLIPD's MAE at the best fixed level, with the level chosen from all the "
        "points (in brackets: at the worst and at the best of the bootstrap resamples), then the mean MAE over the "
        "suite's sets. Last column: the mean MAE at each set's best grid level (found with the true LIDs).",
        "",
        markdown_table(header, body),
        "",
    ])
