"""Experiment: sparse_init."""
