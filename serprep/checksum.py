"""Checksums shared by the store writer, the verifier and the extraction workers.

Kept free of h5py/pandas so extraction workers can hash their own output.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np


def frames_digest(frames: np.ndarray) -> str:
    """SHA-256 of one item's frames (``[T, 3, n_mels]`` float32, C order)."""
    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.float32).data).hexdigest()


def combine_item_digests(shape: tuple[int, ...], item_digests: Iterable[str]) -> str:
    """Checksum of ``/features``: SHA-256 over its shape and the per-item frame digests.

    Hashing per item lets the extraction workers do the hashing in parallel; verification
    recomputes every item's digest from the stored frames, so any changed byte is caught.
    """
    h = hashlib.sha256(f"features|{tuple(shape)}|float32".encode())
    for digest in item_digests:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()
