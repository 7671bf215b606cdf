"""Triple-channel log-Mel features against a plain librosa computation."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal

from corpus_fixtures import speech_like
from serprep.config import FeatureConfig
from serprep.features import logmel_3ch

# float32 FFT vs librosa's float32 STFT path: differences are rounding only.
ATOL_STATIC = 1e-4
ATOL_DELTA = 1e-4


def reference(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """The textbook pipeline, spelled out with librosa calls."""
    y = scipy.signal.lfilter([1.0, -cfg.preemphasis], [1.0], y).astype(np.float32)
    mel = librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
        window=cfg.window, center=cfg.center, power=cfg.power, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax,
    )
    static = np.log(mel + cfg.log_offset)
    d1 = librosa.feature.delta(static, width=cfg.delta_width)
    d2 = librosa.feature.delta(d1, width=cfg.delta_width)
    return np.stack([static.T, d1.T, d2.T])


@pytest.mark.parametrize("n_mels", [40, 64])
def test_matches_librosa_on_speech_like_audio(n_mels):
    cfg = FeatureConfig(n_mels=n_mels)
    y = speech_like(int(2.7 * 16000), 16000, f0=180.0, formant_scale=1.0, seed=3, peak=0.5).astype(np.float32)
    ours = logmel_3ch(y, cfg)
    ref = reference(y, cfg)
    assert ours.dtype == np.float32
    assert ours.shape == (3, cfg.n_frames(len(y)), n_mels) == ref.shape
    np.testing.assert_allclose(ours[0], ref[0], atol=ATOL_STATIC, rtol=0)
    np.testing.assert_allclose(ours[1], ref[1], atol=ATOL_DELTA, rtol=0)
    np.testing.assert_allclose(ours[2], ref[2], atol=ATOL_DELTA, rtol=0)
    # The deltas really are regression slopes of the static channel, not zeros.
    assert np.abs(ours[1]).mean() > 0.05


def test_frame_count_is_one_per_hop():
    cfg = FeatureConfig()
    for n in (1, 159, 160, 400, 16000, 16001):
        y = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
        assert logmel_3ch(y, cfg).shape[1] == 1 + n // 160


@pytest.mark.parametrize("overrides", [
    dict(hop_length=320, n_mels=64, preemphasis=0.0),
    dict(power=1.0, center=False),
    dict(n_mels=80, fmin=60.0, fmax=6000.0, window="hamming"),
    dict(n_mels=23, n_fft=1024, win_length=640),
])
def test_config_values_are_honoured(overrides):
    cfg = FeatureConfig(**overrides)
    y = speech_like(16000, 16000, f0=120.0, formant_scale=1.1, seed=1, peak=0.5).astype(np.float32)
    out = logmel_3ch(y, cfg)
    assert out.shape == (3, cfg.n_frames(16000), cfg.n_mels)
    np.testing.assert_allclose(out, reference(y, cfg), atol=1e-4, rtol=0)


def test_storage_layout_is_the_same_features():
    from serprep.features import extractor

    cfg = FeatureConfig()
    y = speech_like(12345, 16000, f0=150.0, formant_scale=1.0, seed=2, peak=0.5).astype(np.float32)
    frames = extractor(cfg).frames(y)
    assert frames.shape == (cfg.n_frames(len(y)), 3, cfg.n_mels) and frames.flags.c_contiguous
    np.testing.assert_array_equal(frames, logmel_3ch(y, cfg).transpose(1, 0, 2))


def test_very_short_input_still_gives_finite_features():
    cfg = FeatureConfig()
    out = logmel_3ch(np.full(200, 0.1, dtype=np.float32), cfg)  # 12.5 ms: shorter than one window
    assert out.shape == (3, 2, 40)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("frames", [1, 2, 4, 5, 6, 50])
@pytest.mark.parametrize("width", [5, 9])
def test_regression_delta_equals_librosa(frames, width):
    from serprep.features import regression_delta

    x = np.random.default_rng(frames).standard_normal((frames, 7)).astype(np.float32)
    mode = "interp" if frames >= width else "nearest"
    ref = librosa.feature.delta(x, width=width, axis=0, mode=mode)
    np.testing.assert_allclose(regression_delta(x, width), ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("n_mels, fmin, fmax, sr", [(40, 0.0, None, 16000), (64, 50.0, 7600.0, 16000), (40, 0.0, None, 22050)])
def test_filterbank_and_window_equal_librosa(n_mels, fmin, fmax, sr):
    from serprep.features import _window, mel_filterbank

    cfg = FeatureConfig(n_mels=n_mels, fmin=fmin, fmax=fmax, sample_rate=sr)
    ref = librosa.filters.mel(sr=sr, n_fft=cfg.n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    np.testing.assert_allclose(mel_filterbank(cfg).T, ref, rtol=1e-5, atol=1e-7)
    win = librosa.util.pad_center(librosa.filters.get_window("hann", 400, fftbins=True), size=512)
    np.testing.assert_allclose(_window(cfg), win, atol=1e-7)


@pytest.mark.parametrize("center", [True, False])
def test_a_batch_of_signals_gives_each_signals_own_features(center):
    """frames_many lays signals end to end for one FFT pass; nothing may leak between them."""
    from serprep.features import extractor

    cfg = FeatureConfig(center=center)
    rng = np.random.default_rng(7)
    lengths = [1, 100, 399, 400, 641, 800, 3 * 16000 + 17, 160 * 7, 5000]
    signals = [speech_like(max(n, 1), 16000, f0=100.0 + 10 * i, formant_scale=1.0, seed=i, peak=0.5)[:n].astype(np.float32)
               if n > 400 else rng.standard_normal(n).astype(np.float32) * 0.3 for i, n in enumerate(lengths)]
    batch = extractor(cfg).frames_many(signals)
    assert [b.shape[0] for b in batch] == [cfg.n_frames(n) for n in lengths]
    for y, frames in zip(signals, batch):
        # Alone or in a batch: the same numbers, up to BLAS rounding (row blocking may differ).
        np.testing.assert_allclose(frames, extractor(cfg).frames_many([y])[0], atol=1e-5, rtol=0)
        if frames.shape[0] >= cfg.delta_width:  # librosa.feature.delta needs a full window
            np.testing.assert_allclose(frames.transpose(1, 0, 2), reference(y, cfg), atol=1e-4, rtol=0)


def test_logmel_is_the_first_registered_kind_and_its_extractor_is_unchanged():
    """The registry's log-Mel extractor is LogMelExtractor itself: same class, same output bit
    for bit as the direct extractor (the store's features must not change with the registry)."""
    from serprep.features import FEATURE_KINDS, LogMelExtractor, make_extractor

    assert list(FEATURE_KINDS)[0] == "logmel"
    assert FEATURE_KINDS["logmel"].channels == ("static", "delta", "delta-delta")
    cfg = FeatureConfig()
    ext = make_extractor("logmel", cfg)
    assert type(ext) is LogMelExtractor and ext.kind == "logmel" and ext.channels == FEATURE_KINDS["logmel"].channels
    signals = [speech_like(16000 + 37 * k, 16000, seed=k) for k in range(3)]
    block, counts = ext.frames_block(signals)
    direct, direct_counts = LogMelExtractor(cfg).frames_block(signals)
    assert counts == direct_counts and block.tobytes() == direct.tobytes()
    assert block.shape == (sum(counts), 3, 40)


def test_unknown_or_twice_registered_kinds_are_refused():
    from serprep.errors import SerprepError
    from serprep.features import FEATURE_KINDS, make_extractor, register_feature_kind

    with pytest.raises(SerprepError, match="unknown feature kind 'mfcc'; this serprep knows logmel"):
        make_extractor("mfcc", FeatureConfig())
    with pytest.raises(RuntimeError, match="'logmel' is registered twice"):
        register_feature_kind(FEATURE_KINDS["logmel"])
    with pytest.raises(SerprepError, match="--n-mels 0"):  # the kind's own configuration check runs first
        make_extractor("logmel", FeatureConfig(n_mels=0))
