"""FLIPD with a perfect model on benchmark data sets: the estimator's own error at each noise level.

The synthetic benchmark (``python -m flipd.bench synthetic --suite toy``) measures FLIPD with a
trained network, so its error mixes two things: the network's score error and the bias of FLIPD
itself at the chosen t0 (smoothing blurs edges, curvature and nearby components). This benchmark
measures the second alone. Each toy distribution is written as a quadrature rule over its own
parameters (disk radius and angle, stick position, torus angles, Swiss-roll coordinates): atoms
at midpoint nodes with the distribution's weights. Smoothing that weighted measure exactly
(:class:`flipd.analytic.SmoothedEmpirical`, whose FLIPD has a closed form) gives the data
distribution's own smoothed score up to quadrature error, evaluated on the benchmark's 4096
evaluation points (seed 1). Node spacing is sigma(t0)/psi(t0) divided by each ``--refinements``
value; agreement between refinements shows the quadrature has converged.

Affine manifold mixtures with normal latents (e.g. ``mixture:affine:D=10:dims=5:latent=normal``)
are exactly Gaussian mixtures on affine subspaces, whose smoothed scores and FLIPD have a closed
form (:meth:`flipd.datasets.ManifoldMixture.as_gaussian_mixture`): no quadrature is needed.

Usage (from the repository root; ``flipd bench oracle`` is the same):
    python -m flipd.bench oracle            # writes benchmarks/results/oracle_toy.{md,json}
    python -m flipd.bench oracle --t0 0.05 --refinements 1 --out /tmp/oracle
    python -m flipd.bench oracle --datasets mixture:affine:D=10:dims=5:latent=normal \\
        mixture:affine:D=10:dims=2,4,8:latent=normal --t0 0.01 0.02 0.05 --out benchmarks/results/oracle_small
    python -m flipd.bench oracle --report-only --out benchmarks/results/oracle_small   # .md from .json

The comparison with trained models reads the committed synthetic results
(``benchmarks/results/synthetic_toy.csv`` and ``synthetic_small.csv``, relative to the working directory).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flipd.analytic import SmoothedEmpirical
from flipd.bench._report import BENCH_PACKAGES, git_revision, markdown_table, rewrite_report
from flipd.datasets import get_dataset, mixture_from_spec
from flipd.datasets.synthetic import (
    DOUGHNUT_MAJOR_RADIUS,
    DOUGHNUT_MINOR_RADIUS,
    LOLLIPOP_DISK_CENTRE,
    LOLLIPOP_DISK_RADIUS,
    LOLLIPOP_DOT,
    LOLLIPOP_STICK_END,
    LOLLIPOP_STICK_START,
)
from flipd.runs.environment import machine_info, package_versions
from flipd.runs.files import write_text
from flipd.schedules import VP

#: Where the committed results live, relative to the repository root (the working directory).
RESULTS = Path("benchmarks/results")
DATASETS = ("lollipop", "doughnut", "swiss_roll")


#: scikit-learn's make_swiss_roll: t = 1.5·pi·(1 + 2U) along the roll, height 21·U.
SWISS_T_RANGE = (1.5 * np.pi, 4.5 * np.pi)
SWISS_HEIGHT = 21.0


def midpoints(low: float, high: float, count: int) -> np.ndarray:
    return low + (high - low) * (np.arange(count) + 0.5) / count


def grid(*axes: np.ndarray) -> list[np.ndarray]:
    return [axis.ravel() for axis in np.meshgrid(*axes, indexing="ij")]


def quadrature(name: str, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Atoms [M, D] and weights [M] of a midpoint rule for toy data set ``name``.

    Nodes are at most ``spacing`` apart (in data units) along every parameter direction; the
    weights are each node's probability under the data distribution (method notes §8).
    """
    def count(length: float) -> int:
        return max(2, int(np.ceil(length / spacing)))

    if name == "lollipop":
        # Disk, uniform in area: radius density 2r on [0, R], angle uniform; weight 4/7.
        radius = midpoints(0.0, LOLLIPOP_DISK_RADIUS, count(LOLLIPOP_DISK_RADIUS))
        angle = midpoints(0.0, 2 * np.pi, count(2 * np.pi * LOLLIPOP_DISK_RADIUS))
        r, a = grid(radius, angle)
        disk = LOLLIPOP_DISK_CENTRE + r[:, None] * np.stack([np.cos(a), np.sin(a)], 1)
        disk_weight = (4 / 7) * r / r.sum()
        # Stick, uniform along the segment; weight 2/7. Dot: weight 1/7.
        length = float(np.linalg.norm(LOLLIPOP_STICK_END - LOLLIPOP_STICK_START))
        s = midpoints(0.0, 1.0, count(length))[:, None]
        stick = LOLLIPOP_STICK_START + s * (LOLLIPOP_STICK_END - LOLLIPOP_STICK_START)
        atoms = np.concatenate([disk, stick, LOLLIPOP_DOT[None]])
        weights = np.concatenate([disk_weight, np.full(len(stick), (2 / 7) / len(stick)), [1 / 7]])
        return atoms, weights
    if name == "doughnut":
        big, small = DOUGHNUT_MAJOR_RADIUS, DOUGHNUT_MINOR_RADIUS
        # Torus with both angles uniform (not uniform in area); weight 1/2. Periodic angles.
        around = midpoints(0.0, 2 * np.pi, count(2 * np.pi * (big + small)))
        tube = midpoints(0.0, 2 * np.pi, count(2 * np.pi * small))
        a, p = grid(around, tube)
        ring = big + small * np.cos(p)
        torus = np.stack([ring * np.cos(a), ring * np.sin(a), small * np.sin(p)], 1)
        # Core circle, angle uniform; weight 1/2.
        c = midpoints(0.0, 2 * np.pi, count(2 * np.pi * big))
        circle = np.stack([big * np.cos(c), big * np.sin(c), np.zeros_like(c)], 1)
        weights = np.concatenate([np.full(len(torus), 0.5 / len(torus)), np.full(len(circle), 0.5 / len(circle))])
        return np.concatenate([torus, circle]), weights
    if name == "swiss_roll":
        low, high = SWISS_T_RANGE
        # t is uniform (not arc length); the roll moves |d(t cos t, t sin t)/dt| <= sqrt(1 + t²) per unit t.
        t = midpoints(low, high, count((high - low) * np.sqrt(1 + high**2)))
        height = midpoints(0.0, SWISS_HEIGHT, count(SWISS_HEIGHT))
        tt, hh = grid(t, height)
        atoms = np.stack([tt * np.cos(tt), hh, tt * np.sin(tt)], 1)
        return atoms, np.full(len(atoms), 1.0 / len(atoms))
    raise ValueError(f"No quadrature rule for {name!r}; choose from {', '.join(DATASETS)}.")


def per_component_mae(estimate: np.ndarray, truth: np.ndarray, component: np.ndarray) -> dict[str, float]:
    return {
        f"{k} (LID {int(truth[component == k][0])})": float(np.abs(estimate - truth)[component == k].mean())
        for k in np.unique(component)
    }


def committed_benchmark(*paths: Path) -> dict[tuple[str, str], float]:
    """MAE per (data set, method) from committed synthetic benchmark CSVs (those that exist)."""
    maes = {}
    for path in paths:
        if path.is_file():
            with path.open() as handle:
                maes.update({(row["dataset"], row["method"]): float(row["mae"]) for row in csv.DictReader(handle)})
    return maes


def perfect_flipd(name: str, x: np.ndarray, t0: float, refinement: int | None, schedule: VP) -> tuple[np.ndarray, int | None]:
    """Exact FLIPD at t0 of data set ``name``'s own smoothed distribution, and its atom count.

    Toy data sets use a quadrature rule with node spacing sigma/psi ÷ ``refinement``; affine
    mixtures with normal latents their closed form (``refinement`` is then ignored, no atoms).
    """
    points = torch.from_numpy(x)
    if name.startswith("mixture"):
        return mixture_from_spec(name).as_gaussian_mixture().exact_flipd(points, t0, schedule).numpy(), None
    atoms, weights = quadrature(name, float(schedule.sigma(t0)) / float(schedule.psi(t0)) / refinement)
    return SmoothedEmpirical(atoms, weights).exact_flipd(points, t0, schedule).numpy(), len(atoms)


def _unique(values) -> list:
    """``values`` without repeats, in the order they first appear."""
    return list(dict.fromkeys(values))


def render_markdown(result: dict[str, Any], *, results: Path = RESULTS) -> str:
    """The markdown report of an oracle record ``result`` (as in ``oracle_toy.json``).

    The data sets, noise levels and refinements are read from ``result["rows"]`` (in the order
    they ran; repeats once); the trained-model columns come from the synthetic benchmark's CSVs
    in ``results`` (those that exist).
    """
    rows = result["rows"]
    schedule = VP()
    benchmark = committed_benchmark(results / "synthetic_toy.csv", results / "synthetic_small.csv")
    datasets = _unique(row["dataset"] for row in rows)
    t0s = _unique(row["t0"] for row in rows)
    refinements = _unique(row["refinement"] for row in rows if row["atoms"] is not None)
    # Closed forms have no refinements: with no toy data set, one MAE column says it all.
    quadratures = bool(refinements)
    finest = max(refinements) if quadratures else None

    def finest_row(name: str, t0: float) -> dict:
        return [r for r in rows if r["dataset"] == name and r["t0"] == t0][-1]

    def mae(name: str, t0: float, refinement: int | None) -> float:
        row = finest_row(name, t0)
        if row["atoms"] is None:
            return row["mae"]
        return next(r["mae"] for r in rows if r["dataset"] == name and r["t0"] == t0 and r["refinement"] == refinement)

    refinements_shown = refinements if quadratures else [finest]
    lines = [
        "# FLIPD with a perfect model",
        "",
        f"Command: `{result['command'].strip()}` ({result['seconds'] / 60:.1f} min; commit `{result['commit']}`).",
        "",
        "Exact FLIPD of each data set's own smoothed distribution on the 4096 evaluation points of the "
        "synthetic benchmark: toy data sets written as a midpoint quadrature rule over their parameters "
        "(`flipd.analytic.SmoothedEmpirical` with weighted atoms), affine mixtures with normal latents "
        "in closed form (they are Gaussian mixtures on affine subspaces). No network is involved: this "
        "is the error FLIPD has with a perfect score model at that noise level (reference VP times).",
        "",
        "## MAE by noise level (node spacing sigma/psi ÷ refinement; closed forms need none)",
        "",
        markdown_table(
            ["data set", "t0", "sigma", *(f"MAE, refinement {k}" if quadratures else "MAE" for k in refinements_shown),
             "atoms (finest)"],
            [
                [name, t0, float(schedule.sigma(t0)), *(mae(name, t0, k) for k in refinements_shown),
                 finest_row(name, t0)["atoms"] or "closed form"]
                for name in datasets for t0 in t0s
            ],
        ),
        "",
        "## Per component (finest refinement)",
        "",
        markdown_table(
            ["data set", "t0", "component (LID): MAE"],
            [
                [name, t0, "; ".join(f"{k}: {v:.3f}" for k, v in finest_row(name, t0)["mae_per_component"].items())]
                for name in datasets for t0 in t0s
            ],
        ),
    ]
    compared = [name for name in datasets if (name, "flipd") in benchmark]
    if compared:
        lines += [
            "",
            "## Against the committed synthetic benchmark (`benchmarks/results/synthetic_toy.csv`, `synthetic_small.csv`)",
            "",
            "The trained-model columns are the committed results (FLIPD at t0 = 0.05).",
            "",
            markdown_table(
                ["data set", *(f"FLIPD, perfect model, t0 = {t0}" for t0 in t0s), "FLIPD, trained model",
                 "FPRegress", "NB"],
                [
                    [name, *(mae(name, t0, finest) for t0 in t0s), benchmark.get((name, "flipd")),
                     benchmark.get((name, "fpregress")), benchmark.get((name, "nb"))]
                    for name in compared
                ],
            ),
        ]
    return "\n".join(lines) + "\n"


def run_oracle(
    datasets: Sequence[str], t0s: Sequence[float], refinements: Sequence[int], *, n_eval: int = 4096
) -> list[dict[str, Any]]:
    """Exact FLIPD of each data set at each t0 (and refinement, for quadrature rules) on the
    synthetic benchmark's ``n_eval`` evaluation points (seed 1); one row each, printed as it is done."""
    schedule = VP()
    rows = []
    for name in datasets:
        data = get_dataset(name, n_eval, seed=1)  # the benchmark's evaluation points
        truth = data.lid.astype(np.float64)
        # A closed form needs no refinement: one row per t0, listed under every refinement.
        refinements_run = list(refinements)[-1:] if name.startswith("mixture") else refinements
        for t0 in t0s:
            for refinement in refinements_run:
                start = time.perf_counter()
                estimate, atoms = perfect_flipd(name, data.x, t0, refinement, schedule)
                row = {
                    "dataset": name, "t0": t0, "sigma": float(schedule.sigma(t0)),
                    "refinement": refinement if atoms is not None else "closed form", "atoms": atoms,
                    "mae": float(np.abs(estimate - truth).mean()),
                    "mae_per_component": per_component_mae(estimate, truth, data.component),
                    "seconds": time.perf_counter() - start,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flipd.bench oracle``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m flipd.bench oracle", description=__doc__.split("\n")[0])
    parser.add_argument("--refinements", type=int, nargs="+", default=[1, 2],
                        help="node spacing is sigma/psi divided by each of these (agreement shows convergence)")
    parser.add_argument("--t0", type=float, nargs="+", default=[0.02, 0.05])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS),
                        help="toy data sets, or affine mixture specs with latent=normal")
    parser.add_argument("--n-eval", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "oracle_toy",
                        help="results path without suffix: writes OUT.json and OUT.md (default %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="compute nothing: rewrite OUT.md from OUT.json")
    args = parser.parse_args(argv)
    json_path, markdown_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    if args.report_only:
        return rewrite_report(json_path, markdown_path, render_markdown)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    rows = run_oracle(args.datasets, args.t0, args.refinements, n_eval=args.n_eval)
    result = {
        "command": "python -m flipd.bench oracle " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(), "versions": package_versions(BENCH_PACKAGES),
        "commit": git_revision(Path(__file__).parent),
        "seconds": time.perf_counter() - began, "rows": rows,
    }
    write_text(json_path, json.dumps(result, indent=2) + "\n")
    write_text(markdown_path, render_markdown(result))
    print(f"wrote {json_path} and {markdown_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
