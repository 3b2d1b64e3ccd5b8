"""The rule-cost benchmark (python -m flipd.bench rule_cost), run on a tiny model."""

from __future__ import annotations

import json

from flipd.bench.__main__ import main as bench_main


def test_rule_cost_times_each_rule_against_the_fixed_level_and_the_band_paths_agree(tmp_path):
    rules = ["calibrated", "band", "band stream", "band two calls"]
    assert bench_main(["rule_cost", "--tiny", "--points", "60", "--repeats", "2", "--specs",
                       "mixture:affine:D=10:dims=2,4,8", "--rules", *rules, "--out", str(tmp_path),
                       "--cache-dir", str(tmp_path / "cache"), "--name", "cost"]) == 0
    report = json.loads((tmp_path / "cost.json").read_text())
    assert report["rules"] == ["fixed", *rules]  # the fixed level is always timed: it is every ratio's reference
    (record,) = report["records"]
    assert record["median_ratio"]["fixed"] == 1.0 and all(len(record["seconds"][rule]) == 2 for rule in report["rules"])
    assert all(record["median_ratio"][rule] > 0 for rule in rules)
    band = record["band"]
    assert band["sample"] == 60 and band["levels"] >= band["levels_read"] >= 1
    assert band["max_difference"] < 1e-4  # the tensor, the stream and the two calls read the same estimates
    assert set(record["mae"]) == set(report["rules"])
    text = (tmp_path / "cost.md").read_text()
    assert report["command"] in text and "band two calls" in text
    assert bench_main(["rule_cost", "--report-only", "--out", str(tmp_path), "--name", "cost"]) == 0
    assert (tmp_path / "cost.md").read_text() == text
