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
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
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
    """``threads``, ``processes`` or ``inline`` (one job: the calling thread) execution of blocks.

    Use as a context manager; :meth:`map` yields ``fn(item)`` in the order of ``items``.
    Leaving the context with an exception cancels what has not started and waits for what
    runs (threads), so no worker is busy once the caller returns.
    """

    def __init__(self, kind: str, jobs: int, timeout: float | None = None,
                 process_initializer: Callable[[int], None] | None = None) -> None:
        if kind not in ("threads", "processes", "inline"):
            raise SerprepError(f"unknown execution kind {kind!r}")
        self.kind = "inline" if jobs <= 1 else kind
        self.jobs = max(1, jobs)
        self.timeout = timeout
        self._executor: Executor | None = None
        self._pending: deque[Future] = deque()
        if self.kind == "threads":
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
        except Exception as exc:
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
        # loky's executor is reused by the next build in this process; its running blocks
        # finish in the workers and their results are dropped.

    def __enter__(self) -> "BlockRunner":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(cancel=exc_type is not None)
