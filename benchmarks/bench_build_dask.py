"""Benchmark `serprep build --backend dask` on a local Dask cluster against a local build.

    python benchmarks/bench_build_dask.py                 # 4-hour demo corpus, 2 workers, 3 runs
    python benchmarks/bench_build_dask.py --augment       # --augment default --balance, too

Starts a ``distributed.LocalCluster`` (``--workers`` worker processes of one thread each; the
scheduler runs in this process) and runs, each command in its own process, ``--repeats``
times, interleaved (median wall time, like benchmarks/bench_build.py):

  * ``serprep build iemocap --jobs N --backend threads`` (the local build; ``--backend
    processes`` with ``--augment``, what ``auto`` picks);
  * ``serprep build iemocap --backend dask --scheduler <the cluster>``.

The cluster stays up between runs, as a real one would (its workers keep their imports).
It checks that both stores are the same (checksum table, corpus fingerprint, feature bytes)
and prints a markdown table with the ratio of wall times (dask / local). On one 2-core
machine expect about 1x or slower: the cluster adds a scheduler, result transfers over TCP
and pickling; the point is identical output over working plumbing. Peak memory is not shown:
the workers are not children of the build command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_build import ensure_corpus, run_repeated  # noqa: E402


def same_store(a: Path, b: Path) -> bool:
    import h5py

    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        return (json.loads(x.attrs["checksums"]) == json.loads(y.attrs["checksums"])
                and x.attrs["corpus_fingerprint"] == y.attrs["corpus_fingerprint"]
                and x["features"][...].tobytes() == y["features"][...].tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=4.0)
    ap.add_argument("--workers", type=int, default=2, help="dask worker processes (one thread each)")
    ap.add_argument("--jobs", type=int, default=2, help="--jobs of the local build")
    ap.add_argument("--augment", action="store_true", help="also build with --augment default --balance")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench_out")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = ensure_corpus(args.workdir, args.hours, args.seed)

    from distributed import LocalCluster

    serprep = [sys.executable, "-m", "serprep.cli", "build", "iemocap", "--root", str(corpus), "--quiet"]
    variants = [("plain", [])] + ([("augmented", ["--augment", "default", "--balance"])] if args.augment else [])
    rows = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster:
        for name, extra in variants:
            local_backend = "processes" if extra else "threads"
            commands = {
                f"local, --jobs {args.jobs} --backend {local_backend}": ("local", ["--jobs", str(args.jobs),
                                                                                   "--backend", local_backend]),
                f"dask LocalCluster, {args.workers} workers x 1 thread": (
                    "dask", ["--backend", "dask", "--scheduler", cluster.scheduler_address]),
            }
            # Interleaved (local, dask, local, dask, ...): a shared machine's load drifts.
            measured: dict[str, list[dict]] = {label: [] for label in commands}
            outs = {}
            for _ in range(args.repeats):
                for label, (kind, options) in commands.items():
                    out = outs[label] = args.workdir / f"bench_dask_{args.hours:g}h_{name}_{kind}.h5"
                    measured[label].append(run_repeated(serprep + ["--out", str(out), *options, *extra], 1,
                                                        before_each=lambda out=out: out.unlink(missing_ok=True)))
            runs = {}
            for label, results in measured.items():
                median = sorted(results, key=lambda r: r["wall"])[len(results) // 2]
                runs[label] = (outs[label], {**median, "walls": [r["wall"] for r in results]})
            (local_out, local), (dask_out, _) = runs.values()
            identical = same_store(local_out, dask_out)
            for label, (_, res) in runs.items():
                rows.append((name, label, res, res["wall"] / local["wall"], identical))

    print(f"\n{args.hours:g}-hour demo corpus, {os.cpu_count()} cores; wall = whole command, median of "
          f"{args.repeats} [range]; ratio = wall / the local build's\n")
    print("| build | run | wall (s) [range] | CPU of the command (s) | ratio | same store |")
    print("|---|---|---|---|---|---|")
    for name, label, res, ratio, identical in rows:
        spread = f"{res['wall']:.2f} [{min(res['walls']):.2f}-{max(res['walls']):.2f}]"
        print(f"| {name} | {label} | {spread} | {res['cpu']:.2f} | {ratio:.2f}x | {'yes' if identical else 'NO'} |")
    if not all(r[4] for r in rows):
        raise SystemExit("the dask build wrote another store than the local build")


if __name__ == "__main__":
    main()
