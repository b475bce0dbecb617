"""Experiment: percolation."""
