"""Every benchmark is registered in one place and answers ``python -m flipd.bench NAME --help``."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import flipd
from flipd.bench.__main__ import BENCHMARKS, main as bench_main


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_each_benchmark_has_a_main_and_its_own_usage(name, capsys):
    module = importlib.import_module(BENCHMARKS[name])
    assert callable(module.main)
    with pytest.raises(SystemExit) as exit_info:
        bench_main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: python -m flipd.bench {name}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["images", "oracle", "recipes", "sampling", "scale", "speed"])
def test_report_only_without_a_record_is_exit_status_2_naming_it(name, tmp_path, capsys):
    assert bench_main([name, "--report-only", "--out", str(tmp_path / "no_such_run")]) == 2
    message = capsys.readouterr().err
    assert "no_such_run" in message and "--out" in message


def test_every_benchmark_module_is_registered():
    bench = Path(flipd.__file__).parent / "bench"
    modules = {path.stem for path in bench.glob("*.py") if not path.stem.startswith("_")}
    modules |= {path.parent.name for path in bench.glob("*/__init__.py")}
    assert {BENCHMARKS[name].rsplit(".", 1)[1] for name in BENCHMARKS} == modules
