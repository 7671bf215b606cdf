"""Benchmark resumable builds: what the journal costs an uninterrupted build, and what a
resumed build costs after a kill at ~50 %, measured in one run.

    python benchmarks/bench_resume.py                     # 4-hour demo corpus, plain and augmented
    python benchmarks/bench_resume.py --hours 1 --repeats 5 --baseline-tree OLD_TREE   (OLD_TREE: e.g. `git archive` of the previous commit)

For each kind of build (plain; ``--augment default --balance``) and each repeat, in this
order (interleaved, so that drift of the machine hits every row alike), each command in its
own process, timed as a whole (interpreter start-up, imports, corpus reading included):

  * uninterrupted ``serprep build`` (journal on: the default);
  * uninterrupted ``serprep build --no-journal`` (what the journal costs);
  * optionally the same build with another serprep tree (``--baseline-tree``, e.g. the
    previous version exported with ``git archive``): what this version costs;
  * ``serprep build`` killed with SIGKILL as soon as half of its blocks are journaled, then
    ``serprep build --resume``, timed.

Prints a markdown table: median wall time of --repeats runs [range] and each row's ratio to
the uninterrupted build's median; the fastest run's ratio to the fastest uninterrupted run;
median CPU time of all the command's processes and its ratio (the last two are less moved by
other jobs on the machine); plus the journal's size at the kill and the store's size.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_build import ensure_corpus, run_measured  # noqa: E402

SERPREP = [sys.executable, "-m", "serprep.cli"]


def journal_blocks(journal: Path) -> tuple[int, int | None, int]:
    """(block files, planned blocks or None, bytes in block files) of a journal folder."""
    try:
        files = [p for p in journal.iterdir() if p.name.startswith("block-") and p.name.endswith(".blk")]
        header = json.loads((journal / "plan.json").read_text())
    except (OSError, ValueError):
        return 0, None, 0
    return len(files), header["plan"]["n_blocks"], sum(p.stat().st_size for p in files)


def kill_half_way(cmd: list[str], journal: Path) -> dict[str, float]:
    """Run ``cmd`` and SIGKILL it once half of its blocks are journaled."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        n, planned, size = journal_blocks(journal)
        if planned and n >= planned / 2:
            break
        if proc.poll() is not None:
            raise SystemExit(f"the build ended before half of its blocks were journaled:\n{proc.stderr.read()[-2000:]}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n, planned, size = journal_blocks(journal)  # what survived the kill
    return {"killed_after": time.perf_counter() - t0, "kept": n, "planned": planned, "journal_bytes": size}


def measure(base: list[str], out: Path, repeats: int, baseline_tree: Path | None) -> tuple[dict, list[dict]]:
    """Per row, the runs' ``{"wall", "cpu"}`` over ``repeats`` interleaved rounds; and what
    each kill left."""
    journal = out.with_name(out.name + ".partial")
    rows: dict[str, list[dict]] = {"uninterrupted": [], "uninterrupted, --no-journal": [], "resumed": []}
    if baseline_tree:
        rows["uninterrupted, baseline tree"] = []
    kills = []

    def fresh() -> None:
        out.unlink(missing_ok=True)
        subprocess.run(SERPREP + ["clean-tmp", str(out.parent), "--journals"], capture_output=True, check=True)

    for _ in range(repeats):
        fresh()
        rows["uninterrupted"].append(run_measured(base))
        fresh()
        rows["uninterrupted, --no-journal"].append(run_measured(base + ["--no-journal"]))
        if baseline_tree:
            fresh()
            rows["uninterrupted, baseline tree"].append(run_measured(base, env={"PYTHONPATH": str(baseline_tree)}))
        fresh()
        kills.append(kill_half_way(base, journal))
        rows["resumed"].append(run_measured(base + ["--resume"]))
    return rows, kills


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=4.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench_out")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--no-plain", action="store_true")
    ap.add_argument("--baseline-tree", type=Path, default=None,
                    help="a folder holding another serprep package (e.g. `git archive HEAD serprep | tar -x -C DIR`)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    root = ensure_corpus(args.workdir, args.hours, args.seed)
    folder = args.workdir / "resume"  # its own folder: `clean-tmp --journals` runs there between runs
    folder.mkdir(exist_ok=True)
    kinds = {"plain": [], "--augment default --balance": ["--augment", "default", "--balance"]}
    if args.no_augment:
        del kinds["--augment default --balance"]
    if args.no_plain:
        del kinds["plain"]
    table = []
    for kind, extra in kinds.items():
        out = folder / f"resume_{args.hours:g}h{'_aug' if extra else ''}.h5"
        base = SERPREP + ["build", "iemocap", "--root", str(root), "--out", str(out), "--jobs", str(args.jobs),
                          "--quiet", *extra]
        rows, kills = measure(base, out, args.repeats, args.baseline_tree)
        for label, runs in rows.items():
            table.append((kind, label, [r["wall"] for r in runs], [r["cpu"] for r in runs]))
        table.append((kind, "killed run, until the kill", [k["killed_after"] for k in kills], []))
        k = kills[len(kills) // 2]
        table.append((kind, f"(journal at the kill: {k['kept']} of {k['planned']} blocks, "
                            f"{k['journal_bytes'] / 2**20:.0f} MiB; store {out.stat().st_size / 2**20:.0f} MiB)", [], []))
        out.unlink(missing_ok=True)
    print_table(table, args)


def print_table(table: list[tuple[str, str, list[float], list[float]]], args: argparse.Namespace) -> None:
    """The markdown table: per row the median wall time [range] and its ratio to the
    uninterrupted build's, the fastest run's ratio to the fastest uninterrupted run, and the
    median CPU time (all processes) with its ratio: the two columns least moved by other jobs."""
    print(f"\n{args.hours:g}-hour demo corpus, {args.jobs} jobs, {os.cpu_count()} cores; whole commands\n")
    print(f"| build | run | wall (s), median of {args.repeats} [range] | vs uninterrupted | fastest, vs fastest "
          "uninterrupted | CPU (s), median | vs uninterrupted |")
    print("|---|---|---|---|---|---|---|")
    first: dict[str, tuple[float, float, float]] = {}
    for kind, label, walls, cpus in table:
        if not walls:
            print(f"| {kind} | {label} | | | | | |")
            continue
        wall, fast = statistics.median(walls), min(walls)
        cpu = statistics.median(cpus) if cpus else float("nan")
        ref_wall, ref_fast, ref_cpu = first.setdefault(kind, (wall, fast, cpu))  # first row: uninterrupted
        cpu_text = f"{cpu:.2f} | {cpu / ref_cpu:.2f}x" if cpus else " | "
        print(f"| {kind} | {label} | {wall:.2f} [{fast:.2f}-{max(walls):.2f}] | {wall / ref_wall:.2f}x | "
              f"{fast / ref_fast:.2f}x | {cpu_text} |")


if __name__ == "__main__":
    main()
