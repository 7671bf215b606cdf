"""What the store's integrity checks cost, on a store the size of IEMOCAP (about 12 hours).

    python benchmarks/bench_open.py                  # 12 h demo corpus, augmented + balanced build
    python benchmarks/bench_open.py --hours 1        # quicker

Generates an IEMOCAP-shaped demo corpus (cached under --workdir) and builds it with
``--augment default --balance`` (the largest tables a build writes: augmented copies, dense
windows, 15 folds), then times, each --repeats times in a fresh process (median, range):

  * ``StoreReader(path)``: the check on every open (root hash, every dataset and attribute
    set but /features) plus loading the segment tables;
  * the same open without the checks (the tables alone, read with h5py): the baseline the
    check's cost is measured against;
  * ``StoreReader(path, verify_features=True)`` and ``serprep verify``: everything;
  * ``read_segments`` of a batch of 32 segments with and without the per-read identity
    check (one ``stat``).

Prints a markdown table; the README quotes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_build import ensure_corpus  # noqa: E402  (same folder)

OPEN_CHECKED = """
import sys, time
t0 = time.perf_counter()
from serprep.store import StoreReader
t1 = time.perf_counter()
r = StoreReader(sys.argv[1], verify_features=sys.argv[2] == "1")
t2 = time.perf_counter()
print(t2 - t1)
"""

# The tables a reader needs, read with plain h5py and no checks: what opening costs without
# integrity checking (the previous reader did about this).
OPEN_UNCHECKED = """
import sys, time, json
t0 = time.perf_counter()
import h5py
from serprep.store import SEGMENT_COLUMNS
t1 = time.perf_counter()
with h5py.File(sys.argv[1], "r") as f:
    attrs = {k: f.attrs[k] for k in f.attrs}
    segs = {k: f["segments"][k][()] for k in SEGMENT_COLUMNS}
    starts = f["items/frame_start"][()]
    vocab = {k: f["vocab"][k].asstr()[()] for k in f["vocab"]}
    json.loads(attrs["checksums"])
t2 = time.perf_counter()
print(t2 - t1)
"""

READS = """
import sys, time, numpy as np
from serprep.store import StoreReader
r = StoreReader(sys.argv[1])
rng = np.random.default_rng(0)
batches = [np.sort(rng.choice(r.n_segments, 32, replace=False)) for _ in range(400)]
for b in batches[:20]:
    r.read_segments(b)
def timed(fn):
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    return (time.perf_counter() - t0) / len(batches)
checked = timed(r.read_segments)
r.check_identity = lambda: None  # the per-read stat off: the baseline
unchecked = timed(r.read_segments)
print(checked, unchecked)
"""


def run_python(code: str, *args: str) -> str:
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    if p.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{p.stderr[-2000:]}")
    return p.stdout.strip()


def timed_command(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def summary(values: list[float], unit: float = 1.0) -> str:
    v = sorted(x * unit for x in values)
    return f"{statistics.median(v):.3f} [{v[0]:.3f}-{v[-1]:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=12.0)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench_out")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = ensure_corpus(args.workdir, args.hours, 0)
    store = args.workdir / f"open_{args.hours:g}h.h5"
    if not store.exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "serprep.cli", "build", "iemocap", "--root", str(corpus), "--out",
                        str(store), "--augment", "default", "--balance", "-q"], check=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL)
        print(f"built {store} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    info = json.loads(subprocess.run([sys.executable, "-m", "serprep.cli", "info", str(store), "--json"],
                                     capture_output=True, text=True, check=True,
                                     env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}).stdout)
    n_datasets = int(subprocess.run([sys.executable, "-c", "import sys; from serprep.store import count_datasets; "
                                     "print(count_datasets(sys.argv[1]))", str(store)],
                                    capture_output=True, text=True, check=True,
                                    env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}).stdout)

    opened = [float(run_python(OPEN_CHECKED, str(store), "0")) for _ in range(args.repeats)]
    baseline = [float(run_python(OPEN_UNCHECKED, str(store))) for _ in range(args.repeats)]
    full = [float(run_python(OPEN_CHECKED, str(store), "1")) for _ in range(max(1, args.repeats // 2))]
    verify = [timed_command([sys.executable, "-m", "serprep.cli", "verify", str(store)])
              for _ in range(max(1, args.repeats // 2))]
    reads = [tuple(map(float, run_python(READS, str(store)).split())) for _ in range(args.repeats)]

    size_gib = store.stat().st_size / 2**30
    u, seg = info["utterances"], info["segments"]
    print(f"store: {store.name}, {size_gib:.2f} GiB, {u['total']} utterances ({u['extracted']} extracted, "
          f"{u['hours']:.1f} h), {seg['total']} segment rows ({seg['augmented']} augmented), "
          f"{sum(len(v) for v in info['folds'].values())} folds, {n_datasets} datasets\n")
    print("| what | seconds, median of runs [range] |")
    print("|---|---|")
    print(f"| open without checks (tables read with h5py only; baseline) | {summary(baseline)} |")
    print(f"| `StoreReader(path)`: checks on every open (all but /features) | {summary(opened)} |")
    print(f"| `StoreReader(path, verify_features=True)` (`sertrain --verify`) | {summary(full)} |")
    print(f"| `serprep verify` (whole command) | {summary(verify)} |")
    print(f"| `read_segments`, batch of 32, with the identity check (ms) | {summary([r[0] for r in reads], 1e3)} |")
    print(f"| `read_segments`, batch of 32, without it (ms) | {summary([r[1] for r in reads], 1e3)} |")
    print(f"\nevery-time check: {statistics.median(opened) - statistics.median(baseline):.3f} s over the "
          f"baseline ({statistics.median(opened) / statistics.median(baseline):.1f}x); target < 1 s")


if __name__ == "__main__":
    main()
