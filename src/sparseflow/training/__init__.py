"""Training: the fit loop, jobs (configs), checkpoints, data-parallel training, datasets and reference models, and
the child processes every command starts (:mod:`sparseflow.training.processes`)."""
