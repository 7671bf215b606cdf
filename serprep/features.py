"""Triple-channel log-Mel features: static, delta and delta-delta, shape ``[3, T, n_mels]``.

The computation is the textbook one (pre-emphasis, Hann-windowed STFT, power, Slaney mel
filterbank, natural log, librosa's regression deltas), written with a pre-built window and
filterbank and single-precision FFTs so that one core extracts several thousand times real
time. ``tests/test_features.py`` checks it against plain ``librosa`` calls.
"""

from __future__ import annotations

from functools import lru_cache

import librosa
import numpy as np
import scipy.fft

from .config import FeatureConfig


@lru_cache(maxsize=8)
def _window(cfg: FeatureConfig) -> np.ndarray:
    win = librosa.filters.get_window(cfg.window, cfg.win_length, fftbins=True)
    return librosa.util.pad_center(win, size=cfg.n_fft).astype(np.float32)


@lru_cache(maxsize=8)
def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """The ``[n_fft // 2 + 1, n_mels]`` mel filterbank (transposed for a right-multiply)."""
    fb = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
    )
    return np.ascontiguousarray(fb.T, dtype=np.float32)


def preemphasize(samples: np.ndarray, coef: float) -> np.ndarray:
    """``y[n] - coef * y[n-1]`` with ``y[-1] = 0`` (``scipy.signal.lfilter([1, -coef], [1], y)``).

    librosa's ``preemphasis`` extrapolates an initial state instead, which changes only the
    first sample; the textbook zero initial state is used here and in the reference test.
    """
    y = np.asarray(samples, dtype=np.float32)
    if coef == 0.0 or y.size == 0:
        return y.copy()
    out = y.copy()
    out[1:] -= np.float32(coef) * y[:-1]
    return out


def log_mel(samples: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Log-Mel spectrogram, shape ``[T, n_mels]``, T = ``cfg.n_frames(len(samples))``."""
    y = preemphasize(samples, cfg.preemphasis)
    if cfg.center:
        # librosa >= 0.10 pads with zeros ("constant") when centering.
        y = np.pad(y, cfg.n_fft // 2)
    n_frames = 0 if len(y) < cfg.n_fft else 1 + (len(y) - cfg.n_fft) // cfg.hop_length
    if n_frames == 0:
        return np.zeros((0, cfg.n_mels), dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32)
    frames = np.lib.stride_tricks.as_strided(
        y, shape=(n_frames, cfg.n_fft), strides=(y.strides[0] * cfg.hop_length, y.strides[0])
    )
    spectrum = scipy.fft.rfft(frames * _window(cfg), axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    if cfg.power != 2.0:
        power = power ** (cfg.power / 2.0)
    mel = power @ mel_filterbank(cfg)
    return np.log(mel + np.float32(cfg.log_offset)).astype(np.float32, copy=False)


def regression_delta(x: np.ndarray, width: int) -> np.ndarray:
    """Regression delta along axis 0: ``sum_k k (x[t+k] - x[t-k]) / (2 sum_k k^2)``, k = 1..N.

    Identical to ``librosa.feature.delta(x, width=width, axis=0)`` (a first-order
    Savitzky-Golay derivative): at the edges (``mode="interp"``) the first and last N frames
    take the slope fitted over the first/last ``width`` frames. Inputs shorter than ``width``
    use edge-replicating padding (librosa's ``mode="nearest"``), since interpolation needs
    ``width`` frames. Written out because librosa's generic filter is the slowest step here.
    """
    if width < 3 or width % 2 == 0:
        raise ValueError("delta width must be odd and >= 3")
    n = width // 2
    denom = np.float32(2 * sum(k * k for k in range(1, n + 1)))
    frames = x.shape[0]
    if frames == 0:
        return x.copy()
    if frames < width:
        padded = np.concatenate([np.repeat(x[:1], n, axis=0), x, np.repeat(x[-1:], n, axis=0)])
        out = np.zeros_like(x)
        for k in range(1, n + 1):
            out += k * (padded[n + k : n + k + frames] - padded[n - k : n - k + frames])
        return out / denom
    out = np.empty_like(x)
    core = out[n : frames - n]
    core[...] = x[n + 1 : frames - n + 1] - x[n - 1 : frames - n - 1]
    for k in range(2, n + 1):
        core += k * (x[n + k : frames - n + k] - x[n - k : frames - n - k])
    core /= denom
    out[:n] = core[0]
    out[frames - n :] = core[-1]
    return out


def deltas(static: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Delta and delta-of-delta along time (axis 0), see :func:`regression_delta`."""
    d1 = regression_delta(static, width)
    return d1, regression_delta(d1, width)


def logmel_3ch(samples: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Static, delta and delta-delta log-Mel of mono ``samples`` at ``cfg.sample_rate``.

    Returns float32 ``[3, T, n_mels]``.
    """
    static = log_mel(samples, cfg)
    d1, d2 = deltas(static, cfg.delta_width)
    return np.stack([static, d1, d2]).astype(np.float32, copy=False)
