"""``sparseflow stain`` (being written)."""
