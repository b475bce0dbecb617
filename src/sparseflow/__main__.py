"""``python -m sparseflow`` (and ``torchrun ... -m sparseflow train ...``): the command-line tool."""

from sparseflow.cli import main

main()
