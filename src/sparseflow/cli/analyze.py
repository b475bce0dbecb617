"""``sparseflow analyze``: connectivity and signal of a run or checkpoint."""

from __future__ import annotations
