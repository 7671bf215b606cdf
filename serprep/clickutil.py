"""A click group whose usage errors are one ``error:`` line, like every other error.

click's own form ("Usage: ...", "Try '... --help' for help.", a blank line, "Error: ...")
is four lines on stderr; both ``serprep`` and ``sertrain`` promise one line naming the
problem, exit 2 for a bad argument. ``--help``, ``--version`` and a bare command (which
prints the help) behave as in click.
"""

from __future__ import annotations

import sys
from typing import Any

import click


class OneLineErrorGroup(click.Group):
    """:class:`click.Group` that reports usage errors as ``error: <message> (see <cmd> --help)``."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # a bare command: its help, as click does
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
            sys.exit(2)
        except click.UsageError as exc:
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)
