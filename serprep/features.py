"""Triple-channel log-Mel features: static, delta and delta-delta, shape ``[3, T, n_mels]``.

The computation is the textbook one (pre-emphasis, Hann-windowed STFT, power, Slaney mel
filterbank, natural log, librosa's regression deltas), written with a pre-built window and
filterbank and single-precision FFTs so that one core extracts several thousand times real
time. ``tests/test_features.py`` checks it against plain ``librosa`` calls.

Feature kinds. A store says what its frames are: a kind registered here (:data:`FEATURE_KINDS`,
by name) with its channel names, recorded as the root attributes ``feature_kind`` and
``feature_channels``. The log-Mel extractor of this module is the first entry, ``logmel``
(static, delta, delta-delta). A future feature type is one module with an extractor class
(:class:`FrameExtractor`: ``kind``, ``channels``, ``cfg``, ``frames_block``, ``frames``) and one
:func:`register_feature_kind` call below; the build takes its extractor from
:func:`make_extractor` and the store its frame shape from the kind.

The FFTs are ducc0's (the successor of the pocketfft that numpy and scipy ship, by the same
author): it imports in ~3 ms where ``scipy.fft`` takes ~150 ms, a sixth of a 1-hour build,
and its real FFT is ~10 % faster here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from .config import FeatureConfig

#: The log-Mel kind's channels, in the store's ``[T, 3, n_mels]`` layout order.
LOGMEL_CHANNELS = ("static", "delta", "delta-delta")
FEATURE_CHANNELS = len(LOGMEL_CHANNELS)


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


def check_feature_config(cfg: FeatureConfig) -> None:
    """Refuse a configuration whose features would be meaningless, with one
    :class:`~serprep.errors.SerprepError` line naming the option (before any work is done).

    The mel bands must each receive at least one FFT bin: with too many bands for ``n_fft``
    the upper ones are all-zero filters whose log is a constant, silently.
    """
    from .errors import SerprepError

    if cfg.sample_rate <= 0 or cfg.hop_length <= 0 or cfg.win_length <= 0 or cfg.n_fft < cfg.win_length:
        raise SerprepError(f"feature config: need positive sample rate, hop and window and n_fft >= win_length ({cfg})")
    if cfg.n_mels < 1:
        raise SerprepError(f"--n-mels {cfg.n_mels}: needs at least 1 mel band")
    nyquist = cfg.sample_rate / 2.0
    fmax = nyquist if cfg.fmax is None else float(cfg.fmax)
    if not 0.0 <= cfg.fmin < fmax <= nyquist:
        raise SerprepError(f"feature config: need 0 <= fmin < fmax <= {nyquist:g} Hz (fmin {cfg.fmin}, fmax {cfg.fmax})")
    if cfg.delta_width < 3 or cfg.delta_width % 2 == 0 or cfg.log_offset <= 0:
        raise SerprepError(f"feature config: delta width must be odd and >= 3 and log offset positive ({cfg})")
    empty = _empty_bands(cfg)
    if empty:
        lo, hi = 1, cfg.n_mels  # the largest band count without an empty band (fewer bands, wider filters)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if not _empty_bands(dataclasses.replace(cfg, n_mels=mid)) else (lo, mid - 1)
        raise SerprepError(
            f"--n-mels {cfg.n_mels}: with n_fft {cfg.n_fft} at {cfg.sample_rate} Hz, {empty} of the bands would get "
            f"no FFT bin (empty filters, constant features); use at most {lo}"
        )


def _empty_bands(cfg: FeatureConfig) -> int:
    return int(np.sum(~np.any(mel_filterbank(cfg) > 0, axis=0)))


def _mel_blocks(weights: np.ndarray, interleaved: bool) -> list[tuple[int, int, int, int, np.ndarray]]:
    """The filterbank as dense blocks: ``(row_lo, row_hi, mel_lo, mel_hi, block)``.

    Each FFT bin feeds at most two mel bands, so ~95 % of the ``[bins, n_mels]`` matrix is
    zero. Groups of eight consecutive bands need only their own bins' rows: five small
    matmuls do the work of the dense one in ~45 % of the time (measured). With
    ``interleaved`` the rows are repeated for the real and imaginary parts of a complex
    spectrum viewed as float32 pairs, so the squared spectrum needs no separate power array.
    """
    n_bins, n_mels = weights.shape
    blocks = []
    for lo in range(0, n_mels, 8):
        hi = min(n_mels, lo + 8)
        rows = np.flatnonzero(np.any(weights[:, lo:hi] != 0, axis=1))
        if len(rows) == 0:
            continue  # empty bands (fmax above Nyquist or too many mels) stay zero
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        block = weights[r0:r1, lo:hi]
        if interleaved:
            block, r0, r1 = np.repeat(block, 2, axis=0), 2 * r0, 2 * r1
        blocks.append((r0, r1, lo, hi, np.ascontiguousarray(block, dtype=np.float32)))
    return blocks


class LogMelExtractor:
    """Triple-channel log-Mel extractor for one config, with its window and filterbank built.

    Picklable (plain arrays), so worker processes receive it ready to use.
    """

    kind = "logmel"
    channels = LOGMEL_CHANNELS

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.window = _window(cfg)
        self.mel = mel_filterbank(cfg)
        self._blocks = _mel_blocks(self.mel, interleaved=cfg.power == 2.0)

    def frames_many(self, signals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Static, delta and delta-delta of several signals: float32 ``[T_i, 3, n_mels]`` each.

        Consecutive slices of :meth:`frames_block`'s array.
        """
        block, counts = self.frames_block(signals)
        ends = np.cumsum(counts)
        return [block[e - t : e] for e, t in zip(ends.tolist(), counts)]

    def frames_block(self, signals: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """Features of several signals back to back: ``[sum T_i, 3, n_mels]`` and the ``T_i``.

        The signals are laid end to end (each in its own zero pad, starting on a hop
        boundary) and go through one STFT, mel and log pass in batches of a few hundred
        frames, so a block of utterances costs a few dozen numpy calls instead of a few dozen
        per utterance: with two extraction threads the per-call overhead, which holds the
        GIL, was what kept the second thread idle. The frames between two signals are
        computed and dropped (~3 per utterance). The store writes the returned array as is.
        """
        cfg = self.cfg
        if not signals:
            return np.zeros((0, len(self.channels), cfg.n_mels), dtype=np.float32), []
        hop, n_fft = cfg.hop_length, cfg.n_fft
        pad = n_fft // 2 if cfg.center else 0
        lengths = [len(y) for y in signals]
        counts = [cfg.n_frames(n) for n in lengths]
        spans = [-(-(n + 2 * pad) // hop) * hop for n in lengths]  # whole hops per signal
        starts = np.concatenate([[0], np.cumsum(spans)]).astype(np.int64)
        padded = np.zeros(int(starts[-1]) + n_fft, dtype=np.float32)
        for y, start, n in zip(signals, starts.tolist(), lengths):
            y = np.asarray(y, dtype=np.float32)
            body = padded[start + pad : start + pad + n]
            # Pre-emphasis y[n] - c * y[n-1] with y[-1] = 0 (scipy.signal.lfilter([1, -c], [1], y);
            # librosa's preemphasis extrapolates an initial state instead, which changes only
            # the first sample), written straight into the centring pad: librosa >= 0.10 pads
            # with zeros ("constant") when centering.
            if cfg.preemphasis and n > 1:
                np.multiply(y[:-1], np.float32(-cfg.preemphasis), out=body[1:])
            body += y
        total = 1 + (len(padded) - n_fft) // hop
        frames = np.lib.stride_tricks.as_strided(padded, shape=(total, n_fft), strides=(4 * hop, 4))
        static = np.zeros((total, cfg.n_mels), dtype=np.float32)
        import ducc0  # here, not at module level: the writer process never runs an FFT

        for a in range(0, total, _FRAMES_PER_PASS):
            b = min(total, a + _FRAMES_PER_PASS)
            spectrum = ducc0.fft.r2c(frames[a:b] * self.window, axes=(1,))
            if cfg.power == 2.0:
                source = spectrum.view(np.float32)  # [frames, 2 * bins]: re, im, re, im, ...
                np.square(source, out=source)
            else:
                source = (spectrum.real**2 + spectrum.imag**2) ** np.float32(cfg.power / 2.0)
            for r0, r1, m0, m1, block in self._blocks:
                np.matmul(source[:, r0:r1], block, out=static[a:b, m0:m1])
        static += np.float32(cfg.log_offset)
        np.log(static, out=static)

        # Deltas over the whole sequence, then each signal's edges set as regression_delta
        # does (signals shorter than the delta window are done on their own).
        first = (starts[:-1] // hop).tolist()
        d1 = _delta_pass(static, cfg.delta_width, first, counts)
        d2 = _delta_pass(d1, cfg.delta_width, first, counts)
        # Keep each signal's own frames, back to back, in the store's [T, 3, M] layout.
        keep = np.arange(sum(counts)) + np.repeat(np.asarray(first) - np.cumsum([0] + counts[:-1]), counts)
        return np.stack([static[keep], d1[keep], d2[keep]], axis=1), counts

    def frames(self, samples: np.ndarray) -> np.ndarray:
        """Static, delta and delta-delta in the store's layout: float32 ``[T, 3, n_mels]``."""
        return self.frames_many([samples])[0]

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Static, delta and delta-delta: float32 ``[3, T, n_mels]``."""
        return np.ascontiguousarray(self.frames(samples).transpose(1, 0, 2))


# Frames per STFT pass in LogMelExtractor.frames_block: 1 MiB of windowed frames, so each
# pass's arrays stay in cache.
_FRAMES_PER_PASS = 512


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
    return _delta_pass(x, width, [0], [x.shape[0]])


def _delta_pass(x: np.ndarray, width: int, first: list[int], counts: list[int]) -> np.ndarray:
    """:func:`regression_delta` of each ``x[f : f + t]``, computed in one pass over ``x``."""
    if width < 3 or width % 2 == 0:
        raise ValueError("delta width must be odd and >= 3")
    n = width // 2
    denom = np.float32(2 * sum(k * k for k in range(1, n + 1)))
    out = np.zeros_like(x)
    if len(x) >= width:
        core = out[n : len(x) - n]
        np.subtract(x[n + 1 : len(x) - n + 1], x[n - 1 : len(x) - n - 1], out=core)
        for k in range(2, n + 1):
            core += np.float32(k) * (x[n + k : len(x) - n + k] - x[n - k : len(x) - n - k])
        core /= denom
    for f, t in zip(first, counts):
        if t >= width:
            out[f : f + n] = out[f + n]
            out[f + t - n : f + t] = out[f + t - n - 1]
        elif t > 0:
            out[f : f + t] = _delta_nearest(x[f : f + t], n, denom)
    return out


def _delta_nearest(x: np.ndarray, n: int, denom: np.float32) -> np.ndarray:
    """The regression delta of an input shorter than its window, edges replicated."""
    padded = np.concatenate([np.repeat(x[:1], n, axis=0), x, np.repeat(x[-1:], n, axis=0)])
    out = np.zeros_like(x)
    for k in range(1, n + 1):
        out += k * (padded[n + k : n + k + len(x)] - padded[n - k : n - k + len(x)])
    return out / denom


def logmel_3ch(samples: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Static, delta and delta-delta log-Mel of mono ``samples`` at ``cfg.sample_rate``.

    Returns float32 ``[3, T, n_mels]``.
    """
    return extractor(cfg)(samples)


def stream_frames(
    blocks: Iterable[np.ndarray],
    n_samples: int,
    cfg: FeatureConfig,
    ranges: Iterable[tuple[int, int]],
) -> Iterator[np.ndarray]:
    """Frames ``a:b`` of the features of a signal that arrives in blocks, per ``(a, b)`` range.

    ``blocks`` are consecutive pieces of one mono signal at ``cfg.sample_rate``,
    ``n_samples`` in all; ``ranges`` lie within ``[0, cfg.n_frames(n_samples))`` with ``a``
    and ``b`` each non-decreasing. Yields float32 ``[b - a, 3, n_mels]`` per range (the
    store's layout): the frames ``a:b`` of :func:`logmel_3ch` of the whole signal
    (transposed), while holding only the samples one range needs. Every frame is computed
    from the same samples by the same code, so the values agree to float32 rounding: equal
    bit for bit within the first STFT pass (``_FRAMES_PER_PASS`` frames), and otherwise
    within one unit in the last place (max |difference| 9.5e-7 measured on 70 s of speech),
    because a pass with fewer frames runs the FFT and mel products on a different number of
    rows, which rounds differently. The store's own features vary the same way with the
    other utterances that share their extraction block.

    Each range is extracted by :meth:`LogMelExtractor.frames_block` from the signal piece
    that starts ``lead`` frames (``lead * hop`` samples) before ``a`` and ends a little after
    frame ``b - 1 + 2 * (delta_width // 2)``'s window, then the context frames are dropped.
    ``lead`` covers what the piece gets wrong at its cut start: the frames whose window
    (after centring) or pre-emphasis (one previous sample) reaches before the piece, then
    ``delta_width // 2`` frames for the deltas and as many again for the delta-deltas. A
    piece starting on a hop boundary has the whole signal's frame grid, so its remaining
    frames are the signal's own. At the true ends of the signal nothing is cut: the piece
    starts at sample 0 or ends at the last sample, and ``frames_block`` gives those frames
    the centring pad and delta edge treatment of whole-signal extraction.
    """
    ext = extractor(cfg)
    hop, half = cfg.hop_length, cfg.delta_width // 2
    pad = cfg.n_fft // 2 if cfg.center else 0
    total = cfg.n_frames(n_samples)
    lead = -(-(pad + 1) // hop) + 2 * half
    source = iter(blocks)
    buf = np.zeros(0, dtype=np.float32)
    buf_start = 0  # buf holds samples [buf_start, buf_start + len(buf)) of the signal
    seen = 0  # samples taken from `blocks` so far
    last_a = last_b = 0
    for a, b in ranges:
        a, b = int(a), int(b)
        if not 0 <= a < b <= total or a < last_a or b < last_b:
            raise ValueError(f"frame range {a}:{b} is outside 0:{total} or before {last_a}:{last_b}")
        last_a, last_b = a, b
        # First frame of the piece. Near the end it starts earlier: the last delta-delta
        # frames copy frame total - half - 1, which must then be exact too.
        k = max(0, min(a, total - half - 1) - lead)
        s0 = k * hop
        # One hop more than frame b - 1 + 2 * half's window end: enough for every delta-delta
        # kept. Near the start frames 0..half - 1 copy frame half, which must then be exact too.
        s1 = min(n_samples, (max(b, half + 1) + 2 * half) * hop - pad + cfg.n_fft)
        pending = [buf[s0 - buf_start :]] if s0 < buf_start + len(buf) else []
        while seen < s1:
            try:
                block = np.asarray(next(source), dtype=np.float32)
            except StopIteration:
                raise ValueError(f"the signal ended after {seen} samples, expected {n_samples}") from None
            if seen + len(block) > s0:
                pending.append(block[max(0, s0 - seen) :])
            seen += len(block)
        # Samples before s0 are never needed again (a only grows): keep from s0 on.
        buf = np.concatenate(pending) if len(pending) != 1 else pending[0]
        buf_start = s0
        feats = ext.frames_block([buf[: s1 - s0]])[0]
        if len(feats) < b - k or (s1 == n_samples and len(feats) != total - k):  # pragma: no cover
            raise AssertionError(f"piece {s0}:{s1} gave {len(feats)} frames for {k}:{b} of {total}")
        yield feats[a - k : b - k]
    for block in source:  # the rest (a range list that stops early), so the count is checked
        seen += len(block)
    if seen != n_samples:
        raise ValueError(f"the signal has {seen} samples, expected {n_samples}")


# --------------------------------------------------------------------------------------------
# Feature kinds: the extractor registry
# --------------------------------------------------------------------------------------------
class FrameExtractor(Protocol):
    """What the build needs of an extractor (picklable: it travels to worker processes)."""

    kind: str
    channels: tuple[str, ...]
    cfg: FeatureConfig

    def frames_block(self, signals: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """Frames of several signals back to back, ``[sum T_i, len(channels), n_bins]``, and the ``T_i``."""
        ...

    def frames(self, samples: np.ndarray) -> np.ndarray:
        """Frames of one signal, ``[T, len(channels), n_bins]``."""
        ...

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Frames of one signal, ``[len(channels), T, n_bins]``."""
        ...


@dataclass(frozen=True)
class FeatureKind:
    """One registered feature type: its store name, channel names (the store's frame layout
    ``[T, len(channels), n_bins]``), extractor factory and configuration check."""

    name: str
    channels: tuple[str, ...]
    extractor: Callable[[FeatureConfig], FrameExtractor]
    check_config: Callable[[FeatureConfig], None]
    description: str


#: Registered feature kinds by name, in registration order (``logmel`` first).
FEATURE_KINDS: dict[str, FeatureKind] = {}
#: The kind ``serprep build`` writes, and what a store without ``feature_kind`` holds.
DEFAULT_FEATURE_KIND = "logmel"


def register_feature_kind(kind: FeatureKind) -> FeatureKind:
    """Add ``kind`` to :data:`FEATURE_KINDS` (a name registered twice is a programming error)."""
    if kind.name in FEATURE_KINDS:
        raise RuntimeError(f"feature kind {kind.name!r} is registered twice")
    FEATURE_KINDS[kind.name] = kind
    return kind


def feature_kind(name: str) -> FeatureKind:
    """The registered kind ``name``; one :class:`~serprep.errors.SerprepError` line naming the
    known kinds otherwise."""
    from .errors import SerprepError

    if name not in FEATURE_KINDS:
        raise SerprepError(f"unknown feature kind {name!r}; this serprep knows {', '.join(FEATURE_KINDS)}")
    return FEATURE_KINDS[name]


def make_extractor(name: str, cfg: FeatureConfig) -> FrameExtractor:
    """A ready extractor of kind ``name`` for ``cfg`` (the configuration checked first)."""
    kind = feature_kind(name)
    kind.check_config(cfg)
    return kind.extractor(cfg)


register_feature_kind(FeatureKind(
    name="logmel", channels=LOGMEL_CHANNELS, extractor=LogMelExtractor, check_config=check_feature_config,
    description="log-Mel with regression deltas and delta-deltas",
))
