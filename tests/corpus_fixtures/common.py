"""Shared pieces of the corpus fixtures: speech-like audio, WAV writing, corrupt bytes, litter."""

from __future__ import annotations

import math
import wave
import zlib
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

SR = 16000

# ---------------------------------------------------------------------------------------------
# Speech-like signal
# ---------------------------------------------------------------------------------------------


def _stable_seed(*parts: object) -> int:
    """A seed that does not depend on PYTHONHASHSEED."""
    return zlib.crc32("|".join(str(p) for p in parts).encode("utf-8"))


def _resonator(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    """Second-order all-pole resonator (one formant), unit gain at DC-ish."""
    r = math.exp(-math.pi * bw / sr)
    theta = 2.0 * math.pi * freq / sr
    a = [1.0, -2.0 * r * math.cos(theta), r * r]
    b = [1.0 - r]
    return lfilter(b, a, x)


def speaker_voice(speaker: str, gender: str, seed: int = 0) -> dict:
    """Deterministic voice parameters (f0, formant scale) for one speaker."""
    rng = np.random.default_rng(_stable_seed("voice", speaker, seed))
    if gender == "F":
        f0 = float(rng.uniform(185.0, 245.0))
        scale = float(rng.uniform(1.10, 1.20))
    else:
        f0 = float(rng.uniform(95.0, 140.0))
        scale = float(rng.uniform(0.95, 1.03))
    return {"f0": f0, "formant_scale": scale}


def speech_like(
    n_samples: int,
    sr: int = SR,
    *,
    f0: float = 120.0,
    formant_scale: float = 1.0,
    seed: int = 0,
    peak: float = 0.5,
) -> np.ndarray:
    """Cheap speech-like float32 signal of exactly ``n_samples`` samples in [-1, 1].

    Harmonic source at ``f0`` with slow intonation and vibrato, syllable-rate (3-6 Hz)
    amplitude modulation, short pauses, 3 formant resonators, a little noise.
    """
    n = int(n_samples)
    if n <= 0:
        return np.zeros(0, dtype=np.float32)
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64) / sr
    # f0 contour: declination + slow intonation + vibrato.
    dur = n / sr
    contour = (
        1.0
        + 0.08 * np.sin(2 * np.pi * rng.uniform(0.4, 1.0) * t + rng.uniform(0, 2 * np.pi))
        + 0.02 * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t + rng.uniform(0, 2 * np.pi))
        - 0.10 * (t / max(dur, 1e-3))
    )
    f0_t = f0 * contour
    phase = 2 * np.pi * np.cumsum(f0_t) / sr
    n_harm = max(1, int(min(4000.0, 0.45 * sr) // (f0 * 1.15)))
    src = np.zeros(n, dtype=np.float64)
    tilt = rng.uniform(0.9, 1.3)
    for k in range(1, n_harm + 1):
        src += np.sin(k * phase) / (k**tilt)
    # Aspiration noise in the source.
    src += 0.05 * rng.standard_normal(n)
    # Formants (cascade), vowel targets drawn per utterance.
    f1 = rng.uniform(350, 800) * formant_scale
    f2 = rng.uniform(900, 2200) * formant_scale
    f3 = rng.uniform(2400, 3000) * formant_scale
    y = src
    for freq, bw in ((f1, 80.0), (f2, 120.0), (f3, 200.0)):
        if freq < 0.45 * sr:
            y = _resonator(y, freq, bw, sr)
    # Syllable-rate envelope with short pauses.
    rate = rng.uniform(3.0, 6.0)
    env = np.clip(np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)), 0.0, None) ** 0.6
    env = 0.15 + 0.85 * env
    if dur > 0.6:
        for _ in range(int(rng.integers(1, 3))):
            width = int(rng.uniform(0.08, 0.2) * sr)
            start = int(rng.integers(0, max(1, n - width)))
            ramp = np.hanning(width) if width > 2 else np.ones(width)
            env[start : start + width] *= 1.0 - ramp[: len(env[start : start + width])]
    # Onset/offset fades (5 ms) to avoid clicks.
    fade = min(n // 2, int(0.005 * sr))
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade)
        env[:fade] *= ramp
        env[n - fade :] *= ramp[::-1]
    y = y * env
    rms = float(np.sqrt(np.mean(y * y))) if n else 0.0
    y = y + 0.01 * (rms if rms > 0 else 1e-3) * rng.standard_normal(n)  # ~40 dB SNR floor
    m = float(np.max(np.abs(y)))
    if m > 0:
        y = y * (peak / m)
    return y.astype(np.float32)


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")


def write_wav(path: Path, samples: np.ndarray, sr: int = SR) -> None:
    """Write 16-bit PCM (mono ``[n]`` or multi-channel ``[n, ch]``) with the stdlib."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(samples)
    channels = 1 if arr.ndim == 1 else arr.shape[1]
    data = _to_int16(arr) if arr.dtype != np.dtype("<i2") else arr
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.ascontiguousarray(data).tobytes())


def _corrupt_bytes(rng: np.random.Generator) -> bytes:
    """A RIFF/WAVE header whose fmt chunk is garbage, then truncated random bytes.

    libsndfile (soundfile) refuses it; the file is not empty.
    """
    fmt = (
        b"fmt "
        + (16).to_bytes(4, "little")
        + (0xBEEF).to_bytes(2, "little")  # unknown format tag
        + (0).to_bytes(2, "little")  # zero channels
        + (0).to_bytes(4, "little")  # zero sample rate
        + bytes(8)
    )
    junk = rng.integers(0, 256, 37, dtype=np.uint8).tobytes()
    body = b"WAVE" + fmt + b"data" + (64000).to_bytes(4, "little") + junk
    return b"RIFF" + (len(body) + 5000).to_bytes(4, "little") + body


# AppleDouble "._*" resource-fork litter: magic, "Mac OS X", binary (not valid UTF-8).
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\x00\x00\x00\t\x00\x00\x002\x00\x00\x0e\xb0ATTR\xff\xfe\x9a\x00"



def _assign_codes(n: int, codes: tuple[str, ...], weights: dict, rng) -> list[str]:
    """Every code at least once (if n allows), the rest by weight, shuffled."""
    out = list(codes[: min(n, len(codes))])
    if n > len(out):
        p = np.array([weights[c] for c in codes], dtype=float)
        out += list(rng.choice(codes, size=n - len(out), p=p / p.sum()))
    rng.shuffle(out)
    return [str(c) for c in out]


