"""``sparseflow exp_normalisation`` (being written)."""
