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

The package, one idea per module: :mod:`~flipd.bench.images.plan` (plans and presets),
:mod:`~flipd.bench.images.models` (data, networks, train or load),
:mod:`~flipd.bench.images.methods` (FLIPD over the t0 grid and the t0 choice, NB, ESS and lPCA),
:mod:`~flipd.bench.images.figures`, :mod:`~flipd.bench.images.study` (one data set, the whole
study), :mod:`~flipd.bench.images.report` (``images.{md,json,csv}``) and
:mod:`~flipd.bench.images.command` (the command line, :func:`main`).
"""

from __future__ import annotations

from .command import DEFAULT_CHECKPOINTS, DEFAULT_OUT, main
from .figures import save_extremes_figure, save_study_figure
from .methods import choose_t0, flipd_over_grid, run_classical, run_nb
from .models import load_images, train_or_load
from .plan import PRESETS, TRAIN_DEFAULTS, DatasetPlan, ModelKind, ModelPlan, StudyPlan
from .report import compile_report, render_markdown
from .study import run_dataset, run_study

__all__ = [
    "DEFAULT_CHECKPOINTS",
    "DEFAULT_OUT",
    "DatasetPlan",
    "ModelKind",
    "ModelPlan",
    "PRESETS",
    "StudyPlan",
    "TRAIN_DEFAULTS",
    "choose_t0",
    "compile_report",
    "flipd_over_grid",
    "load_images",
    "main",
    "render_markdown",
    "run_classical",
    "run_dataset",
    "run_nb",
    "run_study",
    "save_extremes_figure",
    "save_study_figure",
    "train_or_load",
]
