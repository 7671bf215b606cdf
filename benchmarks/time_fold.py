"""Time one cross-validation fold of ``sertrain train`` end to end (the paper model by default).

    python benchmarks/time_fold.py --hours 12 --device cuda --cache device --epochs 50
    python benchmarks/time_fold.py --store feats.h5 --device cuda --budget-s 240 --json fold.json

Trains fold ``--fold`` of ``--store`` (or of an IEMOCAP-layout demo corpus of ``--hours`` hours
built with ``--balance``: 12 hours is about IEMOCAP's size, a 4-class fold of ~1.2 GB float32)
through :func:`sertrain.train.train_fold`, as ``sertrain train`` does: validation every epoch,
checkpoints, selection, the test pass. Early stopping is off (``patience 0``) so that the run
is ``--epochs`` epochs long.

``--budget-s`` caps the training time: when the epochs done so far have taken longer, the run
stops after the current epoch and the table gives the measured epochs and an **extrapolated**
total (setup + measured epochs + the rest at the median time of the measured epochs after the
first + the test pass, estimated as one validation pass scaled by the test/validation segment
ratio), labelled as such. Without a budget, or within it, every number is measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class _OverBudget(Exception):
    pass


def build_demo_store(workdir: Path, hours: float, jobs: int, seed: int = 0) -> Path:
    """An IEMOCAP-layout demo corpus of ``hours`` hours built with ``--balance`` (cached)."""
    from serprep.build import BuildOptions, build_store
    from serprep.demo import write_demo_corpus

    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"fold_{hours:g}h.h5"
    if out.exists():
        return out
    root = workdir / f"fold_{hours:g}h" / "IEMOCAP_full_release"
    if not (root / ".complete").exists():
        t0 = time.perf_counter()
        write_demo_corpus(root, hours=hours, seed=seed)
        (root / ".complete").write_text("")
        print(f"demo corpus {hours:g} h: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    t0 = time.perf_counter()
    build_store(BuildOptions(corpus="iemocap", root=root, out=out, balance=True, jobs=jobs, progress=False),
                log=lambda m: None)
    print(f"store build: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def time_fold(store: Path, out: Path, config: str = "paper", fold: int = 1, epochs: int = 50,
              device: str = "cuda", cache: str = "device", compile_mode: str = "off", batch: int | None = None,
              budget_s: float | None = None, num_workers: int = 2) -> dict[str, Any]:
    """Train one fold and return its timings (see the module docstring)."""
    from serprep.store import StoreReader
    from sertrain.config import apply_overrides, load_config
    from sertrain.train import train_fold

    over: dict[str, Any] = {"train.epochs": epochs, "train.patience": 0, "train.cache": cache,
                            "train.compile": compile_mode, "train.num_workers": num_workers}
    if batch:
        over["train.batch_size"] = batch
    cfg = apply_overrides(load_config(config), over)
    reader = StoreReader(store)
    f = reader.fold(cfg.data.scheme, fold)
    labels = reader.segments()["emotion"].to_numpy()
    sizes = {"balanced_index": int(len(f.balanced_index)),
             "validation_scored": int((labels[f.validation_segments] >= 0).sum()),
             "test_scored": int((labels[f.test_segments] >= 0).sum())}
    reader.close()
    shutil.rmtree(out, ignore_errors=True)
    marks: list[float] = []
    logs: list[tuple[float, str]] = []
    t0 = time.perf_counter()

    def hook(epoch: int, model: Any, entry: dict[str, Any]) -> None:
        # Over the budget: stop at the next epoch's end (the hook runs before an epoch's
        # checkpoints are written; by then the previous epoch's best.pt exists to test).
        marks.append(time.perf_counter())
        if budget_s is not None and len(marks) >= 2 and marks[-2] - t0 > budget_s and epoch < epochs:
            raise _OverBudget

    finished, test = True, None
    try:
        test = train_fold(store, fold, cfg, out, device=device, epoch_hook=hook,
                          log=lambda m: logs.append((time.perf_counter() - t0, m))).test
    except _OverBudget:
        finished = False
    end = time.perf_counter()
    walls = [b - a for a, b in zip([t0] + marks[:-1], marks)]
    steady = walls[1:] or walls
    median_epoch = statistics.median(steady) if steady else float("nan")
    # "fold 1 epoch 3/50: loss ... [2.1s, 4321 seg/s]": the training rate of each epoch.
    rates = [float(m.rsplit(",", 1)[-1].split("seg/s")[0]) for _, m in logs if m.endswith("seg/s]")]
    res: dict[str, Any] = {
        "store": str(store), "config": config, "fold": fold, "device": device, "cache": cache,
        "compile": compile_mode, "batch": cfg.train.batch_size, "epochs_asked": epochs, "epochs_done": len(marks),
        "finished": finished, "budget_s": budget_s, "segments": sizes, "wall_s": end - t0,
        "epoch_wall_s": walls, "epoch_1_wall_s": walls[0] if walls else float("nan"),
        "median_epoch_wall_s": median_epoch, "train_segments_per_s_by_epoch": rates,
        "train_segments_per_s_median": statistics.median(rates[1:] or rates) if rates else float("nan"),
        "log": [(round(t, 2), m) for t, m in logs],
    }
    if finished:
        res["test_s"] = end - marks[-1] if marks else float("nan")
        res["fold_s_measured"] = end - t0
        res["test"] = {k: test[k] for k in ("ua", "wa", "macro_f1")} if test else None
    else:
        # The test pass of the selected model, timed on its own (as train_fold runs it; the
        # loader path: evaluate_checkpoint reads the store).
        from sertrain.evaluate import evaluate_checkpoint

        t1 = time.perf_counter()
        evaluate_checkpoint(out / "best.pt", store, device=device)
        res["test_s"] = time.perf_counter() - t1
        remaining = epochs - len(marks)
        res["fold_s_extrapolated"] = (end - t0) + remaining * median_epoch + res["test_s"]
        res["extrapolation"] = (f"measured {len(marks)} of {epochs} epochs in {end - t0:.0f} s, the other "
                                f"{remaining} at the median epoch's {median_epoch:.2f} s, test pass measured apart "
                                f"({res['test_s']:.1f} s)")
    return res


def format_report(r: dict[str, Any]) -> str:
    seg = r["segments"]
    lines = [f"fold {r['fold']} of {r['store']}: {seg['balanced_index']} training segments per epoch (balanced "
             f"index), {seg['validation_scored']} validation, {seg['test_scored']} test segments",
             f"{r['config']} model, batch {r['batch']}, device {r['device']}, --cache {r['cache']}, "
             f"--compile {r['compile']}, {r['epochs_asked']} epochs asked, patience 0",
             f"epoch 1 (with setup, cache fill, compilation): {r['epoch_1_wall_s']:.1f} s; later epochs: median "
             f"{r['median_epoch_wall_s']:.2f} s (train + validation + checkpoints); training "
             f"{r['train_segments_per_s_median']:.0f} segments/s (median over epochs after the first)"]
    if r["finished"]:
        lines.append(f"MEASURED: {r['epochs_done']} epochs + test: {r['fold_s_measured']:.0f} s "
                     f"({r['fold_s_measured'] / 60:.1f} min); test pass and reports {r['test_s']:.1f} s")
    else:
        lines.append(f"EXTRAPOLATED (budget {r['budget_s']:g} s reached): {r['extrapolation']}: "
                     f"{r['fold_s_extrapolated']:.0f} s ({r['fold_s_extrapolated'] / 60:.1f} min) for "
                     f"{r['epochs_asked']} epochs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=None, help="existing store (default: build a demo store)")
    ap.add_argument("--hours", type=float, default=12.0, help="demo corpus size (12 h: about IEMOCAP's)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench_out", help="where the demo store is built")
    ap.add_argument("--jobs", type=int, default=8, help="build jobs")
    ap.add_argument("--config", default="paper")
    ap.add_argument("--fold", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the config's)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cache", default="device", choices=["none", "device"])
    ap.add_argument("--compile", default="off", help="train.compile (off, default, reduce-overhead, max-autotune)")
    ap.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (--cache none)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop once training has taken this long and extrapolate (labelled so)")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: WORKDIR/time_fold_run)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    store = args.store or build_demo_store(args.workdir, args.hours, args.jobs)
    res = time_fold(store, args.out or args.workdir / "time_fold_run", args.config, args.fold, args.epochs,
                    args.device, args.cache, args.compile, args.batch, args.budget_s, args.num_workers)
    print(format_report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
