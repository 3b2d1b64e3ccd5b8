"""The automatic noise-level rules with a perfect model: knee, plateau, calibrated and fixed t0.

Affine mixtures with normal latents are Gaussian mixtures on affine subspaces, whose smoothed
scores are known in closed form (:meth:`flipd.datasets.ManifoldMixture.as_gaussian_mixture`):
a perfect diffusion model. On held-out points of each data set this benchmark computes FLIPD
with the knee rule (``t0="knee"``), the plateau rule (``t0="plateau"``), the calibrated rule
(``t0="calibrated"``) and the fixed levels
t0 in {0.01, 0.02, 0.05, 0.1}, and writes the MAE of each, the best fixed level, whether each
rule is within 0.1 of it, where the rules chose, and how often the knee sits on the first level
of its window.

With a perfect model every error is the rule's (or FLIPD's own bias at that noise level), not
the network's: this is the bound the trained-model suites are measured against.

Curved data sets (``--curved``, e.g. the helix of the curved suite) have no closed form; their
perfect model is the smoothed empirical measure of many atoms drawn from the manifold
(:class:`flipd.analytic.SmoothedEmpirical`, exact FLIPD in closed form), faithful at noise levels
well above the atoms' spacing. The rules are applied to its exact FLIPD curves (the same
:func:`flipd.knee` and :func:`flipd.plateau` that ``t0="knee"`` and ``t0="plateau"`` use, the
plateau on the levels where :mod:`flipd.reliability` passes the smoothed measure's denoiser).

    python -m flipd.bench rules --out benchmarks/results/rules_perfect
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analytic import SmoothedEmpirical
from ..datasets import get_dataset, mixture_from_spec
from ..estimator import estimate
from ..knee import knee
from ..noise import knee_grid, plateau_grid
from ..calibrated import calibrated_level
from ..plateau import plateau
from ..reliability import denoising_calibration, reliable_levels
from ..schedules import VP
from ..runs.environment import machine_info, package_versions
from ._report import BENCH_PACKAGES, RULE_MARGIN, check_closed_form_mixtures, git_revision, markdown_table, write_report

__all__ = ["CURVED_DATASETS", "DATASETS", "FIXED_T0", "run_curved", "run_rules"]

#: Affine normal-latent mixtures: the small suite's two, and two of D = 100.
DATASETS: tuple[str, ...] = (
    "mixture:affine:D=10:dims=5:latent=normal",
    "mixture:affine:D=10:dims=2,4,8:latent=normal",
    "mixture:affine:D=100:dims=10,25,50:latent=normal",
    "mixture:affine:D=100:dims=10,30,90:latent=normal",
)
#: Curved sets with a Monte-Carlo perfect model (a 1-dimensional curve: atoms far denser than
#: the noise at every level of the grids).
CURVED_DATASETS: tuple[str, ...] = ("helix:D=13:turns=20:tube=0.1",)
#: The fixed levels the rules are compared with (reference VP times).
FIXED_T0: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)


def _mae(estimates: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(estimates - true)))


def run_rules(datasets: Sequence[str], *, n_points: int, seed: int) -> list[dict[str, Any]]:
    """MAE of the knee rule, the plateau rule and each fixed t0 with the closed-form model of
    every affine normal-latent mixture, on ``n_points`` points drawn with seed ``seed + 1``; one
    JSON-ready row per data set."""
    schedule = VP()
    rows = []
    for spec in datasets:
        model = mixture_from_spec(spec).as_gaussian_mixture().as_model(schedule, "score")
        data = get_dataset(spec, n_points, seed=seed + 1)
        x, true = torch.from_numpy(data.x.astype(np.float64)), data.lid.astype(np.float64)
        began = time.perf_counter()
        fixed = {str(t0): estimate(model, x, t0=t0, prediction="score", seed=seed).lid.numpy() for t0 in FIXED_T0}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            knee_result, plateau_result, calibrated_result = (estimate(model, x, t0=rule, prediction="score", seed=seed)
                                                              for rule in ("knee", "plateau", "calibrated"))
        row = _rule_row(spec, true, fixed, knee_result, plateau_result)
        row["calibrated"] = _calibrated_entry(calibrated_result.lid.numpy(), float(calibrated_result.t0[0]), true, row)
        row["perfect_model"] = "closed form (Gaussian mixture on affine subspaces)"
        row["warnings"] = sorted({str(w.message)[:200] for w in caught})
        row["seconds"] = time.perf_counter() - began
        rows.append(row)
    return rows


def _report(rows: list[dict[str, Any]], *, seed: int, command: str) -> dict[str, Any]:
    return {
        "command": command,
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(Path(__file__).parent),
        "machine": machine_info(),
        "versions": package_versions(BENCH_PACKAGES),
        "seed": seed,
        "datasets": rows,
    }


def _rule_row(spec: str, true: np.ndarray, fixed: dict[str, np.ndarray], knee_result, plateau_result) -> dict[str, Any]:
    """One data set's row: MAE per fixed level and per rule, and what the rules chose."""
    row: dict[str, Any] = {"dataset": spec, "n_points": int(true.size),
                           "fixed": {t0: _mae(lid, true) for t0, lid in fixed.items()}}
    first = float(knee_grid(VP())[0])
    for rule, result in (("knee", knee_result), ("plateau", plateau_result)):
        t0 = result.t0.numpy()
        chosen = t0[np.isfinite(t0)]
        row[rule] = {"mae": _mae(result.lid.numpy(), true), "not_found": int((~result.found.numpy()).sum()),
                     "median_t0": float(np.median(chosen)) if chosen.size else None}
    row["knee"]["at_first_level_fraction"] = float(np.mean(np.isclose(knee_result.t0.numpy(), first)))
    best = min(row["fixed"], key=row["fixed"].get)
    row["best_fixed_t0"], row["best_fixed_mae"] = float(best), row["fixed"][best]
    for rule in ("knee", "plateau"):
        row[rule]["within_0.1_of_best_fixed"] = row[rule]["mae"] <= row["best_fixed_mae"] + RULE_MARGIN
    return row


def _calibrated_entry(lid: np.ndarray, t0: float, true: np.ndarray, row: dict[str, Any]) -> dict[str, Any]:
    """The calibrated rule's entry of a row: its MAE, the one level it chose, and whether it is
    within 0.1 of the row's best fixed level."""
    mae = _mae(lid, true)
    return {"mae": mae, "t0": t0, "within_0.1_of_best_fixed": mae <= row["best_fixed_mae"] + RULE_MARGIN}


def run_curved(datasets: Sequence[str], *, n_points: int, n_atoms: int, seed: int) -> list[dict[str, Any]]:
    """The rules with the smoothed empirical measure of ``n_atoms`` atoms (seed ``seed + 2``) of
    each curved data set as the perfect model, on ``n_points`` points (seed ``seed + 1``)."""
    schedule = VP()
    rows = []
    for spec in datasets:
        data = get_dataset(spec, n_points, seed=seed + 1)
        measure = SmoothedEmpirical(get_dataset(spec, n_atoms, seed=seed + 2).x)
        x, true = torch.from_numpy(data.x.astype(np.float64)), data.lid.astype(np.float64)
        began = time.perf_counter()

        def curve(times: torch.Tensor) -> torch.Tensor:
            return torch.stack([measure.exact_flipd(x, float(t), schedule) for t in times], dim=1)

        fixed = {str(t0): measure.exact_flipd(x, t0, schedule).numpy() for t0 in FIXED_T0}
        knee_levels, plateau_levels = knee_grid(schedule), plateau_grid(schedule)
        knee_result = knee(curve(knee_levels), knee_levels, ambient_dim=data.ambient_dim)
        calibration = denoising_calibration(measure.as_model(schedule), x, plateau_levels, schedule=schedule,
                                            prediction="score", seed=seed, indices=torch.arange(n_points))
        plateau_curve = curve(plateau_levels)
        plateau_result = plateau(plateau_curve, plateau_levels, reliable=reliable_levels(calibration))
        row = _rule_row(data.name, true, fixed, knee_result, plateau_result)
        level = calibrated_level(calibration, plateau_levels)
        row["calibrated"] = _calibrated_entry(plateau_curve[:, level.index].numpy(), level.t0, true, row)
        row["perfect_model"] = f"smoothed empirical measure of {n_atoms} atoms (seed {seed + 2})"
        row["seconds"] = time.perf_counter() - began
        rows.append(row)
    return rows


def _markdown(report: dict[str, Any]) -> str:
    levels = [str(t0) for t0 in FIXED_T0]
    header = ["data set", *[f"t0 = {t0}" for t0 in levels], "knee", "plateau", "calibrated", "knee within 0.1",
              "plateau within 0.1", "calibrated within 0.1", "knee at first level", "knee median t0",
              "plateau median t0", "calibrated t0", "no plateau"]
    body = [[r["dataset"], *[r["fixed"][t0] for t0 in levels], r["knee"]["mae"], r["plateau"]["mae"],
             r["calibrated"]["mae"], r["knee"]["within_0.1_of_best_fixed"], r["plateau"]["within_0.1_of_best_fixed"],
             r["calibrated"]["within_0.1_of_best_fixed"], r["knee"]["at_first_level_fraction"], r["knee"]["median_t0"],
             r["plateau"]["median_t0"], r["calibrated"]["t0"], r["plateau"]["not_found"]] for r in report["datasets"]]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
    return "\n".join([
        "# Automatic noise level with a perfect model",
        "",
        "Produced by:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Finished {report['finished_utc']} (UTC); code at commit `{report['git_revision']}`. Versions: {versions}.",
        "",
        "The model of each affine normal-latent mixture is its closed-form score (a Gaussian mixture on affine "
        "subspaces; `ManifoldMixture.as_gaussian_mixture`); that of a curved set the smoothed empirical measure "
        "of many atoms drawn from it (`flipd.analytic.SmoothedEmpirical`, exact FLIPD), faithful where the noise "
        "is well above the atoms' spacing. Every error below is FLIPD's own bias at the chosen noise level, not "
        f"a network's. {report['datasets'][0]['n_points'] if report['datasets'] else 0} held-out points per "
        f"data set (seed {report['seed'] + 1}), exact trace, reference VP schedule.",
        "",
        *[f"- {r['dataset']}: {r['perfect_model']}." for r in report["datasets"]],
        "",
        "## Mean absolute error",
        "",
        markdown_table(header, body, 3),
        "",
        "\"within 0.1\": the rule's MAE is at most the best fixed level's + 0.1. \"knee at first level\": the "
        "fraction of points whose knee is the first level of the knee rule's window (t0 ≈ 0.061). \"no plateau\": "
        "points the plateau rule flagged. \"calibrated t0\": the one level the calibrated rule chose for the data set.",
        "",
    ])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flipd.bench rules",
        description="The knee, plateau and calibrated rules against fixed t0 with the perfect (closed-form) model of affine "
        "normal-latent mixtures.",
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), metavar="SPEC",
                        help="affine mixtures with latent=normal (default: %(default)s)")
    parser.add_argument("--curved", nargs="*", default=list(CURVED_DATASETS), metavar="SPEC",
                        help="curved sets with a smoothed-empirical perfect model (default: %(default)s)")
    parser.add_argument("--atoms", type=int, default=50_000,
                        help="atoms of each curved set's smoothed empirical measure (default %(default)s)")
    parser.add_argument("--n-points", type=int, default=512, help="held-out points per data set (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="points use seed+1 (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/results/rules_perfect",
                        help="base path of the .md and .json results (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n_points < 1 or args.atoms < 1:
        parser.error(f"--n-points and --atoms must be positive integers; got {args.n_points} and {args.atoms}")
    check_closed_form_mixtures(parser, args.datasets)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = run_rules(args.datasets, n_points=args.n_points, seed=args.seed)
    rows += run_curved(args.curved, n_points=args.n_points, n_atoms=args.atoms, seed=args.seed)
    report = _report(rows, seed=args.seed, command="python -m flipd.bench rules " + shlex.join(argv))
    write_report(Path(args.out), report, _markdown)
    return 0
