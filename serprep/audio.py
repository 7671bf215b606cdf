"""Audio I/O: decode with soundfile, down-mix to mono, resample to the feature rate."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from .errors import AudioError


@dataclass
class DecodedAudio:
    """A decoded file: mono float32 samples at ``sample_rate`` and the raw bytes' SHA-256."""

    samples: np.ndarray
    sample_rate: int
    source_sample_rate: int
    sha256: str


def decode_bytes(data: bytes, name: str, target_rate: int) -> DecodedAudio:
    """Decode audio bytes to mono float32 at ``target_rate``.

    Raises :class:`AudioError` naming ``name`` when the bytes are empty, undecodable,
    hold no samples, or hold non-finite values.
    """
    return _decoded(io.BytesIO(data), _digest(data, name), name, target_rate)


def _digest(data: bytes, name: str) -> str:
    """SHA-256 of a file's bytes; an empty file is an error naming it."""
    if not data:
        raise AudioError(f"{name}: empty file (0 bytes)")
    return hashlib.sha256(data).hexdigest()


def _decoded(source: Any, digest: str, name: str, target_rate: int) -> DecodedAudio:
    try:
        samples, rate = sf.read(source, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioError(f"{name}: cannot decode audio ({_first_line(exc)})") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{name}: audio has no samples")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if rate != target_rate:
        mono = resample(mono, rate, target_rate)
    return DecodedAudio(np.ascontiguousarray(mono, dtype=np.float32), target_rate, int(rate), digest)


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """High-quality resampling (soxr, the same engine as librosa's default)."""
    import soxr

    return soxr.resample(samples, source_rate, target_rate, quality="HQ").astype(np.float32)


def load_audio(path: str | Path, target_rate: int, name: str | None = None) -> DecodedAudio:
    """Read and decode one file; errors name ``name`` (default: the path)."""
    label = name if name is not None else str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AudioError(f"{label}: cannot read file ({exc.strerror or exc})") from None
    digest = _digest(data, label)
    # libsndfile reads the path itself: decoding from memory would call back into Python for
    # every read, holding the GIL, which costs a second extraction thread ~10 % here.
    return _decoded(str(path), digest, label, target_rate)


def audio_duration(path: str | Path) -> float | None:
    """Duration in seconds from the file header, or None if the header is unreadable."""
    try:
        info = sf.info(str(path))
    except Exception:
        return None
    return float(info.frames) / float(info.samplerate) if info.samplerate else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    # libsndfile prefixes "Error opening <_io.BytesIO object at 0x...>: " or "Error opening
    # '/absolute/path': ": the caller names the file itself, relative to the corpus root.
    return re.sub(r"^Error opening (<[^>]*>|'[^']*'):\s*", "", line)
