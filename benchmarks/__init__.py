"""Benchmarks (`make bench`): side-by-side ratios, never absolute-time assertions. Run `python -m benchmarks.run`."""
