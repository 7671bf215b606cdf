"""Training and data-loading benchmark for sertrain (CPU, 2 threads). One command, one table:

    python benchmarks/bench_train.py                  # builds a demo store under bench_out/
    python benchmarks/bench_train.py --store feats.h5 # use an existing store
    python benchmarks/bench_train.py --paper-steps 0  # skip the (slow) paper-sized model

Measures
1. training: ms per optimiser step and samples/s for batch 32 and 64, for ``cpu-small`` and
   (a couple of steps of) ``paper``; parameter counts; peak RSS.
2. data: the DataLoader's segments/s reading the store (sertrain's loader: one
   ``read_segments`` per sorted batch + normalisation, 0 and 2 workers) versus the same
   tensors already in RAM; checks that the store loader delivers at least 5x what training
   consumes (cpu-small, batch 32).
3. memory over a long read: 2 persistent workers read the store for many epochs; VmRSS of
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
from sertrain.model import InputSpec, build_model, count_parameters, forward_macs  # noqa: E402
from sertrain.train import multitask_loss  # noqa: E402

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
def bench_training(config: str, batch_size: int, steps: int, warmup: int = 2, n_mels: int = 40,
                   frames: int = 300, device: str = "cpu") -> dict[str, Any]:
    """ms per training step (forward, multi-task loss, backward, Adam) on random inputs with
    realistic valid lengths; samples/s = batch / step time. On CUDA with the config's mixed
    precision (``train.amp``), synchronising before each clock reading."""
    from sertrain.runtime import resolve_precision

    cfg = load_config(config)
    torch.manual_seed(0)
    dev = torch.device(device)
    precision = resolve_precision(cfg.train.amp, dev)
    spec = InputSpec(n_mels=n_mels, frames=frames)
    model = build_model(cfg.model, spec, 4, 2, 8).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    g = torch.Generator().manual_seed(0)
    batch = {
        "x": torch.randn(batch_size, 3, frames, n_mels, generator=g),
        "valid": torch.randint(frames // 3, frames + 1, (batch_size,), generator=g),
        "emotion": torch.randint(0, 4, (batch_size,), generator=g),
        "gender": torch.randint(0, 2, (batch_size,), generator=g),
        "speaker": torch.randint(0, 8, (batch_size,), generator=g),
    }
    batch = {k: v.to(dev) for k, v in batch.items()}
    w_g, w_s = cfg.loss.effective_weights()
    scaler = torch.amp.GradScaler("cuda") if precision.use_scaler else None
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        with precision.autocast(dev):
            out = model(batch["x"], batch["valid"])
            loss, _ = multitask_loss(out, batch, w_g, w_s)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    return {
        "config": config,
        "device": device,
        "precision": precision.name,
        "batch": batch_size,
        "steps": steps,
        "ms_per_step": 1000 * step,
        "samples_per_s": batch_size / step,
        "params": count_parameters(model),
        "gmac_per_segment": forward_macs(cfg.model, spec) / 1e9,
    }


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
def run_benchmarks(store: Path, small_steps: int = 12, paper_steps: int = 2, memory_epochs: int = 30,
                   device: str = "cpu") -> dict[str, Any]:
    """All measurements on ``store``; returns a JSON-ready dict."""
    torch.set_num_threads(THREADS)
    from serprep.store import StoreReader

    r = StoreReader(store)
    info = {"store": str(store), "segments": r.n_segments, "utterances": int(len(r.manifest())),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    r.close()
    training = []
    for bs in (32, 64):
        training.append(bench_training("cpu-small", bs, small_steps, device=device))
    if paper_steps > 0:
        for bs in (32, 64):
            training.append(bench_training("paper", bs, paper_steps, warmup=1 if device == "cpu" else 3, device=device))
    loader = bench_loader(store)
    memory = bench_worker_memory(store, epochs=memory_epochs)
    # The loader must keep up with the model that runs on this device: cpu-small on CPU, the
    # paper model on CUDA.
    reference = "paper" if device != "cpu" and paper_steps > 0 else "cpu-small"
    consume = next(t["samples_per_s"] for t in training if t["config"] == reference and t["batch"] == 32)
    deliver = next(row["segments_per_s"] for row in loader if row["source"].startswith("store, 2"))
    return {
        "info": info,
        "training": training,
        "loader": loader,
        "loader_vs_training": {"reference": reference, "deliver": deliver, "consume": consume, "ratio": deliver / consume,
                               "ok": bool(deliver >= MIN_LOADER_RATIO * consume)},
        "memory": memory,
        "peak_rss_mb": {
            "main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
        },
    }


def format_report(res: dict[str, Any]) -> str:
    i = res["info"]
    lines = [f"store {i['store']}: {i['utterances']} utterances, {i['segments']} segments; "
             f"torch {i['torch']}, {i['threads']} threads", ""]
    lines.append(f"{'model':<10} {'device':<7} {'dtype':<9} {'batch':>5} {'ms/step':>9} {'samples/s':>10} {'params':>11} {'GMAC/seg':>9}")
    for t in res["training"]:
        lines.append(f"{t['config']:<10} {t['device']:<7} {t['precision']:<9} {t['batch']:>5} {t['ms_per_step']:>9.1f} "
                     f"{t['samples_per_s']:>10.1f} {t['params']:>11,} {t['gmac_per_segment']:>9.3f}")
    lines += ["", f"{'data source (batch 32, balanced index)':<40} {'segments/s':>11}"]
    for row in res["loader"]:
        lines.append(f"{row['source']:<40} {row['segments_per_s']:>11.0f}")
    lv = res["loader_vs_training"]
    lines.append(f"store loader / {lv['reference']} training (batch 32): {lv['deliver']:.0f} / {lv['consume']:.0f} = "
                 f"{lv['ratio']:.1f}x  (need >= {MIN_LOADER_RATIO:.0f}x: {'OK' if lv['ok'] else 'TOO SLOW'})")
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=None, help="existing store (default: build a demo store)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench_out", help="where the demo store is built")
    ap.add_argument("--hours", type=float, default=0.5, help="demo corpus size")
    ap.add_argument("--small-steps", type=int, default=12, help="timed steps per cpu-small batch size")
    ap.add_argument("--paper-steps", type=int, default=2, help="timed steps per paper batch size (0 = skip)")
    ap.add_argument("--memory-epochs", type=int, default=30, help="epochs of the long read")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--device", default="cpu", help="training device for the step timings (cpu or cuda)")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    store = args.store or build_demo_store(args.workdir, args.hours)
    res = run_benchmarks(store, args.small_steps, args.paper_steps, args.memory_epochs, args.device)
    print(format_report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["loader_vs_training"]["ok"] and res["memory"]["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
