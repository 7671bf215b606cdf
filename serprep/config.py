"""Feature and segmentation configuration.

Every number of the input pipeline (docs/method.md) lives here as a config value and is
recorded in the store, so a store says exactly how it was made and consumers (sertrain, a
colleague's code) can refuse features they were not built for.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FeatureConfig:
    """Triple-channel log-Mel parameters (defaults: ACRNN / Liu et al. 2023)."""

    sample_rate: int = 16000
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_fft: int = 512
    n_mels: int = 40
    fmin: float = 0.0
    fmax: float | None = None  # None = sample_rate / 2
    preemphasis: float = 0.97
    window: str = "hann"
    center: bool = True
    power: float = 2.0
    # log(mel + log_offset): the offset keeps digital silence finite.
    log_offset: float = 1e-6
    # Regression window of the deltas (librosa.feature.delta width): N=2 frames each side.
    delta_width: int = 5
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown feature config keys: {sorted(unknown)}")
        return cls(**data)

    def n_frames(self, n_samples: int) -> int:
        """Frames produced for ``n_samples`` samples (matches :func:`serprep.features.logmel_3ch`)."""
        if self.center:
            return 1 + n_samples // self.hop_length
        if n_samples < self.n_fft:
            return 0
        return 1 + (n_samples - self.n_fft) // self.hop_length


@dataclass(frozen=True)
class SegmentConfig:
    """Fixed-length segmentation (3 s windows, last window aligned to the utterance end)."""

    frames: int = 300
    hop: int = 150
    # With balancing on, a minority class's hop shrinks in proportion to its share of the
    # majority count, but never below this (ACRNN used 100 frames for the minority class).
    min_hop: int = 50

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegmentConfig":
        return cls(**data)
