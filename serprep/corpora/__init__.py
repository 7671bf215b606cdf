"""The corpus registry: one reader module per corpus, found here by itself.

A corpus is one module in this package that defines ``INFO = CorpusInfo(...)`` (its name,
what ``--root`` names, how speakers and genders are found, its dimensional ratings, its
manifest file and its ``read_corpus(root) -> CorpusListing``) plus its label manifest,
``serprep/manifests/<manifest>``. Nothing else lists corpora: the CLI's choices, ``serprep
info``, protocol checks and the README's corpus table (``serprep corpora --markdown``) all come
from :func:`registry`.

Readers only parse the on-disk layout (docs/corpora.md); they never decode audio. Class
maps, subsets and folds are data in the manifests (see :mod:`serprep.labels`). A label line
a reader cannot use does not end the build: it becomes a :class:`LabelIssue` (the utterance
is skipped and recorded), and doubtful but usable lines become warnings. Layout errors (no
corpus at the root, a missing label folder, an utterance labelled twice) stay fatal.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import lru_cache
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
    gender: str  # "F" or "M": the speaking actor; "U" where the corpus does not say
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


@dataclass(frozen=True)
class CorpusInfo:
    """What the registry knows about one corpus (its reader module's ``INFO``)."""

    name: str  # the CLI name: ``serprep build <name>``
    title: str  # how papers name it
    manifest: str  # label manifest file in serprep/manifests/
    root: str  # what --root names
    speakers: str  # where speaker and gender come from
    read: Callable[[Path], CorpusListing]
    #: Dimensional ratings the reader keeps as manifest columns, and their scale.
    dimensions: tuple[str, ...] = ()
    scale: str = ""  # "low-high", e.g. "1-5": the scale of every dimension above

    def rating_scale(self) -> tuple[float, float] | None:
        """``(low, high)`` of :attr:`scale`; None for a corpus without dimensional ratings."""
        if not self.dimensions:
            return None
        try:
            lo, hi = (float(x) for x in self.scale.split("-"))
        except ValueError:
            raise ValueError(f"corpus {self.name!r}: scale {self.scale!r} is not 'low-high'") from None
        return lo, hi


@lru_cache(maxsize=1)
def registry() -> dict[str, CorpusInfo]:
    """Every corpus module of this package, by name (sorted)."""
    found: dict[str, CorpusInfo] = {}
    for module in pkgutil.iter_modules(__path__):
        info = getattr(importlib.import_module(f"{__name__}.{module.name}"), "INFO", None)
        if not isinstance(info, CorpusInfo):
            continue
        if info.name in found:
            raise RuntimeError(f"corpus {info.name!r} is registered twice ({module.name})")
        found[info.name] = info
    return dict(sorted(found.items()))


def corpus_names() -> list[str]:
    """Names of the registered corpora, sorted."""
    return list(registry())


def corpus_info(corpus: str) -> CorpusInfo:
    """The registry entry of ``corpus``; a one-line error naming the known ones otherwise."""
    known = registry()
    if corpus not in known:
        raise CorpusLayoutError(f"unknown corpus {corpus!r}; known: {', '.join(known)}")
    return known[corpus]


def read_corpus(corpus: str, root: str | Path) -> CorpusListing:
    """Read ``root`` with the reader registered for ``corpus``."""
    info = corpus_info(corpus)
    root = Path(root)
    if not root.is_dir():
        raise CorpusLayoutError(f"{root}: corpus root is not a directory")
    return info.read(root)


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
