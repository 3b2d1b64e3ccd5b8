"""Figures: matplotlib Figures that leave the backend alone, named and titled by method and noise level."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

import flipd  # noqa: E402
from flipd import plots  # noqa: E402

PACKAGE_ROOT = str(Path(flipd.__file__).resolve().parents[1])


def test_importing_and_drawing_leave_the_backend_unchanged(tmp_path):
    # A fresh interpreter with a non-default backend: importing flipd and flipd.plots, drawing and
    # saving a figure must keep it (a notebook's inline backend stays inline).
    script = (
        "import matplotlib, numpy as np\n"
        "before = matplotlib.get_backend()\n"
        "import flipd, flipd.plots as p\n"
        "figure = p.plot_lid_histograms(np.arange(10.0), ambient_dim=12)\n"
        f"p.save_figure(figure, {str(tmp_path / 'h.png')!r})\n"
        "import sys\n"
        "print(before, matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    environment = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": PACKAGE_ROOT}
    output = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True)
    before, after, _ = output.stdout.split()
    assert before.lower() == "svg" and after.lower() == "svg"
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_every_figure_function_returns_a_figure_and_saves_on_request(tmp_path):
    rng = np.random.default_rng(0)
    lids = rng.uniform(0, 3, 50)
    images = rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
    figures = {
        "curves": plots.plot_curves(np.linspace(0.05, 0.5, 5), rng.uniform(0, 3, (6, 5)), ambient_dim=3),
        "histogram": plots.plot_lid_histograms(lids, groups=np.arange(50) % 2, ambient_dim=3),
        "scatter2": plots.plot_lid_scatter(rng.normal(size=(50, 2)), lids, ambient_dim=2),
        "scatter3": plots.plot_lid_scatter(rng.normal(size=(50, 3)), lids, ambient_dim=3),
        "grid": plots.plot_image_grid(images, lids[:12]),
        "png": plots.plot_lid_vs_png_size(lids, rng.integers(100, 900, 50), ambient_dim=3),
        "samples2": plots.plot_samples(rng.normal(size=(40, 2)), rng.normal(size=(40, 2))),
        "samples10": plots.plot_samples(rng.normal(size=(40, 10))),
        "images": plots.plot_samples(rng.uniform(-1, 1, (12, 1, 8, 8)), rng.uniform(-1, 1, (12, 1, 8, 8))),
    }
    for name, figure in figures.items():
        assert isinstance(figure, Figure), name
    saved = plots.plot_lid_histograms(lids, tmp_path / "direct.png")
    assert isinstance(saved, Figure) and (tmp_path / "direct.png").read_bytes()[:4] == b"\x89PNG"
    three_d = figures["scatter3"]
    assert sum(axis.name == "3d" for axis in three_d.axes) == 2  # two views of the cloud
    assert [axis.get_zlabel() for axis in three_d.axes if axis.name == "3d"] == ["x3", ""]


def test_histograms_mark_the_ambient_dimension_and_label_their_axes():
    figure = plots.plot_lid_histograms(np.array([0.9, 1.0, 1.1]), ambient_dim=3, title="t")
    axis = figure.axes[0]
    assert axis.get_xlabel().startswith("estimated LID") and axis.get_ylabel() == "points"
    assert any(line.get_label() == "ambient D = 3" for line in axis.get_lines())
    assert axis.get_xlim()[1] >= 3


def test_figure_labels_name_method_and_noise_level():
    assert plots.figure_label("flipd", {"t0": 0.05}) == ("flipd_t0_0.05", "FLIPD, t0 = 0.05")
    assert plots.figure_label("flipd", {"t0": "auto"}) == ("flipd_t0_auto", "FLIPD, t0 = auto (band)")
    assert plots.figure_label("lpca") == ("lpca", "lPCA")
    assert plots.figure_label(None) == ("", "")


def test_plot_estimates_of_two_methods_write_different_files(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2))
    first = plots.plot_estimates(tmp_path, lids=rng.uniform(0, 2, 30), x=x, ambient_dim=2, method="flipd",
                                 noise_level={"t0": 0.05}, prefix="data_", title="data")
    second = plots.plot_estimates(tmp_path, lids=rng.uniform(0, 2, 30), x=x, ambient_dim=2, method="nb",
                                  noise_level={"t0": 0.01}, prefix="data_", title="data")
    assert not set(first) & set(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in first + second)
    assert {p.name for p in first} == {"data_flipd_t0_0.05_lid_histogram.png", "data_flipd_t0_0.05_lid_scatter.png"}


def test_the_band_rules_figure_marks_the_levels_it_averages():
    times = np.geomspace(0.005, 0.25, 12)
    median = np.linspace(0.3, 0.05, 12)
    figure = plots.plot_calibrated_level(times, median, float(times[4]), ratio=1.5, read_times=times[4:7])
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert "levels averaged by the band rule (3)" in labels
    plain = plots.plot_calibrated_level(times, median, float(times[4]), ratio=1.5)
    assert not any("band rule" in text.get_text() for text in plain.axes[0].get_legend().get_texts())


def test_the_calibrated_rules_figure_says_when_no_level_could_be_checked(tmp_path):
    times = np.geomspace(0.005, 0.25, 12)
    figure = plots.plot_calibrated_level(times, np.full(12, np.inf), float(times[0]), tmp_path / "level.png", ratio=1.5,
                                         read_times=times[:1])
    assert any("no level could be checked" in text.get_text() for text in figure.axes[0].texts)
    assert (tmp_path / "level.png").stat().st_size > 0
