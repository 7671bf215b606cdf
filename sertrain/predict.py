"""Class probabilities for new audio files with a trained checkpoint.

Features are computed exactly as the store computed them, from the configuration recorded
in the checkpoint: ``serprep.audio.load_audio`` (mono, resampled to the feature rate),
``serprep.features.logmel_3ch``, ``serprep.segments.segment_offsets`` / ``cut`` with the
store's window length and base hop, then z-scored with the checkpoint's fold statistics.
Segment posteriors are aggregated per file as in evaluation (mean or max).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from serprep.audio import load_audio
from serprep.config import FeatureConfig, SegmentConfig
from serprep.features import logmel_3ch
from serprep.segments import cut, segment_offsets

from .checkpoint import Checkpoint, load_checkpoint
from .data import normalize
from .errors import InputError
from .evaluate import aggregate
from .runtime import resolve_device


@dataclass
class Prediction:
    """One file's result."""

    path: str
    label: str
    probabilities: dict[str, float]
    n_segments: int
    duration: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "label": self.label,
            "probabilities": self.probabilities,
            "n_segments": self.n_segments,
            "duration": round(self.duration, 3),
        }


def file_segments(path: str | Path, fcfg: FeatureConfig, scfg: SegmentConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """(x ``[S, 3, frames, n_mels]`` raw features, valid ``[S]``, duration s) of one file.

    Raises :class:`serprep.errors.AudioError` for unreadable audio and :class:`InputError`
    for audio too short to give a single frame.
    """
    audio = load_audio(path, fcfg.sample_rate)
    feats = logmel_3ch(audio.samples, fcfg)
    n_frames = feats.shape[1]
    if n_frames == 0:
        raise InputError(f"{path}: audio too short for one feature frame")
    offsets = segment_offsets(n_frames, scfg.frames, scfg.hop)
    windows, valid = zip(*(cut(feats, int(o), scfg.frames) for o in offsets))
    return np.stack(windows), np.asarray(valid, dtype=np.int64), len(audio.samples) / fcfg.sample_rate


class Predictor:
    """A loaded checkpoint ready to score files (model in eval mode on ``device``)."""

    def __init__(self, checkpoint: str | Path | Checkpoint, device: str = "auto", aggregate_how: str | None = None):
        self.ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.model = self.ckpt.build_model().to(self.device)
        self.fcfg = FeatureConfig.from_dict(json.loads(self.ckpt.feature_config_json))
        self.scfg = SegmentConfig.from_dict(json.loads(self.ckpt.segment_config_json))
        self.aggregate_how = aggregate_how or self.ckpt.run_config().train.aggregate
        self.mean = self.ckpt.norm_mean.float().cpu()
        self.std = self.ckpt.norm_std.float().cpu()

    @torch.no_grad()
    def predict_file(self, path: str | Path) -> Prediction:
        x, valid, duration = file_segments(path, self.fcfg, self.scfg)
        xt = normalize(torch.from_numpy(x), torch.from_numpy(valid), self.mean, self.std)
        logits = self.model(xt.to(self.device), torch.from_numpy(valid).to(self.device))["emotion"]
        post = torch.softmax(logits.float(), dim=1).cpu().numpy()
        _, scores, _ = aggregate(np.zeros(len(post), dtype=np.int64), post, self.aggregate_how)
        probs = scores[0] / scores[0].sum() if self.aggregate_how == "max" else scores[0]
        classes = self.ckpt.emotion_classes
        return Prediction(
            path=str(path),
            label=classes[int(np.argmax(probs))],
            probabilities={c: float(p) for c, p in zip(classes, probs)},
            n_segments=len(valid),
            duration=duration,
        )


def predict_files(
    checkpoint: str | Path, files: Sequence[str | Path], device: str = "auto", aggregate_how: str | None = None
) -> list[Prediction]:
    """Predict each file (missing files raise a one-line :class:`InputError`)."""
    for f in files:
        if not Path(f).is_file():
            raise InputError(f"{f}: no such audio file")
    predictor = Predictor(checkpoint, device, aggregate_how)
    return [predictor.predict_file(f) for f in files]
