"""Benchmark `serprep build` against a naive per-file librosa loop, measured in the same run.

    python benchmarks/bench_build.py                 # 1 h and 4 h demo corpora, 2 jobs
    python benchmarks/bench_build.py --hours 1 --no-augment

Generates IEMOCAP-shaped demo corpora (cached under --workdir), then runs, each in its own
process so that CPU time and peak memory are its own:
  * naive: for each file the build extracts, librosa.load + melspectrogram + log + two deltas,
    one process (BLAS limited to one thread, its fastest setting on this machine);
  * serprep build (plain) on the 1 h and the 4 h corpus;
  * serprep build --augment default --balance on the 1 h corpus.
Each row is run --repeats times (default 3) and shows the median wall time (this machine's
run-to-run noise is +-10-20 %), with CPU time of that run and the highest peak memory, sampled
every 50 ms: RSS of the main (writer) process, and of the whole process tree (writer +
workers; PSS summed when there are several processes, so shared pages count once). Prints a markdown table; the
README quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NAIVE = r"""
import sys, json, numpy as np, librosa
paths = json.load(open(sys.argv[1]))
seconds = 0.0
for p in paths:
    try:
        y, sr = librosa.load(p, sr=16000)
    except Exception:
        continue
    S = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=512, win_length=400, hop_length=160, n_mels=40)
    L = np.log(S + 1e-6)
    d = librosa.feature.delta(L, width=5)
    dd = librosa.feature.delta(d, width=5)
    feats = np.stack([L, d, dd]).astype(np.float32)
    seconds += len(y) / sr
print(json.dumps({"audio_seconds": seconds}))
"""


def _children(pid: int) -> list[int]:
    """Direct children of pid, from /proc/<pid>/task/*/children (no full /proc scan)."""
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return kids


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, IndexError, ValueError):
        return 0


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split between the processes that map them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return _rss_kib(pid)


def _tree_memory_kib(pid: int) -> tuple[int, int]:
    """(RSS of pid, memory of pid and all its descendants) in KiB.

    With descendants the total sums PSS, not RSS: process workers and forked helpers (the
    naive loop's librosa starts one) share pages with their parent, which RSS counts twice.
    """
    tree, stack = [], [pid]
    while stack:
        p = stack.pop()
        tree.append(p)
        stack += _children(p)
    main = _rss_kib(pid)
    return main, (main if len(tree) == 1 else sum(_pss_kib(p) for p in tree))


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run a command; wall time, CPU time of it and its descendants, peak RSS.

    The wall time ends when the process is reaped (not at the next sampling tick); a thread
    samples the process tree's RSS every 50 ms meanwhile.
    """
    import threading

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    peaks = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            main, tree = _tree_memory_kib(proc.pid)
            peaks[0], peaks[1] = max(peaks[0], main), max(peaks[1], tree)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "peak_main_mib": peaks[0] / 1024, "peak_tree_mib": peaks[1] / 1024,
            "stdout": out}


def run_repeated(cmd: list[str], repeats: int, before_each=None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``repeats`` times; the median-wall run's figures, every wall time, the highest peak RSS."""
    runs = []
    for _ in range(repeats):
        if before_each is not None:
            before_each()
        runs.append(run_measured(cmd, env))
    median = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
    return {**median, "walls": [r["wall"] for r in runs],
            "peak_main_mib": max(r["peak_main_mib"] for r in runs),
            "peak_tree_mib": max(r["peak_tree_mib"] for r in runs)}


def ensure_corpus(workdir: Path, hours: float, seed: int) -> Path:
    from serprep.demo import write_demo_corpus

    root = workdir / f"demo_{hours:g}h_seed{seed}"
    done = root / ".complete"
    if not done.exists():
        t0 = time.perf_counter()
        write_demo_corpus(root, hours=hours, seed=seed)
        done.write_text("ok")
        print(f"generated {root} ({hours:g} h) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, nargs="+", default=[1.0, 4.0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench_out")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="runs per row; the table shows the median wall time")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    from serprep.plan import assign_classes
    from serprep.corpora import read_corpus
    from serprep.labels import load_spec

    corpora = {h: ensure_corpus(args.workdir, h, args.seed) for h in args.hours}
    rows = []
    serprep = [sys.executable, "-m", "serprep.cli"]

    # Naive baseline on each corpus, over exactly the files the build extracts.
    baseline: dict[float, float] = {}
    for h in args.hours:
        utts = read_corpus("iemocap", corpora[h]).utterances
        classes = assign_classes(utts, load_spec("iemocap"), "4class-merged", "all")
        listing = args.workdir / f"naive_files_{h:g}h.json"
        listing.write_text(json.dumps([str(corpora[h] / u.path) for u, c in zip(utts, classes) if c]))
        r = run_repeated([sys.executable, "-c", NAIVE, str(listing)], args.repeats, env={"OPENBLAS_NUM_THREADS": "1"})
        naive_audio = json.loads(r["stdout"])["audio_seconds"]
        rows.append(("naive librosa loop, 1 process", h, naive_audio, r))
        baseline[h] = naive_audio / r["wall"]
    h0 = min(args.hours)

    def build(hours: float, extra: list[str], label: str) -> None:
        out = args.workdir / f"bench_{hours:g}h{'_aug' if extra else ''}.h5"
        # Yesterday's store is deleted before each run rather than replaced by --overwrite,
        # so freeing its pages is not timed as part of the build.
        res = run_repeated(serprep + ["build", "iemocap", "--root", str(corpora[hours]), "--out", str(out),
                                      "--jobs", str(args.jobs), "--quiet", *extra], args.repeats,
                           before_each=lambda: out.unlink(missing_ok=True))
        from serprep.store import StoreReader

        m = StoreReader(out).manifest()
        audio = float(m.loc[m.status == "ok", "duration"].sum())
        rows.append((label, hours, audio, res))

    for h in args.hours:
        build(h, [], f"serprep build, {args.jobs} jobs")
    if not args.no_augment:
        build(h0, ["--augment", "default", "--balance"], f"serprep build --augment default --balance, {args.jobs} jobs")

    print(f"\nbuild throughput on {os.cpu_count()} cores; audio = seconds of source audio extracted "
          f"(4-class merged set); x real time = audio-seconds per wall-second\n")
    print("(vs naive: wall throughput relative to the naive loop on the same corpus)\n")
    print(f"| run | corpus | audio (h) | wall (s), median of {args.repeats} [range] | x real time | per CPU-second | vs naive "
          "| peak memory, all processes (MiB) | peak RSS, writer (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, hours, audio, res in rows:
        rt = audio / res["wall"]
        spread = f"{res['wall']:.2f} [{min(res['walls']):.2f}-{max(res['walls']):.2f}]"
        print(f"| {label} | {hours:g} h demo | {audio / 3600:.2f} | {spread} | {rt:.0f} | "
              f"{audio / max(res['cpu'], 1e-9):.0f} | {rt / baseline[hours]:.2f}x | {res['peak_tree_mib']:.0f} | {res['peak_main_mib']:.0f} |")


if __name__ == "__main__":
    main()
