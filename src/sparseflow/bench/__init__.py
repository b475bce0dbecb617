"""Benchmarks run by ``sparseflow bench``: measured ratios against a dense baseline in the same run."""
