"""The 1-process against torchrun benchmark's code path, on a few points."""

from __future__ import annotations

import json

import pytest

from flipd.bench import distributed


@pytest.mark.slow
def test_tiny_distributed_benchmark_writes_its_report(tmp_path):
    out = tmp_path / "results"
    arguments = ["--points", "300", "--chunk-size", "50", "--repeats", "1", "--work", str(tmp_path / "work"),
                 "--out", str(out)]
    assert distributed.main(arguments) == 0
    result = json.loads((out / "distributed.json").read_text())
    assert result["tables_equal"] == [True]
    assert [run["processes"] for run in result["runs"]] == [1, 2]
    assert [run["chunk_ranks"] for run in result["runs"]] == [[0], [0, 1]]
    for count in ("1", "2"):
        assert result["medians"][count]["estimation_points_per_s"] > 0
    assert result["speedup"]["estimation_points_per_s"] > 0
    assert result["command"].startswith("python -m flipd.bench distributed --points 300")
    report = (out / "distributed.md").read_text()
    assert result["command"] in report and "timing only" in report
