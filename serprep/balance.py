"""Balanced augmented sampling: per-class segment hops, augmentation copies and sampling indices.

Balancing only ever looks at and draws from a fold's TRAINING speakers: the copies a class
needs are computed from each fold's training counts, and a fold's index draws only training
speakers' originals and their augmented copies.
"""

from __future__ import annotations

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


def copies_needed(counts: Mapping[str, float], max_copies: int) -> dict[str, int]:
    """Augmented copies per utterance that bring each class up to the majority count.

    ``copies_c = min(max_copies, ceil(n_max / n_c) - 1)``; a class with no data gets 0.
    """
    present = [n for n in counts.values() if n > 0]
    if not present:
        return {c: 0 for c in counts}
    n_max = max(present)
    return {
        c: 0 if n <= 0 else int(min(max_copies, max(0, math.ceil(n_max / n - 1e-9) - 1)))
        for c, n in counts.items()
    }


def balanced_index(segments_by_class: Mapping[int, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Segment ids that draw every class equally often.

    Each class contributes all its segments, topped up to the largest class's count by a
    seeded draw with replacement (without replacement while it has enough distinct ones).
    Classes with no segments are left out.
    """
    pools = {c: np.asarray(s, dtype=np.int64) for c, s in segments_by_class.items() if len(s) > 0}
    if not pools:
        return np.zeros(0, dtype=np.int64)
    target = max(len(s) for s in pools.values())
    parts = []
    for c in sorted(pools):
        pool = pools[c]
        deficit = target - len(pool)
        if deficit > 0:
            whole, rest = divmod(deficit, len(pool))
            extra = [np.tile(pool, whole), rng.choice(pool, size=rest, replace=False)]
            pool = np.concatenate([pool, *extra])
        parts.append(np.sort(pool))
    return np.concatenate(parts)
