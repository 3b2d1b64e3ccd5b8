"""The speed benchmark (``python -m flipd.bench speed``) on a tiny configuration."""

from __future__ import annotations

import json

import pytest

from flipd.bench import speed
from flipd.bench.__main__ import main as bench_main


def test_tiny_speed_run_writes_its_record_and_report(tmp_path):
    out = tmp_path / "speed_test"
    argv = ["speed", "--dims", "4", "--batch", "16", "--repeats", "2", "--threads", "1", "--networks", "plain",
            "--skip-exact", "--memory-dims", "--out", str(out)]
    assert bench_main(argv) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["command"].startswith("python -m flipd.bench speed --dims 4")
    assert result["memory"] == []
    (row,) = result["rows"]
    assert (row["network"], row["D"], row["batch"]) == ("plain", 4, 16)
    for name in ("forward", "autograd_floor", "hutchinson1_reverse", "hutchinson1_forward", "hutchinson50_reverse"):
        assert row[f"{name}_s"] > 0
    assert "exact_reverse_s" not in row
    markdown = out.with_suffix(".md").read_text()
    assert "| plain MLP 4 × 1024 | 4 |" in markdown and result["command"] in markdown
    # The report is a function of the record alone.
    out.with_suffix(".md").unlink()
    assert bench_main(["speed", "--report-only", "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text() == markdown


@pytest.mark.slow
def test_peak_memory_is_measured_in_a_fresh_process_of_this_flipd():
    # The child imports flipd.bench.speed from the same source tree and prints one JSON line.
    assert speed.peak_memory(16, 32, None, "exact") >= 0
