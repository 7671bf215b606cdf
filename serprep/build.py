"""``serprep build``: corpus directory -> HDF5 feature store.

Pipeline: check options and paths (before any work) -> lock the output path -> read the
corpus layout -> plan (versioned class map and subset, folds, segment hops, augmentation
copies, blocks of ~60 s of audio) -> decode + augment + extract features, window and hash in
parallel workers (threads, or processes when augmenting; :mod:`serprep.executor`) -> one
thread (this one) appends each block's frames to the store in order and accumulates
per-speaker normalisation sums -> per-fold indices and statistics -> tables -> checksums ->
publish (:mod:`serprep.output`).

Memory stays bounded: at most ``2 * jobs`` blocks (a few MiB each) are in flight and each is
written to HDF5 as soon as it is its turn; only the per-utterance tables grow with the corpus.

What a user can rely on (tests/faults/test_fault_build.py): an ``--out`` inside the corpus
or equal to an input is refused before any work; one build per output path at a time; a
file that appears at ``--out`` meanwhile is not replaced without ``--overwrite``; a failure
(disk full, ``--strict``, Ctrl-C) removes the temp file and leaves the previous store; an
unreadable file, a file whose features are not finite, or a label line that does not parse
is skipped and recorded (fatal with ``--strict``); doubtful inputs are warnings, counted in
the summary and recorded in the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from . import __version__
from .audio import audio_duration
from .balance import balanced_index, class_hops, copy_rates, utterance_copies
from .config import FeatureConfig, SegmentConfig
from .corpora import CorpusListing, Utterance, read_corpus
from .errors import CorpusLayoutError, SerprepError, StoreError
from .executor import BlockRunner
from .extract import Task, extract_block, prepare_worker_process, tune_malloc, warm_up, warm_up_extractor
from .features import LogMelExtractor, check_feature_config
from .folds import ResolvedFold, resolve_folds
from .labels import CorpusSpec, load_spec
from .output import OutputLock, remove_stale_temps
from .segments import segment_offsets
from .store import FAILURE_COLUMNS, GENDERS, SEGMENT_DTYPES, WARNING_COLUMNS, Fold, StoreWriter, gender_id

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
    backend: str = "auto"  # threads | processes | auto (threads unless augmenting)
    strict: bool = False
    overwrite: bool = False
    progress: bool = True
    task_timeout: float = 900.0
    block_seconds: float = 60.0
    #: The evaluation protocol these options build (``serprep build --protocol``), recorded
    #: in the store; the options must then be the protocol's (``Protocol.build_options()``),
    #: which :func:`check_options` enforces so a store never names a protocol it does not fit.
    protocol: Protocol | None = None


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
    check_feature_config(opts.features)
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
    return root, out


def _refuse_input_as_output(out: Path, root: Path, preset: Path | None, label_manifest: Path) -> None:
    """Refuse an ``--out`` inside the corpus or naming an input file (before it is replaced):
    the label manifest, or the augmentation preset (``--augment default`` names a bundled file)."""
    real_out, real_root = out.resolve(), root.resolve()
    if real_out == real_root or real_root in real_out.parents:
        raise SerprepError(f"{out}: is inside the corpus root {root}; write the store outside the corpus "
                           "(the corpus is input only)")
    inputs = [(label_manifest, "the label manifest")]
    if preset is not None:
        inputs.append((preset, "the --augment preset"))
    for path, what in inputs:
        if real_out == path.resolve() or (out.exists() and os.path.samefile(out, path)):
            raise SerprepError(f"{out}: is {what}, an input of this build; choose another --out")


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------
def assign_classes(utts: list[Utterance], spec: CorpusSpec, classes: str, subset: str) -> list[str]:
    """Class of each utterance under the chosen class set and subset ("" = not selected)."""
    class_map = spec.class_map(classes)
    column, values = spec.subset_filter(subset)
    out = []
    for u in utts:
        in_subset = column is None or str(u.extras.get(column, "")) in values
        out.append(class_map.get(u.emotion_raw, "") if in_subset else "")
    return out


@dataclass
class BuildPlan:
    """What will be extracted and how, decided from the corpus listing and header durations."""

    utts: list[Utterance]
    classes: str
    subset: str
    emotion: list[str]  # class of each utterance ("" = not selected)
    class_names: list[str]
    labelled: list[int]
    speakers: list[str]
    fold_sets: dict[str, list[ResolvedFold]]
    fold_notes: list[str]
    hops: dict[str, int]
    copy_rate: dict[str, float]
    tasks: list[Task]
    blocks: list[list[Task]]
    durations: list[float | None]  # header durations known at plan time (balanced augmentation)
    total_seconds: float

    @property
    def unlabelled(self) -> list[int]:
        return [i for i, e in enumerate(self.emotion) if not e]


def plan_build(opts: BuildOptions, spec: CorpusSpec, utts: list[Utterance], root: Path) -> BuildPlan:
    """Classes, folds, hops, augmentation copies and work blocks of a build."""
    cfg, seg = opts.features, opts.segments
    classes = opts.classes or spec.default_classes
    subset = opts.subset or spec.default_subset
    emotion = assign_classes(utts, spec, classes, subset)
    class_names = spec.class_names(classes)
    labelled = [i for i, e in enumerate(emotion) if e]
    if not labelled:
        raise SerprepError(f"{root}: no utterance falls in class set {classes!r} / subset {subset!r}")
    # Header durations: needed up front only to plan balancing; the manifest's durations of
    # the other utterances are read while the workers extract.
    needs_durations = bool(opts.augment and opts.balance)
    durations: list[float | None] = [
        audio_duration(root / u.path) if needs_durations and emotion[i] else None for i, u in enumerate(utts)
    ]
    fold_sets, fold_notes = plan_folds(spec, [utts[i] for i in labelled])

    # Segment hops: denser for minority classes when balancing (whole-corpus class shares:
    # the extra windows are training-only, so test utterances are never cut differently).
    class_utts = {c: sum(1 for i in labelled if emotion[i] == c) for c in class_names}
    hops = class_hops(class_utts, seg.hop, seg.min_hop) if opts.balance else {c: seg.hop for c in class_names}
    copy_rate = _copy_rates(opts, utts, emotion, labelled, class_names, fold_sets, hops, durations)
    n_copies = {i: utterance_copies(copy_rate[emotion[i]], opts.seed, utts[i].utt_id) for i in labelled}

    tasks = [Task(i, utts[i].utt_id, utts[i].path, n_copies[i], hops[emotion[i]]) for i in labelled]
    sizes = [durations[i] or _duration_hint(utts[i]) for i in labelled]
    return BuildPlan(
        utts=utts, classes=classes, subset=subset, emotion=emotion, class_names=class_names, labelled=labelled,
        speakers=sorted({u.speaker for u in utts}), fold_sets=fold_sets, fold_notes=fold_notes, hops=hops,
        copy_rate=copy_rate, tasks=tasks, blocks=list(_blocks(tasks, sizes, opts.block_seconds)),
        durations=durations, total_seconds=sum(d * (1 + n_copies[i]) for i, d in zip(labelled, sizes)),
    )


def plan_folds(spec: CorpusSpec, labelled: list[Utterance]) -> tuple[dict[str, list[ResolvedFold]], list[str]]:
    """Every fold scheme of the manifest, resolved against the speakers of the labelled
    utterances (generated schemes are drawn from them: :mod:`serprep.folds`), and notes on
    the folds dropped."""
    genders: dict[str, str] = {}
    for u in labelled:
        genders.setdefault(u.speaker, u.gender)
    fold_sets: dict[str, list[ResolvedFold]] = {}
    fold_notes: list[str] = []
    for scheme in spec.folds:
        column = spec.partition_column(scheme)
        partitions: dict[str, set[str]] = {}
        if column is not None:
            for u in labelled:
                partitions.setdefault(u.speaker, set()).add(str(u.extras.get(column, "")))
        resolved, notes = resolve_folds(spec.fold_definitions(scheme, genders, partitions), set(genders))
        fold_notes += [f"{scheme} {n}" for n in notes]
        if resolved:
            fold_sets[scheme] = resolved
    return fold_sets, fold_notes


def _copy_rates(opts: BuildOptions, utts: list[Utterance], emotion: list[str], labelled: list[int],
                class_names: list[str], fold_sets: dict[str, list[ResolvedFold]], hops: dict[str, int],
                durations: list[float | None]) -> dict[str, float]:
    """Augmentation copies per class: the most any fold's training part needs, as a rate
    (fractional copies per utterance); each fold's index then takes only what it needs."""
    copy_rate = {c: 0.0 for c in class_names}
    if not opts.augment:
        return copy_rate
    if not opts.balance:
        return {c: float(opts.copies) for c in class_names}
    est = {i: _estimated_segments(durations[i], opts.features, opts.segments, hops[emotion[i]]) for i in labelled}
    for folds in fold_sets.values():
        for fold in folds:
            train = set(fold.train)
            counts = {c: 0.0 for c in class_names}
            for i in labelled:
                if utts[i].speaker in train:
                    counts[emotion[i]] += est[i]
            for c, rate in copy_rates(counts, opts.max_copies).items():
                copy_rate[c] = max(copy_rate[c], rate)
    return copy_rate


def _estimated_segments(duration: float | None, cfg: FeatureConfig, seg: SegmentConfig, hop: int) -> int:
    if not duration:
        return 0
    n = cfg.n_frames(int(round(duration * cfg.sample_rate)))
    return len(segment_offsets(n, seg.frames, hop))


def resolve_backend(backend: str, augment: bool, jobs: int) -> str:
    """``threads`` or ``processes`` for the extraction workers.

    Threads are the default for plain builds: the decode, FFT, matmul and hashing all run
    with the GIL released, and threads start instantly and hand arrays to the writer without
    pickling (4-hour demo corpus on 2 cores, whole command: 2.36 s with one job, 1.59 s with
    two threads, 2.2-2.3 s with two processes). Augmentation goes to processes, because
    audiomentations draws from process-global random state, which a lock serialises.
    """
    if backend not in ("auto", "threads", "processes"):
        raise SerprepError(f"unknown --backend {backend!r}; choose auto, threads or processes")
    if backend == "auto":
        return "processes" if augment and jobs > 1 else "threads"
    return backend


def _duration_hint(u: Utterance) -> float:
    """A duration estimate for sizing work blocks: the label file's times, else 4 s."""
    start, end = u.extras.get("start"), u.extras.get("end")
    if isinstance(start, float) and isinstance(end, float) and end > start:
        return end - start
    return 4.0


def _blocks(tasks: list[Task], durations: list[float], block_seconds: float) -> Iterator[list[Task]]:
    block: list[Task] = []
    seconds = 0.0
    for task, dur in zip(tasks, durations):
        block.append(task)
        seconds += (dur or 1.0) * (1 + task.copies)
        if seconds >= block_seconds:
            yield block
            block, seconds = [], 0.0
    if block:
        yield block


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape a store's content."""
    from importlib import metadata  # ~20 ms to import: only here, in a background thread

    out = {"python": platform.python_version(), "serprep": __version__}
    for name in ("numpy", "scipy", "ducc0", "librosa", "soundfile", "soxr", "h5py", "audiomentations", "joblib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# --------------------------------------------------------------------------------------------
# Extraction results, as the writer collects them
# --------------------------------------------------------------------------------------------
class _Collected:
    """Everything the writer loop gathers from the extracted blocks, besides the frames."""

    def __init__(self, plan: BuildPlan, n_mels: int, hop_seconds: float, strict: bool) -> None:
        n_utts, n_speakers = len(plan.utts), len(plan.speakers)
        self.plan = plan
        self.strict = strict
        self.hop_seconds = hop_seconds
        self.status = ["excluded"] * n_utts
        for i in plan.labelled:
            self.status[i] = "pending"
        self.sha = [""] * n_utts
        self.source_rate = np.zeros(n_utts, dtype=np.int64)
        self.n_orig_segments = np.zeros(n_utts, dtype=np.int64)
        self.durations = list(plan.durations)
        self.failures: list[tuple[str, str, str]] = []  # (utt_id, path, error)
        self.warnings: list[tuple[str, str, str]] = []  # (utt_id, where, message)
        # Segment rows per block: a few arrays per block, not per item, stay in memory.
        self.segment_parts: dict[str, list[np.ndarray]] = {k: [] for k in SEGMENT_DTYPES}
        self.spk_sum = np.zeros((n_speakers, 3, n_mels), dtype=np.float64)
        self.spk_sumsq = np.zeros((n_speakers, 3, n_mels), dtype=np.float64)
        self.spk_weight = np.zeros(n_speakers, dtype=np.float64)
        self.audio_seconds = 0.0
        self.n_items = 0
        self._speaker_id = {s: i for i, s in enumerate(plan.speakers)}
        self._class_id = {c: i for i, c in enumerate(plan.class_names)}

    def add_block(self, block: dict[str, Any], writer: StoreWriter) -> int:
        """Write one extracted block and collect its tables; returns the utterances it held."""
        plan = self.plan
        rows: list[tuple[int, int, int, str, str]] = []  # the writer's item rows
        per_item: list[tuple[int, int, int, int, int, int]] = []  # utt, copy, class, gender, speaker, windows
        windows: list[np.ndarray] = []
        for entry in block["entries"]:
            i = entry["utt"]
            u = plan.utts[i]
            for message in entry["warnings"]:
                self.warnings.append((u.utt_id, u.path, message))
            if entry["error"]:
                if self.strict:
                    raise SerprepError(f"{entry['error']} (--strict: aborting; nothing written)")
                self.status[i] = "failed"
                self.failures.append((u.utt_id, u.path, entry["error"]))
                continue
            self.status[i] = "ok"
            self.sha[i] = entry["sha256"]
            self.source_rate[i] = entry["source_rate"]
            self.durations[i] = entry["duration"]
            s = self._speaker_id[u.speaker]
            for it in entry["items"]:
                rows.append((i, it["copy"], it["n_frames"], it["chain"], it["digest"]))
                self.n_items += 1
                self.audio_seconds += it["n_frames"] * self.hop_seconds
                if it["copy"] == 0:
                    self.n_orig_segments[i] = int((~it["dense"]).sum())
                per_item.append((i, it["copy"], self._class_id[plan.emotion[i]], gender_id(u.gender), s,
                                 len(it["offsets"])))
                windows.append(np.stack([it["offsets"], it["valid"], it["dense"]]))
                self.spk_sum[s] += it["sum"]
                self.spk_sumsq[s] += it["sumsq"]
                self.spk_weight[s] += it["weight"]
        item_ids = writer.add_block(block["frames"], rows)
        if per_item:
            table = np.array(per_item, dtype=np.int64)
            counts = table[:, 5]
            utt, copy, emo, gender, speaker = np.repeat(table[:, :5], counts, axis=0).T
            offset, valid, dense = np.concatenate(windows, axis=1)
            columns = {"item": np.repeat(item_ids, counts), "utt": utt, "copy": copy, "offset": offset,
                       "valid": valid, "dense": dense, "emotion": emo, "gender": gender, "speaker": speaker}
            for name, column in columns.items():
                self.segment_parts[name].append(column.astype(SEGMENT_DTYPES[name]))
        return len(block["entries"])

    def segments(self) -> dict[str, np.ndarray]:
        return {k: (np.concatenate(v) if v else np.zeros(0, SEGMENT_DTYPES[k])) for k, v in self.segment_parts.items()}


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


def _build_locked(opts: BuildOptions, spec: CorpusSpec, root: Path, out: Path,
                  log: Callable[[str], None]) -> BuildSummary:
    from threadpoolctl import threadpool_limits

    cfg = opts.features
    jobs = (os.cpu_count() or 1) if opts.jobs in (0, -1, None) else max(1, opts.jobs)
    backend = resolve_backend(opts.backend, bool(opts.augment), jobs)
    extract = LogMelExtractor(cfg)
    with contextlib.ExitStack() as stack:
        runner = stack.enter_context(BlockRunner(backend, jobs, opts.task_timeout if jobs > 1 else None,
                                                 process_initializer=prepare_worker_process))
        background = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="serprep-headers"))
        # Worker start-up (processes) or the FFT import (this process) overlaps reading the corpus.
        warm = (runner.submit_to_all(warm_up, bool(opts.augment)) if runner.kind == "processes"
                else [background.submit(warm_up_extractor, extract)])

        listing = read_corpus(opts.corpus, root)
        skipped_labels = _label_issues(listing, root, opts.strict)
        plan = plan_build(opts, spec, listing.utterances, root)
        log(
            f"{opts.corpus}: {len(plan.utts)} utterances, {len(plan.labelled)} in {plan.classes}/{plan.subset}; "
            f"extracting {sum(1 + t.copies for t in plan.tasks)} items (~{plan.total_seconds / 3600:.2f} h audio) "
            f"with {jobs} job(s)"
        )
        unlabelled = plan.unlabelled
        header_durations = background.submit(lambda: [audio_duration(root / plan.utts[i].path) for i in unlabelled])
        versions = background.submit(package_versions)  # importlib.metadata: ~30 ms, off the critical path

        writer = stack.enter_context(StoreWriter(out, cfg, overwrite=opts.overwrite))
        for future in warm:
            future.result()
        if backend != "processes":
            # Threads share this process: one BLAS thread each for the build, restored after.
            stack.enter_context(threadpool_limits(limits=1))
            tune_malloc()
        collected = _Collected(plan, cfg.n_mels, cfg.hop_length / cfg.sample_rate, opts.strict)
        collected.warnings += _code_warnings(plan.utts, spec)
        collected.warnings += [(i.utt_id, i.where, i.message) for i in listing.issues if not i.skipped]
        job = _BlockJob(str(root), extract, opts.segments, opts.augment, opts.seed, backend == "processes")
        _write_blocks(runner.map(job, plan.blocks), collected, writer, len(plan.tasks), opts.progress)
        for i, d in zip(unlabelled, header_durations.result()):
            collected.durations[i] = d
        segs = collected.segments()
        writer.write_segments(segs)
        ok = np.array([s == "ok" for s in collected.status])
        _write_folds(writer, plan, segs, ok, collected, np.random.SeedSequence(opts.seed))
        _write_tables(writer, plan, collected, skipped_labels)
        _write_attrs(writer, opts, spec, plan, collected, versions.result())
        writer.finalize()

    return BuildSummary(
        out=out,
        n_utterances=len(plan.utts),
        n_labelled=len(plan.labelled),
        n_extracted=int(ok.sum()),
        n_items=collected.n_items,
        n_segments=len(segs["item"]),
        audio_seconds=collected.audio_seconds,
        wall_seconds=0.0,
        failures=[(f[1], f[2]) for f in collected.failures],
        fold_notes=plan.fold_notes,
        class_counts={c: sum(1 for i in plan.labelled if plan.emotion[i] == c and collected.status[i] == "ok")
                      for c in plan.class_names},
        skipped_labels=[(where, message) for _, where, message in skipped_labels],
        warnings=[(where, message) for _, where, message in collected.warnings],
    )


class _BlockJob:
    """``extract_block`` with the build's fixed arguments (picklable, for worker processes)."""

    def __init__(self, root: str, extract: LogMelExtractor, seg: SegmentConfig, augment: str | None, seed: int,
                 worker_process: bool) -> None:
        self.args = (root, extract, seg, augment, seed, worker_process)

    def __call__(self, block: list[Task]) -> dict[str, Any]:
        return extract_block(block, *self.args)


def _label_issues(listing: CorpusListing, root: Path, strict: bool) -> list[tuple[str, str, str]]:
    """Label lines the reader skipped, as failure rows; the first one is fatal with ``--strict``."""
    skipped = [(i.utt_id, i.where, i.message) for i in listing.issues if i.skipped]
    if strict and skipped:
        _, where, message = skipped[0]
        raise SerprepError(f"{root / where}: {message} (--strict: aborting; nothing written)")
    return skipped


def _code_warnings(utts: list[Utterance], spec: CorpusSpec) -> list[tuple[str, str, str]]:
    known = set(spec.codes)
    return [(u.utt_id, u.path, f"unknown label code {u.emotion_raw!r} (not in {spec.path.name}); "
                               "kept outside the classes")
            for u in utts if u.emotion_raw not in known]


def _write_blocks(blocks: Iterator[dict[str, Any]], collected: _Collected, writer: StoreWriter, n_tasks: int,
                  progress: bool) -> None:
    from tqdm import tqdm

    with tqdm(total=n_tasks, unit="utt", desc="extracting", disable=not progress, mininterval=0.5,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for block in blocks:
            bar.update(collected.add_block(block, writer))


def _write_folds(writer: StoreWriter, plan: BuildPlan, segs: dict[str, np.ndarray], ok: np.ndarray,
                 collected: _Collected, seeds: np.random.SeedSequence) -> None:
    """Every planned fold whose test speakers kept an extracted utterance, numbered 1..K.

    Folds are planned from the labelled speakers before extraction; a fold whose every test
    utterance then failed to decode would test nothing, so it is dropped with a fold note.
    """
    speaker_id = {s: i for i, s in enumerate(plan.speakers)}
    utt_speaker = np.array([speaker_id[u.speaker] for u in plan.utts], dtype=np.int64)
    for scheme, folds in plan.fold_sets.items():
        number = 0
        for fold in folds:
            tested = np.isin(utt_speaker, [speaker_id[s] for s in fold.test]) & ok
            if not tested.any():
                plan.fold_notes.append(f"{scheme} fold {fold.number}: no test utterance was extracted "
                                       f"(every one of {'+'.join(fold.test)} failed); dropped")
                continue
            number += 1
            fold = dataclasses.replace(fold, number=number)
            writer.write_fold(_fold(scheme, fold, plan, segs, utt_speaker, ok, collected,
                                    np.random.default_rng(seeds.spawn(1)[0])))


def _fold(scheme: str, fold: ResolvedFold, plan: BuildPlan, segs: dict[str, np.ndarray], utt_speaker: np.ndarray,
          ok: np.ndarray, collected: _Collected, rng: np.random.Generator) -> Fold:
    """One fold's utterance and segment indices, balanced index, statistics and counts."""
    class_names = plan.class_names
    speaker_id = {s: i for i, s in enumerate(plan.speakers)}
    part_ids = {name: np.array([speaker_id[s] for s in getattr(fold, name)], dtype=np.int64)
                for name in ("train", "validation", "test")}
    utt_part = {name: np.flatnonzero(ok & np.isin(utt_speaker, ids)) for name, ids in part_ids.items()}
    seg_in = {name: np.isin(segs["speaker"], ids) for name, ids in part_ids.items()}
    original = (segs["copy"] == 0) & (segs["dense"] == 0)
    train_segments = np.flatnonzero(seg_in["train"])
    validation_segments = np.flatnonzero(seg_in["validation"] & original)
    test_segments = np.flatnonzero(seg_in["test"] & original)

    # Balanced index: training originals (dense windows included) plus only as many of the
    # training utterances' augmented copies as it takes to reach the majority count.
    train_copy = segs["copy"][train_segments] > 0
    seg_class = segs["emotion"][train_segments]
    originals = {k: train_segments[~train_copy & (seg_class == k)] for k in range(len(class_names))}
    copies = {k: train_segments[train_copy & (seg_class == k)] for k in range(len(class_names))}
    before = train_segments[original[train_segments]]  # plain windows of the originals
    target = int(np.bincount(segs["emotion"][before], minlength=len(class_names)).max()) if len(before) else 0
    index = balanced_index(originals, copies, rng, target=target)

    w = collected.spk_weight[part_ids["train"]].sum()
    if w <= 0:
        raise SerprepError(f"fold {scheme}/{fold.number}: no training frames")
    mean = collected.spk_sum[part_ids["train"]].sum(axis=0) / w
    var = collected.spk_sumsq[part_ids["train"]].sum(axis=0) / w - mean**2
    std = np.sqrt(np.maximum(var, 1e-12))

    def per_class(ids: np.ndarray) -> dict[str, int]:
        counts = np.bincount(segs["emotion"][ids], minlength=len(class_names))
        return {c: int(n) for c, n in zip(class_names, counts)}

    def by_gender(ids: np.ndarray) -> dict[str, dict[str, int]]:
        return {g: per_class(ids[segs["gender"][ids] == gi]) for gi, g in enumerate(GENDERS)}

    counts = {
        "unit": "segments",
        "before": per_class(before),
        "available": per_class(train_segments),
        "after": per_class(index),
        "before_by_gender": by_gender(before),
        "after_by_gender": by_gender(index),
        "validation": per_class(validation_segments),
        "test": per_class(test_segments),
        "copy_rate": {c: round(float(plan.copy_rate.get(c, 0.0)), 3) for c in class_names},
    }
    return Fold(
        scheme=scheme, fold=fold.number,
        train_utts=utt_part["train"], validation_utts=utt_part["validation"], test_utts=utt_part["test"],
        train_segments=train_segments, validation_segments=validation_segments, test_segments=test_segments,
        balanced_index=index, norm_mean=mean.astype(np.float32), norm_std=std.astype(np.float32),
        train_speakers=list(fold.train), validation_speakers=list(fold.validation), test_speakers=list(fold.test),
        counts=counts, label=fold.label,
    )


def _write_tables(writer: StoreWriter, plan: BuildPlan, collected: _Collected,
                  skipped_labels: list[tuple[str, str, str]]) -> None:
    """Manifest (one column at a time: the whole table at once was the largest allocation of
    the build's last phase), vocabularies, failures and warnings."""
    utts = plan.utts
    columns: dict[str, Callable[[], list[Any]]] = {
        "utt_id": lambda: [u.utt_id for u in utts],
        "corpus": lambda: [u.corpus for u in utts],
        "session": lambda: [u.session for u in utts],
        "speaker": lambda: [u.speaker for u in utts],
        "gender": lambda: [u.gender for u in utts],
        "emotion_raw": lambda: [u.emotion_raw for u in utts],
        "emotion": lambda: plan.emotion,
        "duration": lambda: [float("nan") if d is None else float(d) for d in collected.durations],
        "path": lambda: [u.path for u in utts],
        "status": lambda: collected.status,
        "n_segments": lambda: collected.n_orig_segments.tolist(),
        "audio_sha256": lambda: collected.sha,
        "source_rate": lambda: collected.source_rate.tolist(),
    }
    for key in sorted({k for u in utts for k in u.extras}):
        columns[key] = lambda key=key: _extra_column([u.extras.get(key) for u in utts])
    for name, values in columns.items():
        writer.write_table("manifest", {name: values()})
    writer.write_table("vocab", {"emotion": plan.class_names, "gender": list(GENDERS), "speaker": plan.speakers})
    writer.write_rows("failures", FAILURE_COLUMNS, skipped_labels + collected.failures)
    writer.write_rows("warnings", WARNING_COLUMNS, collected.warnings)


def _write_attrs(writer: StoreWriter, opts: BuildOptions, spec: CorpusSpec, plan: BuildPlan,
                 collected: _Collected, versions: dict[str, str]) -> None:
    fingerprint = hashlib.sha256()
    for u, digest in sorted(zip(plan.utts, collected.sha), key=lambda t: t[0].utt_id):
        fingerprint.update(f"{u.utt_id}\t{u.emotion_raw}\t{u.path}\t{digest}\n".encode())
    build_info = {
        "classes": plan.classes,
        "subset": plan.subset,
        "label_manifest_version": spec.version,
        "augment": _describe_augment(opts.augment),
        "copy_rate": plan.copy_rate,
        "balance": opts.balance,
        "hops": plan.hops,
        "max_copies": opts.max_copies,
        "seed": opts.seed,
        "fold_notes": plan.fold_notes,
        # name, version and SHA-256 of the protocol file identify it; None = built without one.
        "protocol": None if opts.protocol is None else {
            **opts.protocol.record(), "title": opts.protocol.title, "built_in": opts.protocol.built_in},
    }
    writer.set_attrs(
        corpus=opts.corpus,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        versions=json.dumps(versions, sort_keys=True),
        segment_config=json.dumps(opts.segments.to_dict(), sort_keys=True),
        build=json.dumps(build_info, sort_keys=True),
        label_manifest=json.dumps({"version": spec.version, "file": spec.path.name, "classes": spec.classes,
                                   "subsets": spec.subsets, "folds": spec.folds}, sort_keys=True),
        corpus_fingerprint=fingerprint.hexdigest(),
    )


def _extra_column(values: list[Any]) -> list[Any]:
    """A corpus extra as a column: numbers (None -> NaN) or strings (None -> "")."""
    if all(isinstance(v, (int, float)) or v is None for v in values):
        return [float("nan") if v is None else float(v) for v in values]
    return ["" if v is None else str(v) for v in values]


def _describe_augment(augment: str | None) -> Any:
    if not augment:
        return None
    from .augment import load_preset

    return {"preset": Path(augment).name if os.sep in augment or augment.endswith((".toml", ".yaml", ".yml")) else augment,
            "spec": load_preset(augment)}
