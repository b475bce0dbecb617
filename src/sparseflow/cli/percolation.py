"""``sparseflow experiment percolation``."""

from __future__ import annotations
