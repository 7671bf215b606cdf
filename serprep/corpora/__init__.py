"""Corpus readers: one module per corpus, each exposing ``read_corpus(root) -> list[Utterance]``.

Readers only parse the on-disk layout (../shared/corpora.md); they never decode audio. Class
maps, subsets and folds are data in ``manifests/`` (see :mod:`serprep.labels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import CorpusLayoutError


@dataclass
class Utterance:
    """One labelled utterance as the corpus describes it."""

    utt_id: str
    corpus: str
    session: str
    speaker: str
    gender: str  # "F" or "M": the speaking actor
    emotion_raw: str  # the corpus' own consensus code
    path: str  # POSIX path of the audio, relative to the corpus root
    duration: float | None = None
    extras: dict[str, object] = field(default_factory=dict)


def _readers() -> dict[str, Callable[[Path], list[Utterance]]]:
    from . import iemocap, msp_improv

    return {"iemocap": iemocap.read_corpus, "msp-improv": msp_improv.read_corpus}


CORPORA = ("iemocap", "msp-improv")


def read_corpus(corpus: str, root: str | Path) -> list[Utterance]:
    """Read ``root`` with the reader registered for ``corpus``."""
    readers = _readers()
    if corpus not in readers:
        raise CorpusLayoutError(f"unknown corpus {corpus!r}; known: {', '.join(sorted(readers))}")
    root = Path(root)
    if not root.is_dir():
        raise CorpusLayoutError(f"{root}: corpus root is not a directory")
    return readers[corpus](root)


def describe_folder(path: Path, limit: int = 8) -> str:
    """A short listing of what a folder holds, for layout errors."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if not names:
        return "an empty folder"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
