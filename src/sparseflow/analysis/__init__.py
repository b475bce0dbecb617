"""Analysis of sparse networks: connectivity (percolation, dead units, effective sparsity) and signal
propagation (mean-field prediction next to measured per-layer variance). Pure functions returning frozen
dataclasses; they never mutate the model."""
