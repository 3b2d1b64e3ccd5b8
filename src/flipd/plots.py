"""Figures of LID estimates and of model samples, as matplotlib Figures.

Every plotting function returns a :class:`matplotlib.figure.Figure` built without pyplot, so
importing or calling this module never changes matplotlib's backend (a notebook keeps its
inline backend) and no figure is left open in pyplot's registry; ``path=`` also writes the
figure as a PNG, atomically (:func:`save_figure`):

* :func:`plot_curves`: FLIPD curves per point and their mean, with the chosen knees marked;
* :func:`plot_lid_histograms`: LID histograms, one panel per ground-truth group;
* :func:`plot_lid_scatter`: 2-d or 3-d data coloured by estimated LID;
* :func:`plot_image_grid`: images sorted by LID;
* :func:`plot_lid_vs_png_size`: LID against lossless PNG size, with Spearman's correlation;
* :func:`plot_samples`: samples of a model beside its training data.

:func:`plot_estimates` picks the figures that suit a data set and writes them into a folder,
named and titled by method and noise level (:func:`figure_label`), so the figures of two
methods or noise levels on the same data never overwrite each other. The ambient dimension D
is marked on every LID axis when it is given. matplotlib is imported only when a figure is
drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .runs.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "figure_label",
    "image_grid_picks",
    "plot_curves",
    "plot_estimates",
    "plot_image_grid",
    "plot_lid_histograms",
    "plot_lid_scatter",
    "plot_lid_vs_png_size",
    "plot_samples",
    "save_figure",
]

#: Figures are saved at this resolution.
DPI = 110
#: Colour map for LID values.
LID_COLORMAP = "viridis"
#: Display names of methods in titles (others are shown as given).
METHOD_NAMES = {"flipd": "FLIPD", "nb": "NB", "fpregress": "FPRegress", "lpca": "lPCA", "mle": "MLE",
                "ess": "ESS", "twonn": "TwoNN"}


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG at ``path`` (atomically: never half-written); return the path."""
    target = Path(path)
    with atomic_path(target) as temporary:
        figure.savefig(temporary, dpi=DPI, format="png", bbox_inches="tight")
    return target


def _finish(figure: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        save_figure(figure, path)
    return figure


def figure_label(method: str | None, noise_level: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """``(file-name part, title part)`` naming a method at a noise level.

    ``figure_label("flipd", {"t0": 0.05})`` is ``("flipd_t0_0.05", "FLIPD, t0 = 0.05")``;
    ``{"t0": "auto"}`` reads "t0 = auto (band)"; a method without a noise level (lPCA, ...)
    gives ``("lpca", "lPCA")``; no method gives ``("", "")``.
    """
    if not method:
        return "", ""
    file_part, title = method, METHOD_NAMES.get(method, method)
    for name, value in (noise_level or {}).items():
        text = value if isinstance(value, str) else f"{float(value):.4g}"
        file_part += f"_{name}_{text}"
        title += f", {name} = {text}" + (" (band)" if value == "auto" else "")
    return file_part, title


def _mark_ambient_dim(axis: Any, ambient_dim: int | None, *, vertical: bool) -> None:
    if ambient_dim is None:
        return
    line = axis.axvline if vertical else axis.axhline
    line(ambient_dim, color="grey", linestyle="--", linewidth=1, label=f"ambient D = {ambient_dim}")


def plot_curves(
    times: np.ndarray,
    curves: np.ndarray,
    path: str | Path | None = None,
    *,
    knee_times: np.ndarray | None = None,
    knee_lids: np.ndarray | None = None,
    ambient_dim: int | None = None,
    true_lids: np.ndarray | None = None,
    time_label: str = "t0",
    max_lines: int = 60,
    title: str = "FLIPD curves",
    chosen_label: str = "knee",
) -> Figure:
    """FLIPD against noise level: one thin line per point, the mean in black, knees marked.

    Args:
        times: the T noise levels of the columns, increasing.
        curves: FLIPD values [N, T] (dimensions).
        path: also write the figure as a PNG there.
        knee_times, knee_lids: [N] chosen knee of each point (NaN where none was found).
        ambient_dim: D, drawn as a dashed line.
        true_lids: [N] ground truth; lines are coloured by it when given.
        time_label: name of the x axis.
        max_lines: draw at most this many individual curves (evenly spread over the points).
        chosen_label: what chose ``knee_times`` ("knee", or e.g. "plateau" for the plateau rule).
    """
    times = np.asarray(times, dtype=np.float64)
    curves = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    n = curves.shape[0]
    shown = np.unique(np.linspace(0, n - 1, min(n, max_lines)).round().astype(int))
    figure = _new_figure(7.5, 4.8)
    axis = figure.subplots()
    colours = None
    if true_lids is not None:
        groups = sorted(set(np.asarray(true_lids)[shown].tolist()))
        palette = _colormap("tab10")
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
            axis.scatter(knee_times[chosen], knee_lids[chosen], s=18, color="tab:red", zorder=3, label=f"{chosen_label} (chosen t0)")
        if found.any():
            median_time = float(np.median(knee_times[found]))
            axis.axvline(median_time, color="tab:red", linestyle=":", linewidth=1, label=f"median {chosen_label} t0 = {median_time:.3g}")
    _mark_ambient_dim(axis, ambient_dim, vertical=False)
    axis.set_xlabel(time_label)
    axis.set_ylabel("FLIPD estimate (dimensions)")
    axis.set_title(f"{title} ({n} points)")
    axis.legend(fontsize=8, loc="best")
    axis.grid(alpha=0.3)
    return _finish(figure, path)


def plot_calibrated_level(
    times: np.ndarray,
    median_calibration: np.ndarray,
    chosen_t0: float,
    path: str | Path | None = None,
    *,
    ratio: float,
    time_label: str = "t0",
    title: str = "Calibrated rule",
    read_times: np.ndarray | None = None,
) -> Figure:
    """Why the calibrated rule chose its level: the model's median |calibration| over the points
    at each level (log scale), its best level, the threshold ``ratio`` × best, and the chosen t0
    (the smallest level under the threshold).

    Args:
        times: the T levels searched, increasing.
        median_calibration: [T] median |calibration| (0 for the ideal denoiser; inf where the
            model's output was not finite, or where no point could be measured).
        chosen_t0: the level chosen.
        ratio: the rule's ratio (:data:`flipd.noise.CALIBRATED_RATIO`).
        read_times: the levels the band rule averages over (marked; None: the calibrated rule).
    """
    times = np.asarray(times, dtype=np.float64)
    median = np.asarray(median_calibration, dtype=np.float64)
    finite = np.isfinite(median)
    figure = _new_figure(7.5, 4.2)
    axis = figure.subplots()
    if finite.any():
        best = max(float(np.min(median[finite])), 1e-12)  # a perfect model's 0 on a log axis
        axis.plot(times[finite], np.maximum(median[finite], 1e-12), marker="o", markersize=3, color="tab:blue",
                  label="median |calibration| over the points measured")
        axis.axhline(ratio * best, color="grey", linestyle="--", linewidth=1, label=f"{ratio:g} × the best ({best:.3g})")
    else:  # the data look full-dimensional to the model at every level: nothing to plot but the choice
        axis.text(0.5, 0.5, "no level could be checked\n(the model predicts almost no noise)", transform=axis.transAxes,
                  ha="center", va="center")
    axis.axvline(chosen_t0, color="tab:red", linestyle=":", linewidth=1.5, label=f"chosen t0 = {chosen_t0:.3g}")
    if read_times is not None:
        read = np.isin(times, np.asarray(read_times, dtype=np.float64)) & finite
        axis.scatter(times[read], np.maximum(median[read], 1e-12), s=60, facecolors="none", edgecolors="tab:orange",
                     linewidths=1.5, zorder=3, label=f"levels averaged by the band rule ({int(read.sum())})")
    axis.set_xscale("log")
    if finite.any():
        axis.set_yscale("log")
    axis.set_xlabel(time_label)
    axis.set_ylabel("denoising calibration (0 = ideal)")
    axis.set_title(title)
    axis.legend(fontsize=8, loc="best")
    axis.grid(alpha=0.3, which="both")
    return _finish(figure, path)


def plot_lid_histograms(
    lids: np.ndarray,
    path: str | Path | None = None,
    *,
    groups: np.ndarray | None = None,
    group_names: Mapping[Any, str] | None = None,
    true_lid_of_group: Mapping[Any, float] | None = None,
    ambient_dim: int | None = None,
    title: str = "Estimated LID",
) -> Figure:
    """Histograms of estimated LID, one panel per group (e.g. ground-truth component).

    Args:
        lids: [N] estimates (dimensions).
        path: also write the figure as a PNG there.
        groups: [N] group of each point; None puts all points in one panel.
        group_names: display name of each group value.
        true_lid_of_group: ground-truth LID per group, drawn as a red line.
        ambient_dim: D, drawn as a dashed grey line (the axis is widened to show it).
    """
    lids = np.asarray(lids, dtype=np.float64)
    groups = np.zeros(lids.shape[0], dtype=np.int64) if groups is None else np.asarray(groups)
    values = sorted(set(groups.tolist()))
    columns = min(3, len(values))
    rows = math.ceil(len(values) / columns)
    figure = _new_figure(4.2 * columns, 3.4 * rows)
    axes = figure.subplots(rows, columns, squeeze=False)
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
        _mark_ambient_dim(axis, ambient_dim, vertical=True)
        if ambient_dim is not None:
            axis.set_xlim(min(low, 0.0) - 0.02 * (high - low), max(high, ambient_dim) + 0.05 * max(1.0, high - low))
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("estimated LID (dimensions)")
        axis.set_ylabel("points")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(values):]:
        axis.set_visible(False)
    figure.suptitle(title)
    figure.tight_layout()
    return _finish(figure, path)


def _point_size(n: int, dims: int) -> float:
    """Marker area for a scatter of n points: larger for few points, larger in 3-d."""
    return float(np.clip(3000.0 / max(n, 1), 2.0, 30.0) * (2.0 if dims == 3 else 1.0))


def _scatter_panels(figure: Figure, x: np.ndarray, *, columns: int, column: int, title: str, **style: Any) -> list[Any]:
    """Scatter x [N, 2] or [N, 3] into ``figure``: one panel for 2-d, two views for 3-d."""
    dims = x.shape[1]
    style.setdefault("s", _point_size(x.shape[0], dims))
    if dims == 2:
        axis = figure.add_subplot(1, columns, column)
        drawn = axis.scatter(x[:, 0], x[:, 1], **style)
        axis.set_aspect("equal", adjustable="datalim")
        axis.set_xlabel("x1")
        axis.set_ylabel("x2")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
        return [(axis, drawn)]
    extent = np.ptp(x, axis=0)
    aspect = np.maximum(extent, 0.2 * extent.max()) if extent.max() > 0 else None  # true proportions, within reason
    panels = []
    for view, (elevation, azimuth, name) in enumerate(((22, -60, "oblique view"), (88, -90, "from above"))):
        axis = figure.add_subplot(1, columns, column + view, projection="3d")
        drawn = axis.scatter(x[:, 0], x[:, 1], x[:, 2], depthshade=False, **style)
        axis.view_init(elev=elevation, azim=azimuth)
        if aspect is not None:
            axis.set_box_aspect(aspect)
        axis.set_xlabel("x1")
        axis.set_ylabel("x2")
        if view == 0:
            axis.set_zlabel("x3")
        else:  # seen from above, the x3 axis is edge-on: no ticks
            axis.set_zticks([])
        axis.set_title(f"{title}, {name}", fontsize=10)
        panels.append((axis, drawn))
    return panels


def plot_lid_scatter(
    x: np.ndarray,
    lids: np.ndarray,
    path: str | Path | None = None,
    *,
    ambient_dim: int | None = None,
    title: str = "Points coloured by estimated LID",
) -> Figure:
    """Scatter of 2-d or 3-d points coloured by estimated LID (3-d data in two views).

    Args:
        x: points [N, 2] or [N, 3] in data units.
        lids: [N] estimates; the colour scale runs over their range, within [0, D] when
            ``ambient_dim`` is given.
        path: also write the figure as a PNG there.
    """
    x = np.asarray(x, dtype=np.float64)
    lids = np.asarray(lids, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] not in (2, 3):
        raise ValueError(f"A LID scatter needs points of dimension 2 or 3; got shape {x.shape}.")
    finite = lids[np.isfinite(lids)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if ambient_dim is not None:
        low, high = max(low, 0.0), min(high, float(ambient_dim))
    dims = x.shape[1]
    figure = _new_figure(6.4 if dims == 2 else 11.5, 5.2)
    panels = _scatter_panels(figure, x, columns=1 if dims == 2 else 2, column=1, title="points",
                             c=lids, cmap=LID_COLORMAP, vmin=low, vmax=max(high, low + 1e-6))
    label = "estimated LID" + (f" (D = {ambient_dim})" if ambient_dim is not None else "")
    figure.colorbar(panels[-1][1], ax=[axis for axis, _ in panels], label=label, shrink=0.8)
    figure.suptitle(title)
    return _finish(figure, path)


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
    path: str | Path | None = None,
    *,
    per_row: int = 10,
    rows: int = 6,
    title: str = "Images sorted by estimated LID",
) -> Figure:
    """A grid of images in increasing order of LID, evenly spread over the sorted set.

    Args:
        images: uint8 pixels [N, H, W, C] (C = 1 or 3).
        lids: [N] estimates, written above each image.
        path: also write the figure as a PNG there.
        per_row, rows: grid size; at most ``per_row·rows`` images are shown.
    """
    lids = np.asarray(lids, dtype=np.float64)
    picked = image_grid_picks(lids, per_row * rows)
    figure = _image_grid(np.asarray(images)[picked], [f"{lids[i]:.1f}" for i in picked], per_row=per_row)
    figure.suptitle(f"{title} (low to high, left to right)", fontsize=10)
    figure.tight_layout()
    return _finish(figure, path)


def _image_grid(images: np.ndarray, captions: Sequence[str] | None, *, per_row: int,
                figure: Figure | None = None, spec: Any = None) -> Figure:
    """Draw uint8 images [K, H, W, C] in rows of ``per_row`` (into ``spec`` of ``figure`` if given)."""
    rows = max(1, math.ceil(len(images) / per_row))
    columns = max(1, min(per_row, len(images)))
    if figure is None:
        figure = _new_figure(1.25 * columns, 1.45 * rows)
    grid = (spec.subgridspec(rows, columns) if spec is not None else figure.add_gridspec(rows, columns))
    for slot in range(rows * columns):
        axis = figure.add_subplot(grid[slot // columns, slot % columns])
        axis.axis("off")
        if slot >= len(images):
            continue
        image = images[slot]
        if image.ndim == 3 and image.shape[2] == 1:
            axis.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255)
        else:
            axis.imshow(image)
        if captions is not None:
            axis.set_title(captions[slot], fontsize=7)
    return figure


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def plot_lid_vs_png_size(
    lids: np.ndarray,
    png_bytes: np.ndarray,
    path: str | Path | None = None,
    *,
    ambient_dim: int | None = None,
    title: str = "LID vs PNG size",
) -> Figure:
    """Estimated LID against lossless PNG size (a proxy for image complexity), with Spearman's rho.

    Args:
        lids: [N] estimates; png_bytes: [N] PNG sizes in bytes.
        ambient_dim: D, drawn as a dashed line when the estimates come within a tenth of it.
        path: also write the figure as a PNG there.
    """
    lids = np.asarray(lids, dtype=np.float64)
    sizes = np.asarray(png_bytes, dtype=np.float64)
    finite = np.isfinite(lids)
    rho = _spearman(lids[finite], sizes[finite])
    figure = _new_figure(6, 4.5)
    axis = figure.subplots()
    axis.scatter(sizes[finite], lids[finite], s=8, alpha=0.6)
    if ambient_dim is not None and finite.any() and lids[finite].max() >= 0.9 * ambient_dim:
        _mark_ambient_dim(axis, ambient_dim, vertical=False)
        axis.legend(fontsize=8)
    axis.set_xlabel("PNG size (bytes, lossless, level 9)")
    axis.set_ylabel("estimated LID (dimensions)")
    axis.set_title(f"{title}: Spearman rho = {rho:.3f} (n = {int(finite.sum())})")
    axis.grid(alpha=0.3)
    return _finish(figure, path)


def _to_uint8_images(images: np.ndarray) -> np.ndarray:
    """Images [K, C, H, W] (values in [-1, 1]) or uint8 [K, H, W, C] -> uint8 [K, H, W, C]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    pixels = np.clip((images.astype(np.float64) + 1) * 127.5, 0, 255).round().astype(np.uint8)
    return np.transpose(pixels, (0, 2, 3, 1))


def plot_samples(
    samples: np.ndarray,
    data: np.ndarray | None = None,
    path: str | Path | None = None,
    *,
    max_images: int = 40,
    title: str = "Samples of the model",
) -> Figure:
    """Samples of a model beside its training data, to see whether it learnt the data.

    Args:
        samples: vectors [K, D] in data units, or images [K, C, H, W] with values in [-1, 1]
            (or uint8 [K, H, W, C]).
        data: training points of the same kind, or None for the samples alone. For D > 3
            the first two coordinates are shown.
        path: also write the figure as a PNG there.
        max_images: images shown per grid.
    """
    samples = np.asarray(samples)
    panels = [("samples", samples)] + ([("training data", np.asarray(data))] if data is not None else [])
    if samples.ndim == 4 or (samples.ndim == 3 and samples.dtype == np.uint8):
        per_row = min(10, max_images)
        figure = _new_figure(1.1 * per_row * len(panels) + 0.5, 1.2 * math.ceil(max_images / per_row) + 0.8)
        outer = figure.add_gridspec(1, len(panels), wspace=0.15)
        for slot, (name, values) in enumerate(panels):
            images = _to_uint8_images(values)[:max_images]
            _image_grid(images, None, per_row=per_row, figure=figure, spec=outer[0, slot])
            figure.text((slot + 0.5) / len(panels), 0.98, f"{name} ({len(images)})", ha="center", va="top")
        figure.suptitle(title, y=1.04)
        return _finish(figure, path)
    if samples.ndim != 2:
        raise ValueError(f"samples must be vectors [K, D] or images [K, C, H, W]; got shape {samples.shape}.")
    dims = min(samples.shape[1], 3) if samples.shape[1] <= 3 else 2
    if dims == 1:
        figure = _new_figure(6.4, 4.2)
        axis = figure.subplots()
        for (name, values), colour in zip(panels, ("tab:orange", "tab:blue")):
            axis.hist(values[:, 0], bins=50, alpha=0.6, color=colour, label=f"{name} ({len(values)})", density=True)
        axis.set_xlabel("x1")
        axis.set_ylabel("density")
        axis.legend(fontsize=8)
        figure.suptitle(title)
        return _finish(figure, path)
    per_panel = 1 if dims == 2 else 2
    figure = _new_figure((5.2 if dims == 2 else 5.0) * per_panel * len(panels), 5.0)
    shown = "" if samples.shape[1] <= 3 else f" (first 2 of {samples.shape[1]} coordinates)"
    drawn = []
    for slot, ((name, values), colour) in enumerate(zip(panels, ("tab:orange", "tab:blue"))):
        drawn += _scatter_panels(figure, np.asarray(values, dtype=np.float64)[:, :dims], columns=per_panel * len(panels),
                                 column=1 + slot * per_panel, title=f"{name} ({len(values)})", color=colour)
    if dims == 2:  # the same limits on both panels, so they compare at a glance
        every = np.concatenate([np.asarray(values, dtype=np.float64)[:, :2] for _, values in panels])
        low, high = every.min(axis=0), every.max(axis=0)
        margin = 0.05 * np.maximum(high - low, 1e-9)
        for axis, _ in drawn:
            axis.set_aspect("equal", adjustable="box")
            axis.set_xlim(low[0] - margin[0], high[0] + margin[0])
            axis.set_ylim(low[1] - margin[1], high[1] + margin[1])
    figure.suptitle(title + shown)
    return _finish(figure, path)


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
    ambient_dim: int | None = None,
    method: str | None = None,
    noise_level: Mapping[str, Any] | None = None,
    prefix: str = "",
    title: str = "",
    image_lids: np.ndarray | None = None,
) -> list[Path]:
    """Write every figure that suits the data into ``directory``; return the files written.

    Always a LID histogram (one panel per ground-truth component when known, else per image
    label, else one); a scatter when ``x`` is 2-d or 3-d vectors; an image grid sorted by LID
    and a LID-vs-PNG-size scatter for images. Files are named
    ``{prefix}{method}_{noise level}_{figure}.png`` (e.g. ``lollipop_flipd_t0_0.05_lid_histogram.png``,
    see :func:`figure_label`) and titled ``"{title}: {method}, {noise level}"``. ``images_uint8`` may hold only the images the
    grid shows (:func:`image_grid_picks`), with their estimates in ``image_lids``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lids = np.asarray(lids, dtype=np.float64)
    written: list[Path] = []
    file_part, method_title = figure_label(method, noise_level)
    stem = f"{prefix}{file_part}_" if file_part else prefix
    caption = ", ".join(part for part in (title, method_title) if part)
    caption = f"{caption}: " if caption else ""
    if component is not None:
        groups = np.asarray(component)
        truth = {}
        if lid_true is not None:
            for value in sorted(set(groups.tolist())):
                truth[value] = float(np.median(np.asarray(lid_true)[groups == value]))
        names = {value: f"component {value}" for value in truth or set(groups.tolist())}
        figure = plot_lid_histograms(lids, groups=groups, group_names=names, true_lid_of_group=truth or None,
                                     ambient_dim=ambient_dim, title=f"{caption}estimated LID per component")
    elif labels is not None:
        groups = np.asarray(labels)
        names = {value: (label_names[value] if label_names and 0 <= value < len(label_names) else f"label {value}") for value in set(groups.tolist())}
        figure = plot_lid_histograms(lids, groups=groups, group_names=names, ambient_dim=ambient_dim,
                                     title=f"{caption}estimated LID per label")
    else:
        figure = plot_lid_histograms(lids, ambient_dim=ambient_dim, title=f"{caption}estimated LID")
    written.append(save_figure(figure, directory / f"{stem}lid_histogram.png"))
    if x is not None and np.asarray(x).ndim == 2 and np.asarray(x).shape[1] in (2, 3):
        figure = plot_lid_scatter(x, lids, ambient_dim=ambient_dim, title=f"{caption}points coloured by estimated LID")
        written.append(save_figure(figure, directory / f"{stem}lid_scatter.png"))
    if images_uint8 is not None:
        figure = plot_image_grid(images_uint8, lids if image_lids is None else image_lids, title=f"{caption}images sorted by LID")
        written.append(save_figure(figure, directory / f"{stem}images_by_lid.png"))
    if png_bytes is not None:
        figure = plot_lid_vs_png_size(lids, png_bytes, ambient_dim=ambient_dim, title=f"{caption}LID vs PNG size")
        written.append(save_figure(figure, directory / f"{stem}lid_vs_png_size.png"))
    return written
