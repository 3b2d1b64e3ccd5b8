"""The Stable-Diffusion-scale benchmark's code path, run end to end on a tiny UNet."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")

from flipd.bench import scale  # noqa: E402
from flipd.bench.__main__ import main as bench_main  # noqa: E402


def test_tiny_scale_benchmark_writes_its_report(tmp_path):
    out = tmp_path / "results"
    assert scale.main(["--config", "tiny", "--repeats", "1", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads((out / "scale.json").read_text())
    derived = result["derived"]
    assert derived["ambient_dim"] == 4 * 8 * 8
    assert derived["nb_score_evaluations"] == 4 * derived["ambient_dim"]
    for key in ("forward_seconds", "flipd_seconds_per_image", "forward_peak_rss_mib", "flipd_peak_rss_mib",
                "nb_seconds_per_image_extrapolated"):
        assert derived[key] > 0
    assert result["timing"]["mode"] == "reverse"
    assert result["flipd_memory"]["parameter_gradients"] is False
    assert set(result["targets"]) >= {"time_met", "memory_met"}
    assert result["command"].startswith("python -m flipd.bench scale --config tiny")
    report = (out / "scale.md").read_text()
    assert "random (timing only)" in report and result["command"] in report


def test_bench_dispatch_rejects_unknown_benchmarks(capsys):
    assert bench_main(["no-such-benchmark"]) == 2
    assert "usage" in capsys.readouterr().err


def test_unknown_config_is_rejected():
    with pytest.raises(ValueError, match="Unknown config"):
        scale.build_model("sd99")
