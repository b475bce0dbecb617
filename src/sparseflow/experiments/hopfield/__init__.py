"""Experiment: hopfield."""
