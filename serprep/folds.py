"""Resolve fold definitions (``manifests/<corpus>.toml``) against the speakers of a corpus."""

from __future__ import annotations

from dataclasses import dataclass

from .labels import FoldDefinition


@dataclass(frozen=True)
class ResolvedFold:
    """Speakers of each part of one fold; every present speaker is in exactly one part."""

    number: int
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]


def resolve_folds(definitions: list[FoldDefinition], speakers: set[str]) -> tuple[list[ResolvedFold], list[str]]:
    """Folds whose test speakers are present, numbered 1..K, and notes on the folds dropped.

    Training speakers are all present speakers that are neither test nor validation, so the
    three parts are disjoint by construction.
    """
    folds: list[ResolvedFold] = []
    notes: list[str] = []
    for i, definition in enumerate(definitions, start=1):
        test = tuple(s for s in definition.test if s in speakers)
        validation = tuple(s for s in definition.validation if s in speakers and s not in test)
        train = tuple(sorted(speakers - set(test) - set(validation)))
        if not test:
            notes.append(f"fold {i}: none of its test speakers {list(definition.test)} is in the corpus; dropped")
            continue
        if not train:
            notes.append(f"fold {i}: no training speakers left; dropped")
            continue
        folds.append(ResolvedFold(len(folds) + 1, train, validation, test))
    return folds, notes
