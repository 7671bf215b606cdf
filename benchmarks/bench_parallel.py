"""Several processes for sertrain on the CPU: data-parallel steps (DDP) and side-by-side cv runs.

    python benchmarks/bench_parallel.py                 # both parts, demo store under bench_out/
    python benchmarks/bench_parallel.py --skip-cv       # DDP step times only
    python benchmarks/bench_parallel.py --store feats.h5

1. **DDP step time** at the same global batch (32 and 64 segments, ``cpu-small``, random
   inputs with realistic valid lengths): one process with 2 and with 1 torch threads, against
   2 processes x 1 thread in a gloo process group running exactly what ``torchrun -m sertrain
   train`` runs per step (each rank half the batch, batch norm synchronised over ranks by
   :class:`sertrain.distributed.DistributedBatchNorm2d`, the loss split with global label
   counts, DDP's gradient all-reduce, clipping, Adam). ms per step: median over the timed
   steps (rank 0's clock; every step ends in collectives, so the ranks move together).
2. **cv wall time**: ``sertrain cv STORE --epochs 2`` (every fold, one seed, ``cpu-small``,
   no HTML report) one run at a time with torch's default threads and with ``--threads 1``,
   against ``--parallel 2`` (2 worker processes x 1 thread); whole commands, as a user runs
   them. The last column compares predictions.csv (every test utterance's posteriors) with
   the ``--threads 1`` run's, whose per-run threads ``--parallel 2`` uses (float results
   depend on the thread count).

One run of each; ratios are against the one-process row. The store is the ``make train`` demo
corpus (``serprep demo-corpus --hours 0.5``, built with ``--balance``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench_train import build_demo_store  # noqa: E402


# --------------------------------------------------------------------------------------------
# 1. DDP step time
# --------------------------------------------------------------------------------------------
def _inputs(batch: int, frames: int = 300, n_mels: int = 40) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(batch, 3, frames, n_mels, generator=g),
        "valid": torch.randint(frames // 3, frames + 1, (batch,), generator=g),
        "emotion": torch.randint(0, 4, (batch,), generator=g),
        "gender": torch.randint(0, 2, (batch,), generator=g),
        "speaker": torch.randint(0, 8, (batch,), generator=g),
    }


def _timed_steps(model: torch.nn.Module, params_of: torch.nn.Module, batch: dict[str, torch.Tensor], loss_fn: Any,
                 steps: int, warmup: int) -> tuple[list[float], float]:
    """Per-step seconds (after ``warmup``) of forward, loss, backward, clip, Adam; first loss."""
    from sertrain.config import load_config

    cfg = load_config("cpu-small")
    weights = cfg.loss.active_weights()
    opt = torch.optim.Adam(params_of.parameters(), lr=cfg.train.lr)
    model.train()
    times, first = [], float("nan")
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = model(batch["x"], batch["valid"])
        loss, parts = loss_fn(out, batch, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params_of.parameters(), cfg.train.grad_clip)
        opt.step()
        if i == 0:
            first = float(parts["total"])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, first


def _model() -> torch.nn.Module:
    """cpu-small without dropout (so that the step-1 losses of all rows are comparable: each
    rank draws its own dropout masks; dropout costs nothing measurable here)."""
    from sertrain.config import apply_overrides, load_config
    from sertrain.model import InputSpec, build_model

    torch.manual_seed(0)
    cfg = apply_overrides(load_config("cpu-small"), {"model.dropout": 0.0})
    return build_model(cfg.model, InputSpec(n_mels=40, frames=300), 4, 2, 8)


def one_process_steps(batch_size: int, threads: int, steps: int, warmup: int) -> dict[str, Any]:
    from sertrain.train import multitask_loss

    torch.set_num_threads(threads)
    model = _model()
    times, first = _timed_steps(model, model, _inputs(batch_size), multitask_loss, steps, warmup)
    return {"ms": 1000 * float(np.median(times)), "first_loss": first}


def _ddp_rank(rank: int, world: int, init: str, batch_size: int, steps: int, warmup: int, out: str) -> None:
    import torch.distributed as dist

    from sertrain import distributed

    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    ddp = distributed.current()
    model = ddp.sync_batchnorm(_model())
    wrapped = ddp.wrap(model, find_unused_parameters=False)
    shard = {k: torch.tensor_split(v, world)[rank] for k, v in _inputs(batch_size).items()}
    times, first = _timed_steps(wrapped, model, shard, ddp.multitask_loss, steps, warmup)
    total = torch.tensor([first], dtype=torch.float64)
    dist.all_reduce(total)  # the ranks' shares of the step-1 loss add up to the global loss
    if rank == 0:
        Path(out).write_text(json.dumps({"ms": 1000 * float(np.median(times)), "first_loss": float(total)}))
    distributed.shutdown()


def ddp_steps(batch_size: int, world: int, steps: int, warmup: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        mp.spawn(_ddp_rank, args=(world, f"file://{tmp}/rendezvous", batch_size, steps, warmup, str(out)),
                 nprocs=world)
        return json.loads(out.read_text())


def bench_ddp(batches: tuple[int, ...] = (32, 64), steps: int = 12, warmup: int = 2) -> list[dict[str, Any]]:
    rows = []
    for b in batches:
        base = one_process_steps(b, 2, steps, warmup)
        one = one_process_steps(b, 1, steps, warmup)
        two = ddp_steps(b, 2, steps, warmup)
        for name, r in (("1 process x 2 threads", base), ("1 process x 1 thread", one),
                        ("DDP 2 processes x 1 thread (gloo)", two)):
            rows.append({"batch": b, "run": name, "ms_per_step": r["ms"], "ratio": base["ms"] / r["ms"],
                         "ratio_1thread": one["ms"] / r["ms"],
                         "first_loss": r["first_loss"],
                         "first_loss_rel_diff": abs(r["first_loss"] - base["first_loss"]) / base["first_loss"]})
    return rows


# --------------------------------------------------------------------------------------------
# 2. cv --parallel
# --------------------------------------------------------------------------------------------
def _cv(store: Path, out: Path, epochs: int, *extra: str) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    argv = [sys.executable, "-m", "sertrain", "cv", str(store), "--out", str(out), "--epochs", str(epochs),
            "--config", "cpu-small", "--device", "cpu", "--no-report", "-q", *extra]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def bench_cv(store: Path, workdir: Path, epochs: int = 2) -> list[dict[str, Any]]:
    runs = [("sequential, torch default threads", "seq", ()), ("sequential, --threads 1", "seq1", ("--threads", "1")),
            ("--parallel 2 (2 processes x 1 thread)", "par2", ("--parallel", "2"))]
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for name, folder, extra in runs:
            wall = _cv(store, Path(tmp) / folder, epochs, *extra)
            preds = (Path(tmp) / folder / "predictions.csv").read_bytes()
            n = len(json.loads((Path(tmp) / folder / "metrics.json").read_text())["runs"])
            rows.append({"run": name, "runs": n, "epochs": epochs, "wall_s": wall, "predictions": preds})
        base, base1 = rows[0]["wall_s"], rows[1]["wall_s"]
        same = rows[1]["predictions"]
        for r in rows:
            r["ratio"] = base / r["wall_s"]
            r["ratio_1thread"] = base1 / r["wall_s"]
            r["same_as_threads1"] = r["predictions"] == same
            del r["predictions"]
    return rows


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def format_report(res: dict[str, Any]) -> str:
    i = res["info"]
    lines = [f"{i['cores']} cores, torch {i['torch']}, load average at start {i['load_start']}, "
             f"at the end {i.get('load_end', '?')}", ""]
    if res.get("ddp"):
        lines += ["| global batch | run | ms / step | vs 1 process x 2 threads | vs 1 process x 1 thread | "
                  "step-1 loss, relative difference |", "|---|---|---|---|---|---|"]
        for r in res["ddp"]:
            lines.append(f"| {r['batch']} | {r['run']} | {r['ms_per_step']:.1f} | {r['ratio']:.2f}x | "
                         f"{r['ratio_1thread']:.2f}x | {r['first_loss_rel_diff']:.1e} |")
        lines.append("")
    if res.get("cv"):
        lines += ["| cv (every fold, 1 seed) | runs x epochs | wall (s) | vs sequential | vs sequential --threads 1 | "
                  "predictions.csv = --threads 1's |", "|---|---|---|---|---|---|"]
        for r in res["cv"]:
            lines.append(f"| {r['run']} | {r['runs']} x {r['epochs']} | {r['wall_s']:.1f} | {r['ratio']:.2f}x | "
                         f"{r['ratio_1thread']:.2f}x | {'yes' if r['same_as_threads1'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=None, help="existing store (default: build the demo store)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench_out", help="where the demo store is built")
    ap.add_argument("--hours", type=float, default=0.5, help="demo corpus size")
    ap.add_argument("--steps", type=int, default=12, help="timed DDP/one-process steps per row")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each cv run")
    ap.add_argument("--skip-ddp", action="store_true")
    ap.add_argument("--skip-cv", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    res: dict[str, Any] = {"info": {"cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
                                    "load_start": " ".join(f"{x:.1f}" for x in os.getloadavg())}}
    if not args.skip_ddp:
        res["ddp"] = bench_ddp(steps=args.steps)
    if not args.skip_cv:
        store = args.store or build_demo_store(args.workdir, args.hours)
        res["cv"] = bench_cv(store, args.workdir, args.epochs)
    res["info"]["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(format_report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
