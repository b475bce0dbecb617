"""Experiment: golgi."""
