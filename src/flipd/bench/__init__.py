"""Benchmarks, run as ``python -m flipd.bench NAME [options]``; each lives in its own module."""
