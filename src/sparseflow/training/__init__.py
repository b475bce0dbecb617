"""Training: the fit loop, jobs (configs), checkpoints, data-parallel training, datasets and reference models."""
