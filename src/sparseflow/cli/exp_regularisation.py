"""``sparseflow exp_regularisation`` (being written)."""
