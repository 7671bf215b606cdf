"""``serprep build``: corpus directory -> HDF5 feature store.

Pipeline: read the corpus layout -> apply the versioned class map and subset -> plan folds,
segment hops and augmentation copies -> decode + augment + extract features, window and hash
in parallel workers (joblib: threads, or processes when augmenting), in blocks of ~60 s of
audio -> one thread (this one) appends each block's frames to the store in order and
accumulates per-speaker normalisation sums -> per-fold indices and statistics -> checksums ->
atomic rename.

Memory stays bounded: at most ``2 * jobs`` blocks (a few MiB each) are in flight and each is
written to HDF5 as soon as it is its turn; only the per-utterance tables grow with the corpus.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import __version__
from .audio import audio_duration
from .balance import balanced_index, class_hops, copy_rates, utterance_copies
from .config import FeatureConfig, SegmentConfig
from .corpora import Utterance, read_corpus
from .errors import SerprepError
from .extract import Task, extract_block, tune_malloc, warm_up, warm_up_extractor
from .features import LogMelExtractor
from .folds import ResolvedFold, resolve_folds
from .labels import CorpusSpec, load_spec
from .segments import segment_offsets
from .store import StoreWriter

GENDERS = ("F", "M")


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
    failures: list[tuple[str, str]]
    fold_notes: list[str]
    class_counts: dict[str, int]


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
# Build
# --------------------------------------------------------------------------------------------
def build_store(opts: BuildOptions, log=print) -> BuildSummary:
    """Build a store; raises :class:`SerprepError` (one-line message) on fatal problems."""
    from joblib import Parallel, delayed
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    t0 = time.perf_counter()
    cfg, seg = opts.features, opts.segments
    root = Path(opts.root)
    out = Path(opts.out)
    if out.exists() and not opts.overwrite:
        raise SerprepError(f"{out}: already exists (use --overwrite to replace it)")
    jobs = (os.cpu_count() or 1) if opts.jobs in (0, -1, None) else max(1, opts.jobs)
    backend = resolve_backend(opts.backend, bool(opts.augment), jobs)
    processes = backend == "processes"
    extract = LogMelExtractor(cfg)
    if not processes:
        threading.Thread(target=warm_up_extractor, args=(extract,), daemon=True).start()
    parallel = Parallel(n_jobs=jobs, backend="loky" if processes else "threading", return_as="generator",
                        pre_dispatch="2*n_jobs", timeout=opts.task_timeout if jobs > 1 else None)
    spec = load_spec(opts.corpus)
    classes = opts.classes or spec.default_classes
    subset = opts.subset or spec.default_subset
    utts = read_corpus(opts.corpus, root)
    emotion = assign_classes(utts, spec, classes, subset)
    class_names = spec.class_names(classes)
    labelled = [i for i, e in enumerate(emotion) if e]
    if not labelled:
        raise SerprepError(f"{root}: no utterance falls in class set {classes!r} / subset {subset!r}")

    # Start worker processes now, so their start-up overlaps the planning below; the
    # extraction call reuses them (loky keeps idle workers alive).
    warm = parallel(delayed(warm_up)(bool(opts.augment)) for _ in range(jobs)) if processes else iter(())

    # Header durations: needed up front only to plan balancing; the manifest's durations of
    # the other utterances are read in a thread while the workers extract.
    needs_plan = bool(opts.augment and opts.balance)
    durations: list[float | None] = [
        audio_duration(root / u.path) if needs_plan and emotion[i] else None for i, u in enumerate(utts)
    ]
    header_reader = ThreadPoolExecutor(max_workers=1)
    unlabelled = [i for i, e in enumerate(emotion) if not e]
    header_durations = header_reader.submit(lambda: [audio_duration(root / utts[i].path) for i in unlabelled])
    versions = header_reader.submit(package_versions)  # importlib.metadata: ~30 ms, off the critical path
    speakers = sorted({u.speaker for u in utts})
    speaker_id = {s: i for i, s in enumerate(speakers)}
    class_id = {c: i for i, c in enumerate(class_names)}
    labelled_speakers = {utts[i].speaker for i in labelled}

    # Folds (all schemes of the manifest), resolved against the speakers present.
    fold_sets: dict[str, list[ResolvedFold]] = {}
    fold_notes: list[str] = []
    for scheme in spec.folds:
        resolved, notes = resolve_folds(spec.fold_definitions(scheme), labelled_speakers)
        fold_notes += [f"{scheme} {n}" for n in notes]
        if resolved:
            fold_sets[scheme] = resolved

    # Segment hops: denser for minority classes when balancing (whole-corpus class shares:
    # the extra windows are training-only, so test utterances are never cut differently).
    class_utts = {c: sum(1 for i in labelled if emotion[i] == c) for c in class_names}
    hops = class_hops(class_utts, seg.hop, seg.min_hop) if opts.balance else {c: seg.hop for c in class_names}

    # Augmentation copies per class: the most any fold's training part needs, as a rate
    # (fractional copies per utterance); each fold's index then takes only what it needs.
    copy_rate = {c: 0.0 for c in class_names}
    if opts.augment:
        if opts.balance:
            est = {i: _estimated_segments(durations[i], cfg, seg, hops[emotion[i]]) for i in labelled}
            for folds in fold_sets.values():
                for fold in folds:
                    train = set(fold.train)
                    counts = {c: 0.0 for c in class_names}
                    for i in labelled:
                        if utts[i].speaker in train:
                            counts[emotion[i]] += est[i]
                    for c, rate in copy_rates(counts, opts.max_copies).items():
                        copy_rate[c] = max(copy_rate[c], rate)
        else:
            copy_rate = {c: float(opts.copies) for c in class_names}
    n_copies = {i: utterance_copies(copy_rate[emotion[i]], opts.seed, utts[i].utt_id) for i in labelled}

    tasks = [Task(i, utts[i].utt_id, utts[i].path, n_copies[i], hops[emotion[i]]) for i in labelled]
    sizes = [durations[i] or _duration_hint(utts[i]) for i in labelled]
    blocks = list(_blocks(tasks, sizes, opts.block_seconds))
    total_seconds = sum(d * (1 + n_copies[i]) for i, d in zip(labelled, sizes))
    log(
        f"{opts.corpus}: {len(utts)} utterances, {len(labelled)} in {classes}/{subset}; "
        f"extracting {sum(1 + t.copies for t in tasks)} items (~{total_seconds / 3600:.2f} h audio) "
        f"with {jobs} job(s)"
    )

    n_utts = len(utts)
    status = ["excluded"] * n_utts
    sha = [""] * n_utts
    source_rate = np.zeros(n_utts, dtype=np.int64)
    n_orig_segments = np.zeros(n_utts, dtype=np.int64)
    for i in labelled:
        status[i] = "pending"
    failures: list[tuple[str, str, str]] = []
    seg_cols: dict[str, list[np.ndarray]] = {k: [] for k in ("item", "utt", "copy", "offset", "valid", "dense", "emotion", "gender", "speaker")}
    n_mels = cfg.n_mels
    spk_sum = np.zeros((len(speakers), 3, n_mels), dtype=np.float64)
    spk_sumsq = np.zeros((len(speakers), 3, n_mels), dtype=np.float64)
    spk_weight = np.zeros(len(speakers), dtype=np.float64)
    audio_seconds = 0.0
    n_items = 0

    writer = StoreWriter(out, cfg, overwrite=opts.overwrite)
    results = None
    stack = contextlib.ExitStack()
    try:
        for _ in warm:
            pass
        if not processes:
            # Threads share this process: one BLAS thread each for the build, restored after.
            stack.enter_context(threadpool_limits(limits=1))
            tune_malloc()
        results = parallel(delayed(extract_block)(b, str(root), extract, seg, opts.augment, opts.seed, processes)
                           for b in blocks)
        bar = tqdm(total=len(tasks), unit="utt", desc="extracting", disable=not opts.progress,
                   mininterval=0.5, file=sys.stderr, dynamic_ncols=True)
        try:
            for block in results:
                rows: list[tuple[int, int, int, str, str]] = []  # the writer's item rows
                # Segment rows of the block: per-item labels as plain ints, expanded once per
                # block, so a few arrays per block, not per item, stay in memory until the end.
                per_item: list[tuple[int, int, int, int, int, int]] = []
                windows: list[np.ndarray] = []
                for entry in block["entries"]:
                    i = entry["utt"]
                    u = utts[i]
                    bar.update(1)
                    if entry["error"]:
                        if opts.strict:
                            raise SerprepError(f"{entry['error']} (--strict: aborting; nothing written)")
                        status[i] = "failed"
                        failures.append((u.utt_id, u.path, entry["error"]))
                        continue
                    status[i] = "ok"
                    sha[i] = entry["sha256"]
                    source_rate[i] = entry["source_rate"]
                    durations[i] = entry["duration"]
                    s = speaker_id[u.speaker]
                    for it in entry["items"]:
                        rows.append((i, it["copy"], it["n_frames"], it["chain"], it["digest"]))
                        n_items += 1
                        audio_seconds += it["n_frames"] * cfg.hop_length / cfg.sample_rate
                        if it["copy"] == 0:
                            n_orig_segments[i] = int((~it["dense"]).sum())
                        per_item.append((i, it["copy"], class_id[emotion[i]], GENDERS.index(u.gender), s,
                                         len(it["offsets"])))
                        windows.append(np.stack([it["offsets"], it["valid"], it["dense"]]))
                        spk_sum[s] += it["sum"]
                        spk_sumsq[s] += it["sumsq"]
                        spk_weight[s] += it["weight"]
                item_ids = writer.add_block(block["frames"], rows)
                if per_item:
                    table = np.array(per_item, dtype=np.int64)
                    counts = table[:, 5]
                    utt, copy, emo, gender, speaker = np.repeat(table[:, :5], counts, axis=0).T
                    offset, valid, dense = np.concatenate(windows, axis=1)
                    for name, column, dtype in (("item", np.repeat(item_ids, counts), np.int64), ("utt", utt, np.int64),
                                                ("copy", copy, np.int32), ("offset", offset, np.int64),
                                                ("valid", valid, np.int32), ("dense", dense, np.uint8),
                                                ("emotion", emo, np.int16), ("gender", gender, np.int16),
                                                ("speaker", speaker, np.int32)):
                        seg_cols[name].append(column.astype(dtype))
        finally:
            bar.close()

        for i, d in zip(unlabelled, header_durations.result()):
            durations[i] = d
        header_reader.shutdown()
        segs = {k: (np.concatenate(v) if v else np.zeros(0, np.int64)) for k, v in seg_cols.items()}
        writer.write_table("segments", segs)

        # Folds: indices, balanced sampling index, statistics.
        utt_speaker = np.array([speaker_id[u.speaker] for u in utts], dtype=np.int64)
        ok = np.array([s == "ok" for s in status])
        rng_root = np.random.SeedSequence(opts.seed)
        for scheme, folds in fold_sets.items():
            for fold in folds:
                _write_fold(writer, scheme, fold, segs, utt_speaker, ok, speaker_id, class_names,
                            copy_rate, spk_sum, spk_sumsq, spk_weight,
                            np.random.default_rng(rng_root.spawn(1)[0]))

        # Manifest, vocabularies, failures.
        # One column at a time (built, written, dropped): the whole table at once was the
        # largest allocation of the build's last phase.
        columns: dict[str, Callable[[], list[Any]]] = {
            "utt_id": lambda: [u.utt_id for u in utts],
            "corpus": lambda: [u.corpus for u in utts],
            "session": lambda: [u.session for u in utts],
            "speaker": lambda: [u.speaker for u in utts],
            "gender": lambda: [u.gender for u in utts],
            "emotion_raw": lambda: [u.emotion_raw for u in utts],
            "emotion": lambda: emotion,
            "duration": lambda: [float("nan") if d is None else float(d) for d in durations],
            "path": lambda: [u.path for u in utts],
            "status": lambda: status,
            "n_segments": lambda: n_orig_segments.tolist(),
            "audio_sha256": lambda: sha,
            "source_rate": lambda: source_rate.tolist(),
        }
        for key in sorted({k for u in utts for k in u.extras}):
            columns[key] = lambda key=key: _extra_column([u.extras.get(key) for u in utts])
        for name, values in columns.items():
            writer.write_table("manifest", {name: values()})
        writer.write_table("vocab", {"emotion": class_names, "gender": list(GENDERS), "speaker": speakers})
        writer.write_table("failures", {
            "utt_id": [f[0] for f in failures], "path": [f[1] for f in failures], "error": [f[2] for f in failures]
        } if failures else {"utt_id": np.array([], dtype=object), "path": np.array([], dtype=object), "error": np.array([], dtype=object)})
        writer.write_table("warnings", {k: np.array([], dtype=object) for k in ("utt_id", "path", "message")})

        fingerprint = hashlib.sha256()
        for u, digest in sorted(zip(utts, sha), key=lambda t: t[0].utt_id):
            fingerprint.update(f"{u.utt_id}\t{u.emotion_raw}\t{u.path}\t{digest}\n".encode())
        build_info = {
            "classes": classes,
            "subset": subset,
            "label_manifest_version": spec.version,
            "augment": _describe_augment(opts.augment),
            "copy_rate": copy_rate,
            "balance": opts.balance,
            "hops": hops,
            "max_copies": opts.max_copies,
            "seed": opts.seed,
            "fold_notes": fold_notes,
        }
        writer.set_attrs(
            corpus=opts.corpus,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            versions=json.dumps(versions.result(), sort_keys=True),
            segment_config=json.dumps(seg.to_dict(), sort_keys=True),
            build=json.dumps(build_info, sort_keys=True),
            label_manifest=json.dumps({"version": spec.version, "file": spec.path.name, "classes": spec.classes,
                                       "subsets": spec.subsets, "folds": spec.folds}, sort_keys=True),
            corpus_fingerprint=fingerprint.hexdigest(),
        )
        writer.finalize()
        stack.close()
    except BaseException as exc:
        stack.close()
        writer.abort()
        with warnings.catch_warnings():  # joblib warns that queued blocks were cancelled: intended
            warnings.simplefilter("ignore")
            for generator in (results, warm):
                if generator is not None and hasattr(generator, "close"):
                    generator.close()
        if type(exc).__name__ in ("TerminatedWorkerError",):
            raise SerprepError(f"a feature worker process died ({exc}); try --jobs 1 to see the failing file") from None
        if isinstance(exc, TimeoutError):
            raise SerprepError(f"a block of utterances took longer than --task-timeout {opts.task_timeout:.0f} s; nothing written") from None
        raise

    return BuildSummary(
        out=out,
        n_utterances=n_utts,
        n_labelled=len(labelled),
        n_extracted=int(ok.sum()),
        n_items=n_items,
        n_segments=len(segs["item"]),
        audio_seconds=audio_seconds,
        wall_seconds=time.perf_counter() - t0,
        failures=[(f[1], f[2]) for f in failures],
        fold_notes=fold_notes,
        class_counts={c: sum(1 for i in labelled if emotion[i] == c and status[i] == "ok") for c in class_names},
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


def _write_fold(writer: StoreWriter, scheme: str, fold: ResolvedFold, segs: dict[str, np.ndarray],
                utt_speaker: np.ndarray, ok: np.ndarray, speaker_id: dict[str, int], class_names: list[str],
                copy_rate: dict[str, float], spk_sum: np.ndarray, spk_sumsq: np.ndarray, spk_weight: np.ndarray,
                rng: np.random.Generator) -> None:
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

    w = spk_weight[part_ids["train"]].sum()
    if w <= 0:
        raise SerprepError(f"fold {scheme}/{fold.number}: no training frames")
    mean = spk_sum[part_ids["train"]].sum(axis=0) / w
    var = spk_sumsq[part_ids["train"]].sum(axis=0) / w - mean**2
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
        "copy_rate": {c: round(float(copy_rate.get(c, 0.0)), 3) for c in class_names},
    }
    group = f"folds/{scheme}/{fold.number}"
    arrays = {
        "train_utts": utt_part["train"], "validation_utts": utt_part["validation"], "test_utts": utt_part["test"],
        "train_segments": train_segments, "validation_segments": validation_segments,
        "test_segments": test_segments, "balanced_index": index,
        "norm_mean": mean.astype(np.float32), "norm_std": std.astype(np.float32),
    }
    for name, arr in arrays.items():
        writer.write_array(f"{group}/{name}", arr)
    writer.set_group_attrs(
        group,
        train_speakers=json.dumps(list(fold.train)),
        validation_speakers=json.dumps(list(fold.validation)),
        test_speakers=json.dumps(list(fold.test)),
        counts=json.dumps(counts, sort_keys=True),
    )
