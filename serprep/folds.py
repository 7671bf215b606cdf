"""Speaker-independent folds: written tables, generated speaker folds and official partitions.

A fold scheme in ``serprep/manifests/<corpus>.toml`` is one of three kinds:

* a **table** (``folds = [{test = [...], validation = [...]}, ...]``): the speakers of each fold
  written out, for corpora with a handful of speakers and a published split (IEMOCAP's sessions);
* **generated speaker folds** (``generate = "speaker-kfold"`` with ``k``, or
  ``generate = "leave-one-speaker-out"``; ``validation`` speakers per fold and a ``seed``):
  drawn from the speakers present, never hand-written tables of 91 actors. Test speakers are
  dealt to the folds gender by gender from a seeded shuffle, so every fold gets its share of
  each gender (counts differ by at most one); each fold's validation speakers are drawn,
  seeded and alternating genders, from that fold's training side;
* **partitions** (``generate = "partition"``): a corpus' official split by a manifest column
  (MSP-Podcast's ``partition``: Train / Development / Test1 / Test2 / Test3). One fold per test
  partition present; a known speaker found in two partitions is refused, since the split
  would no longer be speaker independent.

Whatever the kind, :func:`resolve_folds` then keeps the speakers that are present (labelled)
and makes the three parts disjoint.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import SerprepError
from .labels import FoldDefinition
from .store import is_known_speaker

FOLD_KINDS = ("table", "speaker-kfold", "leave-one-speaker-out", "partition")


@dataclass(frozen=True)
class ResolvedFold:
    """Speakers of each part of one fold; every present speaker is in at most one part."""

    number: int
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    label: str = ""  # the partition a partition fold tests ("Test1"); "" otherwise


def fold_kind(entry: Mapping[str, Any]) -> str:
    """The kind of a manifest fold scheme (``table`` unless it says ``generate``)."""
    return str(entry.get("generate", "table"))


def check_scheme(where: str, entry: Mapping[str, Any]) -> None:
    """Refuse a fold scheme whose keys do not fit its kind (one line naming the key)."""
    kind = fold_kind(entry)
    if kind not in FOLD_KINDS:
        raise SerprepError(f"{where}: generate = {kind!r} is not a fold kind; choose from {', '.join(FOLD_KINDS[1:])}")
    if kind == "table":
        if not isinstance(entry.get("folds"), list):
            raise SerprepError(f"{where}: a fold table needs `folds = [...]` (or `generate = ...`)")
        for i, fold in enumerate(entry["folds"], start=1):
            overlap = set(fold["test"]) & set(fold.get("validation", ()))
            if overlap:
                raise SerprepError(f"{where}: fold {i} puts {sorted(overlap)} in both test and validation")
    elif kind == "partition":
        for key in ("column", "train", "validation", "test"):
            if key not in entry:
                raise SerprepError(f"{where}: a partition scheme needs `{key}`")
    else:
        if kind == "speaker-kfold" and int(entry.get("k", 0)) < 2:
            raise SerprepError(f"{where}: speaker-kfold needs k >= 2")
        if int(entry.get("validation", 0)) < 0:
            raise SerprepError(f"{where}: validation must be >= 0 speakers")


def generate_folds(where: str, entry: Mapping[str, Any], speakers: Mapping[str, str],
                   partitions: Mapping[str, set[str]] | None = None) -> list[FoldDefinition]:
    """Fold definitions of one scheme for the speakers present.

    ``speakers`` maps each speaker to its gender (``F``, ``M`` or ``U``); ``partitions`` maps
    each speaker to the values of the scheme's ``column`` its utterances carry (partition
    schemes only).
    """
    kind = fold_kind(entry)
    if kind == "table":
        return [FoldDefinition(tuple(f["test"]), tuple(f.get("validation", ()))) for f in entry["folds"]]
    if kind == "partition":
        return partition_folds(where, entry, partitions or {})
    seed = int(entry.get("seed", 0))
    n_validation = int(entry.get("validation", 0))
    if kind == "leave-one-speaker-out":
        tests = [[s] for s in sorted(speakers)]
    else:
        tests = deal_speakers(speakers, int(entry["k"]), seed)
    return [FoldDefinition(tuple(sorted(test)), draw_validation(speakers, test, n_validation, seed, i))
            for i, test in enumerate(tests)]


def deal_speakers(speakers: Mapping[str, str], k: int, seed: int) -> list[list[str]]:
    """``k`` groups of test speakers, each gender dealt round-robin from a seeded shuffle.

    The deal continues from one gender to the next, so group sizes differ by at most one and
    so does each gender's count per group.
    """
    rng = np.random.default_rng([seed, k])
    groups: list[list[str]] = [[] for _ in range(k)]
    position = 0
    for gender in sorted(set(speakers.values())):
        members = sorted(s for s, g in speakers.items() if g == gender)
        for s in rng.permutation(members):
            groups[position % k].append(str(s))
            position += 1
    return [g for g in groups if g]


def draw_validation(speakers: Mapping[str, str], test: Sequence[str], n: int, seed: int, fold: int) -> tuple[str, ...]:
    """``n`` validation speakers from the training side of one fold, seeded, genders alternating.

    Unknown speakers (an ``unknown:`` pseudo speaker stands for many people) are never drawn.
    """
    if n <= 0:
        return ()
    rng = np.random.default_rng([seed, fold, 7])
    candidates = defaultdict(list)
    for s in sorted(set(speakers) - set(test)):
        if is_known_speaker(s):
            candidates[speakers[s]].append(s)
    pools = {g: [str(s) for s in rng.permutation(members)] for g, members in sorted(candidates.items())}
    genders = sorted(pools)
    if not genders:
        return ()
    # Start with the gender the test part has fewest of, so small folds stay balanced overall.
    test_count = {g: sum(1 for s in test if speakers.get(s) == g) for g in genders}
    order = sorted(genders, key=lambda g: (test_count[g], g))
    drawn: list[str] = []
    total = sum(len(p) for p in pools.values())
    i = 0
    # Keep at least one speaker for training.
    while len(drawn) < min(n, total - 1):
        pool = pools[order[i % len(order)]]
        if pool:
            drawn.append(pool.pop())
        i += 1
    return tuple(sorted(drawn))


def partition_folds(where: str, entry: Mapping[str, Any], partitions: Mapping[str, set[str]]) -> list[FoldDefinition]:
    """One fold per test partition present: train/validation/test speakers by partition."""
    for speaker, values in sorted(partitions.items()):
        if len(values) > 1 and is_known_speaker(speaker):
            raise SerprepError(f"{where}: speaker {speaker} is in partitions {', '.join(sorted(values))}; the official "
                               "partitions must be speaker independent")
    by_value: dict[str, list[str]] = defaultdict(list)
    for speaker, values in partitions.items():
        for v in values:
            by_value[v].append(speaker)

    def members(names: Sequence[str]) -> tuple[str, ...]:
        return tuple(sorted({s for v in names for s in by_value.get(v, ())}))

    train, validation = members(entry["train"]), members(entry["validation"])
    return [FoldDefinition(members([t]), validation, train=train, label=str(t)) for t in entry["test"]]


def resolve_folds(definitions: list[FoldDefinition], speakers: set[str]) -> tuple[list[ResolvedFold], list[str]]:
    """Folds whose test speakers are present, numbered 1..K, and notes on the folds dropped.

    Training speakers are the definition's ``train`` speakers when it names them (partition
    folds), else all present speakers that are neither test nor validation, so the three
    parts are disjoint by construction.
    """
    folds: list[ResolvedFold] = []
    notes: list[str] = []
    for i, definition in enumerate(definitions, start=1):
        name = f"fold {i}" + (f" ({definition.label})" if definition.label else "")
        test = tuple(s for s in definition.test if s in speakers)
        validation = tuple(s for s in definition.validation if s in speakers and s not in test)
        rest = speakers - set(test) - set(validation)
        train = tuple(sorted(rest if definition.train is None else rest & set(definition.train)))
        if not definition.test:
            notes.append(f"{name}: no labelled utterances; dropped")
            continue
        if not test:
            notes.append(f"{name}: none of its test speakers {list(definition.test)} is in the corpus; dropped")
            continue
        if not train:
            notes.append(f"{name}: no training speakers left; dropped")
            continue
        folds.append(ResolvedFold(len(folds) + 1, train, validation, test, definition.label))
    return folds, notes
