"""Helpers that build small stores for tests (plain functions, no pytest)."""

from __future__ import annotations

from pathlib import Path

from serprep.build import BuildOptions, BuildSummary, build_store


def build(corpus: str, root: Path, out: Path, **options) -> BuildSummary:
    """Build quietly in-process (``jobs=1`` unless given) and return the summary."""
    options.setdefault("jobs", 1)
    options.setdefault("progress", False)
    return build_store(BuildOptions(corpus=corpus, root=root, out=out, **options), log=lambda m: None)
