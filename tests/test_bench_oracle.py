"""The perfect-model benchmark (``python -m flipd.bench oracle``) on few points."""

from __future__ import annotations

import json

import pytest

from flipd.bench.__main__ import main as bench_main

MIXTURE = "mixture:affine:D=10:dims=5:latent=normal"


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle") / "oracle_test"
    argv = ["oracle", "--datasets", "lollipop", MIXTURE, "--t0", "0.01", "0.1", "--refinements", "1", "2",
            "--n-eval", "128", "--threads", "1", "--out", str(out)]
    assert bench_main(argv) == 0
    return out, json.loads(out.with_suffix(".json").read_text())


def test_rows_cover_every_data_set_noise_level_and_refinement(oracle_run):
    _, result = oracle_run
    assert result["command"].startswith("python -m flipd.bench oracle --datasets lollipop")
    assert set(result["versions"]) >= {"flipd", "python", "torch", "numpy"}
    assert result["machine"]["cores"] >= 1
    keys = [(row["dataset"], row["t0"], row["refinement"]) for row in result["rows"]]
    # Quadrature rules run at every refinement, closed forms once per t0.
    assert keys == [("lollipop", 0.01, 1), ("lollipop", 0.01, 2), ("lollipop", 0.1, 1), ("lollipop", 0.1, 2),
                    (MIXTURE, 0.01, "closed form"), (MIXTURE, 0.1, "closed form")]


def test_a_perfect_model_is_nearly_exact_at_small_noise_and_the_quadrature_converges(oracle_run):
    _, result = oracle_run
    mae = {(row["dataset"], row["t0"], row["refinement"]): row["mae"] for row in result["rows"]}
    # Committed on 4096 points: 0.003 at t0 = 0.01 for affine {5}, and FLIPD's bias grows with t0.
    assert mae[(MIXTURE, 0.01, "closed form")] < 0.05 < mae[(MIXTURE, 0.1, "closed form")]
    # Halving the node spacing moves the lollipop's MAE by little: the rule has converged.
    for t0 in (0.01, 0.1):
        assert abs(mae[("lollipop", t0, 1)] - mae[("lollipop", t0, 2)]) < 0.03


def test_report_only_rebuilds_the_same_markdown(oracle_run):
    out, _ = oracle_run
    markdown = out.with_suffix(".md").read_text()
    assert "| lollipop | 0.010 |" in markdown and "MAE, refinement 2" in markdown
    out.with_suffix(".md").unlink()
    assert bench_main(["oracle", "--report-only", "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text() == markdown
