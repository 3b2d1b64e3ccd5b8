"""The sampling benchmark (``python -m flipd.bench sampling``) on a tiny configuration."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")

from flipd.bench.__main__ import main as bench_main  # noqa: E402


def test_tiny_sampling_run_writes_its_record_and_report(tmp_path):
    out = tmp_path / "sampling_test"
    assert bench_main(["sampling", "--n", "2000", "--seeds", "1", "--settings", "ddpm:400", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["command"].startswith("python -m flipd.bench sampling --n 2000")
    (record,) = result["records"]
    assert (record["sampler"], record["steps"]) == ("ddpm", 400)
    # 2000 samples: a sampling error of 3.2% per variance; DDPM with 400 steps is within about 4%.
    assert record["minor_ratio"] == pytest.approx(1, abs=0.15) and record["major_ratio"] == pytest.approx(1, abs=0.15)
    markdown = out.with_suffix(".md").read_text()
    assert "| ddpm | 400 |" in markdown and result["command"] in markdown
    out.with_suffix(".md").unlink()
    assert bench_main(["sampling", "--report-only", "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text() == markdown


def test_a_bad_setting_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["sampling", "--settings", "euler:10"])
    assert exit_info.value.code == 2 and "SAMPLER:STEPS" in capsys.readouterr().err
