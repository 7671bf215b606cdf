"""``sertrain cv --parallel K``: independent runs side by side (sertrain.parallel).

Real ``python -m sertrain`` subprocesses on the learnable store: ``--parallel 2`` gives the
files of the sequential cv with the same torch threads per run (``--threads 1``; float
results depend on the thread count), with each run's log lines whole and prefixed by its
folder; a failing run is named and stops the others; Ctrl-C stops every worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from sertrain.cli import main
from sertrain_fixtures import assert_one_line_error, learnable_store, store_base

REPO = Path(__file__).resolve().parents[1]
CV = ["--folds", "1,2", "--seeds", "2", "--epochs", "1", "--steps-per-epoch", "2", "--device", "cpu",
      "--config", "cpu-small", "--num-workers", "0", "--bootstrap", "1000"]
#: Progress fields that measure time, not results.
TIMING = ("seconds", "segments_per_s")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e["OMP_NUM_THREADS"] = "1"
    return e


def sertrain(*args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "sertrain", *[str(a) for a in args]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env(), cwd=REPO)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return learnable_store(store_base(tmp_path_factory), balance=True, augment="default")


def _strip(o):
    """JSON without timing fields."""
    if isinstance(o, dict):
        return {k: _strip(v) for k, v in o.items() if k not in TIMING}
    if isinstance(o, list):
        return [_strip(v) for v in o]
    return o


def _untimed(line: str) -> str:
    return re.sub(r" \[[0-9.]+s, [0-9.]+ seg/s\]$", "", line)


def test_parallel_cv_equals_the_sequential_cv(store, tmp_path):
    seq = sertrain("cv", store, "--out", tmp_path / "seq", *CV, "--threads", "1")
    assert seq.returncode == 0, seq.stderr
    par = sertrain("cv", store, "--out", tmp_path / "par", *CV, "--parallel", "2")
    assert par.returncode == 0, par.stderr
    # Every result file: the same numbers (run folders, selections, test metrics, intervals).
    a = _strip(json.loads((tmp_path / "seq" / "metrics.json").read_text()))
    b = _strip(json.loads((tmp_path / "par" / "metrics.json").read_text()))
    assert a["runs"] and a["runs"] == b["runs"]
    assert {k: v for k, v in a.items() if k != "runs"} == {k: v for k, v in b.items() if k != "runs"}
    assert (tmp_path / "seq" / "table.txt").read_text() == (tmp_path / "par" / "table.txt").read_text()
    assert (tmp_path / "seq" / "predictions.csv").read_bytes() == (tmp_path / "par" / "predictions.csv").read_bytes()
    for run in ("fold_1/seed_0", "fold_1/seed_1", "fold_2/seed_0", "fold_2/seed_1"):
        assert (tmp_path / "par" / run / "best.pt").is_file()
        assert (_strip(json.loads((tmp_path / "seq" / run / "metrics.json").read_text()))
                == _strip(json.loads((tmp_path / "par" / run / "metrics.json").read_text())))
    # Logs: each run's lines are whole, prefixed with its folder, and read as the sequential
    # run's lines for it (which follow its "[fold_k/seed_s]" header there).
    seq_lines: dict[str, list[str]] = {}
    current = None
    for line in seq.stdout.split("\ncpu-small / loso")[0].splitlines():
        m = re.fullmatch(r"\[(fold_\d/seed_\d)\]", line)
        if m:
            current = m.group(1)
        elif current and line.startswith("fold "):
            seq_lines.setdefault(current, []).append(_untimed(line))
    par_lines: dict[str, list[str]] = {}
    head = par.stdout.split("\ncpu-small / loso")[0].splitlines()
    assert head[0].startswith("cv: 4 runs, 2 at a time")
    for line in head[1:]:
        m = re.fullmatch(r"\[(fold_\d/seed_\d)\] (fold \d.*)", line)
        assert m, line
        par_lines.setdefault(m.group(1), []).append(_untimed(m.group(2)))
    assert par_lines == seq_lines and len(par_lines) == 4
    assert "test metrics of the selected checkpoint" in par.stdout


def test_a_failing_run_is_named_and_stops_the_others(store, tmp_path):
    out = tmp_path / "cv"
    (out / "fold_2").mkdir(parents=True)
    (out / "fold_2" / "last.pt").write_bytes(b"not this cv's")
    t0 = time.monotonic()
    ran = sertrain("cv", store, "--out", out, "--folds", "1,2", "--epochs", "300", "--patience", "0",
                   "--device", "cpu", "--config", "cpu-small", "--num-workers", "0", "--parallel", "2")
    assert ran.returncode == 2, ran.stderr
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: fold_2: ") and "already holds a run" in errors[0]
    assert "Traceback" not in ran.stderr
    assert time.monotonic() - t0 < 90  # fold 1 (300 epochs, minutes) was stopped, not waited for
    assert not (out / "metrics.json").exists()


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_ctrl_c_stops_every_worker(store, tmp_path):
    argv = [sys.executable, "-m", "sertrain", "cv", str(store), "--out", str(tmp_path / "cv"), "--folds", "1,2",
            "--epochs", "50", "--device", "cpu", "--config", "cpu-small", "--num-workers", "0", "--parallel", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO)
    try:
        started: set[str] = set()
        deadline = time.monotonic() + 180
        while len(started) < 2 and time.monotonic() < deadline:  # both runs are training
            line = proc.stdout.readline()
            m = re.match(r"\[(fold_\d)\] fold \d epoch 1/50", line)
            if m:
                started.add(m.group(1))
        assert started == {"fold_1", "fold_2"}
        workers = _children(proc.pid)
        assert len(workers) >= 2 and all(_alive(p) for p in workers)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the foreground command
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        "error: interrupted (a training run continues with --resume)"]
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)]
    # Checkpoints are whole: each run continues with --resume.
    assert (tmp_path / "cv" / "fold_1" / "last.pt").is_file() and (tmp_path / "cv" / "fold_2" / "last.pt").is_file()


@pytest.mark.parametrize("args, fragment", [
    (["--parallel", "2", "--devices", "0"], "--parallel and --devices exclude each other"),
    (["--devices", "0", "--device", "cpu"], "--devices lists GPUs, but this run is on the CPU"),
    (["--parallel", "0", "--device", "cpu"], "--parallel must be at least 1"),
])
def test_parallel_options_refused_in_one_line(store, tmp_path, args, fragment):
    # (a short run, should a refusal ever be missed)
    result = CliRunner().invoke(main, ["cv", str(store), "--out", str(tmp_path / "x"), "--epochs", "1",
                                       "--steps-per-epoch", "1", "--num-workers", "0", "--folds", "1", *args])
    assert_one_line_error(result, 2, fragment)
    assert not (tmp_path / "x").exists()


def test_cross_is_refused_under_torchrun(store, tmp_path):
    """torchrun runs train and cv; cross (not rank-aware) is refused before anything runs."""
    result = CliRunner().invoke(main, ["cross", "--train", str(store), "--test", str(store), "--out",
                                       str(tmp_path / "x")], env={"WORLD_SIZE": "2", "RANK": "0"})
    assert_one_line_error(result, 2, "sertrain cross runs in one process")
    assert not (tmp_path / "x").exists()
