"""Adaptive batching benchmark (issue 8): `python -m benchmarks.adaptive`; see run.py."""
