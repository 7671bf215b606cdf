"""Streamed prediction equals whole-file prediction.

``sertrain predict`` reads a file in blocks (``serprep.audio.open_audio_stream``), resamples
it with soxr's streaming resampler, computes features one batch of windows at a time
(``serprep.features.stream_frames``) and aggregates posteriors as it goes. These tests hold
each step to the whole-file path it replaces: ``load_audio`` (one-shot soxr) ->
``logmel_3ch`` -> ``segments.cut`` of every window -> one model call -> ``evaluate.aggregate``.

Tolerances: resampling and decoding are bit for bit; features agree to float32 rounding
(1e-5 asserted, ~1e-6 seen: a shorter STFT pass rounds its products differently);
posteriors to 1e-5.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from corpus_fixtures import speech_like, write_wav
from serprep.audio import load_audio, open_audio_stream, resampled_length
from serprep.config import FeatureConfig, SegmentConfig
from serprep.errors import AudioError
from serprep.features import logmel_3ch, stream_frames
from serprep.segments import cut
from sertrain.data import normalize
from sertrain.errors import InputError
from sertrain.evaluate import aggregate
from sertrain.predict import FailedFile, Predictor, plan_windows, predict_files
from sertrain_fixtures import short_run_checkpoint, store_base

FEATURE_ATOL = 1e-5
POSTERIOR_ATOL = 1e-5


def whole_file_windows(path: Path, fcfg: FeatureConfig, scfg: SegmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """The old predict path's windows: ``[S, 3, frames, n_mels]`` and valid frames ``[S]``."""
    from serprep.segments import segment_offsets

    feats = logmel_3ch(load_audio(path, fcfg.sample_rate).samples, fcfg)
    offsets = segment_offsets(feats.shape[1], scfg.frames, scfg.hop)
    windows, valid = zip(*(cut(feats, int(o), scfg.frames) for o in offsets))
    return np.stack(windows), np.asarray(valid, dtype=np.int64)


def streamed_windows(path: Path, fcfg: FeatureConfig, scfg: SegmentConfig, batch: int, block_frames: int):
    """The streamed path's windows, batch by batch, as Predictor builds them."""
    audio = open_audio_stream(path, fcfg.sample_rate, block_frames=block_frames)
    batches, ranges = plan_windows(fcfg.n_frames(audio.n_samples), scfg, batch)
    for offsets, (a, _), feats in zip(batches, ranges, stream_frames(audio.blocks(), audio.n_samples, fcfg, ranges)):
        chans = feats.transpose(1, 0, 2)
        windows, valid = zip(*(cut(chans, int(o) - a, scfg.frames) for o in offsets))
        yield np.stack(windows), np.asarray(valid)


@pytest.fixture(scope="module")
def long_files(tmp_path_factory) -> dict[int, Path]:
    """4.5 minutes of speech-like audio at 16 kHz, and 4 minutes at 44.1 kHz (stereo) and 8 kHz."""
    d = tmp_path_factory.mktemp("long_audio")
    files = {}
    for rate, seconds, channels in ((16000, 270, 1), (44100, 240, 2), (8000, 240, 1)):
        unit = [speech_like(20 * rate + 7 * c, rate, seed=rate + c)[: 20 * rate] for c in range(channels)]
        sig = np.tile(np.stack(unit, axis=1) if channels > 1 else unit[0], (seconds // 20,) + (1,) * (channels - 1))
        # A ragged end, not a whole number of hops or windows.
        tail = speech_like(rate // 3 + 11, rate, seed=99)
        sig = np.concatenate([sig, np.stack([tail] * channels, axis=1) if channels > 1 else tail])
        files[rate] = d / f"long_{rate}.wav"
        write_wav(files[rate], sig, rate)
    return files


# ---------------------------------------------------------------------------------------------
# Audio: block-wise decoding and streaming resampling
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000])
def test_resampled_length_is_soxr_length(rate):
    rng = np.random.default_rng(rate)
    for n in [1, 2, 3, 4, 5, 31, 441, 1000, *rng.integers(1000, 300000, 20).tolist()]:
        x = rng.standard_normal(n).astype(np.float32)
        assert len(soxr.resample(x, rate, 16000, quality="HQ")) == resampled_length(n, rate, 16000), (rate, n)


@pytest.mark.parametrize("rate", [16000, 44100, 8000])
@pytest.mark.parametrize("block_frames", [1000, 65536])
def test_stream_blocks_equal_load_audio_bit_for_bit(long_files, rate, block_frames):
    path = long_files[rate]
    audio = open_audio_stream(path, 16000, block_frames=block_frames)
    streamed = np.concatenate(list(audio.blocks()))
    whole = load_audio(path, 16000).samples  # one-shot soxr.resample for 44.1 and 8 kHz
    assert audio.n_samples == len(whole) == len(streamed)
    assert np.array_equal(streamed, whole), float(np.abs(streamed - whole).max())


def test_stream_errors_name_the_file(tmp_path):
    x = speech_like(3 * 16000, 16000, seed=1)
    x[40000] = np.inf
    bad = tmp_path / "inf.wav"
    sf.write(bad, x, 16000, subtype="FLOAT")
    audio = open_audio_stream(bad, 16000, block_frames=4096)
    with pytest.raises(AudioError, match="inf.wav: audio contains NaN or infinite samples"):
        list(audio.blocks())
    good = tmp_path / "good.wav"
    write_wav(good, speech_like(16000, 16000))
    wrong = dataclasses.replace(open_audio_stream(good, 16000), source_frames=16001)  # header lied
    with pytest.raises(AudioError, match="decoded 16000 samples but the header announces 16001"):
        list(wrong.blocks())
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty file"):
        open_audio_stream(tmp_path / "empty.wav", 16000)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioError, match="junk.wav: cannot decode audio"):
        open_audio_stream(tmp_path / "junk.wav", 16000)


# ---------------------------------------------------------------------------------------------
# Features: any ascending ranges, any block size, equal to whole-signal extraction
# ---------------------------------------------------------------------------------------------
CONFIGS = {
    "default": FeatureConfig(),
    "no-center": FeatureConfig(center=False),
    "width7-no-preemphasis": FeatureConfig(delta_width=7, preemphasis=0.0),
    "hop100-nfft256-64mels": FeatureConfig(n_mels=64, hop_length=100, win_length=256, n_fft=256),
}


def random_ranges(rng: np.random.Generator, total: int) -> list[tuple[int, int]]:
    """Ranges with a and b non-decreasing that overlap, touch or skip frames, up to the end."""
    ranges, a, b = [], 0, 0
    while b < total:
        a = min(total - 1, max(a, b - int(rng.integers(0, 12)) + int(rng.integers(0, 3))))
        b = min(total, max(b, a) + int(rng.integers(1, max(2, total // 3))))
        ranges.append((a, b))
    return ranges


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_stream_frames_equal_whole_signal(name):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(len(name))
    lengths = [1, 2, 100, 159, 160, 161, 511, 512, 513, 800, 2000, 3 * 16000 + 17, 20 * 16000 + 5]
    for n in lengths:
        total = cfg.n_frames(n)
        if total <= 0:
            continue
        y = speech_like(n, 16000, seed=n) if n > 50 else rng.standard_normal(n).astype(np.float32)
        whole = logmel_3ch(y, cfg).transpose(1, 0, 2)
        for trial in range(4):
            ranges = [(0, total), (total - 1, total)] if trial == 0 else random_ranges(rng, total)
            if trial == 1:
                ranges = plan_windows(total, SegmentConfig(), 3)[1]
            bs = int(rng.integers(1, 3000))
            got = list(stream_frames((y[i : i + bs] for i in range(0, n, bs)), n, cfg, ranges))
            assert len(got) == len(ranges)
            for (a, b), g in zip(ranges, got):
                assert g.shape == (b - a, 3, cfg.n_mels)
                if total <= 512:  # one STFT pass in both: bit for bit
                    assert np.array_equal(g, whole[a:b]), (name, n, a, b)
                else:
                    np.testing.assert_allclose(g, whole[a:b], rtol=0, atol=FEATURE_ATOL, err_msg=f"{name} {n} {a}:{b}")


def test_stream_frames_rejects_bad_input():
    cfg = FeatureConfig()
    y = speech_like(16000, 16000)
    with pytest.raises(ValueError, match="outside"):
        list(stream_frames([y], len(y), cfg, [(10, 20), (5, 30)]))  # a goes back
    with pytest.raises(ValueError, match="outside"):
        list(stream_frames([y], len(y), cfg, [(0, cfg.n_frames(len(y)) + 1)]))
    with pytest.raises(ValueError, match="ended after 16000 samples, expected 20000"):
        list(stream_frames([y], 20000, cfg, [(0, cfg.n_frames(20000))]))
    with pytest.raises(ValueError, match="has 16000 samples, expected 8000"):
        list(stream_frames([y], 8000, cfg, [(0, 3)]))


@pytest.mark.parametrize("rate", [16000, 44100, 8000])
def test_long_file_windows_equal_whole_file_extraction(long_files, rate):
    fcfg, scfg = FeatureConfig(), SegmentConfig()
    x_whole, v_whole = whole_file_windows(long_files[rate], fcfg, scfg)
    parts = list(streamed_windows(long_files[rate], fcfg, scfg, batch=16, block_frames=65536))
    x = np.concatenate([p[0] for p in parts])
    v = np.concatenate([p[1] for p in parts])
    assert len(x) == len(x_whole) > 100 and np.array_equal(v, v_whole)
    # The 44.1 / 8 kHz whole path resamples in one shot; the streamed samples are identical
    # (test above), so the same float32-rounding tolerance applies.
    diff = float(np.abs(x - x_whole).max())
    assert diff <= FEATURE_ATOL, diff


# ---------------------------------------------------------------------------------------------
# Posteriors: streamed, batched and aggregated on the fly = one whole-file model call
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return short_run_checkpoint(store_base(tmp_path_factory))


@torch.no_grad()
def whole_file_probabilities(predictor: Predictor, path: Path) -> np.ndarray:
    """The pre-streaming implementation: every window through the model at once."""
    x, valid = whole_file_windows(path, predictor.fcfg, predictor.scfg)
    xt = normalize(torch.from_numpy(x), torch.from_numpy(valid), predictor.mean, predictor.std)
    logits = predictor.model(xt, torch.from_numpy(valid))["emotion"]
    post = torch.softmax(logits.float(), dim=1).numpy()
    _, scores, _ = aggregate(np.zeros(len(post), dtype=np.int64), post, predictor.aggregate_how)
    return scores[0] / scores[0].sum() if predictor.aggregate_how == "max" else scores[0]


@pytest.mark.parametrize("how", ["mean", "max"])
def test_streamed_posteriors_equal_whole_file(checkpoint, long_files, tmp_path, how):
    short = tmp_path / "short.wav"  # shorter than one window: one zero-padded window
    write_wav(short, speech_like(int(1.3 * 16000), 16000, seed=5))
    paths = [long_files[16000], long_files[44100], long_files[8000], short] if how == "mean" else [long_files[16000]]
    for path in paths:
        predictor = Predictor(checkpoint, "cpu", how)
        expected = whole_file_probabilities(predictor, path)
        for batch in (7, 16):
            predictor.batch_windows = batch
            pred = predictor.predict_file(path)
            got = np.array(list(pred.probabilities.values()))
            np.testing.assert_allclose(got, expected, rtol=0, atol=POSTERIOR_ATOL, err_msg=f"{path.name} {batch}")
            assert pred.label == predictor.ckpt.emotion_classes[int(np.argmax(expected))]


def test_predict_files_outcomes_and_raise(checkpoint, tmp_path):
    good, missing = tmp_path / "good.wav", tmp_path / "missing.wav"
    write_wav(good, speech_like(5 * 8000 + 3, 8000, seed=2), 8000)
    outcomes = predict_files(checkpoint, [missing, good], device="cpu", on_error="collect")
    assert outcomes[0] == FailedFile(str(missing), "no such audio file")
    assert outcomes[1].n_segments == 3 and outcomes[1].duration == pytest.approx(5 + 3 / 8000)
    with pytest.raises(InputError, match="missing.wav: no such audio file"):
        predict_files(checkpoint, [good, missing], device="cpu")
    with pytest.raises(InputError, match="min-duration"):
        Predictor(checkpoint, "cpu", min_duration=-1)
