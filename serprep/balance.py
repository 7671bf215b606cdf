"""Balanced augmented sampling: per-class segment hops, augmentation copies and sampling indices.

Balancing only ever looks at and draws from a fold's TRAINING speakers: the copies a class
needs are computed from each fold's training counts, and a fold's index draws only training
speakers' originals and their augmented copies.
"""

from __future__ import annotations

import hashlib
import math
from typing import Mapping

import numpy as np


def class_hops(counts: Mapping[str, int], base_hop: int, min_hop: int) -> dict[str, int]:
    """Segment hop per class: minority classes get a denser hop in proportion to their share.

    ``hop_c = clamp(round(base_hop * n_c / n_max), min_hop, base_hop)``.
    """
    present = {c: n for c, n in counts.items() if n > 0}
    if not present:
        return {c: base_hop for c in counts}
    n_max = max(present.values())
    hops = {}
    for c, n in counts.items():
        hop = base_hop if n <= 0 else int(round(base_hop * n / n_max))
        hops[c] = int(min(base_hop, max(min_hop, hop)))
    return hops


def copy_rates(counts: Mapping[str, float], max_copies: int) -> dict[str, float]:
    """Augmented copies per utterance (fractional) that bring each class up to the majority.

    ``rate_c = min(max_copies, n_max / n_c - 1)``; a class with no data gets 0. A rate of 1.4
    means every utterance of the class gets one copy and 40 % of them a second one.
    """
    present = [n for n in counts.values() if n > 0]
    if not present:
        return {c: 0.0 for c in counts}
    n_max = max(present)
    return {c: 0.0 if n <= 0 else float(min(max_copies, max(0.0, n_max / n - 1.0))) for c, n in counts.items()}


def utterance_copies(rate: float, seed: int, utt_id: str) -> int:
    """How many copies one utterance gets at ``rate``: floor(rate), plus one for a stable,
    seeded ``frac(rate)`` share of the utterances (chosen by hashing the utterance id)."""
    whole = int(math.floor(rate + 1e-9))
    frac = rate - whole
    if frac <= 1e-9:
        return whole
    digest = hashlib.sha256(f"{seed}\0{utt_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return whole + (1 if u < frac else 0)


def balanced_index(originals_by_class: Mapping[int, np.ndarray], copies_by_class: Mapping[int, np.ndarray],
                   rng: np.random.Generator, target: int | None = None) -> np.ndarray:
    """Segment ids that draw every class exactly ``target`` times.

    ``target`` defaults to the largest class's count of original segments; the build passes
    the majority class's count of base-hop windows, so extra dense-hop windows never raise
    the bar. A class with more originals than the target gets a seeded subset of them; a
    smaller class gets all its originals, then a seeded draw of its augmented copies'
    segments (without replacement), then repeats if still short. Classes without segments
    are left out.
    """
    classes = [c for c in originals_by_class if len(originals_by_class[c]) > 0]
    if not classes:
        return np.zeros(0, dtype=np.int64)
    if target is None:
        target = max(len(originals_by_class[c]) for c in classes)
    parts = []
    for c in sorted(classes):
        pool = np.asarray(originals_by_class[c], dtype=np.int64)
        if len(pool) >= target:
            parts.append(np.sort(rng.choice(pool, size=target, replace=False)))
            continue
        copies = np.asarray(copies_by_class.get(c, np.zeros(0)), dtype=np.int64)
        take = min(target - len(pool), len(copies))
        if take:
            pool = np.concatenate([pool, rng.choice(copies, size=take, replace=False)])
        deficit = target - len(pool)
        if deficit > 0:
            whole, rest = divmod(deficit, len(pool))
            pool = np.concatenate([pool, np.tile(pool, whole), rng.choice(pool, size=rest, replace=False)])
        parts.append(np.sort(pool))
    return np.concatenate(parts)
