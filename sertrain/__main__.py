"""``python -m sertrain`` = the ``sertrain`` command."""

from .cli import main

main()
