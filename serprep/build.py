"""``serprep build``: corpus directory -> HDF5 feature store.

The build in stages, each in its module:

1. check options and paths before any work (here), then lock the output path
   (:mod:`serprep.output`);
2. read the corpus listing and plan the build (:mod:`serprep.plan`): classes and subset,
   folds, segment hops, augmentation copies, blocks of ~60 s of audio; a pure value named by
   a fingerprint;
3. open the journal beside ``--out`` (:mod:`serprep.journal`): a resumed build keeps the
   blocks an interrupted build of the same plan left there; a new one starts it;
4. the stream of extracted blocks (:mod:`serprep.blocks`): kept blocks read back, the others
   decoded, augmented, featurised, windowed and hashed in parallel workers (threads, or
   processes when augmenting: :mod:`serprep.executor`), with ``--functionals`` also the
   original utterances' functionals (:mod:`serprep.functionals`), and journaled;
5. one thread (this one) appends each block's frames to the store in plan order and collects
   the tables and per-speaker normalisation sums, then writes folds, tables and the build
   record (:mod:`serprep.assemble`) through :class:`serprep.store.StoreWriter`, which adds
   checksums and publishes the file (:mod:`serprep.output`); the journal is then removed.

Memory stays bounded: at most ``2 * jobs`` blocks (a few MiB each) are in flight and each is
written to HDF5 as soon as it is its turn; only the per-utterance tables grow with the corpus.

What a user can rely on (tests/faults/test_fault_build.py, tests/faults/test_fault_resume.py): an
``--out`` inside the corpus or equal to an input is refused before any work; one build per
output path at a time; a file that appears at ``--out`` meanwhile is not replaced without
``--overwrite``; a failure (disk full, ``--strict``) removes the temp file and the journal and
leaves the previous store; a build killed (``kill -9``) or interrupted (Ctrl-C, SIGTERM) keeps
its journal, and ``--resume`` finishes it into the same store an uninterrupted build writes;
an unreadable file, a file whose features are not finite, or a label line that does not parse
is skipped and recorded (fatal with ``--strict``); doubtful inputs are warnings, counted in
the summary and recorded in the store.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from . import __version__
from .assemble import BlockCollector, write_tables
from .audio import audio_duration
from .blocks import BlockJob, block_stream
from .config import FeatureConfig, SegmentConfig
from .corpora import CorpusListing, read_corpus
from .errors import CorpusLayoutError, SerprepError, StoreError
from .executor import BlockRunner
from .extract import prepare_worker_process, tune_malloc, warm_up, warm_up_extractor
from .features import DEFAULT_FEATURE_KIND, FrameExtractor, feature_kind, make_extractor
from .functionals import FunctionalsExtractor, check_functionals, opensmile_version
from .journal import Journal, journal_lifetime, journal_path, open_journal, refuse_unresumed
from .labels import CorpusSpec, load_spec
from .output import OutputLock, remove_stale_temps
from .plan import BuildPlan, EmptyPlan, PlanOptions, durations_needed, plan_build
from .store import StoreWriter

if TYPE_CHECKING:
    from .protocol import Protocol

@dataclass
class BuildOptions:
    """Everything ``serprep build`` needs; the CLI maps its flags onto this."""

    corpus: str
    root: Path
    out: Path
    classes: str | None = None
    subset: str | None = None
    features: FeatureConfig = field(default_factory=FeatureConfig)
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    augment: str | None = None  # preset name or file
    copies: int = 1  # augmented copies per utterance when augmenting without --balance
    balance: bool = False
    max_copies: int = 4
    seed: int = 0
    jobs: int = -1
    backend: str = "auto"  # threads | processes | dask | auto (threads unless augmenting)
    scheduler: str | None = None  # dask scheduler address (backend dask); None: $DASK_SCHEDULER_ADDRESS
    strict: bool = False
    overwrite: bool = False
    progress: bool = True
    task_timeout: float = 900.0
    block_seconds: float = 60.0
    #: The evaluation protocol these options build (``serprep build --protocol``), recorded
    #: in the store; the options must then be the protocol's (``Protocol.build_options()``),
    #: which :func:`check_options` enforces so a store never names a protocol it does not fit.
    protocol: Protocol | None = None
    #: Continue the build an interrupted run of the same command left in ``<out>.partial/``
    #: (:mod:`serprep.journal`); without a journal there, build from the start.
    resume: bool = False
    #: Keep extracted blocks in ``<out>.partial/`` while building (what ``resume`` continues).
    journal: bool = True
    #: Also store these utterance functionals (``--functionals egemaps``: :mod:`serprep.functionals`).
    functionals: str | None = None


@dataclass
class BuildSummary:
    out: Path
    n_utterances: int
    n_labelled: int
    n_extracted: int
    n_items: int
    n_segments: int
    audio_seconds: float
    wall_seconds: float
    failures: list[tuple[str, str]]  # (path, error) of unreadable audio files
    fold_notes: list[str]
    class_counts: dict[str, int]
    skipped_labels: list[tuple[str, str]] = field(default_factory=list)  # (label file:line, problem)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (where, message)
    removed_temps: list[str] = field(default_factory=list)
    n_blocks: int = 0
    kept_blocks: int = 0  # blocks a resumed build took from the journal instead of extracting them


# --------------------------------------------------------------------------------------------
# Checks before any work
# --------------------------------------------------------------------------------------------
def check_options(opts: BuildOptions, spec: CorpusSpec) -> tuple[Path, Path]:
    """``(root, out)`` once the options are known to be usable; one-line errors otherwise.

    Nothing is read or written before this passes: a bad number, a missing folder or an
    ``--out`` that names an input ends here.
    """
    root, out = Path(opts.root), Path(opts.out)
    if not root.is_dir():
        raise CorpusLayoutError(f"{root}: corpus root is not a directory")
    if opts.protocol is not None:
        opts.protocol.check_build_options(opts, spec)
    feature_kind(DEFAULT_FEATURE_KIND).check_config(opts.features)
    check_functionals(opts.functionals)
    seg = opts.segments
    if seg.frames <= 0 or not 0 < seg.min_hop <= seg.hop <= seg.frames:
        raise SerprepError(
            f"--segment-frames {seg.frames} / --segment-hop {seg.hop}: need frames > 0 and 0 < hop <= frames "
            "(a hop longer than a window would leave frames in no segment)"
        )
    if opts.copies < 0 or opts.max_copies < 0:
        raise SerprepError("--copies and --max-copies must not be negative")
    if out.is_dir():
        raise StoreError(f"{out}: is a directory; --out names the store file to write")
    if not out.parent.is_dir():
        raise StoreError(f"{out}: output folder {out.parent} does not exist")
    preset = None
    if opts.augment:  # a bad preset ends here, not after extraction has started
        from .augment import load_preset, preset_file

        load_preset(opts.augment)
        preset = preset_file(opts.augment)
    _refuse_input_as_output(out, root, preset, spec.path)
    if out.exists() and not opts.overwrite:
        raise StoreError(f"{out}: already exists (use --overwrite to replace it)")
    if opts.resume and not opts.journal:
        raise SerprepError("--resume continues from the journal, which --no-journal turns off; choose one")
    if not (opts.resume or opts.overwrite):
        refuse_unresumed(out)
    return root, out


def _refuse_input_as_output(out: Path, root: Path, preset: Path | None, label_manifest: Path) -> None:
    """Refuse an ``--out`` inside the corpus or naming an input file (before it is replaced):
    the label manifest, or the augmentation preset (``--augment default`` names a bundled file);
    and one whose journal folder (``<out>.partial``) is or holds the corpus."""
    real_out, real_root = out.resolve(), root.resolve()
    if real_out == real_root or real_root in real_out.parents:
        raise SerprepError(f"{out}: is inside the corpus root {root}; write the store outside the corpus "
                           "(the corpus is input only)")
    journal = journal_path(out).resolve()
    if journal == real_root or journal in real_root.parents:
        raise SerprepError(f"{out}: its journal folder {journal_path(out)} would hold the corpus root {root}; "
                           "choose another --out")
    inputs = [(label_manifest, "the label manifest")]
    if preset is not None:
        inputs.append((preset, "the --augment preset"))
    for path, what in inputs:
        if real_out == path.resolve() or (out.exists() and os.path.samefile(out, path)):
            raise SerprepError(f"{out}: is {what}, an input of this build; choose another --out")


def resolve_backend(backend: str, augment: bool, jobs: int) -> str:
    """``threads`` or ``processes`` for the extraction workers.

    Threads are the default for plain builds: the decode, FFT, matmul and hashing all run
    with the GIL released, and threads start instantly and hand arrays to the writer without
    pickling (4-hour demo corpus on 2 cores, whole command: 2.36 s with one job, 1.59 s with
    two threads, 2.2-2.3 s with two processes). Augmented builds with more than one job
    default to processes, as they did when audiomentations' process-global random state had to
    be serialised; each copy now draws from its own seeded generators (:mod:`serprep.augment`),
    so every backend writes the same store. ``dask`` runs them on a Dask cluster
    (:mod:`serprep.dask_backend`).
    """
    if backend not in ("auto", "threads", "processes", "dask"):
        raise SerprepError(f"unknown --backend {backend!r}; choose auto, threads, processes or dask")
    if backend == "auto":
        return "processes" if augment and jobs > 1 else "threads"
    return backend


def package_versions(functionals: str | None = None) -> dict[str, str]:
    """Versions of Python and of the packages that shape a store's content (opensmile's only
    for a build with ``functionals``: the others record what they always did)."""
    from importlib import metadata  # ~20 ms to import: only here, in a background thread

    out = {"python": platform.python_version(), "serprep": __version__}
    for name in ("numpy", "scipy", "ducc0", "librosa", "soundfile", "soxr", "h5py", "audiomentations", "joblib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    if functionals is not None:
        out["opensmile"] = opensmile_version()
    return out


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------
def build_store(opts: BuildOptions, log: Callable[[str], None] = print) -> BuildSummary:
    """Build a store; raises :class:`SerprepError` (one-line message) on fatal problems."""
    t0 = time.perf_counter()
    spec = load_spec(opts.corpus)
    root, out = check_options(opts, spec)
    with OutputLock(out):
        removed = remove_stale_temps(out.parent, out.name)
        for path in removed:
            log(f"removed stale temporary file {path.name} (left by a build that was killed)")
        if out.exists() and not opts.overwrite:  # again, now that no other build can write it
            raise StoreError(f"{out}: already exists (use --overwrite to replace it)")
        summary = _build_locked(opts, spec, root, out, log)
    summary.removed_temps = [p.name for p in removed]
    summary.wall_seconds = time.perf_counter() - t0
    return summary


@dataclass
class _Workers:
    """The build's execution resources: extraction workers, one background thread (headers,
    package versions) and the warm-up futures to wait for before the first extraction."""

    runner: BlockRunner
    background: ThreadPoolExecutor
    warm: list[Future]
    extract: FrameExtractor


def _build_locked(opts: BuildOptions, spec: CorpusSpec, root: Path, out: Path,
                  log: Callable[[str], None]) -> BuildSummary:
    """The build under the output lock: workers, plan, journal, then :func:`_extract_and_write`
    inside the journal's lifetime (kept on interrupt, removed on success or error)."""
    jobs = (os.cpu_count() or 1) if opts.jobs in (0, -1, None) else max(1, opts.jobs)
    backend = resolve_backend(opts.backend, bool(opts.augment), jobs)
    # The one kind there is; a second kind brings an option for it (and a place in the plan's fingerprint).
    extract = make_extractor(DEFAULT_FEATURE_KIND, opts.features)
    with contextlib.ExitStack() as stack:
        runner = stack.enter_context(BlockRunner(backend, jobs,
                                                 opts.task_timeout if jobs > 1 or backend == "dask" else None,
                                                 process_initializer=prepare_worker_process,
                                                 scheduler=opts.scheduler, root=str(root)))
        background = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="serprep-headers"))
        # Worker start-up (processes) or the FFT import (this process) overlaps reading the corpus.
        warm = (runner.submit_to_all(warm_up, bool(opts.augment)) if runner.kind == "processes"
                else [background.submit(warm_up_extractor, extract)])
        versions = background.submit(package_versions, opts.functionals)  # importlib.metadata: ~30 ms, off the critical path
        plan = _plan(opts, spec, root, versions)
        journal = open_journal(out, plan, root, resume=opts.resume, overwrite=opts.overwrite,
                               enabled=opts.journal, log=log)
        log(
            f"{opts.corpus}: {len(plan.utts)} utterances, {len(plan.labelled)} in {plan.classes}/{plan.subset}; "
            f"extracting {sum(1 + t.copies for t in plan.tasks)} items (~{plan.total_seconds / 3600:.2f} h audio) "
            + (f"on the dask cluster at {runner.address} ({runner.jobs} worker threads)" if runner.kind == "dask"
               else f"with {jobs} job(s)")
        )
        with journal_lifetime(journal):
            summary = _extract_and_write(opts, plan, journal, _Workers(runner, background, warm, extract),
                                         stack, root, out, log)
    return summary


def _plan(opts: BuildOptions, spec: CorpusSpec, root: Path, versions: Future) -> BuildPlan:
    """Read the corpus listing (and the header durations balancing needs) and plan the build."""
    listing = read_corpus(opts.corpus, root)
    _refuse_label_issues(listing, root, opts.strict)
    options = plan_options(opts, spec)
    utts = listing.utterances
    durations = {i: audio_duration(root / utts[i].path) for i in durations_needed(options, spec, utts)}
    try:
        return plan_build(options, spec, listing, durations, versions.result())
    except EmptyPlan as exc:
        raise SerprepError(f"{root}: {exc}") from None


def plan_options(opts: BuildOptions, spec: CorpusSpec) -> PlanOptions:
    """The options that shape the store's content, resolved (class set and subset defaults,
    the augmentation preset's transforms, the protocol's record)."""
    protocol = opts.protocol
    return PlanOptions(
        corpus=opts.corpus, classes=opts.classes or spec.default_classes, subset=opts.subset or spec.default_subset,
        features=opts.features, segments=opts.segments, augment=opts.augment or None,
        augment_record=_describe_augment(opts.augment), copies=opts.copies, balance=opts.balance,
        max_copies=opts.max_copies, seed=opts.seed, block_seconds=float(opts.block_seconds),
        protocol=None if protocol is None else {**protocol.record(), "title": protocol.title,
                                                "built_in": protocol.built_in},
        functionals=opts.functionals,
    )


def _extract_and_write(opts: BuildOptions, plan: BuildPlan, journal: Journal | None, workers: _Workers,
                       stack: contextlib.ExitStack, root: Path, out: Path, log: Callable[[str], None]) -> BuildSummary:
    """Stream the blocks into a new store, write everything else, publish; the summary."""
    from threadpoolctl import threadpool_limits

    unlabelled = plan.unlabelled
    header_durations = workers.background.submit(
        lambda: {i: audio_duration(root / plan.utts[i].path) for i in unlabelled})
    writer = stack.enter_context(StoreWriter(out, opts.features, overwrite=opts.overwrite, kind=workers.extract.kind))
    in_processes = workers.runner.kind == "processes"

    def before_extraction() -> None:  # after the kept blocks at the start of a resumed build
        for future in workers.warm:
            future.result()
        if not in_processes:
            # Threads share this process: one BLAS thread each for the build, restored after.
            stack.enter_context(threadpool_limits(limits=1))
            tune_malloc()

    functionals = FunctionalsExtractor(opts.functionals) if opts.functionals else None
    job = BlockJob(str(root), workers.extract, opts.segments, opts.augment, opts.seed, in_processes, functionals)
    collected = BlockCollector(plan, opts.features, opts.strict)
    blocks = block_stream(plan, journal, workers.runner, job, log, before_extraction)
    _write_blocks(blocks, collected, writer, len(plan.tasks), opts.progress)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    segs, fold_notes = write_tables(writer, plan, collected, header_durations.result(), created)
    writer.finalize()
    ok = collected.ok()
    return BuildSummary(
        out=out, n_utterances=len(plan.utts), n_labelled=len(plan.labelled), n_extracted=int(ok.sum()),
        n_items=collected.n_items, n_segments=len(segs), audio_seconds=collected.audio_seconds, wall_seconds=0.0,
        failures=[(f.path, f.error) for f in collected.failures], fold_notes=fold_notes,
        class_counts={c: sum(1 for i in plan.labelled if plan.emotion[i] == c and ok[i]) for c in plan.class_names},
        skipped_labels=[(r.path, r.error) for r in plan.skipped],
        warnings=[(w.path, w.message) for w in [*plan.warnings, *collected.warnings]],
        n_blocks=len(plan.blocks), kept_blocks=len(journal.kept) if journal is not None else 0,
    )


def _refuse_label_issues(listing: CorpusListing, root: Path, strict: bool) -> None:
    """With ``--strict``, the first label line the reader skipped is fatal."""
    skipped = [i for i in listing.issues if i.skipped]
    if strict and skipped:
        raise SerprepError(f"{root / skipped[0].where}: {skipped[0].message} (--strict: aborting; nothing written)")


def _write_blocks(blocks: Iterator[dict[str, Any]], collected: BlockCollector, writer: StoreWriter, n_tasks: int,
                  progress: bool) -> None:
    """Every block to the collector (and its frames to the store), with a progress bar."""
    from tqdm import tqdm

    with tqdm(total=n_tasks, unit="utt", desc="extracting", disable=not progress, mininterval=0.5,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for block in blocks:
            bar.update(collected.add(block, writer))


def _describe_augment(augment: str | None) -> Any:
    """What the store records of ``--augment``: the preset's name and its transforms."""
    if not augment:
        return None
    from .augment import load_preset

    return {"preset": Path(augment).name if os.sep in augment or augment.endswith((".toml", ".yaml", ".yml")) else augment,
            "spec": load_preset(augment)}
