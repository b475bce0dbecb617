"""``sparseflow bench storage``: bytes of sparse layers in every format against the entropy bound."""
