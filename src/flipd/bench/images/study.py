"""The image study's runs: one data set (every model and method, its figures and per-image CSV)
and the whole study (a record per data set, then the combined report)."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...runs.environment import machine_info, package_versions
from ...runs.files import json_default, load_average, write_text
from .._report import BENCH_PACKAGES
from .figures import save_extremes_figure, save_study_figure
from .methods import choose_t0, flipd_over_grid, run_classical, run_nb, spearman_or_none
from .models import eval_indices, load_images, model_input, model_record, train_or_load, untrained_network
from .plan import TRAIN_DEFAULTS, DatasetPlan, StudyPlan
from .report import compile_report, format_rho

__all__ = ["run_dataset", "run_study"]


def run_dataset(
    plan: DatasetPlan,
    *,
    seed: int,
    flipd_batch_size: int,
    out: Path,
    checkpoints: Path | None,
    retrain: bool,
    log=print,
) -> dict[str, Any]:
    """Train the models of one data set, run every method, write its figures and per-image CSV.

    Returns the data set's record (see ``images.json``).
    """
    log(f"[{plan.name}] loading images")
    data = load_images(plan, seed=seed)
    images = data.images
    png = data.png_bytes.astype(np.int64)
    eval_index = eval_indices(len(data), plan.n_eval, seed)
    eval_images = images[torch.from_numpy(eval_index)]
    eval_png = png[eval_index]
    dim = int(images[0].numel())
    record: dict[str, Any] = {
        "dataset": plan.name,
        "source": data.source,
        "image_shape": list(data.image_shape),
        "ambient_dim": dim,
        "n_images": len(data),
        "n_eval": int(len(eval_index)),
        "eval_subset": f"numpy default_rng({seed}).permutation({len(data)})[:{len(eval_index)}]",
        "png_bytes_eval": {"min": int(eval_png.min()), "median": float(np.median(eval_png)),
                           "max": int(eval_png.max())},
        "t0_grid": list(plan.t0_grid),
        "trace": "exact" if plan.n_probes == "exact" else f"hutchinson (Rademacher), {plan.n_probes} probes",
        "models": {},
        "t0_study": {},
        "methods": [],
    }
    per_image: dict[str, np.ndarray] = {}
    headline_candidates = []
    for model_plan in plan.models:
        model, reused = train_or_load(
            model_plan, images, dataset=plan.name, seed=seed, checkpoints=checkpoints, retrain=retrain, log=log,
        )
        record["models"][model_plan.label] = model_record(model, model_plan, reused)
        x_eval = model_input(model_plan.kind, eval_images)
        log(f"  {model_plan.label}: FLIPD on {len(eval_index)} images at t0 in {list(plan.t0_grid)}")
        lid, stderr, seconds = flipd_over_grid(
            model, x_eval, plan.t0_grid, n_probes=plan.n_probes, seed=seed,
            batch_size=flipd_batch_size,
        )
        t0, rule = choose_t0(lid, plan.t0_grid)
        j = list(plan.t0_grid).index(t0)
        correlations = [spearman_or_none(lid[:, i], eval_png) for i in range(len(plan.t0_grid))]
        record["t0_study"][model_plan.label] = {
            "t0": list(plan.t0_grid),
            "spearman": correlations,
            "median_flipd": [float(v) for v in np.median(lid, axis=0)],
            "in_range": [float(v) for v in in_range_fraction(lid, dim)],
            "quantiles": {str(q): [float(v) for v in np.quantile(lid, q / 100, axis=0)] for q in (10, 90)},
            "mean_stderr": [float(v) for v in np.nanmean(stderr, axis=0)] if plan.n_probes not in ("exact", 1) else None,
            "seconds": seconds,
            "chosen_t0": t0,
            "rule": rule,
        }
        for i, t in enumerate(plan.t0_grid):
            per_image[f"flipd_{model_plan.label}_t0={t:g}"] = lid[:, i]
        record["methods"].append({
            "method": "FLIPD", "model": model_plan.label, "t0": t0, "t0_rule": rule, "n_images": int(len(eval_index)),
            "spearman": correlations[j], "seconds": seconds[j],
            "settings": record["trace"],
        })
        headline_candidates.append((model_plan.label, t0, lid[:, j], correlations[j]))
        log(f"  {model_plan.label}: FLIPD Spearman by t0 {[format_rho(c) for c in correlations]}; chosen t0 {t0:g}")
        if plan.untrained_control and model_plan.untrained_control:
            log(f"  {model_plan.label}: FLIPD with the untrained network (control) at t0 {t0:g}")
            untrained = untrained_network(model.network.spec, seed)
            start = time.perf_counter()
            control = flipd_over_grid(
                untrained, model.standardize(x_eval), (t0,), n_probes=plan.n_probes, seed=seed,
                batch_size=flipd_batch_size,
            )[0][:, 0]
            control_seconds = time.perf_counter() - start
            per_image[f"flipd_{model_plan.label}_untrained_t0={t0:g}"] = control
            record["methods"].append({
                "method": "FLIPD", "model": f"{model_plan.label}, untrained", "t0": t0,
                "t0_rule": f"the trained {model_plan.label}'s t0", "n_images": int(len(eval_index)),
                "spearman": spearman_or_none(control, eval_png), "seconds": control_seconds,
                "settings": f"{record['trace']}; control: the same architecture at its random initialisation "
                            f"(torch seed {seed}), no training",
            })

        for method, center, n_requested in (("NB", False, model_plan.nb_images),
                                            ("NB centred", True, model_plan.nb_centered_images)):
            if n_requested <= 0:
                continue
            n_nb = min(n_requested, len(eval_index))
            log(f"  {model_plan.label}: {method} on {n_nb} images (K = {plan.nb_copies_per_dim}·D)")
            nb, nb_seconds, n_copies = run_nb(
                model, x_eval[:n_nb], copies_per_dim=plan.nb_copies_per_dim, seed=seed, center=center,
            )
            nb_column = np.full(len(eval_index), np.nan)
            nb_column[:n_nb] = nb
            per_image[f"nb{'_centred' if center else ''}_{model_plan.label}"] = nb_column
            variant = ("score rows centred before the SVD (not the reference rule); " if center else "")
            record["methods"].append({
                "method": method, "model": model_plan.label, "t0": 0.01, "n_images": n_nb,
                "spearman": spearman_or_none(nb, eval_png[:n_nb]), "seconds": nb_seconds,
                "settings": f"K = {n_copies} noisy copies per image, t = 0.01; {variant}{nb_seconds / n_nb:.1f} s per "
                            f"image; {int(np.sum(nb == dim - 1))} of {n_nb} estimates equal D − 1 = {dim - 1}",
                "at_ambient_minus_one": int(np.sum(nb == dim - 1)),
                "flipd_spearman_same_images": spearman_or_none(lid[:n_nb, j], eval_png[:n_nb]), "flipd_t0": t0,
            })
            log(f"  {model_plan.label}: {method} Spearman {format_rho(record['methods'][-1]['spearman'])} "
                f"(FLIPD on the same images {format_rho(record['methods'][-1]['flipd_spearman_same_images'])})")
        del model

    pool = images.flatten(1).numpy().astype(np.float64)
    queries = pool[eval_index]
    for method, k in (("ess", plan.ess_k), ("lpca", plan.lpca_k)):
        log(f"  {method}: on {len(eval_index)} images, k = {k}, neighbours among {len(pool)}")
        values, seconds, k_used = run_classical(method, queries, pool, k)
        per_image[method] = values
        finite = np.isfinite(values)
        record["methods"].append({
            "method": "ESS" if method == "ess" else "lPCA", "model": None, "t0": None,
            "n_images": int(finite.sum()), "spearman": spearman_or_none(values[finite], eval_png[finite]),
            "seconds": seconds,
            "settings": f"scikit-dimension {'ESS' if method == 'ess' else 'lPCA (FO)'}, k = {k_used} "
                        f"nearest neighbours among all {len(pool)} images, pixel space",
        })

    record["default_level"] = _default_level(record, plan)
    # Headline: the UNet when there is one (the paper's image architecture), else the first model.
    kind, t0, lid, correlation = next((c for c in headline_candidates if c[0] == "unet"), headline_candidates[0])
    record["headline"] = {"method": "FLIPD", "model": kind, "t0": t0, "spearman": correlation}
    pixels = data.to_uint8()[eval_index]
    extremes = save_extremes_figure(
        pixels, lid, eval_png, out / f"images_{plan.name}_extremes.png",
        title=f"{plan.name}: FLIPD ({kind}, t0={t0:g}), {len(eval_index)} images",
    )
    study = save_study_figure(record, lid, eval_png, out / f"images_{plan.name}_study.png")
    record["figures"] = [extremes.name, study.name]
    per_image_path = out / f"images_{plan.name}_per_image.csv"
    _write_per_image(per_image_path, [data.names[i] for i in eval_index], eval_png, per_image)
    record["per_image_csv"] = per_image_path.name
    return record


def in_range_fraction(lid: np.ndarray, dim: int) -> np.ndarray:
    """Fraction of images whose FLIPD lies in [0, D], per column of ``lid`` [N, T]."""
    lid = np.asarray(lid, dtype=np.float64)
    return np.mean((lid >= 0) & (lid <= dim), axis=0)


def _default_level(record: dict[str, Any], plan: DatasetPlan) -> dict[str, Any] | None:
    """Each model's FLIPD at flipd's default noise level (t0 = 0.05 of the reference VP) when the
    grid holds it: Spearman with PNG size and the fraction of images with FLIPD in [0, D]."""
    from flipd.noise import DEFAULT_REFERENCE_T0

    if DEFAULT_REFERENCE_T0 not in plan.t0_grid:
        return None
    j = list(plan.t0_grid).index(DEFAULT_REFERENCE_T0)
    return {"t0": DEFAULT_REFERENCE_T0, "models": {
        label: {"spearman": study["spearman"][j], "in_range": study["in_range"][j], "median_flipd": study["median_flipd"][j]}
        for label, study in record["t0_study"].items()
    }}


def _write_per_image(path: Path, names: list[str], png: np.ndarray, columns: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "png_bytes", *columns])
        for i, name in enumerate(names):
            writer.writerow([name, int(png[i]), *(_fmt(columns[c][i]) for c in columns)])


def _fmt(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.4g}"


#: Packages whose versions the study records: the benchmarks' set plus what the study uses.
STUDY_PACKAGES: tuple[str, ...] = (*BENCH_PACKAGES, "diffusers", "matplotlib", "pillow")


def _environment(threads: int) -> dict[str, Any]:
    """The machine, threads, load and versions recorded with a data set (from
    :mod:`flipd.runs.environment`); ``machine`` is the one line the report prints."""
    machine = machine_info()
    accelerator = f"GPU {machine['gpu']}" if machine["gpu"] else "no GPU"
    return {
        "machine": f"{machine['platform']}, {machine['cores']} CPU cores, {accelerator}",
        "processor": machine["cpu"],
        "torch_threads": threads,
        "load_average_at_start": load_average(),
        "versions": package_versions(STUDY_PACKAGES),
    }


def run_study(
    plan: StudyPlan,
    *,
    out: Path,
    checkpoints: Path | None,
    retrain: bool = False,
    command: str = "",
    preset: str = "",
    log=print,
) -> list[dict[str, Any]]:
    """Run every data set of ``plan``, then rebuild the combined report in ``out``.

    Each data set writes ``images_<name>.json`` (its record, with the command, machine and
    plan) next to its figures and per-image CSV; :func:`compile_report` then combines every
    such record in ``out`` into ``images.{md,json,csv}``. Data sets can thus run in separate
    processes (e.g. in parallel) and share one report.
    """
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for dataset in plan.datasets:
        environment = _environment(torch.get_num_threads())
        started = time.perf_counter()
        record = run_dataset(
            dataset, seed=plan.seed, flipd_batch_size=plan.flipd_batch_size, out=out,
            checkpoints=checkpoints, retrain=retrain, log=log,
        )
        environment["load_average_at_end"] = load_average()
        record = {
            "command": command, "preset": preset, "seed": plan.seed, "environment": environment,
            "seconds": time.perf_counter() - started,
            "plan": {**asdict(dataset), "flipd_batch_size": plan.flipd_batch_size, "train_defaults": TRAIN_DEFAULTS},
            **record,
        }
        path = out / f"images_{dataset.name}.json"
        write_text(path, json.dumps(record, indent=2, default=json_default) + "\n")
        log(f"[{dataset.name}] done in {record['seconds']:.0f} s; wrote {path}")
        records.append(record)
    compile_report(out, log=log)
    return records
