"""A fold's features held on the training device (``train.cache = "device"``, ``--cache device``).

The loader path (:func:`sertrain.data.make_loader`) reads every batch from the store, normalises
it on the host and copies it to the device, in DataLoader workers. With a cache the segments a
fold needs (its balanced training index, and the scored validation and test segments) are read
once, normalised by the same :class:`sertrain.data.SegmentBatchDataset` (so the values are the
loader's, bit for bit) and kept in one device tensor ``[N, 3, frames, n_mels]``; a batch is then
an ``index_select`` on the device. No workers, no host copies of features, no pinned buffers.
Labels, valid counts, segment and utterance ids stay in host arrays (a few MB): the training
step reads them without waiting for the device, and only the row numbers of a batch travel to
it.

On the CPU "device" means main memory: the same code, the loader's results (tests compare them).

Memory: ``N * 3 * frames * n_mels`` values, 4 bytes each (``train.cache_dtype = "float32"``) or
2 (``"bfloat16"``). IEMOCAP's 4-class set with 300 x 40 segments is about 1.2 GB as float32.
A cache that would take more than :data:`MAX_FREE_FRACTION` of the free memory (CUDA:
``torch.cuda.mem_get_info``; CPU: ``MemAvailable``) is refused in one line before anything is
allocated. ``bfloat16`` is only accepted under bf16 autocast: there the first convolution
casts its input to bf16 anyway, so holding the normalised features in bf16 gives it the very
same values (masking by 0/1 commutes with the rounding) at half the memory.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .data import SegmentBatchDataset, SequentialBatchSampler, host_to_device
from .errors import InputError

#: Largest share of the free memory a cache may take (the rest: model, activations, allocator).
MAX_FREE_FRACTION = 0.8
#: Segments read from the store per chunk while filling the cache.
FILL_CHUNK = 512
#: ``train.cache_dtype`` -> torch dtype.
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device`` (CUDA: free device memory; CPU: the
    kernel's MemAvailable, or total physical memory where /proc/meminfo is missing)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def size_text(n: float) -> str:
    """``1.23 GiB`` or, below a GiB, ``45.6 MiB``."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_fits(nbytes: int, device: torch.device, what: str = "--cache device") -> None:
    """Refuse (one-line :class:`InputError`) a cache of ``nbytes`` that would take more than
    :data:`MAX_FREE_FRACTION` of the free memory of ``device``."""
    free = free_memory(device)
    if nbytes > MAX_FREE_FRACTION * free:
        where = "free GPU memory" if device.type == "cuda" else "available memory"
        raise InputError(
            f"{what}: the fold's features need {size_text(nbytes)} but {device} has {size_text(free)} {where} "
            f"(at most {MAX_FREE_FRACTION:.0%} of it may be used); use --cache none"
        )


class DeviceCache:
    """The normalised features of ``segments`` (segment ids of ``dataset``'s store) on ``device``."""

    def __init__(self, dataset: SegmentBatchDataset, segments: Sequence[int] | np.ndarray, device: torch.device,
                 dtype: torch.dtype = torch.float32, chunk: int = FILL_CHUNK):
        self.dataset = dataset
        self.device = torch.device(device)
        self.ids = np.unique(np.asarray(segments, dtype=np.int64))
        if self.ids.size == 0:
            raise InputError("--cache device: the fold has no segments to cache")
        shape = (int(self.ids.size), *self._item_shape())
        self.nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        check_fits(self.nbytes, self.device)
        self.x = torch.empty(shape, dtype=dtype, device=self.device)
        valid = np.empty(self.ids.size, dtype=np.int64)
        for start in range(0, self.ids.size, chunk):
            part = self.ids[start : start + chunk]
            batch = dataset[part]  # the loader's own read and normalisation
            self.x[start : start + part.size].copy_(batch["x"].to(dtype))
            valid[start : start + part.size] = batch["valid"].numpy()
        self.valid = valid

    def _item_shape(self) -> tuple[int, ...]:
        """``(channels, frames, n_mels)`` of one segment (read from one segment of the store)."""
        x, _valid = self.dataset.reader.read_segments(self.ids[:1])
        return tuple(int(d) for d in np.asarray(x).shape[1:])

    def __len__(self) -> int:
        return int(self.ids.size)

    def rows(self, segments: Sequence[int] | np.ndarray) -> np.ndarray:
        """Cache rows of ``segments``; a segment the cache does not hold is a ``KeyError``."""
        idx = np.asarray(segments, dtype=np.int64)
        rows = np.searchsorted(self.ids, idx)
        if idx.size and (rows.max() >= self.ids.size or not np.array_equal(self.ids[rows], idx)):
            raise KeyError("segment(s) not in the device cache")
        return rows

    def batch(self, segments: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """The batch ``dataset[segments]`` would give, with ``x`` gathered on the device and every
        other entry (valid counts, labels, ids) a host tensor, as the loader delivers them."""
        idx = np.asarray(segments, dtype=np.int64)
        rows = self.rows(idx)
        (dev_rows,) = host_to_device([torch.from_numpy(rows)], self.device)
        return {"x": self.x.index_select(0, dev_rows), "valid": torch.from_numpy(self.valid[rows]),
                **self.dataset.labels_for(idx)}

    def batches(self, sampler: Any) -> "CachedBatches":
        """Iterable over ``sampler``'s batches from the cache (the DataLoader's replacement)."""
        return CachedBatches(self, sampler)


class CachedBatches:
    """``for batch in CachedBatches(cache, sampler)``: one :meth:`DeviceCache.batch` per list of
    segment ids the sampler yields, in its order (the loader's order)."""

    def __init__(self, cache: DeviceCache, sampler: Any):
        self.cache, self.sampler = cache, sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for indices in self.sampler:
            yield self.cache.batch(indices)


def fold_cache(dataset: SegmentBatchDataset, fold: Any, device: torch.device, dtype_name: str,
               precision_dtype: torch.dtype | None, *, test: bool = True) -> DeviceCache:
    """The :class:`DeviceCache` of a fold: its balanced training index and the scored
    validation (and, with ``test``, test) segments. ``bfloat16`` is refused unless training runs
    under bf16 autocast (``precision_dtype``)."""
    dtype = CACHE_DTYPES[dtype_name]
    if dtype == torch.bfloat16 and precision_dtype != torch.bfloat16:
        raise InputError(
            "train.cache_dtype = bfloat16 needs bf16 autocast (CUDA with train.amp auto or bf16): in fp32 or fp16 "
            "the model would see other input values; use float32"
        )
    from .evaluate import scored_segments

    parts = [np.asarray(fold.balanced_index, dtype=np.int64),
             scored_segments(dataset, fold.validation_segments)]
    if test:
        parts.append(scored_segments(dataset, fold.test_segments))
    return DeviceCache(dataset, np.concatenate(parts), device, dtype)


def evaluation_batches(dataset: SegmentBatchDataset, cache: DeviceCache | None, segment_ids: np.ndarray,
                       batch_size: int, num_workers: int) -> Any:
    """The batches :func:`sertrain.evaluate.evaluation_loader` gives, from ``cache`` when there is one."""
    from .evaluate import evaluation_loader, scored_segments

    if cache is None:
        return evaluation_loader(dataset, segment_ids, batch_size, num_workers)
    return cache.batches(SequentialBatchSampler(scored_segments(dataset, segment_ids), batch_size))
