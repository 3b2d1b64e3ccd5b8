"""The synthetic benchmark runner, end to end on its tiny configuration."""

from __future__ import annotations

import csv
import json

import pytest

import flipd

from flipd.bench.synthetic import SUITES, recipe_for
from flipd.bench.__main__ import main
from flipd.bench.synthetic import METHODS, _recipe_hash

FAST_METHODS = ["flipd", "nb", "mle"]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_tiny_run_writes_parseable_results(tmp_path):
    out, cache = tmp_path / "results", tmp_path / "cache"
    argv = ["synthetic", "--suite", "toy", "--tiny", "--datasets", "lollipop", "--methods", *FAST_METHODS,
            "--n-eval", "48", "--out-dir", str(out), "--cache-dir", str(cache), "--quiet"]
    assert main(argv) == 0
    rows = read_csv(out / "synthetic_toy_tiny.csv")
    assert [row["method"] for row in rows] == FAST_METHODS
    for row in rows:
        assert row["dataset"] == "lollipop" and int(row["n_points"]) == 48
        assert float(row["seconds"]) >= 0
        float(row["mae"]), float(row["concordance_harrell"]), float(row["concordance_all_pairs"])
    flipd_mae = float(rows[0]["mae"])
    assert 0 <= flipd_mae < 3
    markdown = (out / "synthetic_toy_tiny.md").read_text()
    assert "python -m flipd.bench synthetic --suite toy --tiny" in markdown
    assert "## Mean absolute error" in markdown and "| lollipop |" in markdown
    report = json.loads((out / "synthetic_toy_tiny.json").read_text())
    assert report["datasets"][0]["training"]["loaded_from_cache"] is False
    assert report["flipd"]["t0"] == 0.05 and report["versions"]["torch"]
    assert report["datasets"][0]["methods"]["flipd"]["settings"]["trace"] == "exact"
    cached = [path for path in cache.iterdir() if path.name != "results"]
    assert len(cached) == 1 and (cached[0] / "config.json").exists()

    # Finished data sets are saved: the same command again resumes from them, evaluating nothing.
    saved = list((cache / "results" / "synthetic_toy_tiny").glob("lollipop-*.json"))
    assert len(saved) == 1
    (out / "synthetic_toy_tiny.csv").unlink()
    assert main(argv) == 0
    resumed = json.loads((out / "synthetic_toy_tiny.json").read_text())
    assert resumed["datasets"] == report["datasets"]  # timings included: nothing ran again
    assert read_csv(out / "synthetic_toy_tiny.csv") == rows

    # More methods later: only the missing one runs; --report-only then reports all four.
    more = [*argv[:argv.index("--methods")], "--methods", "flipd", "twonn", "--n-eval", "48", "--out-dir", str(out),
            "--cache-dir", str(cache), "--quiet"]
    assert main(more) == 0
    extended = json.loads((out / "synthetic_toy_tiny.json").read_text())["datasets"][0]["methods"]
    assert extended["flipd"] == report["datasets"][0]["methods"]["flipd"] and set(extended) == {*FAST_METHODS, "twonn"}
    assert main(["synthetic", "--suite", "toy", "--tiny", "--n-eval", "48", "--out-dir", str(out), "--cache-dir",
                 str(cache), "--quiet", "--report-only"]) == 0
    assert [row["method"] for row in read_csv(out / "synthetic_toy_tiny.csv")] == ["flipd", "nb", "mle", "twonn"]
    assert "TwoNN" in (out / "synthetic_toy_tiny.md").read_text()

    # A second run loads the cached model instead of training again.
    assert main(argv[:-1] + ["--methods", "flipd", "--quiet", "--name", "again"]) == 0
    again = json.loads((out / "again.json").read_text())
    assert again["datasets"][0]["training"]["loaded_from_cache"] is True
    assert again["datasets"][0]["methods"]["flipd"]["mae"] == report["datasets"][0]["methods"]["flipd"]["mae"]


@pytest.mark.slow
def test_tiny_run_of_a_mixture_with_every_method(tmp_path):
    argv = ["synthetic", "--suite", "small", "--tiny", "--datasets", "mixture:affine:D=10:dims=2,4,8",
            "--n-eval", "40", "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(argv) == 0
    rows = read_csv(tmp_path / "synthetic_small_tiny.csv")
    assert [row["method"] for row in rows] == list(METHODS)


def test_tiny_curved_run_compares_the_rules_with_the_fixed_levels(tmp_path):
    methods = ["flipd", "flipd_knee", "flipd_plateau", "flipd_calibrated", "flipd_band", "flipd_t0_0.01",
               "flipd_t0_0.02", "flipd_t0_0.1", "lpca"]
    argv = ["synthetic", "--suite", "curved", "--tiny", "--datasets", "helix", "--methods", *methods,
            "--n-eval", "32", "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "synthetic_curved_tiny.json").read_text())
    (rules,) = report["summary"]["automatic_noise_level"]
    assert rules["fixed_levels_run"] == [0.01, 0.02, 0.05, 0.1]
    fixed = {t0: report["datasets"][0]["methods"][m]["mae"]
             for m, t0 in {"flipd": 0.05, "flipd_t0_0.01": 0.01, "flipd_t0_0.02": 0.02, "flipd_t0_0.1": 0.1}.items()}
    assert rules["best_fixed_mae"] == min(fixed.values())
    plateau = report["datasets"][0]["methods"]["flipd_plateau"]["settings"]
    assert 0 <= plateau["found_fraction"] <= 1 and plateau["not_found"] == rules["flipd_plateau_not_found"]
    knee = report["datasets"][0]["methods"]["flipd_knee"]["settings"]
    assert 0 <= knee["at_first_level_fraction"] <= 1 and 0.05 < knee["first_level_t0"] < 0.07
    calibrated = report["datasets"][0]["methods"]["flipd_calibrated"]
    assert calibrated["settings"]["rule_points"] == 32 and rules["flipd_calibrated_mae"] == calibrated["mae"]
    assert rules["flipd_calibrated_median_t0"] in flipd.plateau_grid().tolist()
    text = (tmp_path / "synthetic_curved_tiny.md").read_text()
    band = report["datasets"][0]["methods"]["flipd_band"]["settings"]
    assert band["median_t0"] == rules["flipd_calibrated_median_t0"]  # the band starts at the calibrated level
    assert band["read_levels"] >= 1 and band["read_t0_last"] >= band["median_t0"] and band["band_contrast"] >= 0
    assert rules["flipd_band_mae"] == report["datasets"][0]["methods"]["flipd_band"]["mae"]
    assert "## Automatic noise level" in text and "calibrated within 0.1" in text and "band within 0.1" in text


def test_a_smaller_budget_replaces_the_recipe(tmp_path):
    from flipd.bench.synthetic import _with_budget

    plan = _with_budget(steps=300, n_train=5000, widths=[64, 64])("helix")
    assert plan.train.steps == 300 and plan.n_train == 5000 and plan.network["widths"] == (64, 64)
    assert plan.train.standardize == "scalar"  # curved shapes keep their geometry
    assert _with_budget(steps=None, n_train=None, widths=None)("lollipop") == recipe_for("lollipop")
    medium = "mixture:squiggly:D=100:dims=50:omega=1"
    emphasised = _with_budget(steps=None, n_train=None, widths=None, low_t_fraction=0.8)(medium)
    assert emphasised.train.low_t_fraction == 0.8 and emphasised.train.low_t_max == recipe_for(medium).train.low_t_max
    assert emphasised.train.steps == recipe_for(medium).train.steps
    assert _with_budget(steps=None, n_train=None, widths=None, low_t_fraction=0.8)("swiss_roll").train.low_t_max == 0.2
    with pytest.raises(SystemExit):
        main(["synthetic", "--suite", "toy", "--steps", "0"])


def test_suites_and_recipes():
    assert SUITES["toy"] == ("lollipop", "doughnut", "swiss_roll")
    assert len(SUITES["curved"]) == 4
    assert len(SUITES["small"]) == 10 and len(SUITES["medium"]) == 4
    toy, mixture = recipe_for("doughnut"), recipe_for("mixture:affine:D=10:dims=5")
    assert toy.train.standardize == "none" and mixture.train.standardize == "per_coordinate"
    # The cache key changes with the recipe.
    assert _recipe_hash("doughnut", toy, 3) != _recipe_hash("doughnut", recipe_for("doughnut", seed=1), 3)
    assert recipe_for("lollipop", tiny=True).train.steps < 100


def test_bad_arguments_are_named(tmp_path):
    from flipd.bench.synthetic import run_synthetic

    with pytest.raises(ValueError, match="Unknown suite 'huge'"):
        run_synthetic("huge", out_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown methods"):
        run_synthetic("toy", methods=["flipd", "magic"], out_dir=tmp_path)
    with pytest.raises(SystemExit):
        main(["synthetic", "--suite", "toy", "--methods", "magic"])


def test_rules_benchmark_with_the_perfect_model(tmp_path):
    """The plateau rule with a closed-form model reads the true LID (within 0.1 of the best fixed t0)."""
    out = tmp_path / "rules"
    assert main(["rules", "--datasets", "mixture:affine:D=10:dims=5:latent=normal", "--n-points", "24",
                 "--curved", "helix", "--atoms", "2000", "--threads", "1", "--out", str(out)]) == 0
    row, helix = json.loads(out.with_suffix(".json").read_text())["datasets"]
    assert helix["dataset"] == "helix:D=13:turns=20:tube=0.1" and "2000 atoms" in helix["perfect_model"]
    assert set(row["fixed"]) == {"0.01", "0.02", "0.05", "0.1"}
    assert row["best_fixed_mae"] == min(row["fixed"].values())
    assert row["plateau"]["within_0.1_of_best_fixed"] and row["plateau"]["mae"] < 0.05
    # with a perfect model the calibrated rule reads the smallest level, where FLIPD is exact
    assert row["calibrated"]["within_0.1_of_best_fixed"] and row["calibrated"]["mae"] < 0.05
    assert row["calibrated"]["t0"] == pytest.approx(float(flipd.plateau_grid()[0]))
    assert 0 <= row["knee"]["at_first_level_fraction"] <= 1
    assert "python -m flipd.bench rules" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        main(["rules", "--datasets", "mixture:squiggly:D=10:dims=5", "--out", str(out)])
