"""Experiments: one folder per principle (config, run, report), listed in :mod:`sparseflow.experiments.registry`."""
