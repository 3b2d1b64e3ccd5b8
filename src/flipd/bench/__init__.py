"""Benchmark runners: ``python -m flipd.bench synthetic --suite toy|small|medium``.

See :mod:`flipd.bench.synthetic` for what is run and written.
"""

from .synthetic import SUITES, Recipe, recipe_for, run_synthetic

__all__ = ["SUITES", "Recipe", "recipe_for", "run_synthetic"]
