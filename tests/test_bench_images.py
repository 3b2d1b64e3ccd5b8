"""The image complexity study: t0 choice, figures, checkpoints and a tiny end-to-end run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("skdim")
pytest.importorskip("matplotlib")

from flipd.bench import images as bench

TINY = bench.PRESETS["tiny"]


def test_choose_t0_finds_the_knee_of_the_median_curve():
    grid = np.array([0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4])
    # Falls steeply from D = 100 to a plateau at 20 from t0 = 0.15 on: the knee is at 0.15.
    curve = np.array([100, 95, 90, 60, 21, 20.5, 20.2, 20, 19.8])
    curves = np.stack([curve + offset for offset in (-2.0, 0.0, 3.0)])
    t0, rule = bench.choose_t0(curves, grid)
    assert t0 == pytest.approx(0.15)
    assert "knee" in rule


def test_choose_t0_falls_back_to_the_small_default_without_a_knee():
    grid = np.array([0.01, 0.02, 0.05, 0.1, 0.2])  # only 2 times inside (0.05, 0.5)
    t0, rule = bench.choose_t0(np.ones((3, 5)), grid)
    assert t0 == pytest.approx(0.05)
    assert "closest to 0.05" in rule


def test_extremes_figure_is_a_png(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(20, 8, 8, 3), dtype=np.uint8)
    lid = rng.normal(size=20)
    path = bench.save_extremes_figure(pixels, lid, np.arange(20) + 100, tmp_path / "x.png", title="test", n_show=6)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_checkpoints_are_reused_when_the_plan_matches(tmp_path):
    plan = TINY.datasets[0]
    model_plan = next(m for m in plan.models if m.kind == "mlp")
    images = bench.load_images(plan).images
    messages: list[str] = []
    first, reused_first = bench.train_or_load(
        model_plan, images, dataset=plan.name, seed=0, checkpoints=tmp_path, log=messages.append,
    )
    second, reused_second = bench.train_or_load(
        model_plan, images, dataset=plan.name, seed=0, checkpoints=tmp_path, log=messages.append,
    )
    assert (reused_first, reused_second) == (False, True)
    y = torch.randn(3, images[0].numel(), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.2, 0.3])
    torch.testing.assert_close(first(y, t), second(y, t), rtol=0, atol=0)
    # Another seed is another plan: trained afresh in its own folder.
    _, reused_other = bench.train_or_load(
        model_plan, images, dataset=plan.name, seed=1, checkpoints=tmp_path, log=messages.append,
    )
    assert not reused_other
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.slow
def test_tiny_study_runs_end_to_end(tmp_path):
    out = tmp_path / "results"
    status = bench.main(["--preset", "tiny", "--out", str(out), "--no-checkpoints"])
    assert status == 0
    expected = {
        "images.md", "images.json", "images.csv", "images_digits8_extremes.png", "images_digits8_study.png",
        "images_digits8_per_image.csv",
    }
    assert expected <= {path.name for path in out.iterdir()}
    results = json.loads((out / "images.json").read_text())
    record = results["datasets"][0]
    assert record == json.loads((out / "images_digits8.json").read_text())
    assert record["command"].startswith("python -m flipd.bench images --preset tiny")
    assert record["environment"]["versions"]["torch"] == torch.__version__
    methods = {(row["method"], row["model"]) for row in record["methods"]}
    assert methods == {
        ("FLIPD", "unet"), ("FLIPD", "unet, untrained"), ("FLIPD", "unet, epsilon"), ("FLIPD", "mlp"),
        ("FLIPD", "mlp, untrained"),
        ("NB", "unet"), ("NB", "mlp"), ("NB centred", "mlp"), ("ESS", None), ("lPCA", None),
    }
    for row in record["methods"]:
        assert row["seconds"] >= 0
        # FLIPD always varies between images; NB may be constant (correlation undefined: None).
        assert (row["method"] != "FLIPD" and row["spearman"] is None) or -1 <= row["spearman"] <= 1
    assert set(record["t0_study"]) == {"unet", "unet, epsilon", "mlp"}
    assert record["models"]["unet"]["train_config"]["prediction"] == "sample"
    assert record["models"]["unet, epsilon"]["train_config"]["prediction"] == "epsilon"
    assert record["headline"]["model"] == "unet"
    # At the default noise level: the share of images whose FLIPD lies in [0, D], per model.
    level = record["default_level"]
    assert level["t0"] == 0.05 and set(level["models"]) == set(record["t0_study"])
    for label, values in level["models"].items():
        study = record["t0_study"][label]
        lid = np.array([float(row[f"flipd_{label}_t0=0.05"]) for row in csv.DictReader(
            (out / "images_digits8_per_image.csv").open())])
        assert values["in_range"] == pytest.approx(np.mean((lid >= 0) & (lid <= record["ambient_dim"])), abs=1e-9)
        assert values["in_range"] == study["in_range"][0] and study["quantiles"]["10"][0] <= study["quantiles"]["90"][0]
    assert "| FLIPD in [0, D] |" in (out / "images.md").read_text()
    with (out / "images.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sum(row["headline"] == "1" for row in rows) == 1
    assert "| FLIPD | unet |" in (out / "images.md").read_text()
    # The report can be rebuilt from the per-data-set records alone.
    (out / "images.md").unlink()
    assert bench.main(["--report-only", "--out", str(out)]) == 0
    assert "| FLIPD | unet |" in (out / "images.md").read_text()
    with (out / "images_digits8_per_image.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == TINY.datasets[0].n_eval


def test_unknown_dataset_is_an_error(tmp_path, capsys):
    assert bench.main(["--preset", "tiny", "--datasets", "cifar", "--out", str(tmp_path)]) == 2
    assert "cifar" in capsys.readouterr().err
