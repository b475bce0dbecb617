"""``sparseflow experiment meanfield`` and ``sparseflow experiment init``."""

from __future__ import annotations
