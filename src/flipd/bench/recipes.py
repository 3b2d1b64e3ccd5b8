"""Training recipes under one wall-clock budget, measured against a perfect model.

FLIPD needs a model whose score is accurate at small noise (t0 = 0.05 of the reference VP by
default, down to t0 ≈ 0.01 for the knee and plateau rules). This benchmark trains one model per
recipe (time sampling, learning-rate schedule fitted to the budget or cut off by it, network
width) on affine mixtures with normal latents, whose exact distribution is a Gaussian mixture on
affine subspaces (:meth:`flipd.datasets.ManifoldMixture.as_gaussian_mixture`): a perfect model
with closed-form scores and exact FLIPD. Every recipe gets the same wall-clock budget.

On held-out points (seed + 1), at each noise level t0 of :data:`LEVELS`, it reports

- the denoising error: the noise-space mean squared error per coordinate,
  ``mean((eps_hat − eps)²)``, of the trained model and of the perfect model on the same noisy
  copies (the perfect model's error is the floor: the noise along the data cannot be predicted);
- the MAE of the trained model's FLIPD (exact trace) against the perfect model's exact FLIPD.

Both models work in the trained model's coordinates: the Gaussian mixture is carried through
the same standardisation (``z = (x − shift) / scale``).

    python -m flipd.bench recipes --out benchmarks/results/recipes
    python -m flipd.bench recipes --budget 10 --recipes reference fit --datasets \\
        mixture:affine:D=10:dims=2,4,8:latent=normal --n-train 4000 --out /tmp/recipes   # a quick look
    python -m flipd.bench recipes --report-only --out benchmarks/results/recipes
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analytic import GaussianMixture
from ..datasets import get_dataset, mixture_from_spec
from ..estimator import EstimateWarning, estimate
from ..jobs.train import training_config
from ..models.mlp import MLPUNetConfig
from ..models.spec import NetworkSpec
from ..parameterization import score_coefficients
from ..recipes import mlp_widths
from ..runs.environment import machine_info, package_versions
from ..train import DiffusionModel, train_diffusion
from ._report import (
    BENCH_PACKAGES,
    check_closed_form_mixtures,
    git_revision,
    markdown_table,
    positive_int,
    produced_by,
    rewrite_report,
    write_report,
)

__all__ = ["DATASETS", "LEVELS", "RECIPES", "Recipe", "denoising_errors", "run_recipes", "standardized_mixture"]

#: Affine normal-latent mixtures (closed-form perfect models): D = 10 and D = 100.
DATASETS: tuple[str, ...] = (
    "mixture:affine:D=10:dims=2,4,8:latent=normal",
    "mixture:affine:D=100:dims=10,25,50:latent=normal",
)
#: Noise levels (reference-VP times) at which the models are compared.
LEVELS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
#: Levels FLIPD reads (the default t0 = 0.05 and the rules' range): the summary's columns.
READ_LEVELS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)
#: Widths of every recipe that does not follow the width rule (``flipd train``'s earlier default).
FIXED_WIDTHS = (256, 256, 256)
#: The schedule of a recipe whose steps are not fitted: ``flipd train``'s 4000 steps, stopped by the budget.
UNFITTED_STEPS = 4000


@dataclass(frozen=True)
class Recipe:
    """One way to train: TrainConfig fields, whether the steps are fitted to the budget (else
    :data:`UNFITTED_STEPS` stopped by it), and the widths: ``fixed_widths``, those of
    :func:`flipd.recipes.mlp_widths` (``width_rule``) or :data:`FIXED_WIDTHS`."""

    name: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    fit: bool = True
    width_rule: bool = False
    fixed_widths: tuple[int, ...] | None = None

    def widths(self, dim: int) -> tuple[int, ...]:
        if self.fixed_widths is not None:
            return self.fixed_widths
        return mlp_widths(dim) if self.width_rule else FIXED_WIDTHS


_LOG_SIGMA = {"time_sampling": "log_sigma", "low_t_min": 0.002, "low_t_max": 0.3}

#: The recipes compared (in this order).
RECIPES: tuple[Recipe, ...] = (
    Recipe("reference", "times U(0, 1); 4000 steps stopped by the budget", {"low_t_fraction": 0.0}, fit=False),
    Recipe("low-t", "half of each batch uniform in t < 0.2 (the earlier default); 4000 steps stopped by the budget",
           {"low_t_fraction": 0.5, "low_t_max": 0.2}, fit=False),
    Recipe("low-t fit", "as low-t, the steps fitted to the budget", {"low_t_fraction": 0.5, "low_t_max": 0.2}),
    Recipe("low-t 0.8 fit", "as low-t fit with 80% of each batch emphasised (flipd train's default)",
           {"low_t_fraction": 0.8, "low_t_max": 0.2}),
    Recipe("low-t 0.8 fit 512", "as low-t 0.8 fit, 512 wide", {"low_t_fraction": 0.8, "low_t_max": 0.2},
           fixed_widths=(512, 512, 512)),
    Recipe("low-t 0.8 fit x0", "as low-t 0.8 fit, the network predicting the clean point (prediction 'sample')",
           {"low_t_fraction": 0.8, "low_t_max": 0.2, "prediction": "sample"}),
    Recipe("low-t 0.8 fit v", "as low-t 0.8 fit, the network predicting v (prediction 'v_prediction')",
           {"low_t_fraction": 0.8, "low_t_max": 0.2, "prediction": "v_prediction"}),
    Recipe("log-sigma fit", "half of each batch log-uniform in sigma/psi over t in [0.002, 0.3]; steps fitted",
           {"low_t_fraction": 0.5, **_LOG_SIGMA}),
    Recipe("log-sigma 0.8 fit", "as log-sigma fit with 80% of each batch emphasised", {"low_t_fraction": 0.8, **_LOG_SIGMA}),
    Recipe("log-sigma fit widths", "as log-sigma fit with the widths of flipd.recipes.mlp_widths",
           {"low_t_fraction": 0.5, **_LOG_SIGMA}, width_rule=True),
)


def standardized_mixture(mixture: GaussianMixture, shift: torch.Tensor, scale: torch.Tensor) -> GaussianMixture:
    """The distribution of ``z = (x − shift) / scale`` for x from ``mixture`` (``shift``, ``scale``
    [D] or scalars): again a Gaussian mixture on affine subspaces, each component's covariance
    ``S⁻¹ U diag(v) Uᵀ S⁻¹`` (``S = diag(scale)``) rediagonalised."""
    dim = mixture.dim
    shift = torch.as_tensor(shift, dtype=torch.float64).reshape(-1).expand(dim)
    scale = torch.as_tensor(scale, dtype=torch.float64).reshape(-1).expand(dim)
    means = (mixture.means - shift) / scale
    bases, variances = [], []
    for basis, variance in zip(mixture.bases, mixture.variances):
        factor = basis * variance.sqrt() / scale[:, None]  # [D, d]: S⁻¹ U diag(sqrt v)
        u, singular, _ = torch.linalg.svd(factor, full_matrices=False)
        bases.append(u)
        variances.append(singular**2)
    off = mixture.off_variance / float(scale.pow(2).mean()) if mixture.off_variance else 0.0
    return GaussianMixture(means, bases, variances, off_variance=off, weights=mixture.weights)


def denoising_errors(model: DiffusionModel, perfect: GaussianMixture, z: torch.Tensor, levels: Sequence[float],
                     *, seed: int) -> list[dict[str, float]]:
    """Noise-space MSE per coordinate of ``model`` and of the perfect model at each level.

    ``z`` [N, D] held-out points in the model's coordinates; at reference-VP time t the noisy
    copies are ``y = psi·z + sigma·eps`` (eps drawn from ``seed``, the same for both models);
    each model's noise estimate is ``−sigma·score(y)``. Returns one dict per level:
    ``{"t0", "sigma", "model_mse", "perfect_mse"}``.
    """
    schedule = model.schedule
    generator = torch.Generator().manual_seed(seed)
    out = []
    for level in levels:
        t = torch.full((z.shape[0],), float(level), dtype=torch.float64)
        psi, sigma = schedule.psi(t)[:, None], schedule.sigma(t)[:, None]
        eps = torch.randn(z.shape, generator=generator, dtype=torch.float64)
        y = psi * z + sigma * eps
        with torch.no_grad():
            output = model(y.to(model.shift.dtype), t.to(model.shift.dtype)).to(torch.float64)
        a, b = score_coefficients(model.prediction, schedule, t)
        trained = -sigma * (a[:, None] * output + b[:, None] * y)
        exact = -sigma * perfect.score(y, t, schedule)
        out.append({"t0": float(level), "sigma": float(sigma[0]),
                    "model_mse": float((trained - eps).pow(2).mean()), "perfect_mse": float((exact - eps).pow(2).mean())})
    return out


def _train(recipe: Recipe, x: torch.Tensor, *, budget: float | None, steps: int | None, seed: int) -> DiffusionModel:
    """Train ``recipe`` under ``budget`` seconds, or for exactly ``steps`` (a whole schedule, no budget)."""
    dim = int(x.shape[1])
    if steps is not None:
        config = training_config(steps=steps, max_seconds=None, seed=seed, patience=None, **recipe.options)
    else:
        config = training_config(steps=None if recipe.fit else UNFITTED_STEPS, max_seconds=budget, seed=seed,
                                 **recipe.options)
    spec = NetworkSpec("mlp_unet", MLPUNetConfig(data_dim=dim, widths=recipe.widths(dim)).to_json())
    return train_diffusion(x, network=spec, config=config, progress=False)


def _training_record(model: DiffusionModel) -> dict[str, Any]:
    meta = model.metadata
    config = meta["train_config"]
    last_lr = meta["history"][-1]["lr"] if meta["history"] else None
    budget = meta.get("budget") or {}
    return {
        "prediction": model.prediction,
        "steps_run": meta["steps_run"], "stop_reason": meta["stop_reason"], "seconds": meta["seconds"],
        "cpu_seconds": meta["cpu_seconds"],
        "parameters": meta["parameters"], "final_val_loss": meta["final_val_loss"],
        "last_lr_fraction": None if last_lr is None else last_lr / config["lr"],
        "step_seconds": budget.get("step_seconds"), "chosen_steps": budget.get("chosen_steps"),
    }


def run_recipes(datasets: Sequence[str], recipes: Sequence[Recipe], *, budget: float | None, n_train: int, n_eval: int,
                seed: int, steps: int | None = None) -> list[dict[str, Any]]:
    """Train every recipe on every data set under ``budget`` seconds (or, with ``steps``, for
    exactly that many steps each, which takes the machine's load out of the comparison of time
    samplings and widths) and measure it; one JSON-ready row per (data set, recipe). A recipe
    identical to an earlier one on a data set (same options, steps and widths) reuses its model
    and says so (``same_as``)."""
    rows = []
    for spec in datasets:
        mixture = mixture_from_spec(spec).as_gaussian_mixture()
        train = get_dataset(spec, n_train, seed=seed)
        held = get_dataset(spec, n_eval, seed=seed + 1)
        x = torch.from_numpy(train.x.astype(np.float32))
        dim = int(x.shape[1])
        trained: dict[str, tuple[str, DiffusionModel]] = {}
        for recipe in recipes:
            key = json.dumps([recipe.options, recipe.fit and steps is None, recipe.widths(dim)], sort_keys=True)
            row: dict[str, Any] = {"dataset": spec, "recipe": recipe.name, "description": recipe.description,
                                   "widths": list(recipe.widths(dim)), "budget_seconds": budget, "steps": steps}
            if key in trained:
                row["same_as"], model = trained[key]
            else:
                model = _train(recipe, x, budget=budget, steps=steps, seed=seed)
                trained[key] = (recipe.name, model)
            row["training"] = _training_record(model)
            began = time.perf_counter()
            perfect = standardized_mixture(mixture, model.shift.cpu(), model.scale.cpu())
            z = model.encode(torch.from_numpy(held.x)).to(torch.float64).cpu()
            row["levels"] = denoising_errors(model, perfect, z, LEVELS, seed=seed + 2)
            for level in row["levels"]:
                with warnings.catch_warnings():  # estimates outside [0, D] are what is measured here
                    warnings.simplefilter("ignore", EstimateWarning)
                    lid = estimate(model, torch.from_numpy(held.x.astype(np.float32)), t0=level["t0"], trace="exact",
                                   seed=seed).lid.numpy().astype(np.float64)
                exact = perfect.exact_flipd(z, level["t0"], model.schedule).numpy()
                level["flipd_mae"] = float(np.mean(np.abs(lid - exact)))
                level["perfect_mae_vs_true"] = float(np.mean(np.abs(exact - held.lid)))
                level["model_mae_vs_true"] = float(np.mean(np.abs(lid - held.lid)))
            row["evaluation_seconds"] = time.perf_counter() - began
            row["summary"] = _summary(row["levels"])
            rows.append(row)
            print(f"{spec} {recipe.name}: {row['training']['steps_run']} steps, FLIPD MAE vs perfect "
                  f"{row['summary']['flipd_mae_read']:.3f}", file=sys.stderr, flush=True)
    return rows


def _summary(levels: list[dict[str, float]]) -> dict[str, float]:
    """Means over :data:`READ_LEVELS`: FLIPD MAE against the perfect model, and the denoising
    error in excess of the perfect model's, relative to it."""
    read = [level for level in levels if level["t0"] in READ_LEVELS]
    return {
        "flipd_mae_read": float(np.mean([level["flipd_mae"] for level in read])),
        "excess_mse_read": float(np.mean([level["model_mse"] / level["perfect_mse"] - 1 for level in read])),
    }


def _markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    levels = [level["t0"] for level in rows[0]["levels"]] if rows else []
    summary_header = ["data set", "recipe", "widths", "steps run", "CPU s", "stop", "last LR / peak",
                      f"FLIPD MAE vs perfect (mean t0 ≤ {max(READ_LEVELS)})", "excess denoising error (mean)"]
    summary = [[r["dataset"], r["recipe"] + (f" (= {r['same_as']})" if "same_as" in r else ""),
                ",".join(map(str, r["widths"])), r["training"]["steps_run"], r["training"].get("cpu_seconds"),
                r["training"]["stop_reason"],
                r["training"]["last_lr_fraction"], r["summary"]["flipd_mae_read"], r["summary"]["excess_mse_read"]]
               for r in rows]
    mse_header = ["data set", "recipe", *[f"t0 = {t}" for t in levels]]
    mse = [[r["dataset"], r["recipe"], *[f"{lv['model_mse']:.4f} ({lv['perfect_mse']:.4f})" for lv in r["levels"]]]
           for r in rows]
    flipd = [[r["dataset"], r["recipe"], *[lv["flipd_mae"] for lv in r["levels"]]] for r in rows]
    truth = {}
    for r in rows:
        truth.setdefault(r["dataset"], [r["dataset"], "perfect model vs true LID",
                                        *[lv["perfect_mae_vs_true"] for lv in r["levels"]]])
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
    recipes = {r["recipe"]: r["description"] for r in rows}
    machine = report["machine"]
    return "\n".join([
        "# Training recipes " + ("at equal steps" if report.get("steps") else "under one time budget")
        + ", against a perfect model",
        "",
        *produced_by(report["command"]),
        f"Finished {report['finished_utc']} (UTC); code at commit `{report['git_revision']}`. Versions: {versions}. "
        f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, load average {machine.get('load_average_1_5_15min')} "
        f"at the end (1, 5, 15 min); torch threads {report['threads']}.",
        "",
        f"Each recipe trained {_training_sentence(report)} on {report['n_train']} points "
        f"(seed {report['seed']}), batch 512, peak LR 2e-3, scaling `auto` (scalar). Measured on {report['n_eval']} "
        f"held-out points (seed {report['seed'] + 1}), in the trained model's coordinates, against the data's exact "
        "distribution (a Gaussian mixture on affine subspaces, carried through the same standardisation)."
        + ("" if report.get("steps") else " The step counts depend on the machine and on its load while each recipe "
           "trained."),
        "",
        *[f"- **{name}**: {description}." for name, description in recipes.items()],
        "",
        "## Summary",
        "",
        markdown_table(summary_header, summary, 3),
        "",
        "\"excess denoising error\": model MSE / perfect MSE − 1, averaged over t0 in "
        f"{', '.join(map(str, READ_LEVELS))}; the FLIPD MAE is averaged over the same levels.",
        "",
        "## Denoising error per coordinate: trained model (perfect model)",
        "",
        markdown_table(mse_header, mse, 4),
        "",
        "## FLIPD: MAE of the trained model against the perfect model's exact FLIPD",
        "",
        markdown_table(["data set", "recipe", *[f"t0 = {t}" for t in levels]], [*flipd, *truth.values()], 3),
        "",
        "The last rows per data set: the perfect model's own MAE against the true LID (FLIPD's bias at that level).",
        "",
    ])


def _training_sentence(report: dict[str, Any]) -> str:
    if report.get("steps"):
        return (f"for exactly {report['steps']} steps (a whole warm-up + cosine schedule; no time budget, so the "
                "recipes' time samplings and widths are compared at equal steps whatever the machine's load; the step counts "
                "and budgets named below do not apply)")
    return f"for at most {report['budget_seconds']:g} s of wall clock"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flipd.bench recipes",
        description="Training recipes under one wall-clock budget: denoising error and FLIPD against the perfect "
        "model of affine normal-latent mixtures.",
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), metavar="SPEC",
                        help="affine mixtures with latent=normal (default: %(default)s)")
    parser.add_argument("--recipes", nargs="+", default=[r.name for r in RECIPES], metavar="NAME",
                        help="recipes to train (default: all: %(default)s)")
    parser.add_argument("--budget", type=float, default=60.0, help="wall-clock seconds per recipe (default %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="train every recipe for exactly this many steps instead of under --budget")
    parser.add_argument("--n-train", type=positive_int, default=20_000, help="training points (default %(default)s)")
    parser.add_argument("--n-eval", type=positive_int, default=500, help="held-out points (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="training data and training seed; held-out points seed+1")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--out", default="benchmarks/results/recipes",
                        help="base path of the .md and .json results (default %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the saved .json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        return rewrite_report(out.with_suffix(".json"), out.with_suffix(".md"), _markdown)
    by_name = {recipe.name: recipe for recipe in RECIPES}
    unknown = [name for name in args.recipes if name not in by_name]
    if unknown:
        parser.error(f"unknown recipe(s) {', '.join(map(repr, unknown))}; choose from {', '.join(map(repr, by_name))}")
    if not args.budget > 0:
        parser.error(f"--budget must be a positive number of seconds; got {args.budget}")
    check_closed_form_mixtures(parser, args.datasets)
    torch.set_num_threads(args.threads)
    budget = None if args.steps else args.budget
    rows = run_recipes(args.datasets, [by_name[name] for name in args.recipes], budget=budget,
                       n_train=args.n_train, n_eval=args.n_eval, seed=args.seed, steps=args.steps)
    report = {
        "command": "python -m flipd.bench recipes " + shlex.join(argv),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(Path(__file__).parent), "machine": machine_info(),
        "versions": package_versions(BENCH_PACKAGES), "threads": torch.get_num_threads(), "seed": args.seed,
        "budget_seconds": budget, "steps": args.steps, "n_train": args.n_train, "n_eval": args.n_eval, "rows": rows,
    }
    write_report(out, report, _markdown)
    return 0
