"""The streaming-memory and GPU-scale benchmark scripts, run end to end on tiny settings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sd_scale_gpu_script_runs_tiny_on_the_cpu(tmp_path):
    pytest.importorskip("diffusers")
    script = _script("sd_scale_gpu")
    assert script.main(["--tiny", "--device", "cpu", "--dtypes", "float32", "bfloat16", "--points", "8",
                        "--repeats", "1", "--max-batch", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sd_scale_gpu_tiny.json").read_text())
    assert [run["dtype"] for run in result["runs"]] == ["float32", "bfloat16"]
    assert all(run["batch"] == 2 and run["flipd_seconds_per_image"] > 0 for run in result["runs"])
    agreement = result["agreement"]["bfloat16"]
    assert 0 < agreement["max_abs_difference"] < 5 and agreement["spearman"] > 0.9
    assert "random weights" in (tmp_path / "sd_scale_gpu_tiny.md").read_text()


@pytest.mark.slow
def test_stream_memory_script_measures_the_command(tmp_path):
    script = _script("stream_memory")
    assert script.main(["--counts", "30", "90", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "stream_memory.json").read_text())
    assert [run["images"] for run in result["runs"]] == [30, 90]
    assert all(run["peak_rss_mib"] > 50 for run in result["runs"])
    assert result["peak_ratio"] == result["runs"][1]["peak_rss_mib"] / result["runs"][0]["peak_rss_mib"]
    assert "flipd estimate" in (tmp_path / "stream_memory.md").read_text()
