"""The image study's figures: the images of lowest and highest LID, and Spearman against t0."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .report import format_rho

__all__ = ["save_extremes_figure", "save_study_figure"]


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
    """Save Spearman against t0 per model (baselines as horizontal lines), the FLIPD curves
    (median and 10-90% of the images against t0, with 0 and D marked) and a scatter of the
    headline FLIPD against PNG size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.6))
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
    for model_label, study in record["t0_study"].items():
        line, = middle.plot(study["t0"], study["median_flipd"], marker="o", label=f"FLIPD ({model_label}), median")
        if "quantiles" in study:
            middle.fill_between(study["t0"], study["quantiles"]["10"], study["quantiles"]["90"], color=line.get_color(),
                                alpha=0.15, linewidth=0)
    middle.axhline(record["ambient_dim"], color="black", linewidth=0.8, linestyle="--")
    middle.axhline(0.0, color="black", linewidth=0.8)
    middle.annotate(f"D = {record['ambient_dim']}", (0.0, record["ambient_dim"]), xycoords=("axes fraction", "data"),
                    fontsize=6, va="bottom")
    middle.set_xscale("log")
    middle.set_xticks(record["t0_grid"], [f"{t:g}" for t in record["t0_grid"]], fontsize=7)
    middle.minorticks_off()
    middle.set_xlabel("t0 (VP schedule time)")
    middle.set_ylabel("FLIPD")
    middle.set_title("FLIPD curves (median; band: 10-90% of the images)", fontsize=9)
    middle.legend(fontsize=6)
    headline = record["headline"]
    right.scatter(png_bytes, lid, s=4, alpha=0.5)
    right.set_xlabel("PNG size (bytes)")
    right.set_ylabel("FLIPD")
    right.set_title(
        f"FLIPD ({headline['model']}, t0={headline['t0']:g}): Spearman {format_rho(headline['spearman'])}", fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
