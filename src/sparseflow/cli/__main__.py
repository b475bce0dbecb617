"""``python -m sparseflow.cli``."""

from sparseflow.cli import main

main()
