"""Benchmark runners (``python -m flipd.bench ...``)."""
