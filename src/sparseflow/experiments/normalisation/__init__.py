"""Experiment: normalisation."""
