"""The demo job: small models on two data sets with known LID, estimates against the truth."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import plots
from ..datasets.sources import load_points, with_subset
from ..models.checkpoint import checkpoint_config_path
from .inputs import load_model
from ..noise import curve_times, default_noise_level
from ..runs.chunks import estimate_in_chunks, remove_run_directory
from ..runs.environment import DEMO_DEFAULT_OUT
from ..runs.files import fingerprint_array, write_json, write_table
from .curve import compute_curves
from .estimate import EstimateSettings, estimate_table_columns, flipd_chunks
from .records import GroupSummary, run_record, summarize_by_component, summary_record
from .train import train_model

__all__ = ["DEMO_DATASETS", "DEMO_DEFAULT_OUT", "DemoEntry", "DemoReport", "run_demo"]


#: The demo's data sets: low-dimensional, with several components of known LID each.
DEMO_DATASETS: tuple[str, ...] = ("lollipop", "doughnut")


#: Points drawn for the demo's FLIPD-curve figure, per data set.
DEMO_CURVE_POINTS = 60


#: The demo's network and batch: small enough to train in about a minute per data set on 2 cores.
DEMO_WIDTHS = (128, 128, 128)


DEMO_BATCH_SIZE = 256


#: One scale for all coordinates keeps the geometry (a round torus stays round).
DEMO_STANDARDIZE = "scalar"


ProgressFactory = Callable[[str, int], Any]


@dataclass
class DemoEntry:
    """The demo's outcome on one data set."""

    name: str
    setting: str
    groups: list[GroupSummary]
    mae: float
    table: Path
    figures: list[Path]
    train_seconds: float | None
    estimate_seconds: float


@dataclass
class DemoReport:
    """The demo's outcome on every data set."""

    datasets: list[DemoEntry]
    directory: Path


def _null_progress(description: str, total: int):
    return contextlib.nullcontext(lambda _: None)


def run_demo(
    out: str | os.PathLike,
    *,
    steps: int = 4000,
    n_train: int = 20_000,
    n_eval: int = 2000,
    seed: int = 0,
    retrain: bool = False,
    progress: bool = True,
    progress_bar: ProgressFactory | None = None,
    announce: Callable[[str], None] = lambda message: None,
    datasets: tuple[str, ...] = DEMO_DATASETS,
) -> DemoReport:
    """Train a small model per demo data set, estimate LID of fresh points, write tables and figures.

    Layout of ``out``: ``models/<name>/`` (checkpoints, reused unless ``retrain``),
    ``<name>_lid.parquet`` and ``.json`` (per-point results and run metadata), and
    ``plots/`` (LID histograms per component, scatter coloured by LID, FLIPD curves with knees).

    Args:
        out: output folder.
        steps, n_train: training steps and points per model.
        n_eval: points whose LID is estimated (drawn with another seed than the training points).
        seed: seed of data, training and probes.
        retrain: train even when ``out/models/<name>`` holds a checkpoint.
        progress: show training progress bars.
        progress_bar: ``progress_bar(description, total)`` returns a context manager yielding
            ``advance(k)``, for estimation progress.
        announce: receives one-line messages about what happens.
    """
    directory = Path(out)
    figures_directory = directory / "plots"
    make_bar = progress_bar or _null_progress
    entries = []
    for name in datasets:
        model_directory = directory / "models" / name
        train_seconds = None
        if retrain or checkpoint_config_path(model_directory) is None:
            announce(f"[{name}] training a diffusion model on {n_train} points ({steps} steps)")
            began = time.perf_counter()
            train_model(
                load_points(name, n_train, seed), model_directory, steps=steps, batch_size=DEMO_BATCH_SIZE,
                widths=DEMO_WIDTHS, standardize=DEMO_STANDARDIZE, seed=seed, progress=progress,
            )
            train_seconds = time.perf_counter() - began
        else:
            announce(f"[{name}] reusing the model in {model_directory} (--retrain to train again)")
        loaded = load_model(model_directory, device="cpu")
        points = load_points(name, n_eval, seed + 1)
        x = loaded.prepare(points)
        noise = default_noise_level(loaded.schedule)
        settings = EstimateSettings(**noise, trace="exact", seed=seed, batch_size=512, chunk_size=max(1, points.n))
        table_path = directory / f"{name}_lid.parquet"
        run_directory = table_path.with_name(table_path.name + ".chunks")
        remove_run_directory(run_directory)
        began = time.perf_counter()
        with make_bar(f"FLIPD {name}", points.n) as advance:
            result = estimate_in_chunks(
                flipd_chunks(loaded.model, settings), x, settings,
                run_directory, progress=advance,
                identity={"data": {"spec": name, "fingerprint": fingerprint_array(x)}, "model": {"fingerprint": loaded.fingerprint}},
            )
        estimate_seconds = time.perf_counter() - began
        columns = estimate_table_columns(points, result)
        write_table(table_path, columns)
        remove_run_directory(run_directory)
        groups, mae_value = summarize_by_component(columns["lid"], points.lid_true, points.component)

        figures = plots.plot_estimates(
            figures_directory, lids=columns["lid"], x=points.x.numpy(), lid_true=points.lid_true,
            component=points.component, ambient_dim=points.ambient_dim, method="flipd", noise_level=noise,
            prefix=f"{name}_", title=name,
        )
        subset = with_subset(points, np.linspace(0, points.n - 1, min(points.n, DEMO_CURVE_POINTS)).round().astype(int))
        with make_bar(f"curves {name}", subset.n * len(curve_times(loaded.schedule))) as advance:
            curves = compute_curves(loaded.model, loaded.prepare(subset), curve_times(loaded.schedule), seed=seed, progress=advance)
        figures.append(plots.save_figure(plots.plot_curves(
            curves.times, curves.curves, knee_times=curves.knee_t0,
            knee_lids=curves.knee_lid, ambient_dim=points.ambient_dim, true_lids=subset.lid_true,
            title=f"FLIPD curves on {name}",
        ), figures_directory / f"{name}_curves.png"))
        setting = ", ".join(f"{key} = {value:g}" for key, value in noise.items()) + ", exact trace"
        write_json(table_path.with_suffix(".json"), run_record(
            "demo", points=points, data_seed=seed + 1, model=loaded, settings=settings.to_json(),
            training={key: loaded.metadata.get(key) for key in ("steps_run", "final_val_loss", "seconds", "parameters")},
            summary=summary_record(columns["lid"], points),
            timings={"train_s": train_seconds, "estimate_s": estimate_seconds},
            outputs={"table": str(table_path), "plots": [str(f) for f in figures]},
        ))
        entries.append(DemoEntry(name, setting, groups, mae_value, table_path, figures, train_seconds, estimate_seconds))
    return DemoReport(entries, directory)
