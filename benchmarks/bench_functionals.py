"""The extra cost of `serprep build --functionals egemaps`, measured in one run.

    python benchmarks/bench_functionals.py                 # 1 h demo corpus, 2 jobs, 3 repeats
    python benchmarks/bench_functionals.py --hours 0.25 --repeats 1

Generates an IEMOCAP-shaped demo corpus (cached under --workdir), then runs `serprep build`
(the CLI, each build its own process, ``--overwrite``) without and with ``--functionals
egemaps``, with the default backend (threads) and, with the functionals, also with
``--backend processes``; the rows are interleaved so that a change in the machine's load
touches every variant alike. Prints a markdown table of the median wall time over the repeats,
its extra over the plain build and the audio's real-time factor, with the 1-minute load
average before and after (the README quotes it).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

VARIANTS: dict[str, list[str]] = {
    "plain (log-Mel only)": [],
    "--functionals egemaps": ["--functionals", "egemaps"],
    "--functionals egemaps --backend processes": ["--functionals", "egemaps", "--backend", "processes"],
}


def serprep(args: list[str]) -> tuple[float, float, str]:
    """Run ``python -m serprep.cli ARGS`` with this checkout first on the path; its wall
    seconds, CPU seconds (user + system of the command and the worker processes it reaped)
    and standard output."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "serprep.cli", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode:
        raise SystemExit(f"serprep {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return wall, cpu, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench_out" / "functionals")
    args = parser.parse_args()
    corpus = args.workdir / f"demo-{args.hours:g}h"
    if not (corpus / ".complete").exists():
        serprep(["demo-corpus", "--hours", str(args.hours), "--out", str(corpus), "--seed", "0", "--overwrite"])
        (corpus / ".complete").touch()
    load_before = os.getloadavg()[0]
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpus: dict[str, list[float]] = {name: [] for name in VARIANTS}
    audio = 0.0
    for _ in range(args.repeats):
        for name, extra in VARIANTS.items():
            out = args.workdir / "feats.h5"
            wall, cpu, stdout = serprep(["build", "iemocap", "--root", str(corpus), "--out", str(out), "--jobs",
                                    str(args.jobs), "--overwrite", "-q", *extra])
            walls[name].append(wall)
            cpus[name].append(cpu)
            audio = 3600 * float(re.search(r"([\d.]+) h audio", stdout).group(1))  # what the build extracted
    load_after = os.getloadavg()[0]
    plain = statistics.median(walls["plain (log-Mel only)"])
    plain_cpu = statistics.median(cpus["plain (log-Mel only)"])
    print(f"demo corpus {args.hours:g} h ({audio / 3600:.2f} h extracted), --jobs {args.jobs}, median of {args.repeats}; {os.cpu_count()} cores, "
          f"1-min load average {load_before:.2f} before, {load_after:.2f} after")
    print()
    print("| build | wall (median) | runs | extra wall vs plain | CPU (median) | extra CPU vs plain | x real time "
          "(wall) | audio s per extra CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, values in walls.items():
        median, cpu = statistics.median(values), statistics.median(cpus[name])
        runs = ", ".join(f"{v:.1f}" for v in values)
        plain_row = name.startswith("plain")
        extra = "-" if plain_row else f"+{median - plain:.1f} s ({median / plain:.1f}x)"
        extra_cpu = "-" if plain_row else f"+{cpu - plain_cpu:.1f} s"
        per_cpu = "-" if plain_row else f"{audio / max(cpu - plain_cpu, 1e-9):.0f}"
        print(f"| `{name}` | {median:.1f} s | {runs} | {extra} | {cpu:.1f} s | {extra_cpu} | {audio / median:.0f}x "
              f"| {per_cpu} |")


if __name__ == "__main__":
    main()
