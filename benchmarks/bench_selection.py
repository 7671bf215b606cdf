"""Model-selection benchmark: which rule of :mod:`sertrain.selection` gives the steadiest test
UA across seeds, at no loss of mean UA. One command, one table:

    python benchmarks/bench_selection.py --json out.json        # builds the demo store first
    python benchmarks/bench_selection.py --store demo/feats.h5  # reuse the store make train built
    python benchmarks/bench_selection.py --seeds 1 --folds 1 --epochs 3   # smoke run

Protocol. For every seed (0 .. seeds-1) and every fold of the scheme (``loso``: 5 folds),
ONE ``cpu-small`` training run (``train.seed`` = seed, ``train.patience`` = 0 so it never
stops early, ``train.epochs`` = the config's 30, no loader workers) keeps a CPU copy of each
epoch's weights through ``train_fold``'s ``epoch_hook``. Training is deterministic and does
not depend on the selection rule, so the first n epochs of that run are exactly what a run
with any rule would train; for each rule, early stopping with the config's patience (6) is
replayed on the history (``should_stop`` after each epoch), the rule selects on the epochs
trained, and that selection's model (the average of its epochs' weights where it names
several) is scored on the fold's test segments. Test data only score each rule's choice;
no rule ever sees them.

The table, one row per rule (UA in %): the mean test UA over all runs; ``seed std/fold``,
the sample std (ddof=1) of test UA over the seeds of a fold, averaged over folds: how far a
rerun with another seed moves a fold's result, the number a steadier rule lowers; the std
over all runs (ddof=1, seeds and folds mixed); the mean and std (ddof=1) over folds of the
per-fold mean UA; the mean number of epochs trained under early stopping; the mean selected
epoch (for an average: the mean of its epochs). A reference row "last epoch" scores the
final epoch of the full run (no selection, no early stop).

Cross-check: without early stopping, the ``val_ua`` rule must pick ``train_fold``'s own best
epoch, and scoring it here must give ``train_fold``'s own test UA (same evaluation path).

Code: a full run takes about an hour on 2 cores, and the working tree may be edited
meanwhile, so the worker processes import a copy of ``sertrain/`` and ``serprep/`` (with
their configs) taken at the start (``--no-snapshot``: the tree itself); the JSON records
the git HEAD and the files that differed from it.

Parallelism: runs go to ``--jobs`` processes with ``--threads`` torch threads each (the
printed header names the setup). ``--measure`` times 1 process x 2 threads against 2
processes x 1 thread on one fold. On the 2-core development machine, shared with other jobs,
2 x 1 trained 7.0 runs/min against 4.5 (2-epoch runs, fold 1) and 1.6 against 0.24 (5 epochs,
under heavier load from other processes, where 2 threads per process oversubscribe the
cores): hence the defaults ``--jobs 2 --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
#: Environment variable naming a frozen copy of the packages (see :func:`snapshot_sources`):
#: the worker processes, started by spawn, import this module again and must import
#: sertrain and serprep from that copy, not from the working tree.
SRC_ENV = "BENCH_SELECTION_SRC"
SRC = Path(os.environ.get(SRC_ENV) or ROOT)
for _p in (ROOT, SRC):  # SRC ends up first
    if str(_p) in sys.path:
        sys.path.remove(str(_p))
    sys.path.insert(0, str(_p))

import torch  # noqa: E402

from sertrain.config import apply_overrides, load_config  # noqa: E402
from sertrain.selection import RULES, Selection, select, selection_state, should_stop  # noqa: E402

CONFIG = "cpu-small"
#: Name of the reference row (the full run's final epoch; not a rule).
LAST = "last epoch"


# --------------------------------------------------------------------------------------------
# Store
# --------------------------------------------------------------------------------------------
def build_demo_store(workdir: Path, hours: float = 0.5, seed: int = 0, log=print) -> Path:
    """The store ``make train`` builds, built the same way (the ``serprep`` commands of the
    Makefile, so any change there is what is measured); reused when already complete."""
    workdir.mkdir(parents=True, exist_ok=True)
    corpus, store = workdir / "corpus", workdir / "feats.h5"
    done = workdir / ".store-complete"
    if done.exists() and store.exists():
        return store
    serprep = Path(sys.executable).with_name("serprep")
    cmd = [str(serprep)] if serprep.exists() else [sys.executable, "-m", "serprep.cli"]
    log(f"building the demo store in {workdir} (serprep demo-corpus + build --augment default --balance)")
    subprocess.run([*cmd, "demo-corpus", "--out", str(corpus), "--hours", f"{hours:g}", "--seed", str(seed),
                    "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*cmd, "build", "iemocap", "--root", str(corpus), "--out", str(store), "--augment", "default",
                    "--balance", "--jobs", "-1", "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    done.touch()
    return store


def snapshot_sources(dest: Path) -> dict[str, Any]:
    """Copy ``sertrain/`` and ``serprep/`` (configs included) to ``dest``; describe the copy.

    A full run takes an hour, during which the working tree may be edited: worker processes
    import this frozen copy, so every run of one benchmark trains the same code and reads
    the same ``cpu-small.toml``. The description (git HEAD, files that differ from it) is
    read-only git output, recorded so a result can be traced to the code it measured.
    """
    for pkg in ("sertrain", "serprep"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"path": str(dest), "taken": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git_head": git("rev-parse", "HEAD"),
            "modified_vs_head": [f for f in git("diff", "--name-only", "HEAD").splitlines()
                                 if f.startswith(("sertrain/", "serprep/"))]}


def _init_worker(threads: int) -> None:
    """Pool initializer: torch threads, and every module a run needs imported now (from the
    frozen copy), so none is imported later from a file being edited."""
    torch.set_num_threads(threads)
    import matplotlib  # noqa: F401  (write_reports plots lazily)

    import sertrain.evaluate  # noqa: F401
    import sertrain.plots  # noqa: F401
    import sertrain.train  # noqa: F401


# --------------------------------------------------------------------------------------------
# One run: train once, score every rule's choice
# --------------------------------------------------------------------------------------------
def epochs_trained(rule: str, history: Sequence[dict[str, Any]], patience: int) -> int:
    """How many epochs a run with ``rule`` and ``patience`` trains: ``sertrain.train`` checks
    before each epoch whether the epochs so far call for a stop."""
    for n in range(1, len(history)):
        if should_stop(rule, history[:n], patience):
            return n
    return len(history)


def run_one(store: str, scheme: str, fold: int, seed: int, epochs: int, patience: int, threads: int,
            rules: Sequence[str]) -> dict[str, Any]:
    """Train (fold, seed) once without early stopping; for each rule, replay early stopping,
    select, build the selected model and score it on the fold's test segments."""
    from sertrain.data import SegmentBatchDataset, SegmentLabels, open_store, speaker_map
    from sertrain.evaluate import evaluate_segments
    from sertrain.model import InputSpec, build_model
    from sertrain.train import train_fold

    torch.set_num_threads(threads)
    base = load_config(CONFIG)
    overrides: dict[str, Any] = {"train.patience": 0, "train.epochs": epochs, "train.seed": seed,
                                 "train.num_workers": 0, "data.scheme": scheme}
    if hasattr(base.train, "selection"):
        # Where train_fold has its own selection rule: val_ua, which the cross-check compares with.
        overrides["train.selection"] = "val_ua"
    cfg = apply_overrides(base, overrides)
    states: dict[int, dict[str, torch.Tensor]] = {}

    def keep(epoch: int, model: torch.nn.Module, entry: dict[str, Any]) -> None:
        # Every epoch: the benchmark replays rules afterwards, so it cannot know which to drop.
        states[epoch] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_selection_") as tmp:
        result = train_fold(store, fold, cfg, Path(tmp) / "run", device="cpu", epoch_hook=keep)
    train_s = time.perf_counter() - t0
    history = result.history

    t1 = time.perf_counter()
    reader = open_store(store)
    try:
        f = reader.fold(scheme, fold)
        classes = list(reader.vocab("emotion"))
        train_speakers = [str(s) for s in f.train_speakers]
        # The test dataset exactly as _train_fold builds it (fold normalisation, speaker map).
        dataset = SegmentBatchDataset(reader, SegmentLabels.from_reader(reader), f.norm_mean, f.norm_std,
                                      speaker_map(list(reader.vocab("speaker")), train_speakers))
        manifest = reader.manifest()
        model = build_model(cfg.model, InputSpec.from_reader(reader), len(classes),
                            len(reader.vocab("gender")), len(train_speakers))
        scored: dict[tuple[int, ...], dict[str, float]] = {}

        def test_metrics(selected: tuple[int, ...]) -> dict[str, float]:
            # Rules often agree: score each distinct set of epochs once.
            if selected not in scored:
                model.load_state_dict(selection_state(Selection(selected, 0.0), states))
                ev = evaluate_segments(model, dataset, f.test_segments, manifest, classes, torch.device("cpu"),
                                       cfg.train.aggregate, cfg.train.eval_batch_size)
                scored[selected] = {k: float(ev.metrics[k]) for k in ("ua", "wa", "macro_f1")}
            return scored[selected]

        per_rule: dict[str, dict[str, Any]] = {}
        for rule in rules:
            n = epochs_trained(rule, history, patience)
            sel = select(rule, history[:n])
            if sel is None:  # a fold without validation: the run keeps its last epoch
                chosen, score = (n,), None
            else:
                chosen, score = sel.epochs, sel.score
            per_rule[rule] = {"epochs_trained": n, "selected": list(chosen), "score": score,
                              "test": test_metrics(tuple(chosen))}
        last = len(history)
        per_rule[LAST] = {"epochs_trained": last, "selected": [last], "score": None, "test": test_metrics((last,))}

        full = select("val_ua", history)
        check = {
            "train_fold_best_epoch": result.best_epoch,
            "val_ua_full_selection": list(full.epochs) if full else None,
            "train_fold_test_ua": float(result.test["ua"]),
            "rescored_test_ua": test_metrics(full.epochs)["ua"] if full else None,
        }
        check["ok"] = bool(full is None or (full.epochs == (result.best_epoch,)
                                            and check["rescored_test_ua"] == check["train_fold_test_ua"]))
    finally:
        reader.close()
    return {
        "fold": fold,
        "seed": seed,
        "test_speakers": [str(s) for s in result.test_speakers],
        "rules": per_rule,
        "check": check,
        "history": [{k: h.get(k) for k in ("epoch", "val_ua", "val_loss", "train_loss", "seconds")} for h in history],
        "train_seconds": train_s,
        "score_seconds": time.perf_counter() - t1,
        "pid": os.getpid(),
        "sertrain_imported_from": str(Path(sys.modules["sertrain"].__file__).resolve().parent),
    }


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def _std(xs: Sequence[float]) -> float:
    """Sample std (ddof=1); NaN for fewer than two values (a spread of one value is unknown)."""
    return statistics.stdev(xs) if len(xs) > 1 else math.nan


def summarize(runs: Sequence[dict[str, Any]], rules: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per rule: the table's numbers (UA in %) and the per-fold means."""
    folds = sorted({r["fold"] for r in runs})
    out: dict[str, dict[str, Any]] = {}
    for rule in [*rules, LAST]:
        ua = [100 * r["rules"][rule]["test"]["ua"] for r in runs]
        by_fold = {k: [100 * r["rules"][rule]["test"]["ua"] for r in runs if r["fold"] == k] for k in folds}
        fold_means = [statistics.fmean(v) for v in by_fold.values()]
        seed_stds = [_std(v) for v in by_fold.values()]
        out[rule] = {
            "runs": len(ua),
            "mean_ua": statistics.fmean(ua),
            "seed_std_per_fold": statistics.fmean(seed_stds),
            "std_all_runs": _std(ua),
            "fold_mean_mean": statistics.fmean(fold_means),
            "fold_mean_std": _std(fold_means),
            "mean_epochs_trained": statistics.fmean(r["rules"][rule]["epochs_trained"] for r in runs),
            "mean_selected_epoch": statistics.fmean(statistics.fmean(r["rules"][rule]["selected"]) for r in runs),
            "fold_means": dict(zip(map(str, folds), fold_means)),
            "fold_seed_stds": dict(zip(map(str, folds), seed_stds)),
        }
    return out


def _f(x: float, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if x is None or math.isnan(x) else f"{x:>{width}.{digits}f}"


def format_report(res: dict[str, Any]) -> str:
    s, summary = res["setup"], res["summary"]
    lines = [
        f"store {s['store']}; config {s['config']}, scheme {s['scheme']} folds {s['folds']}, seeds {s['seeds']}, "
        f"{s['epochs']} epochs trained once per (fold, seed) without early stopping; early stopping replayed "
        f"with patience {s['patience']}",
        f"setup: {s['jobs']} process(es) x {s['threads']} torch thread(s), {s['cpus']} CPUs, torch {s['torch']}, "
        f"num_workers 0; {len(res['runs'])} runs in {s['wall_seconds'] / 60:.1f} min "
        f"(training {s['train_seconds_total'] / 60:.1f} min of process time, scoring {s['score_seconds_total']:.0f} s)",
        "",
        "test UA (%) of each rule's choice; std: sample (ddof=1); seed std/fold: std over seeds within a fold, "
        "mean over folds",
        f"{'rule':<16} {'mean UA':>8} {'seed std/fold':>14} {'std all':>8} {'folds mean ± std':>17} "
        f"{'epochs trained':>15} {'selected ep':>12}",
    ]
    for rule, m in summary.items():
        lines.append(
            f"{rule:<16} {_f(m['mean_ua'], 8)} {_f(m['seed_std_per_fold'], 14)} {_f(m['std_all_runs'], 8)} "
            f"{_f(m['fold_mean_mean'], 9)} ± {_f(m['fold_mean_std'], 5)} {_f(m['mean_epochs_trained'], 15)} "
            f"{_f(m['mean_selected_epoch'], 12)}"
        )
    folds = list(next(iter(summary.values()))["fold_means"])
    lines += ["", "per fold: mean test UA over seeds (seed std)",
              f"{'rule':<16} " + " ".join(f"{'fold ' + k:>14}" for k in folds)]
    for rule, m in summary.items():
        lines.append(f"{rule:<16} " + " ".join(
            f"{_f(m['fold_means'][k], 6)} ({_f(m['fold_seed_stds'][k], 4)})".rjust(14) for k in folds))
    lines += ["", "rules: " + "; ".join(f"{r}: {RULES[r].description}" for r in s["rules"]),
              f"{LAST}: reference, the full run's final epoch (no selection, no early stop)"]
    code = s.get("code") or {}
    if code.get("git_head"):
        srcs = sorted({r["sertrain_imported_from"] for r in res["runs"]})
        lines.append(f"code: copy of the working tree taken {code['taken']}: HEAD {code['git_head'][:10]} plus "
                     f"uncommitted edits to {len(code['modified_vs_head'])} file(s); runs imported sertrain from "
                     f"{', '.join(srcs)}")
    bad = [r for r in res["runs"] if not r["check"]["ok"]]
    lines.append(
        "cross-check (val_ua without early stop = train_fold's best epoch and test UA): "
        + ("OK on every run" if not bad else f"MISMATCH on {len(bad)} run(s): "
           + ", ".join(f"fold {r['fold']} seed {r['seed']}" for r in bad))
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def run_benchmark(store: Path, seeds: int, folds: Sequence[int] | None, epochs: int, patience: int, jobs: int,
                  threads: int, scheme: str = "loso", log=print, code: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every (fold, seed) run on ``jobs`` processes; returns a JSON-ready dict. ``code``
    describes the sources the workers import (:func:`snapshot_sources`)."""
    from sertrain.data import fold_ids, open_store

    reader = open_store(store)
    try:
        available = fold_ids(reader, scheme, str(store))
    finally:
        reader.close()
    chosen = list(folds) if folds else available
    rules = list(RULES)
    tasks = [(str(store), scheme, k, seed, epochs, patience, threads, rules) for seed in range(seeds) for k in chosen]
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    # spawn: a forked child would inherit torch's thread pool state from this process.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(run_one, *task): task for task in tasks}
        for fut in as_completed(futures):
            r = fut.result()
            runs.append(r)
            picks = ", ".join(f"{rule} {r['rules'][rule]['selected']}->{100 * r['rules'][rule]['test']['ua']:.1f}"
                              for rule in [*rules, LAST])
            log(f"[{len(runs)}/{len(tasks)} {time.perf_counter() - t0:6.0f}s] fold {r['fold']} seed {r['seed']}: "
                f"train {r['train_seconds']:.0f}s; {picks}")
    wall = time.perf_counter() - t0
    runs.sort(key=lambda r: (r["fold"], r["seed"]))
    return {
        "setup": {
            "store": str(store), "config": CONFIG, "scheme": scheme, "folds": chosen, "seeds": seeds,
            "epochs": epochs, "patience": patience, "jobs": jobs, "threads": threads, "cpus": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "rules": rules,
            "code": code or {"path": str(SRC)}, "wall_seconds": wall,
            "train_seconds_total": sum(r["train_seconds"] for r in runs),
            "score_seconds_total": sum(r["score_seconds"] for r in runs),
        },
        "summary": summarize(runs, rules),
        "runs": runs,
    }


def measure_parallelism(store: Path, fold: int, epochs: int, scheme: str = "loso", log=print) -> dict[str, Any]:
    """Runs per minute on one fold: 1 process x 2 threads (one run) against 2 processes x 1
    thread (two seeds at once). Only ``epochs`` epochs, so it takes a couple of minutes."""
    out = {}
    for jobs, threads in ((1, 2), (2, 1)):
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            list(pool.map(run_one, *zip(*[(str(store), scheme, fold, seed, epochs, 0, threads, ["val_ua"])
                                          for seed in range(jobs)])))
        dt = time.perf_counter() - t0
        out[f"{jobs}x{threads}"] = {"runs": jobs, "seconds": dt, "runs_per_minute": 60 * jobs / dt}
        log(f"{jobs} process(es) x {threads} thread(s): {jobs} run(s) of {epochs} epochs in {dt:.0f} s "
            f"= {60 * jobs / dt:.2f} runs/min")
    return out


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(CONFIG)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=None, help="existing store (default: build the demo store)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench_out" / "selection",
                    help="where the demo store is built")
    ap.add_argument("--hours", type=float, default=0.5, help="demo corpus size")
    ap.add_argument("--seeds", type=int, default=5, help="training seeds 0 .. N-1 per fold")
    ap.add_argument("--folds", type=int, nargs="*", default=None, help="folds (default: all of the scheme)")
    ap.add_argument("--scheme", default=cfg.data.scheme, help="fold scheme")
    ap.add_argument("--epochs", type=int, default=cfg.train.epochs, help="epochs of each run")
    ap.add_argument("--patience", type=int, default=cfg.train.patience, help="early-stopping patience replayed")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--measure", action="store_true",
                    help="only time 1 process x 2 threads against 2 processes x 1 thread on one fold")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="workers import the working tree as it is at each import, not a frozen copy")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    store = args.store or build_demo_store(args.workdir, args.hours, log=log)
    if args.measure:
        res = measure_parallelism(store, (args.folds or [1])[0], args.epochs, args.scheme, log)
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_selection_src_") as tmp:
        code = None
        if not args.no_snapshot:
            code = snapshot_sources(Path(tmp))
            os.environ[SRC_ENV] = tmp  # read by the spawned workers when they import this module
            log(f"workers import a copy of sertrain/ and serprep/ taken {code['taken']} "
                f"(HEAD {code['git_head'][:10]}, {len(code['modified_vs_head'])} file(s) modified)")
        res = run_benchmark(store, args.seeds, args.folds, args.epochs, args.patience, args.jobs, args.threads,
                            args.scheme, log, code)
    print(format_report(res), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if all(r["check"]["ok"] for r in res["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
