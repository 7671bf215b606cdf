"""Class probabilities for new audio files with a trained checkpoint.

Features are computed as the store computed them, from the configuration recorded in the
checkpoint: mono audio at the feature rate (``serprep.audio``), triple-channel log-Mel
(``serprep.features``), the store's windows (``serprep.segments.segment_offsets`` with the
window length and base hop), z-scored with the checkpoint's fold statistics. Window
posteriors are aggregated per file as in evaluation (mean or max).

A file is processed as a stream, so memory does not grow with its length: the audio is
decoded and resampled block by block (``serprep.audio.open_audio_stream``), features are
computed for one batch of windows at a time with enough context to equal whole-file
extraction (``serprep.features.stream_frames``), the model scores ``batch_windows``
windows at a time, and the posteriors are folded into a running sum (mean) or maximum.

Each file gets a :class:`Prediction` or fails on its own with an :class:`AudioFileError`
(missing, undecodable, too short, non-finite features or posteriors); ``predict_files``
can collect those as :class:`FailedFile` entries so that one bad file does not stop the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch

from serprep.audio import open_audio_stream
from serprep.config import FeatureConfig, SegmentConfig
from serprep.errors import SerprepError
from serprep.features import stream_frames
from serprep.segments import cut, segment_offsets

from .checkpoint import Checkpoint, load_checkpoint
from .data import normalize
from .errors import InputError
from .runtime import resolve_device

#: Files shorter than this (seconds) are refused: IEMOCAP's shortest utterances last about
#: 0.6 s, and a click of a few milliseconds must not receive a confident emotion label.
DEFAULT_MIN_DURATION = 0.5

#: Windows per model call (and per feature range). Memory is bounded by this, not by the
#: file's length: with cpu-small on CPU, peak RSS for a 1- and a 20-minute file was 317 and
#: 320 MB with 16 windows, 331 and 367 MB with 32, 343 and 478 MB with 64 (the allocator
#: keeps a few batches' activations), in the same time (3.3-3.5 s for 20 minutes).
DEFAULT_BATCH_WINDOWS = 16


class AudioFileError(InputError):
    """One audio file cannot be classified; ``str(exc)`` is ``"<file>: <reason>"``.

    An :class:`InputError` (a bad input file), but the CLI exits with 1 for it: the command
    ran and reported every other file.
    """

    exit_code = 1

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class Prediction:
    """One file's result."""

    path: str
    label: str
    probabilities: dict[str, float]
    n_segments: int
    duration: float
    #: What was accepted but should be known (a truncated file, an upsampled low rate).
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON entry: file, label, probabilities, n_segments, duration (s), warnings."""
        return {
            "file": self.path,
            "label": self.label,
            "probabilities": self.probabilities,
            "n_segments": self.n_segments,
            "duration": round(self.duration, 3),
            "warnings": list(self.warnings),
        }


@dataclass
class FailedFile:
    """A file that got no result, and why (``reason`` does not repeat the path)."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON entry: ``{"file": ..., "error": ...}``."""
        return {"file": self.path, "error": self.reason}

    def message(self) -> str:
        """``"<file>: <reason>"``, the text of the CLI's ``error:`` line."""
        return f"{self.path}: {self.reason}"


def _seconds(x: float) -> str:
    return f"{x:.6g}"


def plan_windows(
    n_frames: int, scfg: SegmentConfig, batch_windows: int = DEFAULT_BATCH_WINDOWS
) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """The store's windows for ``n_frames`` frames, in batches, and the frames each batch needs.

    Returns (window offsets per batch, ``(a, b)`` per batch): the offsets of
    :func:`serprep.segments.segment_offsets` (window length and base hop of ``scfg``) cut into
    batches of ``batch_windows``; a batch's windows lie within frames ``a:b`` (the last one,
    or a file shorter than a window, ends at ``n_frames`` and is zero-padded by ``cut``).
    Both ``a`` and ``b`` are non-decreasing, as :func:`serprep.features.stream_frames` needs.
    """
    offsets = segment_offsets(n_frames, scfg.frames, scfg.hop)
    batches = [offsets[i : i + batch_windows] for i in range(0, len(offsets), batch_windows)]
    return batches, [(int(o[0]), min(n_frames, int(o[-1]) + scfg.frames)) for o in batches]


class Predictor:
    """A loaded checkpoint ready to score files (model in eval mode on ``device``)."""

    def __init__(
        self,
        checkpoint: str | Path | Checkpoint,
        device: str = "auto",
        aggregate_how: str | None = None,
        min_duration: float = DEFAULT_MIN_DURATION,
        batch_windows: int = DEFAULT_BATCH_WINDOWS,
    ):
        if not min_duration >= 0 or not np.isfinite(min_duration):  # NaN fails both
            raise InputError(f"--min-duration must be a number of seconds >= 0, got {min_duration}")
        if batch_windows < 1:
            raise InputError(f"batch_windows must be >= 1, got {batch_windows}")
        self.ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.model = self.ckpt.build_model().to(self.device)
        self.fcfg = FeatureConfig.from_dict(json.loads(self.ckpt.feature_config_json))
        self.scfg = SegmentConfig.from_dict(json.loads(self.ckpt.segment_config_json))
        self.aggregate_how = aggregate_how or self.ckpt.run_config().train.aggregate
        if self.aggregate_how not in ("mean", "max"):
            raise InputError(f"aggregate must be mean or max, got {self.aggregate_how!r}")
        self.min_duration = float(min_duration)
        self.batch_windows = int(batch_windows)
        self.mean = self.ckpt.norm_mean.float().cpu()
        self.std = self.ckpt.norm_std.float().cpu()

    def predict_file(self, path: str | Path) -> Prediction:
        """Score one file; raises :class:`AudioFileError` (one line naming it) when it cannot be.

        Reasons: no such file, a directory, unreadable, empty, undecodable, NaN or infinite
        samples, shorter than ``min_duration``, non-finite features (samples so large that
        the power spectrum overflows) or non-finite posteriors.
        """
        p = Path(path)
        if p.is_dir():
            raise AudioFileError(path, "is a directory, not an audio file")
        if not p.is_file():
            raise AudioFileError(path, "no such audio file")
        try:
            return self._predict(path)
        except SerprepError as exc:  # AudioError from decoding: its message starts with the path
            raise AudioFileError(path, str(exc).removeprefix(f"{path}: ")) from None
        except OSError as exc:
            raise AudioFileError(path, f"cannot read file ({exc.strerror or exc})") from None

    @torch.no_grad()
    def _predict(self, path: str | Path) -> Prediction:
        fcfg, scfg = self.fcfg, self.scfg
        audio = open_audio_stream(path, fcfg.sample_rate)
        if audio.duration < self.min_duration:
            raise AudioFileError(
                path, f"audio too short to classify ({_seconds(audio.duration)} s < {_seconds(self.min_duration)} s)"
            )
        # The frame count (hence every window) is known from the header before decoding.
        n_frames = fcfg.n_frames(audio.n_samples)
        if n_frames <= 0:
            raise AudioFileError(path, "audio too short for one feature frame")
        batches, ranges = plan_windows(n_frames, scfg, self.batch_windows)
        n_windows = sum(len(b) for b in batches)
        n_classes = len(self.ckpt.emotion_classes)
        by_mean = self.aggregate_how == "mean"
        total = np.zeros(n_classes, dtype=np.float64)  # mean: running sum over windows
        peak = np.full(n_classes, -np.inf, dtype=np.float64)  # max: running maximum
        # Overflowing samples make inf/nan features; they are reported below, not warned about.
        with np.errstate(over="ignore", invalid="ignore"):
            feature_ranges = stream_frames(audio.blocks(), audio.n_samples, fcfg, ranges)
            for batch, (a, _), feats in zip(batches, ranges, feature_ranges):
                if not np.all(np.isfinite(feats)):
                    raise AudioFileError(path, "features are not finite (audio samples too large?)")
                chans = feats.transpose(1, 0, 2)  # [3, frames, n_mels], as segments.cut expects
                windows, valid = zip(*(cut(chans, int(o) - a, scfg.frames) for o in batch))
                x = torch.from_numpy(np.stack(windows))
                v = torch.as_tensor(valid, dtype=torch.int64)
                xt = normalize(x, v, self.mean, self.std)
                logits = self.model(xt.to(self.device), v.to(self.device))["emotion"]
                post = torch.softmax(logits.float(), dim=1).cpu().numpy()
                if not np.all(np.isfinite(post)):
                    raise AudioFileError(path, "posteriors are not finite (model output is NaN or infinite)")
                # Running aggregate, as evaluate.aggregate does over all windows at once.
                if by_mean:
                    total += post.astype(np.float64).sum(axis=0)
                else:
                    np.maximum(peak, post.max(axis=0), out=peak)
            for _ in feature_ranges:  # runs the stream to its end: its length checks
                pass
        probs = total / n_windows if by_mean else peak / peak.sum()
        if not np.all(np.isfinite(probs)):
            raise AudioFileError(path, "posteriors are not finite")
        classes = self.ckpt.emotion_classes
        return Prediction(
            path=str(path),
            label=classes[int(np.argmax(probs))],
            probabilities={c: float(p) for c, p in zip(classes, probs)},
            n_segments=n_windows,
            duration=audio.n_samples / fcfg.sample_rate,
            warnings=list(audio.warnings),
        )

    def predict_each(self, files: Sequence[str | Path]) -> Iterator[Prediction | FailedFile]:
        """One outcome per file, in order, as each is done: a result or why it failed."""
        for f in files:
            try:
                yield self.predict_file(f)
            except AudioFileError as exc:
                yield FailedFile(str(f), exc.reason)


def predict_files(
    checkpoint: str | Path | Checkpoint,
    files: Sequence[str | Path],
    device: str = "auto",
    aggregate_how: str | None = None,
    *,
    min_duration: float = DEFAULT_MIN_DURATION,
    on_error: Literal["raise", "collect"] = "raise",
) -> list[Prediction | FailedFile]:
    """Predict each file, in order.

    With ``on_error="collect"`` every file gets an outcome: its :class:`Prediction`, or a
    :class:`FailedFile` saying why (missing, undecodable, too short, non-finite features or
    posteriors), so one bad file does not hide the others' results. With ``"raise"`` (the
    default, for callers that expect only predictions) the first bad file raises its
    one-line :class:`AudioFileError` (an :class:`InputError`).
    """
    if on_error not in ("raise", "collect"):
        raise ValueError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
    predictor = Predictor(checkpoint, device, aggregate_how, min_duration)
    if on_error == "raise":
        return [predictor.predict_file(f) for f in files]
    return list(predictor.predict_each(files))
