"""Run extraction blocks in worker threads or processes, results in order, bounded in flight.

One small loop over ``concurrent.futures`` executors instead of joblib's ``Parallel``: the
build needs (a) results in submission order, so the single writer appends blocks
deterministically, (b) at most ``2 x jobs`` blocks in flight, so memory stays bounded, and
(c) a clean stop. (c) is why this is not joblib: when the build aborted (``--strict``), joblib's
thread pool left daemon threads running inside numpy/ducc0 while the interpreter exited,
which crashed it with SIGABRT in about one run in three. Here an abort cancels the queued
blocks and waits for the running ones, so nothing runs when Python shuts down.

Worker processes come from loky (joblib's process backend, kept alive between builds) and
exit on their own if the build process dies (``kill -9``), see :func:`exit_with_parent`.

The ``dask`` kind runs the same loop on a Dask distributed cluster, through the client's
``concurrent.futures`` executor (:mod:`serprep.dask_backend` connects and checks the workers):
at most ``2 x`` the cluster's worker threads in flight, an abort cancels the queued blocks
(running ones finish on their workers and their results are dropped) and closes the client.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Executor, Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

from .errors import SerprepError

_PARENT_POLL_SECONDS = 0.5


def exit_with_parent(parent: int) -> None:
    """In a worker process: exit as soon as ``parent`` (the build's PID) is no longer its parent.

    A worker orphaned by a ``kill -9`` of the build would otherwise finish (or hang on) its
    block and linger; polling the parent PID from a daemon thread costs nothing measurable.
    The build passes its own PID rather than the worker reading ``getppid()`` at start-up:
    a build killed while the worker was still starting has already been replaced as parent.
    """
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(_PARENT_POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="serprep-exit-with-parent", daemon=True).start()


class BlockRunner:
    """``threads``, ``processes``, ``inline`` (one job: the calling thread) or ``dask``
    execution of blocks.

    Use as a context manager; :meth:`map` yields ``fn(item)`` in the order of ``items``.
    Leaving the context with an exception cancels what has not started and waits for what
    runs (threads), so no worker is busy once the caller returns.

    ``dask`` connects to ``scheduler`` (None: ``$DASK_SCHEDULER_ADDRESS``) and checks that
    every worker can read ``root``, the corpus root the blocks' paths are relative to; it
    ignores ``jobs``: the cluster's worker threads are the jobs (``self.jobs`` after connecting).
    """

    def __init__(self, kind: str, jobs: int, timeout: float | None = None,
                 process_initializer: Callable[[int], None] | None = None,
                 scheduler: str | None = None, root: str | None = None) -> None:
        if kind not in ("threads", "processes", "inline", "dask"):
            raise SerprepError(f"unknown execution kind {kind!r}")
        self.kind = "inline" if jobs <= 1 and kind != "dask" else kind
        self.jobs = max(1, jobs)
        self.timeout = timeout
        self._executor: Executor | None = None
        self._pending: deque[Future] = deque()
        self._client: Any = None  # dask: the distributed.Client
        self._root = root
        self.address: str | None = None  # dask: the scheduler's address (for the build log)
        if self.kind == "dask":
            from .dask_backend import connect

            if root is None:
                raise SerprepError("the dask backend needs the corpus root")
            self._client, self.jobs = connect(scheduler, root)
            self.address = self._client.scheduler.address
            self._executor = self._client.get_executor(pure=False)  # no hashing of the blocks for keys
        elif self.kind == "threads":
            self._executor = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="serprep-extract")
        elif self.kind == "processes":
            from joblib.externals.loky import get_reusable_executor

            # The initializer gets this process's PID (see exit_with_parent).
            self._executor = get_reusable_executor(max_workers=self.jobs, timeout=300,
                                                   initializer=process_initializer, initargs=(os.getpid(),))

    def submit_to_all(self, fn: Callable[..., Any], *args: Any) -> list[Future]:
        """Run ``fn(*args)`` once per worker (process warm-up); nothing without workers."""
        if self._executor is None:
            return []
        return [self._executor.submit(fn, *args) for _ in range(self.jobs)]

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """``fn(item)`` for each item, in order, with at most ``2 x jobs`` submitted ahead."""
        if self._executor is None:
            for item in items:
                yield fn(item)
            return
        if self.kind == "dask":
            from .dask_backend import WorkerTask

            fn = WorkerTask(fn, self._root)
        source = iter(items)
        limit = 2 * self.jobs
        for item in source:
            self._pending.append(self._executor.submit(fn, item))
            if len(self._pending) >= limit:
                break
        while self._pending:
            future = self._pending.popleft()
            result = self._result(future)
            for item in source:
                self._pending.append(self._executor.submit(fn, item))
                break
            yield result

    def _result(self, future: Future) -> Any:
        try:
            return future.result(timeout=self.timeout)
        except TimeoutError:
            raise SerprepError(
                f"a block of utterances took longer than --task-timeout {self.timeout:.0f} s; nothing written"
            ) from None
        except CancelledError:
            if self.kind != "dask":
                raise
            # The scheduler forgot the block (restarted, connection lost).
            raise SerprepError("the dask cluster dropped a block of utterances (scheduler restarted or "
                               "connection lost?); nothing written") from None
        except Exception as exc:
            if type(exc).__name__ == "KilledWorker":
                raise SerprepError("dask workers died running a block of utterances (out of memory or "
                                   "killed?); the workers' logs say why") from None
            if type(exc).__name__ in ("TerminatedWorkerError", "BrokenProcessPool"):
                raise SerprepError(
                    "a feature worker process died (out of memory or killed?); try --jobs 1 to see the failing file"
                ) from None
            raise

    def close(self, cancel: bool) -> None:
        """Stop: with ``cancel``, drop queued blocks and wait for running ones (threads)."""
        while self._pending:
            future = self._pending.popleft()
            future.cancel()
        if self.kind == "threads" and self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=cancel)
        if self._client is not None:  # dask: running blocks finish on their workers, unread
            client, self._client = self._client, None
            self._executor.shutdown(wait=False)
            client.close()
        # loky's executor is reused by the next build in this process; its running blocks
        # finish in the workers and their results are dropped.

    def __enter__(self) -> "BlockRunner":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(cancel=exc_type is not None)
