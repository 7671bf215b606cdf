"""``serprep build --backend dask``: extraction blocks on a Dask distributed cluster.

The build process connects a :class:`distributed.Client` to the scheduler and
:class:`serprep.executor.BlockRunner` drives the cluster through the client's
``concurrent.futures`` executor, with the same ordered, bounded loop as the local kinds: the
one writer stays in the build process and appends blocks in plan order, so the store is the
one a local build writes (same features, same checksums, augmented builds included: every
augmented copy reseeds the random state from ``copy_seed(seed, utt_id, copy)``, wherever it
runs, under the same lock as in local threads).

Workers read the audio themselves, at the corpus root's path as the build process sees it
(made absolute): a worker that cannot read it is named, with the path, before anything is
extracted. Before the build starts every worker is checked (:func:`worker_report`: corpus
root readable, the package versions that shape a store's content equal to this process's)
and set up like a local worker process (one BLAS thread, malloc tuning); a worker that joins
later is set up and checked by its first block (:class:`WorkerTask`).

Nothing here imports ``distributed`` at module level: ``serprep --help`` and local builds
never pay for it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

from .errors import SerprepError

if TYPE_CHECKING:
    from distributed import Client

#: Packages whose version can change the bytes of a store (decoding, resampling, FFT,
#: augmentation). A worker with another version of any of them is refused: the store records
#: this process's versions, so it must also hold this process's numbers.
CONTENT_PACKAGES = ("numpy", "scipy", "ducc0", "soundfile", "soxr", "audiomentations")

ENV_VAR = "DASK_SCHEDULER_ADDRESS"


def scheduler_address(scheduler: str | None) -> str | None:
    """The scheduler to use: ``--scheduler``, else ``$DASK_SCHEDULER_ADDRESS``, else Dask's
    ``scheduler-address`` setting (its config files); None when none is set."""
    if scheduler:
        return scheduler
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    import dask.config

    return dask.config.get("scheduler-address", None) or None


def content_versions() -> dict[str, str]:
    """``serprep`` and :data:`CONTENT_PACKAGES` versions of this process."""
    from importlib import metadata

    from . import __version__

    out = {"serprep": __version__}
    for name in CONTENT_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def root_problem(root: str) -> str | None:
    """Why this process cannot list the folder ``root`` (the OS's words), or None if it can."""
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


_READY_ROOTS: set[str] = set()


def prepare_worker(root: str) -> str | None:
    """In a Dask worker process: set up like a local worker process (one BLAS thread, malloc
    tuning; once per process) and check that ``root`` is readable (once per process and
    root). Returns the problem with the root, None if readable."""
    from .extract import prepare_worker_process

    prepare_worker_process()  # no parent to exit with: the worker belongs to the cluster
    if root in _READY_ROOTS:
        return None
    problem = root_problem(root)
    if problem is None:
        _READY_ROOTS.add(root)
    return problem


def worker_report(root: str) -> dict[str, Any]:
    """Run on every worker (``Client.run``) before the build starts."""
    return {"root_problem": prepare_worker(root), "versions": content_versions()}


def _cannot_read(worker: str, root: str, problem: str) -> str:
    return (f"dask worker {worker} cannot read the corpus root {root} ({problem}): "
            "workers must see the corpus at the same path")


class WorkerTask:
    """``fn(block)`` on a worker, after :func:`prepare_worker` (picklable)."""

    def __init__(self, fn: Callable[[Any], Any], root: str) -> None:
        self.fn = fn
        self.root = root
        self.__name__ = "serprep-block"  # Dask names the task keys after it (dashboard, logs)

    def __call__(self, item: Any) -> Any:
        problem = prepare_worker(self.root)
        if problem is not None:  # a worker that joined after the check of every worker
            from distributed import get_worker

            raise SerprepError(_cannot_read(get_worker().address, self.root, problem))
        return self.fn(item)


def connect(scheduler: str | None, root: str) -> tuple["Client", int]:
    """Connect to the cluster and check its workers; ``(client, worker threads)``.

    One-line :class:`SerprepError` for no address, an unreachable scheduler, a cluster
    without workers, a worker that cannot read ``root`` or runs other package versions.
    The connect and wait timeouts are Dask's ``distributed.comm.timeouts.connect`` (30 s by
    default; ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s`` changes it).
    """
    address = scheduler_address(scheduler)
    if not address:
        raise SerprepError(f"--backend dask needs --scheduler tcp://HOST:8786 or {ENV_VAR}")
    if not os.path.isabs(root):  # a worker would resolve it in its own working folder
        raise SerprepError(f"{root}: the corpus root must be an absolute path with --backend dask "
                           "(workers read it at the same path)")
    import dask.config
    from dask.utils import parse_timedelta
    from distributed import Client

    timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="s")
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except Exception as exc:  # OSError (refused, timed out), ValueError (malformed address), ...
        raise SerprepError(f"cannot reach the dask scheduler at {address} ({_one_line(exc)})") from None
    try:
        if not client.nthreads():
            try:
                client.wait_for_workers(1, timeout=timeout)
            except TimeoutError:
                raise SerprepError(f"the dask scheduler at {address} has no workers "
                                   f"(waited {timeout:.0f} s; start some with `dask worker {address}`)") from None
        try:
            reports = client.run(worker_report, root)
        except Exception as exc:  # serprep missing on a worker, a worker gone meanwhile, ...
            raise SerprepError(f"could not set up the dask workers of {address} ({_one_line(exc)}); "
                               "every worker needs serprep installed, the same version as here") from None
        check_workers(reports, root, content_versions())
        threads = sum(client.nthreads().values())
    except BaseException:
        client.close()
        raise
    return client, max(1, threads)


def check_workers(reports: dict[str, dict[str, Any]], root: str, local: dict[str, str]) -> None:
    """Refuse the cluster if a worker (``reports``: address -> :func:`worker_report`) cannot
    read ``root`` or runs another version of a package that shapes the store."""
    unreadable = [(w, r["root_problem"]) for w, r in sorted(reports.items()) if r["root_problem"]]
    if unreadable:
        worker, problem = unreadable[0]
        more = f" ({len(unreadable) - 1} more worker(s) cannot either)" if len(unreadable) > 1 else ""
        raise SerprepError(_cannot_read(worker, root, problem) + more)
    for worker, report in sorted(reports.items()):
        differ = [f"{name} {report['versions'].get(name, 'not installed')} (here {version})"
                  for name, version in local.items() if report["versions"].get(name) != version]
        if differ:
            raise SerprepError(f"dask worker {worker} runs " + ", ".join(differ)
                               + ": workers need the versions of this process to write the same store")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
