"""The extraction worker: one block in, per-item metadata and the block's frames out."""

from __future__ import annotations

import numpy as np
import pytest

from corpus_fixtures import speech_like, write_wav
from serprep.checksum import frames_digest
from serprep.config import FeatureConfig, SegmentConfig
from serprep.extract import Task, extract_block
from serprep.features import LogMelExtractor, logmel_3ch


@pytest.fixture()
def block(tmp_path):
    lengths = {"a.wav": 16000 * 2 + 7, "b.wav": 16000 * 4, "c.wav": 900}
    for k, (name, n) in enumerate(lengths.items()):
        write_wav(tmp_path / name, speech_like(n, 16000, f0=120.0 + 30 * k, formant_scale=1.0, seed=k, peak=0.5))
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    tasks = [Task(i, name[:-4], name, 0, 150) for i, name in enumerate(["a.wav", "broken.wav", "b.wav", "c.wav"])]
    return tmp_path, tasks


def test_block_frames_are_each_items_features_back_to_back(block):
    root, tasks = block
    cfg = FeatureConfig()
    out = extract_block(tasks, str(root), LogMelExtractor(cfg), SegmentConfig(), None, 0)
    entries, frames = out["entries"], out["frames"]
    assert [e["utt"] for e in entries] == [0, 1, 2, 3]
    assert entries[1]["error"].startswith("broken.wav: cannot decode audio") and entries[1]["items"] == []
    start = 0
    from serprep.audio import load_audio

    for entry, task in zip(entries, tasks):
        if entry["error"]:
            continue
        (item,) = entry["items"]
        ref = logmel_3ch(load_audio(root / task.path, 16000).samples, cfg).transpose(1, 0, 2)
        np.testing.assert_allclose(frames[start : start + item["n_frames"]], ref, atol=1e-5, rtol=0)
        assert item["digest"] == frames_digest(frames[start : start + item["n_frames"]])
        start += item["n_frames"]
    assert start == len(frames)


def test_a_failing_batch_falls_back_to_file_by_file_and_names_the_file(block, monkeypatch):
    root, tasks = block
    extractor = LogMelExtractor(FeatureConfig())
    normal = extract_block(tasks, str(root), extractor, SegmentConfig(), None, 0)

    real_batch, real_frames = extractor.frames_block, extractor.frames

    def broken_batch(signals):  # say, a block too large for memory: one file at a time works
        if len(signals) > 1:
            raise MemoryError("simulated")
        return real_batch(signals)

    def frames(samples):
        if len(samples) == 900:  # c.wav
            raise ValueError("simulated failure")
        return real_frames(samples)

    monkeypatch.setattr(extractor, "frames_block", broken_batch)
    monkeypatch.setattr(extractor, "frames", frames)
    out = extract_block(tasks, str(root), extractor, SegmentConfig(), None, 0)
    assert out["entries"][3]["error"] == "c.wav: ValueError: simulated failure"
    assert out["entries"][3]["items"] == []
    kept = sum(e["items"][0]["n_frames"] for e in normal["entries"][:3] if e["items"])
    # Same features (a batch and a single signal may differ in BLAS rounding only).
    np.testing.assert_allclose(out["frames"], normal["frames"][:kept], atol=1e-5, rtol=0)
    start = 0
    for entry in out["entries"][:3]:
        if entry["items"]:
            n = entry["items"][0]["n_frames"]
            assert entry["items"][0]["digest"] == frames_digest(out["frames"][start : start + n])
            start += n
