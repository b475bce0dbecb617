"""``sparseflow exp_methods`` (being written)."""
