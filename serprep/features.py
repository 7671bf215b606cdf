"""Triple-channel log-Mel features: static, delta and delta-delta, shape ``[3, T, n_mels]``.

The computation is the textbook one (pre-emphasis, Hann-windowed STFT, power, Slaney mel
filterbank, natural log, librosa's regression deltas), written with a pre-built window and
filterbank and single-precision FFTs so that one core extracts several thousand times real
time. ``tests/test_features.py`` checks it against plain ``librosa`` calls.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .config import FeatureConfig


def _periodic_window(name: str, length: int) -> np.ndarray | None:
    n = np.arange(length, dtype=np.float64)
    phase = 2.0 * np.pi * n / length  # periodic ("fftbins") form, as librosa/scipy use for STFTs
    if name in ("hann", "hanning"):
        return 0.5 - 0.5 * np.cos(phase)
    if name == "hamming":
        return 0.54 - 0.46 * np.cos(phase)
    if name == "blackman":
        return 0.42 - 0.5 * np.cos(phase) + 0.08 * np.cos(2 * phase)
    return None


@lru_cache(maxsize=8)
def _window(cfg: FeatureConfig) -> np.ndarray:
    """Analysis window of ``win_length`` centred in ``n_fft`` (librosa's STFT convention)."""
    win = _periodic_window(cfg.window, cfg.win_length)
    if win is None:  # any other scipy window name
        import scipy.signal

        win = scipy.signal.get_window(cfg.window, cfg.win_length, fftbins=True)
    left = (cfg.n_fft - cfg.win_length) // 2
    padded = np.zeros(cfg.n_fft, dtype=np.float64)
    padded[left : left + cfg.win_length] = win
    return padded.astype(np.float32)


# Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above.
_MEL_F_SP = 200.0 / 3
_MEL_MIN_LOG_HZ = 1000.0
_MEL_MIN_LOG_MEL = _MEL_MIN_LOG_HZ / _MEL_F_SP
_MEL_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MEL_MIN_LOG_MEL + np.log(np.maximum(hz, 1e-10) / _MEL_MIN_LOG_HZ) / _MEL_LOGSTEP
    return np.where(hz >= _MEL_MIN_LOG_HZ, log_part, hz / _MEL_F_SP)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _MEL_MIN_LOG_HZ * np.exp(_MEL_LOGSTEP * (mel - _MEL_MIN_LOG_MEL))
    return np.where(mel >= _MEL_MIN_LOG_MEL, log_part, _MEL_F_SP * mel)


@lru_cache(maxsize=8)
def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank, ``[n_fft // 2 + 1, n_mels]``.

    The same matrix as ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax).T`` (checked in
    the tests); built here so extraction does not pay librosa's seconds-long import.
    """
    fmax = cfg.sample_rate / 2.0 if cfg.fmax is None else float(cfg.fmax)
    fft_freqs = np.fft.rfftfreq(cfg.n_fft, d=1.0 / cfg.sample_rate)
    mel_points = np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(fmax), cfg.n_mels + 2)
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]  # Slaney: constant energy per band
    return np.ascontiguousarray(weights.T, dtype=np.float32)


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


class LogMelExtractor:
    """Triple-channel log-Mel extractor for one config, with its window and filterbank built.

    Picklable (plain arrays), so worker processes receive it ready to use.
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.window = _window(cfg)
        self.mel = mel_filterbank(cfg)

    def log_mel(self, samples: np.ndarray) -> np.ndarray:
        """Log-Mel spectrogram, shape ``[T, n_mels]``, T = ``cfg.n_frames(len(samples))``."""
        cfg = self.cfg
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
        import scipy.fft  # here, not at module level: the writer process never runs an FFT

        spectrum = scipy.fft.rfft(frames * self.window, axis=1)
        power = spectrum.real**2 + spectrum.imag**2
        if cfg.power != 2.0:
            power **= cfg.power / 2.0
        mel = power @ self.mel
        mel += np.float32(cfg.log_offset)
        return np.log(mel, out=mel)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Static, delta and delta-delta: float32 ``[3, T, n_mels]``."""
        static = self.log_mel(samples)
        d1, d2 = deltas(static, self.cfg.delta_width)
        return np.stack([static, d1, d2])


@lru_cache(maxsize=8)
def extractor(cfg: FeatureConfig) -> LogMelExtractor:
    """A cached :class:`LogMelExtractor` for ``cfg``."""
    return LogMelExtractor(cfg)


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
    return extractor(cfg)(samples)
