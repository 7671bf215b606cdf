"""Extraction workers: decode, augment, featurise and segment blocks of utterances.

This module runs in joblib worker processes. It imports only what extraction needs (no
h5py, pandas or librosa: the extractor, log-Mel's with its filterbank built, arrives ready), so
workers start fast; it returns arrays and never touches the store.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .audio import load_audio
from .config import SegmentConfig
from .errors import AudioError
from .features import FrameExtractor
from .segments import segment_offsets, valid_frames
from .checksum import frames_digest
from .executor import exit_with_parent

if TYPE_CHECKING:
    from .functionals import FunctionalsExtractor


@dataclass
class Task:
    """One utterance to extract, with its augmented copies and its class's segment hop."""

    utt: int
    utt_id: str
    path: str
    copies: int
    class_hop: int


_MALLOC_TUNED = False


def tune_malloc() -> None:
    """Keep glibc from mapping and unmapping every feature array.

    By default glibc serves allocations over a (dynamic) threshold with fresh mmap()s, so
    each utterance's arrays cost page faults and zeroing: measured here, extraction ran ~1.4x
    faster per core with a fixed 32 MiB threshold. No-op off glibc.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 128 * 1024 * 1024)
    except (OSError, AttributeError):
        pass


_PROCESS_PREPARED = False


def prepare_worker_process(build_pid: int | None = None) -> None:
    """Once per worker process: exit with the build (``build_pid``, when the executor passes
    it at start-up), malloc tuning and a single BLAS thread.

    The workers already fill the cores, and multi-threaded OpenBLAS on these small matrices
    was measured many times slower under contention. Only for worker processes: in the
    caller's own process the limit is set with a context manager around the build instead.
    """
    global _PROCESS_PREPARED
    if _PROCESS_PREPARED:
        return
    _PROCESS_PREPARED = True
    if build_pid is not None:
        exit_with_parent(build_pid)
    tune_malloc()
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def warm_up(augment: bool) -> int:
    """Runs once per worker process while the writer reads the corpus: pay imports up front."""
    prepare_worker_process()
    if augment:
        from . import augment as _augment  # noqa: F401  (audiomentations, scipy.signal)
    return 0


def warm_up_extractor(extract: FrameExtractor) -> None:
    """Import the FFT module and run one short extraction.

    Started in a thread as the build begins, so the ~0.15 s import overlaps reading the
    corpus instead of stalling every worker's first block.
    """
    extract(np.zeros(extract.cfg.n_fft * 4, dtype=np.float32))


# A decoded file: its result entry, its task, and its signals as (copy, augmentation chain, samples).
_Decoded = tuple[dict[str, Any], Task, list[tuple[int, str, np.ndarray]]]


def extract_block(tasks: list[Task], root: str, extract: FrameExtractor, seg: SegmentConfig,
                  augment: str | None, seed: int, worker_process: bool = False,
                  functionals: FunctionalsExtractor | None = None) -> dict[str, Any]:
    """Decode, augment, featurise and segment one block of utterances.

    Runs in a worker (thread or process) and does all per-item arithmetic here (features in
    storage layout, window offsets, checksums, coverage-weighted normalisation sums) so the
    single writer only writes bytes. Returns ``{"entries": [...], "frames": array}``: one
    entry per task (its items' metadata, or the error text for a bad file: never raises for
    one), and the frames of every item back to back in entry and item order
    (``[sum n_frames, 3, n_mels]``), which the writer appends to the store as one block.
    With ``functionals``, each entry of an original utterance also holds ``functionals``
    (float32 ``[n_features]`` of its decoded samples); one whose values are not finite is a
    failed file (:func:`_add_functionals`).
    """
    if worker_process:
        prepare_worker_process()
    cfg = extract.cfg
    augmenter = None
    if augment and any(t.copies for t in tasks):
        from .augment import Augmenter, copy_seed, load_preset

        augmenter = Augmenter(load_preset(augment), cfg.sample_rate)
    entries = []
    decoded: list[_Decoded] = []
    for task in tasks:
        entry: dict[str, Any] = {"utt": task.utt, "items": [], "error": None, "warnings": []}
        entries.append(entry)
        try:
            audio = load_audio(os.path.join(root, task.path), cfg.sample_rate, name=task.path)
            signals = [(0, "", audio.samples)]
            for copy in range(1, task.copies + 1):
                samples, chain = augmenter.apply(audio.samples, copy_seed(seed, task.utt_id, copy))
                signals.append((copy, json.dumps(chain, sort_keys=True), samples))
        except AudioError as exc:
            entry["error"] = str(exc)
            continue
        except Exception as exc:  # an unexpected failure still names the file
            entry["error"] = f"{task.path}: {type(exc).__name__}: {exc}"
            continue
        entry.update(sha256=audio.sha256, source_rate=audio.source_sample_rate,
                     duration=len(audio.samples) / cfg.sample_rate, warnings=audio.warnings)
        decoded.append((entry, task, signals))
    if functionals is not None:
        decoded = _add_functionals(decoded, functionals, cfg.sample_rate)

    # One feature pass over every signal of the block (see serprep.features.LogMelExtractor.frames_block).
    # Overflow (samples far outside [-1, 1]) is reported per file below, as a failed file:
    # numpy's RuntimeWarnings would only add lines to the user's terminal.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            frames, counts = extract.frames_block([y for _, _, signals in decoded for _, _, y in signals])
        except Exception:  # not expected for decoded audio; if it happens, find the file it was
            return {"entries": entries, "frames": _frames_file_by_file(decoded, extract, seg)}
        start, item_counts = 0, iter(counts)
        keep = np.ones(len(frames), dtype=bool)
        for entry, task, signals in decoded:
            entry_start = start
            for copy, chain, _ in signals:
                n = next(item_counts)
                entry["items"].append(_segment_item(frames[start : start + n], copy, chain, seg, task.class_hop))
                start += n
            bad = [it["copy"] for it in entry["items"] if not it["finite"]]
            if bad:
                entry["error"] = _not_finite_message(task.path, bad)
                entry["items"] = []
                keep[entry_start:start] = False
    return {"entries": entries, "frames": frames if keep.all() else frames[keep]}


def _add_functionals(decoded: list[_Decoded], functionals: FunctionalsExtractor, sample_rate: int) -> list[_Decoded]:
    """Each decoded entry's functionals of its original samples (copy 0) as
    ``entry["functionals"]``; an entry whose functionals fail or are not finite becomes a
    failed file (its error set) and is left out of the returned list."""
    kept = []
    for entry, task, signals in decoded:
        try:
            values = functionals(signals[0][2], sample_rate)
        except ImportError:  # a worker without opensmile fails the build, not every utterance
            raise
        except Exception as exc:
            entry["error"] = f"{task.path}: {functionals.name} functionals failed: {type(exc).__name__}: {exc}"
            continue
        if not np.isfinite(values).all():
            entry["error"] = (f"{task.path}: {functionals.name} functionals are not all finite "
                              f"({len(signals[0][2]) / sample_rate:.3f} s of audio: too short for openSMILE?)")
            continue
        entry["functionals"] = values
        kept.append((entry, task, signals))
    return kept


def _not_finite_message(path: str, copies: list[int]) -> str:
    what = "features" if 0 in copies else f"features of augmented copy {copies[0]}"
    return f"{path}: {what} are not all finite (samples far outside [-1, 1]?)"


def _frames_file_by_file(decoded: list[_Decoded], extract: FrameExtractor, seg: SegmentConfig) -> np.ndarray:
    """The slow path of :func:`extract_block`: each file on its own, errors recorded per file."""
    kept = []
    for entry, task, signals in decoded:
        try:
            item_frames = [extract.frames(y) for _, _, y in signals]
        except Exception as exc:
            entry["error"] = f"{task.path}: {type(exc).__name__}: {exc}"
            continue
        items = [_segment_item(frames, copy, chain, seg, task.class_hop)
                 for (copy, chain, _), frames in zip(signals, item_frames)]
        bad = [it["copy"] for it in items if not it["finite"]]
        if bad:
            entry["error"] = _not_finite_message(task.path, bad)
            continue
        entry["items"] = items
        kept += item_frames
    return np.concatenate(kept) if kept else np.zeros((0, len(extract.channels), extract.cfg.n_mels), dtype=np.float32)


def _segment_item(frames: np.ndarray, copy: int, chain: str, seg: SegmentConfig, class_hop: int) -> dict[str, Any]:
    """Windows, checksum and normalisation sums of one item's frames (``[T, 3, M]``).

    The frames themselves stay in the block's array (an item holds only ``n_frames``), so a
    block crosses a process boundary once.
    """
    n_frames = frames.shape[0]
    offsets, dense = item_offsets(n_frames, seg, class_hop, copy)
    valid = valid_frames(n_frames, offsets, seg.frames)
    # Coverage-weighted sums: each frame counts once per segment that holds it, so summing
    # them over a fold's training speakers gives statistics over exactly its segments.
    weight = np.zeros(n_frames, dtype=np.float32)
    for o, v in zip(offsets, valid):
        weight[o : o + v] += 1.0
    flat = frames.reshape(n_frames, -1)
    # Per-item sums in float32 (a few hundred frames); the writer accumulates them in float64.
    total = (weight @ flat).reshape(frames.shape[1:]).astype(np.float64)
    # Every frame lies in at least one window (the last one ends at the last frame), so a
    # NaN or infinity anywhere in the item makes its weighted sum non-finite: the finiteness
    # check costs nothing beyond the sums the statistics need anyway.
    return {
        "copy": copy,
        "chain": chain,
        "n_frames": n_frames,
        "digest": frames_digest(frames),
        "offsets": offsets,
        "dense": dense,
        "valid": valid,
        "sum": total,
        "finite": bool(np.isfinite(total).all()),
        "sumsq": (weight @ np.square(flat)).reshape(frames.shape[1:]).astype(np.float64),
        "weight": float(weight.sum()),
    }


def item_offsets(n_frames: int, seg: SegmentConfig, class_hop: int, copy: int) -> tuple[np.ndarray, np.ndarray]:
    """Window offsets of one item and which of them are extra (dense) windows.

    Originals always get the base-hop windows (identical for every class, so evaluation never
    depends on the label); a minority class adds its denser windows as ``dense``. Augmented
    copies are training-only and use the class hop directly.
    """
    if copy > 0:
        offsets = segment_offsets(n_frames, seg.frames, class_hop)
        return offsets, np.zeros(len(offsets), dtype=bool)
    base = segment_offsets(n_frames, seg.frames, seg.hop)
    if class_hop >= seg.hop:
        return base, np.zeros(len(base), dtype=bool)
    extra = np.setdiff1d(segment_offsets(n_frames, seg.frames, class_hop), base)
    offsets = np.concatenate([base, extra])
    dense = np.concatenate([np.zeros(len(base), bool), np.ones(len(extra), bool)])
    order = np.argsort(offsets, kind="stable")
    return offsets[order], dense[order]


