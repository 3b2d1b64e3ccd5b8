"""The synthetic benchmark runner, end to end on its tiny configuration."""

from __future__ import annotations

import csv
import json

import pytest

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


def test_suites_and_recipes():
    assert SUITES["toy"] == ("lollipop", "doughnut", "swiss_roll")
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
