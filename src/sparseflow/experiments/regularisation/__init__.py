"""Experiment: regularisation."""
