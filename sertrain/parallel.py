"""Independent cross-validation runs side by side: ``sertrain cv --parallel K`` / ``--devices``.

Every (setting, fold, seed) run of a cv is independent and fully seeded, so K of them can
train at once, each in its own process, and give the results of the sequential cv. One
worker process per slot (``cpu`` K times for ``--parallel K``; ``cuda:<i>`` per listed
device for ``--devices``: one run per device at a time, a device listed twice runs two),
started with the ``spawn`` method; each takes the next run from a queue, trains it with
:func:`sertrain.train.train_fold` and sends back its :class:`~sertrain.train.FoldResult`.

- **Threads**: each CPU worker uses ``threads`` torch threads (default: the cores this
  process may use divided by K), so K workers do not oversubscribe the cores.
- **Logs**: workers send their lines to this process, which prints each whole line prefixed
  with the run's folder (``[fold_2/seed_1] ...``): lines never interleave.
- **Failures**: a run that fails stops the others and raises its error with the run's label
  in front (``fold_2/seed_1: ...``); a worker that dies (killed, out of memory) is reported
  with the run it was training. Checkpoints are written atomically, so ``--resume``
  continues every run from its last finished epoch.
- **Ctrl-C**: workers ignore SIGINT; this process gets it, terminates every worker and
  raises :class:`KeyboardInterrupt`.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import InputError, SertrainError

#: Seconds a terminated worker gets before it is killed.
STOP_GRACE_S = 5.0


@dataclass
class RunSpec:
    """One cv run: what :func:`sertrain.train.train_fold` needs, and its label for logs."""

    label: str
    fold: int
    cfg: Any
    out_dir: Path
    resume: bool = False
    overrides: dict[str, Any] | None = None
    tensorboard: Path | None = None
    provenance: dict[str, Any] | None = None


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_slots(k: int) -> list[str]:
    if k < 1:
        raise InputError(f"--parallel must be at least 1, got {k}")
    return ["cpu"] * k


def cuda_slots(text: str) -> list[str]:
    """``--devices 0,1`` -> ``["cuda:0", "cuda:1"]``, checked against the visible GPUs."""
    import torch

    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--devices expects a comma list of GPU numbers, got {text!r}") from None
    if not ids or min(ids) < 0:
        raise InputError(f"--devices expects a comma list of GPU numbers, got {text!r}")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [i for i in ids if i >= n]
    if missing:
        raise InputError(f"--devices {text}: no CUDA device {missing[0]} (torch sees {n})")
    return [f"cuda:{i}" for i in ids]


def run_parallel(store: str | Path, specs: Sequence[RunSpec], slots: Sequence[str], threads: int | None = None,
                 log: Callable[[str], None] | None = None) -> list[Any]:
    """Train ``specs`` on ``slots`` (one worker process each) and return their FoldResults in
    the order of ``specs``. See the module docstring for threads, logs, failures and Ctrl-C."""
    log = log or (lambda _: None)
    specs = list(specs)
    if not specs:
        return []
    slots = list(slots)[: len(specs)]
    if threads is None:
        threads = max(1, available_cores() // len(slots))
    where = "on the CPU" if set(slots) == {"cpu"} else "on " + ", ".join(slots)
    log(f"cv: {len(specs)} runs, {len(slots)} at a time {where}, {threads} torch thread(s) each "
        f"(the results of a one-at-a-time cv with --threads {threads})")
    ctx = multiprocessing.get_context("spawn")
    tasks: Any = ctx.Queue()
    events: Any = ctx.Queue()
    for i, spec in enumerate(specs):
        tasks.put((i, spec))
    for _ in slots:
        tasks.put(None)
    procs = [ctx.Process(target=_worker, args=(slot, threads, str(store), tasks, events), name=f"sertrain-cv-{n}")
             for n, slot in enumerate(slots)]
    results: list[Any] = [None] * len(specs)
    running: dict[int, int] = {}  # worker pid -> index of the run it trains
    done = idle_after_exit = 0
    try:
        for p in procs:
            p.start()
        while done < len(specs):
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                # Workers flush their events before they exit: a second empty poll after
                # they have all gone means nothing more will come.
                idle_after_exit = idle_after_exit + 1 if all(p.exitcode is not None for p in procs) else 0
                _check_workers(procs, running, specs, idle_after_exit > 1)
                continue
            kind, i = event[0], event[1]
            if kind == "start":
                running[event[2]] = i
            elif kind == "log":
                log(f"[{specs[i].label}] {event[2]}")
            elif kind == "done":
                results[i] = event[2]
                done += 1
            else:  # "error"
                raise _labelled(event[2], event[3], specs[i].label)
        for p in procs:
            p.join()
        return results
    finally:
        _stop(procs)
        for q in (tasks, events):
            q.cancel_join_thread()
            q.close()


def _worker(slot: str, threads: int, store: str, tasks: Any, events: Any) -> None:
    """Worker process: train runs from ``tasks`` until a None, reporting on ``events``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    # A spawned process inherits "spawn" as its start method; DataLoader workers would then
    # re-import torch each (seconds per run). Start them as a plain `sertrain cv` does.
    multiprocessing.set_start_method(None, force=True)
    import torch

    torch.set_num_threads(threads)
    if slot.startswith("cuda"):
        torch.cuda.set_device(torch.device(slot))
    from .data import open_store
    from .train import train_fold

    reader = None
    try:
        while True:
            item = tasks.get()
            if item is None:
                return
            i, spec = item
            events.put(("start", i, os.getpid()))
            try:
                if reader is None:
                    reader = open_store(store)
                result = train_fold(reader, spec.fold, spec.cfg, spec.out_dir, device=slot, resume=spec.resume,
                                    overrides=spec.overrides, log=lambda m, i=i: events.put(("log", i, m)),
                                    tensorboard=spec.tensorboard, provenance=spec.provenance)
            except Exception as exc:
                events.put(("error", i, _portable(exc), traceback.format_exc()))
                return
            events.put(("done", i, result))
    finally:
        if reader is not None:
            reader.close()


def _portable(exc: BaseException) -> BaseException | None:
    """``exc`` if it can be pickled back to the parent, else None (the traceback says what)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return None


def _labelled(exc: BaseException | None, tb: str, label: str) -> BaseException:
    """The run's error with its label in front; expected errors (one-line ones the CLI
    prints) keep their class and exit code, anything else prints its traceback first."""
    from serprep.errors import SerprepError

    if isinstance(exc, (SertrainError, SerprepError)) and exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{label}: {exc.args[0]}",) + tuple(exc.args[1:])
        return exc
    if isinstance(exc, OSError):
        return SertrainError(f"{label}: {exc}")
    for line in tb.rstrip().splitlines():
        print(f"[{label}] {line}", file=sys.stderr)
    name = type(exc).__name__ if exc is not None else "error"
    first = (str(exc).strip().splitlines() or [""])[0] if exc is not None else ""
    return SertrainError(f"{label} failed: {name}: {first} (traceback above)")


def _check_workers(procs: list[Any], running: dict[int, int], specs: list[RunSpec], all_gone: bool) -> None:
    """A worker that died without reporting (killed, out of memory) fails the cv."""
    for p in procs:
        if p.exitcode not in (None, 0):
            i = running.get(p.pid)
            what = f"while training {specs[i].label}" if i is not None else "before its first run"
            raise SertrainError(f"cv worker process {p.pid} died (exit code {p.exitcode}) {what}; "
                                "the finished epochs of every run continue with --resume")
    if all_gone:
        raise SertrainError("every cv worker process ended before all runs were done")


def _stop(procs: list[Any]) -> None:
    """Terminate the workers still alive (SIGTERM, then SIGKILL after STOP_GRACE_S)."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        if p.pid is not None:
            p.join(STOP_GRACE_S)
            if p.is_alive():
                p.kill()
                p.join()
