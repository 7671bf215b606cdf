"""Fixed-length segmentation of a frame sequence.

Windows of ``length`` frames start every ``hop`` frames; the last window is aligned to the
end of the utterance so that no frame is dropped. An utterance shorter than one window gets a
single zero-padded window whose valid length is recorded.
"""

from __future__ import annotations

import numpy as np


def segment_offsets(n_frames: int, length: int, hop: int) -> np.ndarray:
    """Start frames of the windows covering ``n_frames`` frames.

    >>> segment_offsets(301, 300, 150).tolist()
    [0, 1]
    >>> segment_offsets(100, 300, 150).tolist()
    [0]
    """
    if length <= 0 or hop <= 0:
        raise ValueError("segment length and hop must be positive")
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if n_frames <= length:
        return np.zeros(1, dtype=np.int64)
    last = n_frames - length
    offsets = np.arange(0, last + 1, hop, dtype=np.int64)
    if offsets[-1] != last:
        offsets = np.append(offsets, last)
    return offsets


def valid_frames(n_frames: int, offsets: np.ndarray, length: int) -> np.ndarray:
    """Number of real (non-padding) frames in each window."""
    return np.minimum(length, n_frames - offsets).astype(np.int64)


def cut(features: np.ndarray, offset: int, length: int) -> tuple[np.ndarray, int]:
    """One window of ``[C, T, M]`` features, zero-padded to ``length``; returns (window, valid)."""
    window = features[:, offset : offset + length]
    valid = window.shape[1]
    if valid < length:
        pad = np.zeros((features.shape[0], length - valid, features.shape[2]), dtype=features.dtype)
        window = np.concatenate([window, pad], axis=1)
    return window, valid
