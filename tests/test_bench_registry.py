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


def test_every_benchmark_module_is_registered():
    bench = Path(flipd.__file__).parent / "bench"
    modules = {path.stem for path in bench.glob("*.py") if not path.stem.startswith("_")}
    modules |= {path.parent.name for path in bench.glob("*/__init__.py")}
    assert {BENCHMARKS[name].rsplit(".", 1)[1] for name in BENCHMARKS} == modules
