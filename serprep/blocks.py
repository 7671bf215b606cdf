"""The stream of extracted blocks: every block of a plan, in plan order, each journaled.

:func:`block_stream` yields block ``k`` of the plan as :func:`serprep.extract.extract_block`
returns it (plus the ``stats`` of the audio files it read): from the journal when a resumed
build kept it, otherwise extracted by the :class:`~serprep.executor.BlockRunner` and then
written to the journal before it is yielded. So whatever the writer has received is in the
journal, and a build killed at any point loses at most the blocks in flight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

from .config import SegmentConfig
from .extract import Task, extract_block
from .features import FrameExtractor
from .journal import audio_stats

if TYPE_CHECKING:
    from .executor import BlockRunner
    from .functionals import FunctionalsExtractor
    from .journal import Journal
    from .plan import BuildPlan


class BlockJob:
    """``extract_block`` with the build's fixed arguments (picklable, for worker processes),
    called with ``(k, tasks)``; the result also records ``stats``: each audio file's size and
    modification time, taken before it is read (:func:`serprep.journal.audio_stats`).
    ``functionals``: the utterance functionals to compute too (``--functionals``)."""

    def __init__(self, root: str, extract: FrameExtractor, seg: SegmentConfig, augment: str | None, seed: int,
                 worker_process: bool, functionals: FunctionalsExtractor | None = None) -> None:
        self.root, self.extract, self.seg = root, extract, seg
        self.augment, self.seed, self.worker_process = augment, seed, worker_process
        self.functionals = functionals

    def __call__(self, item: tuple[int, list[Task]]) -> dict[str, Any]:
        _, tasks = item
        stats = [audio_stats(self.root, task.path) for task in tasks]
        block = extract_block(tasks, self.root, self.extract, self.seg, self.augment, self.seed, self.worker_process,
                              self.functionals)
        block["stats"] = stats
        return block

    def here(self, item: tuple[int, list[Task]]) -> dict[str, Any]:
        """The same block extracted in the calling thread, with one BLAS thread as in a worker
        (so that its bytes are a worker's)."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return BlockJob(self.root, self.extract, self.seg, self.augment, self.seed, False, self.functionals)(item)


def block_stream(plan: BuildPlan, journal: Journal | None, runner: BlockRunner, job: BlockJob,
                 log: Callable[[str], None], before_extraction: Callable[[], None] = lambda: None,
                 ) -> Iterator[dict[str, Any]]:
    """Every block of ``plan`` in order: kept ones read back from ``journal`` (verified), the
    others extracted by ``runner`` (in order, bounded in flight) and journaled.

    ``before_extraction`` runs once, before the first block is asked of the runner (waiting
    for the workers' warm-up): kept blocks at the start are written meanwhile. A kept block
    whose frames fail their checksums when read is extracted again here, in the calling
    thread (the runner is busy with the blocks that were missing from the start).
    """
    kept = journal.kept if journal is not None else {}
    missing = ((k, plan.block_tasks(k)) for k in range(len(plan.blocks)) if k not in kept)
    extracted = runner.map(job, missing)
    started = False
    for k in range(len(plan.blocks)):
        if k in kept:
            block = journal.load(k)
            if block is not None:
                yield block
                continue
            log(f"journal block {k} failed its checksums when read back; extracting it again")
            block = job.here((k, plan.block_tasks(k)))
        else:
            if not started:
                before_extraction()
                started = True
            block = next(extracted)
        if journal is not None:
            journal.write(k, block)
        yield block
