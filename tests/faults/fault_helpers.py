"""Helpers for the fault-injection tests: run a command as a user does, check what it left.

Commands run as real subprocesses (``python -m serprep.cli`` / ``python -m sertrain``) with
this checkout first on ``PYTHONPATH``, so exit codes, signals, stderr and files left on disk
are exactly what a user would meet. Plain functions only (no pytest fixtures).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Ran:
    """What one command did."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess: this checkout importable first, no colour, no progress."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def command(tool: str, *args: object) -> list[str]:
    """argv for ``serprep ...`` or ``sertrain ...`` run from this checkout."""
    module = {"serprep": "serprep.cli", "sertrain": "sertrain"}[tool]
    return [sys.executable, "-m", module, *[str(a) for a in args]]


def run(tool: str, *args: object, timeout: float = 600, **env: str) -> Ran:
    """Run ``tool args`` to completion and capture everything."""
    argv = command(tool, *args)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=cli_env(**env))
    return Ran(argv, p.returncode, p.stdout, p.stderr)


def assert_one_line_error(ran: Ran, *fragments: str, code: int | None = None) -> str:
    """The command failed (exit ``code``, default any 1..125: never a signal) with exactly one
    ``error: ...`` line on stderr naming every fragment; returns that line."""
    assert ran.returncode != 0, f"expected a failure, got exit 0\n{ran.stdout}\n{ran.stderr}"
    if code is None:
        assert 0 < ran.returncode < 126, f"exit {ran.returncode} (a signal or crash)\n{ran.stderr}"
    else:
        assert ran.returncode == code, f"exit {ran.returncode}, expected {code}\n{ran.stderr}"
    errors = [line for line in ran.stderr_lines if line.startswith("error: ")]
    assert len(errors) == 1, f"expected one error line:\n{ran.stderr}"
    assert "Traceback" not in ran.stderr, ran.stderr
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (or of ``root`` itself), for
    "no input changed" checks."""
    root = Path(root)
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def listing(folder: Path) -> list[str]:
    """Names in ``folder`` (hidden ones included), sorted: what a command left beside its output."""
    return sorted(p.name for p in Path(folder).iterdir())
