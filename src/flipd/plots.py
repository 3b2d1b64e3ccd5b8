"""Figures of LID estimates, written as PNG files with matplotlib's Agg backend.

Every function takes plain arrays, writes one PNG atomically and returns its path:

* :func:`plot_curves`: FLIPD curves per point and their mean, with the chosen knees marked;
* :func:`plot_lid_histograms`: LID histograms, one panel per ground-truth group;
* :func:`plot_lid_scatter`: 2-d or 3-d data coloured by estimated LID;
* :func:`plot_image_grid`: images sorted by LID;
* :func:`plot_lid_vs_png_size`: LID against lossless PNG size, with Spearman's correlation.

:func:`plot_estimates` picks the figures that suit a data set and writes them into a folder.
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .runs.files import atomic_path

__all__ = [
    "image_grid_picks",
    "plot_curves",
    "plot_estimates",
    "plot_image_grid",
    "plot_lid_histograms",
    "plot_lid_scatter",
    "plot_lid_vs_png_size",
]

#: Figures are saved at this resolution.
DPI = 110
#: Colour map for LID values.
LID_COLORMAP = "viridis"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: str | Path) -> Path:
    plt = _pyplot()
    target = Path(path)
    try:
        with atomic_path(target) as temporary:
            figure.savefig(temporary, dpi=DPI, format="png", bbox_inches="tight")
    finally:
        plt.close(figure)
    return target


def plot_curves(
    times: np.ndarray,
    curves: np.ndarray,
    path: str | Path,
    *,
    knee_times: np.ndarray | None = None,
    knee_lids: np.ndarray | None = None,
    ambient_dim: int | None = None,
    true_lids: np.ndarray | None = None,
    time_label: str = "t0",
    max_lines: int = 60,
    title: str = "FLIPD curves",
) -> Path:
    """FLIPD against noise level: one thin line per point, the mean in black, knees marked.

    Args:
        times: the T noise levels of the columns, increasing.
        curves: FLIPD values [N, T].
        path: PNG file to write.
        knee_times, knee_lids: [N] chosen knee of each point (NaN where none was found).
        ambient_dim: D, drawn as a dashed line.
        true_lids: [N] ground truth; lines are coloured by it when given.
        time_label: name of the x axis.
        max_lines: draw at most this many individual curves (evenly spread over the points).
    """
    plt = _pyplot()
    times = np.asarray(times, dtype=np.float64)
    curves = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    n = curves.shape[0]
    shown = np.unique(np.linspace(0, n - 1, min(n, max_lines)).round().astype(int))
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    colours = None
    if true_lids is not None:
        groups = sorted(set(np.asarray(true_lids)[shown].tolist()))
        palette = plt.get_cmap("tab10")
        colours = {value: palette(i % 10) for i, value in enumerate(groups)}
        for value in groups:
            axis.plot([], [], color=colours[value], label=f"true LID {value:g}")
    for i in shown:
        colour = colours[np.asarray(true_lids)[i]] if colours else "tab:blue"
        axis.plot(times, curves[i], color=colour, alpha=0.35, linewidth=0.8)
    mean = np.nanmean(curves, axis=0)
    axis.plot(times, mean, color="black", linewidth=2.2, label="mean over points")
    if knee_times is not None and knee_lids is not None:
        knee_times = np.asarray(knee_times, dtype=np.float64)
        knee_lids = np.asarray(knee_lids, dtype=np.float64)
        found = np.isfinite(knee_times)
        chosen = np.intersect1d(shown, np.flatnonzero(found))
        if chosen.size:
            axis.scatter(knee_times[chosen], knee_lids[chosen], s=18, color="tab:red", zorder=3, label="knee (chosen t0)")
        if found.any():
            median_time = float(np.median(knee_times[found]))
            axis.axvline(median_time, color="tab:red", linestyle=":", linewidth=1, label=f"median knee t0 = {median_time:.3g}")
    if ambient_dim is not None:
        axis.axhline(ambient_dim, color="grey", linestyle="--", linewidth=1, label=f"ambient D = {ambient_dim}")
    axis.set_xlabel(time_label)
    axis.set_ylabel("FLIPD estimate")
    axis.set_title(f"{title} ({n} points)")
    axis.legend(fontsize=8, loc="best")
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_lid_histograms(
    lids: np.ndarray,
    path: str | Path,
    *,
    groups: np.ndarray | None = None,
    group_names: Mapping[Any, str] | None = None,
    true_lid_of_group: Mapping[Any, float] | None = None,
    title: str = "Estimated LID",
) -> Path:
    """Histograms of estimated LID, one panel per group (e.g. ground-truth component).

    Args:
        lids: [N] estimates.
        path: PNG file to write.
        groups: [N] group of each point; None puts all points in one panel.
        group_names: display name of each group value.
        true_lid_of_group: ground-truth LID per group, drawn as a red line.
    """
    plt = _pyplot()
    lids = np.asarray(lids, dtype=np.float64)
    groups = np.zeros(lids.shape[0], dtype=np.int64) if groups is None else np.asarray(groups)
    values = sorted(set(groups.tolist()))
    columns = min(3, len(values))
    rows = math.ceil(len(values) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    finite = lids[np.isfinite(lids)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 41)
    for axis, value in zip(axes.flat, values, strict=False):
        chosen = lids[(groups == value) & np.isfinite(lids)]
        axis.hist(chosen, bins=bins, color="tab:blue", alpha=0.8)
        name = (group_names or {}).get(value, f"group {value}") if len(values) > 1 else "all points"
        label = f"{name} (n = {chosen.size})"
        if chosen.size:
            label += f"\nmean {chosen.mean():.2f}"
        if true_lid_of_group is not None and value in true_lid_of_group:
            truth = float(true_lid_of_group[value])
            axis.axvline(truth, color="tab:red", linewidth=1.5, label=f"true LID {truth:g}")
            axis.legend(fontsize=8)
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("LID")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(values):]:
        axis.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_lid_scatter(x: np.ndarray, lids: np.ndarray, path: str | Path, *, title: str = "Points coloured by estimated LID") -> Path:
    """Scatter of 2-d or 3-d points coloured by estimated LID."""
    plt = _pyplot()
    x = np.asarray(x, dtype=np.float64)
    lids = np.asarray(lids, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] not in (2, 3):
        raise ValueError(f"A LID scatter needs points of dimension 2 or 3; got shape {x.shape}.")
    figure = plt.figure(figsize=(6.4, 5.2))
    if x.shape[1] == 2:
        axis = figure.add_subplot(1, 1, 1)
        drawn = axis.scatter(x[:, 0], x[:, 1], c=lids, cmap=LID_COLORMAP, s=6)
        axis.set_aspect("equal", adjustable="datalim")
    else:
        axis = figure.add_subplot(1, 1, 1, projection="3d")
        drawn = axis.scatter(x[:, 0], x[:, 1], x[:, 2], c=lids, cmap=LID_COLORMAP, s=4)
        extent = np.ptp(x, axis=0)
        axis.set_box_aspect(np.maximum(extent, 0.2 * extent.max()) if extent.max() > 0 else None)  # true proportions, within reason
    figure.colorbar(drawn, ax=axis, label="estimated LID", shrink=0.8)
    axis.set_title(title)
    return _save(figure, path)


def image_grid_picks(lids: np.ndarray, count: int = 60) -> np.ndarray:
    """Positions of the at most ``count`` images a LID-sorted grid shows, in increasing LID,
    evenly spread over the sorted set (non-finite estimates last). A grid of only these
    images (with their LIDs) shows the same images as a grid of all of them."""
    lids = np.asarray(lids, dtype=np.float64)
    order = np.argsort(np.where(np.isfinite(lids), lids, np.inf), kind="stable")
    count = min(len(order), count)
    return order[np.unique(np.linspace(0, len(order) - 1, count).round().astype(int))]


def plot_image_grid(
    images: np.ndarray,
    lids: np.ndarray,
    path: str | Path,
    *,
    per_row: int = 10,
    rows: int = 6,
    title: str = "Images sorted by estimated LID",
) -> Path:
    """A grid of images in increasing order of LID, evenly spread over the sorted set.

    Args:
        images: uint8 pixels [N, H, W, C] (C = 1 or 3).
        lids: [N] estimates.
        per_row, rows: grid size; at most ``per_row·rows`` images are shown.
    """
    plt = _pyplot()
    images = np.asarray(images)
    lids = np.asarray(lids, dtype=np.float64)
    picked = image_grid_picks(lids, per_row * rows)
    rows = math.ceil(len(picked) / per_row)
    columns = min(per_row, len(picked))
    figure, axes = plt.subplots(rows, columns, figsize=(1.25 * columns, 1.45 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, i in zip(axes.flat, picked, strict=False):
        image = images[i]
        if image.ndim == 3 and image.shape[2] == 1:
            axis.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255)
        else:
            axis.imshow(image)
        axis.set_title(f"{lids[i]:.1f}", fontsize=7)
    figure.suptitle(f"{title} (low to high, left to right)", fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def plot_lid_vs_png_size(lids: np.ndarray, png_bytes: np.ndarray, path: str | Path, *, title: str = "LID vs PNG size") -> Path:
    """Estimated LID against lossless PNG size (a proxy for image complexity), with Spearman's rho."""
    plt = _pyplot()
    lids = np.asarray(lids, dtype=np.float64)
    sizes = np.asarray(png_bytes, dtype=np.float64)
    finite = np.isfinite(lids)
    rho = _spearman(lids[finite], sizes[finite])
    figure, axis = plt.subplots(figsize=(6, 4.5))
    axis.scatter(sizes[finite], lids[finite], s=8, alpha=0.6)
    axis.set_xlabel("PNG size (bytes, lossless, level 9)")
    axis.set_ylabel("estimated LID")
    axis.set_title(f"{title}: Spearman rho = {rho:.3f} (n = {int(finite.sum())})")
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_estimates(
    directory: str | Path,
    *,
    lids: np.ndarray,
    x: np.ndarray | None = None,
    lid_true: np.ndarray | None = None,
    component: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    images_uint8: np.ndarray | None = None,
    png_bytes: np.ndarray | None = None,
    prefix: str = "",
    title: str = "",
    image_lids: np.ndarray | None = None,
) -> list[Path]:
    """Write every figure that suits the data into ``directory``; return the files written.

    Always a LID histogram (one panel per ground-truth component when known, else per image
    label, else one); a scatter when ``x`` is 2-d or 3-d vectors; an image grid sorted by LID
    and a LID-vs-PNG-size scatter for images. ``images_uint8`` may hold only the images the
    grid shows (:func:`image_grid_picks`), with their estimates in ``image_lids``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lids = np.asarray(lids, dtype=np.float64)
    written: list[Path] = []
    caption = f"{title}: " if title else ""
    if component is not None:
        groups = np.asarray(component)
        truth = {}
        if lid_true is not None:
            for value in sorted(set(groups.tolist())):
                truth[value] = float(np.median(np.asarray(lid_true)[groups == value]))
        names = {value: f"component {value}" for value in truth or set(groups.tolist())}
        written.append(plot_lid_histograms(
            lids, directory / f"{prefix}lid_histogram.png", groups=groups, group_names=names,
            true_lid_of_group=truth or None, title=f"{caption}estimated LID per component",
        ))
    elif labels is not None:
        groups = np.asarray(labels)
        names = {value: (label_names[value] if label_names and 0 <= value < len(label_names) else f"label {value}") for value in set(groups.tolist())}
        written.append(plot_lid_histograms(
            lids, directory / f"{prefix}lid_histogram.png", groups=groups, group_names=names,
            title=f"{caption}estimated LID per label",
        ))
    else:
        written.append(plot_lid_histograms(lids, directory / f"{prefix}lid_histogram.png", title=f"{caption}estimated LID"))
    if x is not None and np.asarray(x).ndim == 2 and np.asarray(x).shape[1] in (2, 3):
        written.append(plot_lid_scatter(x, lids, directory / f"{prefix}lid_scatter.png", title=f"{caption}points coloured by estimated LID"))
    if images_uint8 is not None:
        written.append(plot_image_grid(images_uint8, lids if image_lids is None else image_lids, directory / f"{prefix}images_by_lid.png", title=f"{caption}images sorted by LID"))
    if png_bytes is not None:
        written.append(plot_lid_vs_png_size(lids, png_bytes, directory / f"{prefix}lid_vs_png_size.png", title=f"{caption}LID vs PNG size"))
    return written
