"""Fixed-length segmentation edge cases."""

from __future__ import annotations

import numpy as np

from serprep.segments import cut, segment_offsets, valid_frames


def test_shorter_than_one_window_is_one_padded_segment():
    offsets = segment_offsets(2, 300, 150)
    assert offsets.tolist() == [0]
    assert valid_frames(2, offsets, 300).tolist() == [2]
    feats = np.ones((3, 2, 40), np.float32)
    window, valid = cut(feats, 0, 300)
    assert window.shape == (3, 300, 40) and valid == 2
    assert window[:, :2].min() == 1 and window[:, 2:].max() == 0


def test_exactly_one_window():
    offsets = segment_offsets(300, 300, 150)
    assert offsets.tolist() == [0]
    assert valid_frames(300, offsets, 300).tolist() == [300]


def test_one_frame_more_than_a_window_aligns_last_to_end():
    offsets = segment_offsets(301, 300, 150)
    assert offsets.tolist() == [0, 1]
    assert valid_frames(301, offsets, 300).tolist() == [300, 300]


def test_long_utterance_covers_every_frame():
    for n in (450, 599, 600, 1234):
        for hop in (50, 100, 150, 300):
            offsets = segment_offsets(n, 300, hop)
            covered = np.zeros(n, bool)
            for o in offsets:
                covered[o : o + 300] = True
            assert covered.all()
            assert offsets[-1] == n - 300
            assert np.all(np.diff(offsets) <= hop) and np.all(np.diff(offsets) > 0)


def test_no_frames_no_segments():
    assert segment_offsets(0, 300, 150).size == 0
