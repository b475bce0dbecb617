"""``sparseflow exp_hopfield`` (being written)."""
