"""Exceptions whose message is shown to the user as one line by the CLI."""

from __future__ import annotations


class SertrainError(Exception):
    """A run cannot proceed; ``str(exc)`` is a one-line explanation.

    ``exit_code`` is what the CLI exits with: 1 for a failure while running, 2 (the
    click convention for usage errors) for a bad argument such as a fold number that does
    not exist or a file that is missing.
    """

    exit_code = 1


class InputError(SertrainError):
    """A command-line argument or input file is wrong (missing, out of range, incompatible)."""

    exit_code = 2
