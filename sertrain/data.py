"""Torch data pipeline over a serprep store (:class:`serprep.store.StoreReader`).

Why it is shaped this way:

- One HDF5 read per minibatch. A batch sampler yields *lists* of segment ids, sorted so the
  read walks the file forwards; :class:`SegmentBatchDataset` takes such a list in
  ``__getitem__`` and calls ``reader.read_segments`` once. The DataLoader runs with
  ``batch_size=None`` (no per-item collation).
- Workers each get their own file handle: the reader opens lazily and re-opens after a fork,
  so the dataset can be pickled/forked into DataLoader workers as is.
- Training draws from the fold's ``balanced_index`` (each emotion class equally often,
  training speakers' originals and augmented copies only), reshuffled every epoch with a
  generator seeded from (seed, epoch) so a run, and a resumed run, see the same batches.
- Normalisation uses the fold's statistics (training segments only): z-score per channel and
  mel bin on valid frames; padded frames stay exactly 0. The same function serves
  ``predict`` with the stats stored in the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from serprep.store import is_known_speaker

from .errors import InputError
from .tasks import DIMENSIONS, TASKS

#: Floor for the per-bin standard deviation (a constant bin must not divide by zero).
STD_FLOOR = 1e-5


def normalize(x: torch.Tensor, valid: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Z-score ``x`` ``[B, C, T, M]`` per channel and mel bin; frames ``>= valid`` set to 0.

    ``mean``/``std`` are ``[C, M]`` (the fold's training statistics).
    """
    x = (x - mean[None, :, None, :]) / std.clamp_min(STD_FLOOR)[None, :, None, :]
    mask = torch.arange(x.shape[2])[None, :] < valid[:, None]
    return x * mask[:, None, :, None].to(x.dtype)


@dataclass
class SegmentLabels:
    """Per-segment label arrays of a store (row = segment id), kept in RAM (a few MB).

    ``dimensions`` holds the store's dimensional ratings (``arousal``, ``valence``,
    ``dominance``: only those the store has; empty for a store without them) as float32
    normalised to [0, 1] by the corpus' own scale: ``(rating - low) / (high - low)`` with
    ``(low, high) = reader.dimension_scales()[name]`` (IEMOCAP 1-5 and MSP-Podcast 1-7 become
    comparable, and a sigmoid-free linear head has a fixed target range). NaN = not rated.
    """

    utt: np.ndarray  # int64 utterance index
    emotion: np.ndarray  # int64 class id, -1 = outside the chosen classes
    gender: np.ndarray  # int64 gender id
    speaker: np.ndarray  # int64 global speaker id
    dimensions: dict[str, np.ndarray] = field(default_factory=dict)  # float32 in [0, 1], NaN = missing

    @classmethod
    def from_reader(cls, reader: Any) -> "SegmentLabels":
        seg = reader.segments()
        return cls(
            utt=seg["utt"].to_numpy(np.int64),
            emotion=seg["emotion"].to_numpy(np.int64),
            gender=seg["gender"].to_numpy(np.int64),
            speaker=seg["speaker"].to_numpy(np.int64),
            dimensions=read_dimensions(reader, seg),
        )


def read_dimensions(reader: Any, seg: Any) -> dict[str, np.ndarray]:
    """The store's dimensional ratings per segment, normalised to [0, 1] (see :class:`SegmentLabels`).

    A store without ``dimension_scales`` (older stores, and every store before serprep records
    ratings) has none. A column without a scale, a scale that is not ``low < high``, or a
    rating that is infinite or outside its scale is refused in one line naming the store.
    """
    scales_of = getattr(reader, "dimension_scales", None)
    scales = dict(scales_of()) if callable(scales_of) else {}
    name = str(getattr(reader, "path", "store"))
    out: dict[str, np.ndarray] = {}
    for dim in DIMENSIONS:
        if dim not in seg.columns:
            if dim in scales:
                raise InputError(f"{name}: a scale for {dim} but no {dim} column in its segments")
            continue
        if dim not in scales:
            raise InputError(f"{name}: segments have a {dim} column but the store records no scale for it")
        low, high = (float(v) for v in scales[dim])
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise InputError(f"{name}: the scale of {dim} is ({low}, {high}); expected finite low < high")
        raw = seg[dim].to_numpy(np.float64)
        rated = ~np.isnan(raw)
        bad = rated & ~((raw >= low) & (raw <= high))  # infinities fall here too
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputError(f"{name}: segment {first} has {dim} {raw[first]}, outside its scale [{low}, {high}]")
        out[dim] = ((raw - low) / (high - low)).astype(np.float32)
    return out


def speaker_map(speaker_vocab: Sequence[str], train_speakers: Sequence[str]) -> np.ndarray:
    """Global speaker id -> index among the fold's training speakers (-1 = not a training speaker).

    The speaker head only knows training speakers; the others are ignored by its loss, and so
    are the ``unknown:<group>`` pseudo speakers (many people under one name; their output of
    the head is never a target).
    """
    index = {s: i for i, s in enumerate(train_speakers) if is_known_speaker(s)}
    return np.array([index.get(s, -1) for s in speaker_vocab], dtype=np.int64)


class SegmentBatchDataset(Dataset):
    """``dataset[list_of_segment_ids]`` -> one normalised minibatch (a dict of tensors).

    Keys: ``x`` float32 ``[B, 3, frames, n_mels]``, ``valid`` int64 ``[B]``, ``emotion``,
    one target per task of :data:`sertrain.tasks.TASKS` the store can give (``gender``,
    ``speaker``: fold-local, -1 for non-training speakers; ``arousal`` etc. float32 in
    [0, 1], NaN = not rated, only when the store rates them), ``segment``, ``utt``.
    """

    def __init__(
        self,
        reader: Any,
        labels: SegmentLabels,
        norm_mean: np.ndarray,
        norm_std: np.ndarray,
        speaker_ids: np.ndarray,
    ):
        self.reader = reader
        self.labels = labels
        self.mean = torch.as_tensor(np.asarray(norm_mean, dtype=np.float32))
        self.std = torch.as_tensor(np.asarray(norm_std, dtype=np.float32))
        self.speaker_ids = np.asarray(speaker_ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels.utt)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        x, valid = self.reader.read_segments(idx)  # one read for the whole batch
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        valid_t = torch.from_numpy(np.asarray(valid, dtype=np.int64))
        return {"x": normalize(x, valid_t, self.mean, self.std), "valid": valid_t, **self.labels_for(idx)}

    def labels_for(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """The host tensors of a batch besides ``x`` and ``valid``: labels and ids of segments ``idx``
        (also used by :class:`sertrain.cache.DeviceCache`)."""
        idx = np.asarray(idx, dtype=np.int64)
        out = {"emotion": torch.from_numpy(self.labels.emotion[idx])}
        for name, task in TASKS.items():  # one target per registered task the store can give
            target = task.targets(self, idx)
            if target is not None:
                out[name] = torch.from_numpy(np.ascontiguousarray(target))
        out["segment"] = torch.from_numpy(idx)
        out["utt"] = torch.from_numpy(self.labels.utt[idx])
        return out


class BalancedBatchSampler(Sampler[list[int]]):
    """Yields sorted lists of segment ids drawn from a fold's ``balanced_index``.

    Each epoch permutes the index with ``torch.Generator().manual_seed(seed, epoch)``-style
    seeding (see :meth:`permutation`), so the order depends only on (seed, epoch): a resumed
    run replays exactly the batches of an uninterrupted one. ``steps_per_epoch = 0`` makes
    one pass (the last short batch kept if it has at least 2 segments, since batch norm needs
    more than one sample); otherwise exactly that many batches, re-permuting when the index
    runs out. Call :meth:`set_epoch` before iterating.
    """

    def __init__(self, index: np.ndarray, batch_size: int, seed: int, steps_per_epoch: int = 0):
        self.index = np.asarray(index, dtype=np.int64)
        if self.index.size == 0:
            raise InputError("the fold's balanced training index is empty")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def permutation(self, epoch: int, round_: int = 0) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1_009 + round_)
        return self.index[torch.randperm(len(self.index), generator=g).numpy()]

    def __len__(self) -> int:
        if self.steps_per_epoch:
            return self.steps_per_epoch
        full, rest = divmod(len(self.index), self.batch_size)
        return full + (1 if rest >= 2 else 0)

    def __iter__(self) -> Iterator[list[int]]:
        n_batches = len(self)
        order = self.permutation(self.epoch)
        pos, round_ = 0, 0
        for _ in range(n_batches):
            if self.steps_per_epoch and pos + self.batch_size > len(order):
                round_ += 1
                order = np.concatenate([order[pos:], self.permutation(self.epoch, round_)])
                pos = 0
            batch = order[pos : pos + self.batch_size]
            pos += self.batch_size
            # Sorted: h5py reads increasing indices in one forward pass.
            yield np.sort(batch).tolist()


class SequentialBatchSampler(Sampler[list[int]]):
    """Consecutive sorted blocks of ``indices`` (evaluation: every segment once, in order)."""

    def __init__(self, indices: np.ndarray, batch_size: int):
        self.indices = np.sort(np.asarray(indices, dtype=np.int64))
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start : start + self.batch_size].tolist()


def host_to_device(tensors: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Small int64 host tensors of one shape (a batch's valid counts and labels) on ``device``:
    stacked, pinned and sent in one non-blocking copy on CUDA, so the host never waits for the
    GPU (a copy from pageable memory, or a blocking one, synchronises with the device). On
    the CPU the tensors themselves."""
    if device.type == "cpu":
        return list(tensors)
    stacked = torch.stack([t.to(torch.int64) for t in tensors])
    if device.type == "cuda":
        stacked = stacked.pin_memory()
    return list(stacked.to(device, non_blocking=True).unbind(0))


def _fixed_mmap_threshold(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: pin glibc's mmap threshold at 1 MiB.

    glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB),
    after which the multi-MB batch buffers (a batch of 64 segments is 9 MiB, plus the
    normalisation temporaries) come from the heap and stay in the process as fragmented free
    memory: measured worker RSS grew by 300-400 MB over the first epochs of a long read.
    A fixed threshold keeps every batch buffer mmapped, so it goes back to the OS when freed
    and worker RSS stays flat (benchmarks/bench_train.py measures it). No-op off glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = -3 in glibc's malloc.h
    except (OSError, AttributeError):
        pass


def make_loader(
    dataset: SegmentBatchDataset,
    sampler: Sampler[list[int]],
    num_workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    """DataLoader yielding whole batches (``batch_size=None``: the sampler's lists go straight
    to ``dataset.__getitem__``). Workers are persistent so each keeps its open file between
    epochs; an explicit generator keeps the loader from consuming the global torch RNG (which
    drives dropout and must replay identically on resume). Workers pin the allocator's mmap
    threshold (:func:`_fixed_mmap_threshold`) so their memory stays flat over long runs."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_fixed_mmap_threshold)
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )


def open_store(path: str | Path, verify_features: bool = False) -> Any:
    """Open a store with :class:`serprep.store.StoreReader`; a missing file is an :class:`InputError`.

    Opening checks every dataset's checksum but ``/features`` (fractions of a second);
    ``verify_features`` checks the frames too (``sertrain --verify``: a full read of the file).
    A damaged or modified store is a one-line :class:`serprep.errors.StoreError`.
    """
    from serprep.store import StoreReader  # imported late: the CLI's --help must not need h5py

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: store not found")
    return StoreReader(p, verify_features=verify_features)


def resolve_fold(reader: Any, scheme: str, fold: int, store_name: str) -> Any:
    """The store's :class:`Fold` ``fold`` of ``scheme``, with one-line errors for a store
    without folds, an unknown scheme or a fold number out of range."""
    ids = fold_ids(reader, scheme, store_name)
    if fold not in ids:
        raise InputError(
            f"{store_name}: fold {fold} does not exist in scheme {scheme!r} (folds {min(ids)}..{max(ids)})"
        )
    return reader.fold(scheme, fold)


def fold_ids(reader: Any, scheme: str, store_name: str) -> list[int]:
    """All fold numbers of ``scheme`` (same errors as :func:`resolve_fold`)."""
    schemes = list(reader.fold_schemes())
    if not schemes:
        raise InputError(f"{store_name}: store has no folds (build it with folds to train or evaluate)")
    if scheme not in schemes:
        raise InputError(f"{store_name}: no fold scheme {scheme!r} (store has: {', '.join(schemes)})")
    return [int(i) for i in reader.fold_ids(scheme)]
