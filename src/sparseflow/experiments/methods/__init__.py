"""Experiment: methods."""
