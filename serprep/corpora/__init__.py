"""Corpus readers: one module per corpus, each exposing ``read_corpus(root) -> CorpusListing``.

Readers only parse the on-disk layout (docs/corpora.md); they never decode audio. Class
maps, subsets and folds are data in ``manifests/`` (see :mod:`serprep.labels`). A label line
a reader cannot use does not end the build: it becomes a :class:`LabelIssue` (the utterance
is skipped and recorded), and doubtful but usable lines become warnings. Layout errors (no
corpus at the root, a missing label folder, an utterance labelled twice) stay fatal.
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


@dataclass
class LabelIssue:
    """A label line the reader skipped (``skipped``) or used with a warning."""

    where: str  # label file relative to the corpus root, with ":<line>"
    message: str
    utt_id: str = ""
    skipped: bool = True


@dataclass
class CorpusListing:
    """What a reader found: the usable utterances and the label lines it had to question."""

    utterances: list[Utterance]
    issues: list[LabelIssue] = field(default_factory=list)


def _readers() -> dict[str, Callable[[Path], CorpusListing]]:
    from . import iemocap, msp_improv

    return {"iemocap": iemocap.read_corpus, "msp-improv": msp_improv.read_corpus}


CORPORA = ("iemocap", "msp-improv")


def read_corpus(corpus: str, root: str | Path) -> CorpusListing:
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
