"""The streaming-memory and GPU-scale benchmarks, run end to end on tiny settings."""

from __future__ import annotations

import json

import pytest

from flipd.bench.__main__ import main as bench_main


@pytest.mark.slow
def test_sd_scale_gpu_script_runs_tiny_on_the_cpu(tmp_path):
    pytest.importorskip("diffusers")
    assert bench_main(["sd_scale_gpu", "--tiny", "--device", "cpu", "--dtypes", "float32", "bfloat16", "--points", "8",
                        "--repeats", "1", "--max-batch", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sd_scale_gpu_tiny.json").read_text())
    assert [run["dtype"] for run in result["runs"]] == ["float32", "bfloat16"]
    assert all(run["batch"] == 2 and run["flipd_seconds_per_image"] > 0 for run in result["runs"])
    agreement = result["agreement"]["bfloat16"]
    assert 0 < agreement["max_abs_difference"] < 5 and agreement["spearman"] > 0.9
    report = (tmp_path / "sd_scale_gpu_tiny.md").read_text()
    assert "random weights" in report and result["command"] in report
    assert bench_main(["sd_scale_gpu", "--tiny", "--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "sd_scale_gpu_tiny.md").read_text() == report


@pytest.mark.slow
def test_stream_memory_script_measures_the_command(tmp_path):
    assert bench_main(["stream_memory", "--counts", "30", "90", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "stream_memory.json").read_text())
    assert [run["images"] for run in result["runs"]] == [30, 90]
    assert all(run["peak_rss_mib"] > 50 for run in result["runs"])
    assert result["peak_ratio"] == result["runs"][1]["peak_rss_mib"] / result["runs"][0]["peak_rss_mib"]
    report = (tmp_path / "stream_memory.md").read_text()
    assert "flipd estimate" in report and result["command"].startswith("python -m flipd.bench stream_memory")
    assert bench_main(["stream_memory", "--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "stream_memory.md").read_text() == report


@pytest.mark.slow
def test_stream_memory_script_measures_flipd_train(tmp_path):
    assert bench_main(["stream_memory", "--command", "train", "--counts", "30", "90", "--steps", "3",
                       "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "stream_memory_train.json").read_text())
    assert not (tmp_path / "stream_memory.json").exists()
    assert [run["images"] for run in result["runs"]] == [30, 90] and result["settings"]["steps"] == 3
    assert all(run["peak_rss_mib"] > 50 and " train " in f" {run['command']} " for run in result["runs"])
    assert all(f"-n {count} --steps 3" in run["command"] for run, count in zip(result["runs"], (30, 90)))
    report = (tmp_path / "stream_memory_train.md").read_text()
    assert "flipd train" in report and "--command train" in result["command"]
    assert bench_main(["stream_memory", "--command", "train", "--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "stream_memory_train.md").read_text() == report
