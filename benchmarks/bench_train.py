"""Training and data-loading benchmark for sertrain (CPU, 2 threads; or one GPU). One command, one table:

    python benchmarks/bench_train.py                  # builds a demo store under bench_out/
    python benchmarks/bench_train.py --store feats.h5 # use an existing store
    python benchmarks/bench_train.py --paper-steps 0  # skip the (slow) paper-sized model
    python benchmarks/bench_train.py --device cuda    # GPU (bf16 autocast); peak 989 TFLOP/s unless --peak-tflops

Measures
1. training step: ms per optimiser step and segments/s for batch 32 and 64, for ``cpu-small``
   and (a couple of steps of) ``paper``, through the real training loop
   (``sertrain.train._train_epoch``: forward, multi-task loss, backward, clipping, Adam) on
   batches whose features are already on the device (as ``--cache device`` delivers them).
   Paths: ``legacy`` is the loop before the fast path (each loss part, the accuracy and the
   label checks read back every step, packing lengths copied back, torch's packing functions),
   ``fast`` the current one, ``fast+compile`` with ``train.compile = default`` (``fast+cudagraphs``:
   ``reduce-overhead``, CUDA graphs). Columns: FLOPs
   per segment (forward + backward, counted by ``torch.utils.flop_counter``, see
   ``sertrain.model.training_flops``), the arithmetic rate reached, and its fraction of
   ``--peak-tflops`` (default 989 on CUDA: H100/H200 SXM, bf16 dense; none on CPU).
2. a whole epoch from the store (``--epoch-steps`` steps of fold 1's balanced index): the
   DataLoader path (``--cache none``) against the device cache (``--cache device``).
3. data: the DataLoader's segments/s reading the store (sertrain's loader: one
   ``read_segments`` per sorted batch + normalisation, 0 and 2 workers) versus the same
   tensors already in RAM; checks that the store loader delivers at least 5x what training
   consumes (cpu-small, batch 32).
4. memory over a long read: 2 persistent workers read the store for many epochs; VmRSS of
   each worker (``/proc/<pid>/status``) after the first epoch and at the end must stay flat.

The store comes from :func:`build_demo_store` (``serprep.demo.write_demo_corpus`` +
``serprep.build.build_store``); every measurement function takes a store path, so
:func:`run_benchmarks` can run on any store.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sertrain.config import load_config  # noqa: E402
from sertrain.data import (  # noqa: E402
    BalancedBatchSampler,
    SegmentBatchDataset,
    SegmentLabels,
    SequentialBatchSampler,
    make_loader,
    normalize,
    speaker_map,
)
from sertrain.model import InputSpec, build_model, count_parameters, training_flops  # noqa: E402

#: bf16 dense peak of an H100 / H200 SXM (TFLOP/s), the default --peak-tflops on CUDA.
H100_BF16_DENSE_TFLOPS = 989.0
PATHS = ("legacy", "fast", "fast+compile", "fast+cudagraphs")
#: train.compile of each path.
COMPILE = {"fast+compile": "default", "fast+cudagraphs": "reduce-overhead"}

THREADS = 2
MIN_LOADER_RATIO = 5.0
#: Worker RSS may grow this much over the long read before it counts as not flat.
RSS_TOLERANCE_MB = 20.0


# --------------------------------------------------------------------------------------------
# Store
# --------------------------------------------------------------------------------------------
def build_demo_store(workdir: Path, hours: float = 0.5, seed: int = 0) -> Path:
    """Generate the synthetic IEMOCAP-layout demo corpus and build a balanced store from it
    (cached: an existing ``workdir/demo_<hours>h.h5`` is reused)."""
    from serprep.build import BuildOptions, build_store
    from serprep.demo import write_demo_corpus

    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"demo_{hours:g}h.h5"
    if out.exists():
        return out
    root = workdir / f"demo_{hours:g}h" / "IEMOCAP_full_release"
    write_demo_corpus(root, hours=hours, seed=seed)
    build_store(BuildOptions(corpus="iemocap", root=root, out=out, balance=True, jobs=THREADS, progress=False),
                log=lambda m: None)
    return out


# --------------------------------------------------------------------------------------------
# Training speed
# --------------------------------------------------------------------------------------------
def legacy_forward(model, x: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's forward pass as it was before the fast path: lengths copied back from the
    device for packing (``lengths.cpu()``) and torch's packing functions (which copy the batch
    order to the device with a blocking copy and back with ``.cpu()``). Same values."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lengths = valid.to(device=x.device, dtype=torch.long).clamp(1, x.shape[2])
    h, lengths = model.frontend(x.contiguous(memory_format=torch.channels_last), lengths)
    packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = model.lstm(packed)
    h, _ = pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])
    result = model.head(h, lengths)
    result["lengths"] = lengths
    return result


def legacy_loss(out, batch, w_gender: float, w_speaker: float, label_smoothing: float = 0.0):
    """sertrain 0.4's multitask_loss, verbatim: every part read back with float()."""
    import torch.nn.functional as F

    device = out["emotion"].device
    emotion = batch["emotion"].to(device)
    loss = F.cross_entropy(out["emotion"].float(), emotion, ignore_index=-1, label_smoothing=label_smoothing)
    parts = {"emotion": float(loss.detach())}
    if w_gender > 0:
        g = batch["gender"].to(device)
        if (g >= 0).any():
            lg = F.cross_entropy(out["gender"].float(), g, ignore_index=-1)
            loss = loss + w_gender * lg
            parts["gender"] = float(lg.detach())
    if w_speaker > 0 and "speaker" in out:
        s = batch["speaker"].to(device)
        if (s >= 0).any():
            ls = F.cross_entropy(out["speaker"].float(), s, ignore_index=-1)
            loss = loss + w_speaker * ls
            parts["speaker"] = float(ls.detach())
    parts["total"] = float(loss.detach())
    return loss, parts


def legacy_epoch(model, loader, sampler, epoch, optimizer, scaler, precision, device, w_gender, w_speaker, cfg):
    """sertrain 0.4's _train_epoch, verbatim but for :func:`legacy_forward` (its model's forward)."""
    import math
    from collections import defaultdict

    sampler.set_epoch(epoch)
    model.train()
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    correct = seen = 0
    t0 = time.perf_counter()
    for batch in loader:
        x = batch["x"].to(device, non_blocking=True)
        with precision.autocast(device):
            out = legacy_forward(model, x, batch["valid"].to(device, non_blocking=True))
        loss, parts = legacy_loss(out, batch, w_gender, w_speaker, cfg.loss.label_smoothing)
        if not math.isfinite(parts["total"]):
            raise RuntimeError(f"training diverged at epoch {epoch}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        for key, v in parts.items():
            sums[key] += v
            counts[key] += 1
        y = batch["emotion"].to(device)
        correct += int((out["emotion"].argmax(1) == y).sum())
        seen += int((y >= 0).sum())
    elapsed = time.perf_counter() - t0
    mean = {key: sums[key] / counts[key] for key in sums}
    return {"train_loss": mean.get("total"), "segments_per_s": seen / elapsed if elapsed > 0 else float("nan")}


class _Epochs:
    """A fixed list of batches with the sampler interface _train_epoch calls (set_epoch)."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]):
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def _training_setup(config: str, path: str, device: torch.device, n_speakers: int = 8, spec: InputSpec | None = None):
    """(cfg, model, optimizer, scaler, precision) as train_fold builds them for ``path``:
    ``legacy`` as before the fast path (no fused optimiser; on the CPU deterministic mode's NaN
    fill of new tensors on), ``fast`` / ``fast+compile`` as now."""
    from sertrain.config import apply_overrides
    from sertrain.runtime import resolve_precision, seed_everything
    from sertrain.train import make_optimizer

    cfg = load_config(config)
    if path in COMPILE:
        cfg = apply_overrides(cfg, {"train.compile": COMPILE[path]})
    seed_everything(0, device)
    if path == "legacy" and device.type == "cpu":
        torch.utils.deterministic.fill_uninitialized_memory = True  # sertrain 0.4 left it on
    precision = resolve_precision(cfg.train.amp, device)
    spec = spec or InputSpec(n_mels=40, frames=300)
    model = build_model(cfg.model, spec, 4, 2, n_speakers).to(device)
    if cfg.train.compile != "off":
        model.enable_compile(cfg.train.compile)
    if path == "legacy":
        t = cfg.train
        optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    else:
        optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    return cfg, model, optimizer, scaler, precision


def _epoch_fn(path: str):
    from sertrain.train import _train_epoch

    return legacy_epoch if path == "legacy" else _train_epoch


def _loss_args(cfg, path: str) -> tuple:
    """The loss-weight arguments of an epoch function: sertrain 0.4's (w_gender, w_speaker), or
    today's ``{task: weight}`` of the task registry."""
    weights = cfg.loss.active_weights()
    return (weights.get("gender", 0.0), weights.get("speaker", 0.0)) if path == "legacy" else (weights,)


def bench_training(config: str, batch_size: int, steps: int, warmup: int = 2, n_mels: int = 40,
                   frames: int = 300, device: str = "cpu", path: str = "fast", repeats: int = 3,
                   flops: float | None = None) -> dict[str, Any]:
    """ms per training step through the training loop of ``path`` (see the module docstring)
    on random features already on the device with realistic valid lengths and labels on the
    host, as the device cache delivers them. A warm-up epoch of ``warmup`` steps (compilation,
    cuDNN's autotuning), then ``repeats`` timed epochs of ``steps`` steps (each ends by reading
    its results back: the time includes every step's work); the median."""
    dev = torch.device(device)
    cfg, model, optimizer, scaler, precision = _training_setup(config, path, dev)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        batches.append({
            "x": torch.randn(batch_size, 3, frames, n_mels, generator=g).to(dev),
            "valid": torch.randint(frames // 3, frames + 1, (batch_size,), generator=g),
            "emotion": torch.randint(0, 4, (batch_size,), generator=g),
            "gender": torch.randint(0, 2, (batch_size,), generator=g),
            "speaker": torch.randint(0, 8, (batch_size,), generator=g),
        })
    loss_args = _loss_args(cfg, path)
    epoch_fn = _epoch_fn(path)

    def run(n: int) -> float:
        epoch = _Epochs([batches[i % len(batches)] for i in range(n)])
        t0 = time.perf_counter()
        epoch_fn(model, epoch, epoch, 1, optimizer, scaler, precision, dev, *loss_args, cfg)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    if warmup:
        run(warmup)
    step = float(np.median([run(steps) / steps for _ in range(max(1, repeats))]))
    flops = flops if flops is not None else training_flops(cfg.model, InputSpec(n_mels=n_mels, frames=frames))
    return {
        "config": config,
        "device": device,
        "precision": precision.name,
        "path": path,
        "batch": batch_size,
        "steps": steps,
        "ms_per_step": 1000 * step,
        "samples_per_s": batch_size / step,
        "params": count_parameters(model),
        "gflop_per_segment": flops / 1e9,
        "tflop_per_s": batch_size / step * flops / 1e12,
    }


def count_syncs(config: str, batch_size: int, steps: int, path: str, device: str = "cuda") -> dict[str, Any]:
    """Synchronising CUDA calls per training step (``torch.cuda.set_sync_debug_mode``: warnings
    for every call that waits for the GPU), over ``steps`` steps after a warm-up epoch. The
    fast path checks for a non-finite loss every 50 steps and reads the epoch's results once at
    its end: both outside the counted steps when ``steps`` < 50 (counted: the steps' own)."""
    import warnings

    dev = torch.device(device)
    cfg, model, optimizer, scaler, precision = _training_setup(config, path, dev)
    g = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(batch_size, 3, 300, 40, generator=g).to(dev),
             "valid": torch.randint(100, 301, (batch_size,), generator=g),
             "emotion": torch.randint(0, 4, (batch_size,), generator=g),
             "gender": torch.randint(0, 2, (batch_size,), generator=g),
             "speaker": torch.randint(0, 8, (batch_size,), generator=g)}
    loss_args = _loss_args(cfg, path)
    epoch_fn = _epoch_fn(path)
    epoch_fn(model, _Epochs([batch] * 2), _Epochs([batch] * 2), 1, optimizer, scaler, precision, dev, *loss_args, cfg)
    torch.cuda.synchronize()

    class Counted(_Epochs):  # sync mode on while the steps run, off before the epoch's final read
        def __iter__(self):
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield from self.batches
            finally:
                torch.cuda.set_sync_debug_mode("default")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        epoch = Counted([batch] * steps)
        epoch_fn(model, epoch, epoch, 2, optimizer, scaler, precision, dev, *loss_args, cfg)
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    return {"config": config, "path": path, "batch": batch_size, "steps": steps, "syncs": len(syncs),
            "syncs_per_step": len(syncs) / steps, "first": syncs[:3]}


def bench_store_epoch(store: Path, config: str, batch_size: int, steps: int, cache: str, path: str = "fast",
                      device: str = "cpu", workers: int = 2, repeats: int = 2,
                      flops: float | None = None) -> dict[str, Any]:
    """Segments/s of whole training epochs of ``steps`` steps over fold 1's balanced index of
    ``store``: batches from the DataLoader (``cache = "none"``, ``workers`` workers) or from a
    device cache (``cache = "device"``, built once, its time reported apart). A warm-up epoch,
    then the median of ``repeats`` epochs."""
    from sertrain.cache import DeviceCache

    dev = torch.device(device)
    reader, fold, ds = _dataset(store)
    cfg, model, optimizer, scaler, precision = _training_setup(config, path, dev, len(fold.train_speakers),
                                                               InputSpec.from_reader(reader))
    sampler = BalancedBatchSampler(np.asarray(fold.balanced_index), batch_size, seed=0, steps_per_epoch=steps)
    fill_s = 0.0
    if cache == "device":
        t0 = time.perf_counter()
        dc = DeviceCache(ds, np.asarray(fold.balanced_index), dev)
        fill_s = time.perf_counter() - t0
        source: Any = dc.batches(sampler)
    else:
        source = make_loader(ds, sampler, workers, pin_memory=dev.type == "cuda")
    loss_args = _loss_args(cfg, path)
    epoch_fn = _epoch_fn(path)
    times = []
    for e in range(1 + max(1, repeats)):
        t0 = time.perf_counter()
        epoch_fn(model, source, sampler, e + 1, optimizer, scaler, precision, dev, *loss_args, cfg)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if e:
            times.append(time.perf_counter() - t0)
    del source
    reader.close()
    dt = float(np.median(times))
    flops = flops if flops is not None else training_flops(cfg.model, InputSpec(n_mels=40, frames=300))
    seg_s = steps * batch_size / dt
    return {"config": config, "device": device, "precision": precision.name, "path": path, "cache": cache,
            "workers": 0 if cache == "device" else workers, "batch": batch_size, "steps": steps,
            "epoch_s": dt, "samples_per_s": seg_s, "cache_fill_s": fill_s,
            "gflop_per_segment": flops / 1e9, "tflop_per_s": seg_s * flops / 1e12}


# --------------------------------------------------------------------------------------------
# Data loading
# --------------------------------------------------------------------------------------------
def _dataset(store: Path, fold: int = 1, scheme: str = "loso"):
    from serprep.store import StoreReader

    reader = StoreReader(store)
    f = reader.fold(scheme, fold)
    labels = SegmentLabels.from_reader(reader)
    ds = SegmentBatchDataset(reader, labels, f.norm_mean, f.norm_std,
                             speaker_map(reader.vocab("speaker"), f.train_speakers))
    return reader, f, ds


class InRamDataset(torch.utils.data.Dataset):
    """The same batches as :class:`SegmentBatchDataset`, from tensors already in memory."""

    def __init__(self, x: torch.Tensor, valid: torch.Tensor, mean: np.ndarray, std: np.ndarray):
        self.x, self.valid = x, valid
        self.mean, self.std = torch.as_tensor(mean), torch.as_tensor(std)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return {"x": normalize(self.x[idx], self.valid[idx], self.mean, self.std), "valid": self.valid[idx]}


def _drain(loader, epochs: int, sampler=None) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    for e in range(epochs):
        if sampler is not None:
            sampler.set_epoch(e)
        for batch in loader:
            n += len(batch["valid"])
    return n, time.perf_counter() - t0


def bench_loader(store: Path, batch_size: int = 32, workers: tuple[int, ...] = (0, 2),
                 min_segments: int = 6000) -> list[dict[str, Any]]:
    """Segments/s of the training loader (balanced index, shuffled, sorted batches) reading the
    store, with 0 and 2 workers, versus the same tensors in RAM (0 workers)."""
    reader, fold, ds = _dataset(store)
    index = np.asarray(fold.balanced_index)
    epochs = max(1, int(np.ceil(min_segments / len(index))))
    rows = []
    for nw in workers:
        sampler = BalancedBatchSampler(index, batch_size, seed=0)
        loader = make_loader(ds, sampler, nw)
        _drain(loader, 1, sampler)  # start workers, warm the page cache
        n, dt = _drain(loader, epochs, sampler)
        rows.append({"source": f"store, {nw} worker(s)", "segments_per_s": n / dt, "segments": n})
        del loader
    uniq = np.unique(index)
    x, valid = reader.read_segments(uniq)
    remap = {int(s): i for i, s in enumerate(uniq)}
    ram = InRamDataset(torch.from_numpy(x), torch.from_numpy(valid), fold.norm_mean, fold.norm_std)
    sampler = BalancedBatchSampler(np.array([remap[int(i)] for i in index]), batch_size, seed=0)
    n, dt = _drain(make_loader(ram, sampler, 0), epochs, sampler)
    rows.append({"source": "RAM tensors, 0 workers", "segments_per_s": n / dt, "segments": n})
    reader.close()
    return rows


def _vmrss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def bench_worker_memory(store: Path, epochs: int = 30, batch_size: int = 64, workers: int = 2) -> dict[str, Any]:
    """VmRSS of each persistent DataLoader worker over ``epochs`` epochs of reading every
    segment of the store (sorted sequential batches, as evaluation reads).

    "start" is after epoch 1: by then each worker has opened its HDF5 handle, touched its
    share of the file once (the chunk cache is sized in the store module) and allocated its
    batch buffers, so later growth would be a leak. The trajectory is sampled at a few epochs.
    """
    reader, fold, ds = _dataset(store)
    sampler = SequentialBatchSampler(np.arange(reader.n_segments), batch_size)
    loader = make_loader(ds, sampler, workers)
    for _ in loader:
        pass
    # Persistent workers: the same processes serve every epoch (private attribute, read only).
    pids = [w.pid for w in loader._iterator._workers]  # noqa: SLF001
    checkpoints = sorted({1, 2, max(1, epochs // 4), max(1, epochs // 2), epochs})
    trajectory = {1: [_vmrss_mb(p) for p in pids]}
    main_start = _vmrss_mb(os.getpid())
    n, t0 = 0, time.perf_counter()
    for epoch in range(2, epochs + 1):
        for batch in loader:
            n += len(batch["valid"])
        if epoch in checkpoints:
            trajectory[epoch] = [_vmrss_mb(p) for p in pids]
    dt = time.perf_counter() - t0
    main_end = _vmrss_mb(os.getpid())
    del loader
    reader.close()
    start, end = trajectory[1], trajectory[max(trajectory)]
    growth = max(e - s for s, e in zip(start, end))
    return {
        "workers": workers,
        "epochs": epochs,
        "segments_read": n,
        "segments_per_s": n / dt if dt else float("nan"),
        "worker_rss_mb_by_epoch": {e: [round(v, 1) for v in vals] for e, vals in trajectory.items()},
        "worker_rss_start_mb": [round(v, 1) for v in start],
        "worker_rss_end_mb": [round(v, 1) for v in end],
        "main_rss_start_mb": round(main_start, 1),
        "main_rss_end_mb": round(main_end, 1),
        "max_worker_growth_mb": round(growth, 1),
        "flat": bool(growth <= RSS_TOLERANCE_MB),
    }


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def _paths(spec: str) -> list[str]:
    paths = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in paths if p not in PATHS]
    if bad:
        raise SystemExit(f"--paths: unknown {bad}; choose from {', '.join(PATHS)}")
    return paths


def run_benchmarks(store: Path, small_steps: int = 12, paper_steps: int = 2, memory_epochs: int = 30,
                   device: str = "cpu", paths: str = "legacy,fast", repeats: int = 3, epoch_steps: int = 0,
                   epoch_config: str | None = None, epoch_batch: int = 0, caches: str = "none,device",
                   data: bool = True, sync_steps: int = 0, peak_tflops: float | None = None,
                   batches: tuple[int, ...] = (32, 64)) -> dict[str, Any]:
    """All measurements on ``store``; returns a JSON-ready dict. Training rows are interleaved
    by path (legacy, fast, ... for one model and batch, then the next) so that a machine's
    changing load hits them alike."""
    torch.set_num_threads(THREADS)
    from serprep.store import StoreReader

    r = StoreReader(store)
    info = {"store": str(store), "segments": r.n_segments, "utterances": int(len(r.manifest())),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
            "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
            "peak_tflops": peak_tflops}
    r.close()
    flops = {name: training_flops(load_config(name).model, InputSpec(n_mels=40, frames=300))
             for name in ("cpu-small", "paper")}
    training = []
    warm = 1 if device == "cpu" else 3
    models = [(name, steps) for name, steps in (("cpu-small", small_steps), ("paper", paper_steps)) if steps > 0]
    for name, steps in models:
        for bs in batches:
            for path in _paths(paths):
                slow = name == "paper" and device == "cpu"  # seconds per step: one timed epoch
                training.append(bench_training(name, bs, steps, warmup=warm if name == "paper" else 2, device=device,
                                               path=path, repeats=1 if slow else repeats, flops=flops[name]))
    epochs = []
    if epoch_steps > 0:
        name = epoch_config or ("paper" if device != "cpu" else "cpu-small")
        bs = epoch_batch or 64
        for cache in [c.strip() for c in caches.split(",") if c.strip()]:
            for path in _paths(paths):
                if path == "legacy" and cache == "device":
                    continue  # the cache came with the fast path
                epochs.append(bench_store_epoch(store, name, bs, epoch_steps, cache, path, device, flops=flops[name]))
    syncs = []
    if sync_steps > 0 and device.startswith("cuda"):
        for path in _paths(paths):
            syncs.append(count_syncs(epoch_config or "paper", 64, sync_steps, path, device))
    res: dict[str, Any] = {"info": info, "flops_per_segment": flops, "training": training, "epochs": epochs,
                           "syncs": syncs}
    if not data:
        return res
    loader = bench_loader(store)
    memory = bench_worker_memory(store, epochs=memory_epochs)
    # The loader must keep up with the model that runs on this device: cpu-small on CPU, the
    # paper model on CUDA.
    reference = "paper" if device != "cpu" and paper_steps > 0 else "cpu-small"
    consume = max((t["samples_per_s"] for t in training if t["config"] == reference and t["batch"] == batches[0]),
                  default=float("nan"))
    deliver = next(row["segments_per_s"] for row in loader if row["source"].startswith("store, 2"))
    res.update({
        "loader": loader,
        "loader_vs_training": {"reference": reference, "deliver": deliver, "consume": consume, "ratio": deliver / consume,
                               "ok": bool(deliver >= MIN_LOADER_RATIO * consume), "batch": batches[0]},
        "memory": memory,
        "peak_rss_mb": {
            "main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
        },
    })
    return res


def _peak_cols(tflop_per_s: float, peak: float | None) -> str:
    return f"{tflop_per_s:>9.3g} {(f'{100 * tflop_per_s / peak:.1f} %' if peak else '-'):>9}"


def format_report(res: dict[str, Any]) -> str:
    i = res["info"]
    peak = i.get("peak_tflops")
    lines = [f"store {i['store']}: {i['utterances']} utterances, {i['segments']} segments; "
             f"torch {i['torch']}, {i['threads']} threads; device {i['device']} ({i['device_name']}); "
             f"peak {f'{peak:g} TFLOP/s' if peak else '- (not given)'}",
             "FLOPs per full 300-frame segment, forward + backward (convolutions and matrix products, "
             "FlopCounterMode): " + ", ".join(f"{k} {v / 1e9:.3f} GFLOP" for k, v in res["flops_per_segment"].items()),
             "", "training step (features on the device; median of the timed epochs):"]
    head = (f"{'model':<10} {'device':<7} {'dtype':<6} {'path':<13} {'batch':>5} {'ms/step':>9} {'samples/s':>10} "
            f"{'params':>11} {'GFLOP/seg':>9} {'TFLOP/s':>9} {'of peak':>9}")
    lines.append(head)
    for t in res["training"]:
        lines.append(f"{t['config']:<10} {t['device']:<7} {t['precision']:<6} {t['path']:<13} {t['batch']:>5} "
                     f"{t['ms_per_step']:>9.1f} {t['samples_per_s']:>10.1f} {t['params']:>11,} "
                     f"{t['gflop_per_segment']:>9.3f} " + _peak_cols(t["tflop_per_s"], peak))
    by = {(t["config"], t["batch"], t["path"]): t["samples_per_s"] for t in res["training"]}
    for (cfg_name, bs, path), v in by.items():
        if path != "legacy" and (cfg_name, bs, "legacy") in by:
            lines.append(f"  {cfg_name} batch {bs}: {path} / legacy = {v / by[(cfg_name, bs, 'legacy')]:.2f}x")
    if res.get("epochs"):
        lines += ["", "whole epochs from the store (fold 1's balanced index; median of the timed epochs):",
                  f"{'model':<10} {'dtype':<6} {'path':<13} {'data':<27} {'batch':>5} {'steps':>5} {'epoch s':>8} "
                  f"{'samples/s':>10} {'TFLOP/s':>9} {'of peak':>9}"]
        for e in res["epochs"]:
            data = ("--cache device" + (f" ({e['cache_fill_s']:.1f}s fill)" if e["cache_fill_s"] else "")
                    if e["cache"] == "device" else f"loader, {e['workers']} workers")
            lines.append(f"{e['config']:<10} {e['precision']:<6} {e['path']:<13} {data:<27} {e['batch']:>5} "
                         f"{e['steps']:>5} {e['epoch_s']:>8.2f} {e['samples_per_s']:>10.1f} "
                         + _peak_cols(e["tflop_per_s"], peak))
    if res.get("syncs"):
        lines += ["", "synchronising CUDA calls per training step (torch.cuda.set_sync_debug_mode):"]
        for c in res["syncs"]:
            lines.append(f"  {c['config']} batch {c['batch']} {c['path']:<13} {c['syncs_per_step']:.2f} per step "
                         f"({c['syncs']} in {c['steps']} steps)" + (f"; first: {c['first'][0]}" if c["first"] else ""))
    if "loader" not in res:
        return "\n".join(lines)
    lines += ["", f"{'data source (batch 32, balanced index)':<40} {'segments/s':>11}"]
    for row in res["loader"]:
        lines.append(f"{row['source']:<40} {row['segments_per_s']:>11.0f}")
    lv = res["loader_vs_training"]
    lines.append(f"store loader / {lv['reference']} training (batch {lv['batch']}, fastest path): {lv['deliver']:.0f} / "
                 f"{lv['consume']:.0f} = {lv['ratio']:.1f}x  (need >= {MIN_LOADER_RATIO:.0f}x: "
                 f"{'OK' if lv['ok'] else 'TOO SLOW: use --cache device'})")
    m = res["memory"]
    lines += ["", f"long read: {m['workers']} workers x {m['epochs']} epochs, {m['segments_read']} segments "
                  f"({m['segments_per_s']:.0f}/s)",
              "  worker VmRSS MB by epoch: " + "; ".join(f"{e}: {v}" for e, v in m["worker_rss_mb_by_epoch"].items()),
              f"  worker VmRSS MB start {m['worker_rss_start_mb']} -> end {m['worker_rss_end_mb']} "
              f"(max growth {m['max_worker_growth_mb']} MB: {'flat' if m['flat'] else 'GROWING'}); "
              f"main {m['main_rss_start_mb']} -> {m['main_rss_end_mb']} MB"]
    p = res["peak_rss_mb"]
    lines.append(f"peak RSS: main {p['main']:.0f} MB, largest child {p['children']:.0f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global THREADS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=None, help="existing store (default: build a demo store)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench_out", help="where the demo store is built")
    ap.add_argument("--hours", type=float, default=0.5, help="demo corpus size")
    ap.add_argument("--small-steps", type=int, default=12, help="timed steps per cpu-small batch size and path (0 = skip)")
    ap.add_argument("--paper-steps", type=int, default=2, help="timed steps per paper batch size and path (0 = skip)")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per training row (the median is shown)")
    ap.add_argument("--batches", default="32,64", help="training batch sizes")
    ap.add_argument("--paths", default="legacy,fast",
                    help=f"training loops to time, comma-separated: {', '.join(PATHS)} (fast+compile compiles first)")
    ap.add_argument("--epoch-steps", type=int, default=0,
                    help="also time whole epochs of this many steps from the store, per --caches (0 = skip)")
    ap.add_argument("--epoch-config", default=None, help="model of the epoch rows (default: paper on CUDA, else cpu-small)")
    ap.add_argument("--epoch-batch", type=int, default=64, help="batch size of the epoch rows")
    ap.add_argument("--caches", default="none,device", help="data sources of the epoch rows: none (loader), device")
    ap.add_argument("--sync-steps", type=int, default=0, help="CUDA: count synchronising calls over this many steps per path")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help=f"the device's peak for the 'of peak' column (default on CUDA: {H100_BF16_DENSE_TFLOPS:g}, "
                         "H100/H200 SXM bf16 dense; none on CPU: '-')")
    ap.add_argument("--training-only", action="store_true", help="skip the loader and worker-memory measurements")
    ap.add_argument("--memory-epochs", type=int, default=30, help="epochs of the long read")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--device", default="cpu", help="training device for the step timings (cpu or cuda)")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads")
    args = ap.parse_args(argv)
    THREADS = args.threads  # run_benchmarks and the demo build use it
    torch.set_num_threads(THREADS)
    peak = args.peak_tflops
    if peak is None and args.device.startswith("cuda"):
        peak = H100_BF16_DENSE_TFLOPS
    store = args.store or build_demo_store(args.workdir, args.hours)
    res = run_benchmarks(store, args.small_steps, args.paper_steps, args.memory_epochs, args.device, args.paths,
                         args.repeats, args.epoch_steps, args.epoch_config, args.epoch_batch, args.caches,
                         not args.training_only, args.sync_steps, peak,
                         tuple(int(b) for b in args.batches.split(",") if b.strip()))
    print(format_report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    if args.training_only:
        return 0
    return 0 if res["loader_vs_training"]["ok"] and res["memory"]["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
