"""From the plan and the stream of extracted blocks to the store's content.

:class:`BlockCollector` takes the blocks in plan order: it appends each block's frames to the
:class:`~serprep.store.StoreWriter` at once and keeps only what the tables need (per-utterance
results, segment rows, per-speaker normalisation sums). :func:`write_tables` then computes the
folds (indices, balanced index, statistics) and hands the writer typed values: the segment
table, each :class:`~serprep.store.Fold`, the manifest, vocabularies, failures, warnings and
the build record. Which columns a table has is :mod:`serprep.store`'s business alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Sequence

import numpy as np

from .balance import balanced_index
from .config import FeatureConfig
from .errors import SerprepError
from .folds import ResolvedFold
from .plan import BuildPlan
from .corpora import corpus_info
from .store import (DIMENSIONS, GENDERS, BuildRecord, FailureRow, Fold, Functionals, ItemRow, Manifest,
                    SegmentTable, StoreWriter, WarningRow, gender_id)


class BlockCollector:
    """Everything the writer gathers from the extracted blocks, besides the frames."""

    def __init__(self, plan: BuildPlan, cfg: FeatureConfig, strict: bool) -> None:
        n_utts, n_speakers = len(plan.utts), len(plan.speakers)
        self.plan = plan
        self.strict = strict
        self.hop_seconds = cfg.hop_length / cfg.sample_rate
        self.status = ["excluded"] * n_utts
        for i in plan.labelled:
            self.status[i] = "pending"
        self.sha = [""] * n_utts
        self.source_rate = np.zeros(n_utts, dtype=np.int64)
        self.n_orig_segments = np.zeros(n_utts, dtype=np.int64)
        self.durations: list[float | None] = list(plan.durations)
        self.failures: list[FailureRow] = []
        self.warnings: list[WarningRow] = []
        # Segment rows per block: a few arrays per block, not per item, stay in memory.
        self.segment_parts: list[SegmentTable] = []
        self.spk_sum = np.zeros((n_speakers, 3, cfg.n_mels), dtype=np.float64)
        self.spk_sumsq = np.zeros((n_speakers, 3, cfg.n_mels), dtype=np.float64)
        self.spk_weight = np.zeros(n_speakers, dtype=np.float64)
        self.audio_seconds = 0.0
        self.n_items = 0
        #: Utterance -> its functionals (``--functionals``), for the extracted originals.
        self.functionals: dict[int, np.ndarray] = {}
        self._speaker_id = {s: i for i, s in enumerate(plan.speakers)}
        self._class_id = {c: i for i, c in enumerate(plan.class_names)}

    def add(self, block: dict[str, Any], writer: StoreWriter) -> int:
        """Write one extracted block's frames and collect its tables; returns its utterances."""
        rows: list[ItemRow] = []
        per_item: list[tuple[int, int, int, int, int, int]] = []  # utt, copy, class, gender, speaker, windows
        windows: list[np.ndarray] = []
        for entry in block["entries"]:
            if not self._accept(entry):
                continue
            i = entry["utt"]
            u = self.plan.utts[i]
            s = self._speaker_id[u.speaker]
            for it in entry["items"]:
                rows.append(ItemRow(i, it["copy"], it["n_frames"], it["chain"], it["digest"]))
                self.n_items += 1
                self.audio_seconds += it["n_frames"] * self.hop_seconds
                if it["copy"] == 0:
                    self.n_orig_segments[i] = int((~it["dense"]).sum())
                per_item.append((i, it["copy"], self._class_id[self.plan.emotion[i]], gender_id(u.gender), s,
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
            self.segment_parts.append(SegmentTable(
                item=np.repeat(item_ids, counts), utt=utt, copy=copy, offset=offset, valid=valid, dense=dense,
                emotion=emo, gender=gender, speaker=speaker))
        return len(block["entries"])

    def _accept(self, entry: dict[str, Any]) -> bool:
        """Record an entry's warnings and outcome; True if it holds items to write."""
        i = entry["utt"]
        u = self.plan.utts[i]
        for message in entry["warnings"]:
            self.warnings.append(WarningRow(u.utt_id, u.path, message))
        if entry["error"]:
            if self.strict:
                raise SerprepError(f"{entry['error']} (--strict: aborting; nothing written)")
            self.status[i] = "failed"
            self.failures.append(FailureRow(u.utt_id, u.path, entry["error"]))
            return False
        self.status[i] = "ok"
        if "functionals" in entry:
            self.functionals[i] = entry["functionals"]
        self.sha[i] = entry["sha256"]
        self.source_rate[i] = entry["source_rate"]
        self.durations[i] = entry["duration"]
        return True

    def segments(self) -> SegmentTable:
        """The segment rows of every block so far, as one table."""
        return SegmentTable.concat(self.segment_parts)

    def ok(self) -> np.ndarray:
        """Per utterance: extracted."""
        return np.array([s == "ok" for s in self.status])


def write_tables(writer: StoreWriter, plan: BuildPlan, collected: BlockCollector,
                 header_durations: dict[int, float | None], created: str) -> tuple[SegmentTable, list[str]]:
    """Everything but the frames: segments, folds, manifest, vocabularies, failures, warnings
    and the build record. ``header_durations``: durations of the utterances not extracted
    (read from their headers). Returns the segment table and the fold notes."""
    for i, d in header_durations.items():
        collected.durations[i] = d
    scales = dimension_scales(plan.options.corpus)
    segs = with_ratings(collected.segments(), plan.utts, scales)
    writer.write_segments(segs, scales)
    fold_notes = list(plan.fold_notes) + write_folds(writer, plan, segs, collected)
    writer.write_manifest(Manifest(
        utterances=plan.utts, emotion=plan.emotion, duration=collected.durations, status=collected.status,
        n_segments=collected.n_orig_segments, audio_sha256=collected.sha, source_rate=collected.source_rate))
    writer.write_vocab(plan.class_names, plan.speakers)
    if plan.options.functionals:
        write_functionals(writer, plan.options.functionals, collected)
    writer.write_failures(list(plan.skipped) + collected.failures)
    writer.write_warnings(list(plan.warnings) + collected.warnings)
    writer.write_record(build_record(plan, collected.sha, fold_notes, created))
    return segs, fold_notes


def write_functionals(writer: StoreWriter, name: str, collected: BlockCollector) -> None:
    """``/functionals/<name>``: a row per extracted utterance, in manifest order."""
    from .functionals import FUNCTIONAL_SETS, FunctionalsExtractor

    extractor = FunctionalsExtractor(name)
    names = extractor.names()
    utt = np.flatnonzero(collected.ok())
    missing = [int(i) for i in utt if int(i) not in collected.functionals]
    if missing:  # every extracted utterance's block carried them: a journal of another build?
        raise SerprepError(f"utterance {collected.plan.utts[missing[0]].utt_id}: extracted without its {name} "
                           "functionals")
    values = np.stack([collected.functionals[int(i)] for i in utt]) if len(utt) else np.zeros((0, len(names)), np.float32)
    feature_set, level = FUNCTIONAL_SETS[name]
    writer.write_functionals(name, Functionals(utt, names, values), feature_set, level)


def dimension_scales(corpus: str) -> dict[str, tuple[float, float]]:
    """The store's rating columns: each of :data:`serprep.store.DIMENSIONS` the corpus rates,
    with the corpus' own scale (other ratings, such as MSP-IMPROV's naturalness, stay manifest
    extras)."""
    info = corpus_info(corpus)
    scale = info.rating_scale()
    return {name: scale for name in DIMENSIONS if scale is not None and name in info.dimensions}


def with_ratings(segs: SegmentTable, utts: Sequence[Any], scales: dict[str, tuple[float, float]]) -> SegmentTable:
    """``segs`` with a rating column per dimension of ``scales``: each segment gets its
    utterance's rating (``segs.utt``, so an augmented copy carries its source's), NaN where the
    corpus has none for it (never imputed)."""
    columns = {}
    for name in scales:
        per_utt = np.array([np.nan if u.extras.get(name) is None else float(u.extras[name]) for u in utts],
                           dtype=np.float64)
        columns[name] = per_utt[segs.utt]
    return dataclasses.replace(segs, dimensions=columns)


def write_folds(writer: StoreWriter, plan: BuildPlan, segs: SegmentTable, collected: BlockCollector) -> list[str]:
    """Every planned fold whose test speakers kept an extracted utterance, numbered 1..K;
    returns a note per fold dropped.

    Folds are planned from the labelled speakers before extraction; a fold whose every test
    utterance then failed to decode would test nothing, so it is dropped with a fold note.
    """
    seeds = np.random.SeedSequence(plan.options.seed)
    ok = collected.ok()
    speaker_id = {s: i for i, s in enumerate(plan.speakers)}
    utt_speaker = np.array([speaker_id[u.speaker] for u in plan.utts], dtype=np.int64)
    notes = []
    for scheme, folds in plan.fold_sets.items():
        number = 0
        for fold in folds:
            tested = np.isin(utt_speaker, [speaker_id[s] for s in fold.test]) & ok
            if not tested.any():
                notes.append(f"{scheme} fold {fold.number}: no test utterance was extracted "
                             f"(every one of {'+'.join(fold.test)} failed); dropped")
                continue
            number += 1
            parts = {name: np.array([speaker_id[s] for s in getattr(fold, name)], dtype=np.int64)
                     for name in ("train", "validation", "test")}
            writer.write_fold(fold_table(scheme, dataclasses.replace(fold, number=number), plan, segs, parts,
                                         utt_speaker, ok, collected, np.random.default_rng(seeds.spawn(1)[0])))
    return notes


def fold_table(scheme: str, fold: ResolvedFold, plan: BuildPlan, segs: SegmentTable, parts: dict[str, np.ndarray],
               utt_speaker: np.ndarray, ok: np.ndarray, collected: BlockCollector, rng: np.random.Generator) -> Fold:
    """One fold's utterance and segment indices, balanced index, statistics and counts
    (``parts``: speaker ids of its train, validation and test parts)."""
    n_classes = len(plan.class_names)
    utt_part = {name: np.flatnonzero(ok & np.isin(utt_speaker, ids)) for name, ids in parts.items()}
    seg_in = {name: np.isin(segs.speaker, ids) for name, ids in parts.items()}
    original = (segs.copy == 0) & (segs.dense == 0)
    train_segments = np.flatnonzero(seg_in["train"])
    validation_segments = np.flatnonzero(seg_in["validation"] & original)
    test_segments = np.flatnonzero(seg_in["test"] & original)

    # Balanced index: training originals (dense windows included) plus only as many of the
    # training utterances' augmented copies as it takes to reach the majority count.
    train_copy = segs.copy[train_segments] > 0
    seg_class = segs.emotion[train_segments]
    originals = {k: train_segments[~train_copy & (seg_class == k)] for k in range(n_classes)}
    copies = {k: train_segments[train_copy & (seg_class == k)] for k in range(n_classes)}
    before = train_segments[original[train_segments]]  # plain windows of the originals
    target = int(np.bincount(segs.emotion[before], minlength=n_classes).max()) if len(before) else 0
    index = balanced_index(originals, copies, rng, target=target)
    mean, std = _statistics(collected, parts["train"], f"fold {scheme}/{fold.number}")
    return Fold(
        scheme=scheme, fold=fold.number,
        train_utts=utt_part["train"], validation_utts=utt_part["validation"], test_utts=utt_part["test"],
        train_segments=train_segments, validation_segments=validation_segments, test_segments=test_segments,
        balanced_index=index, norm_mean=mean, norm_std=std,
        train_speakers=list(fold.train), validation_speakers=list(fold.validation), test_speakers=list(fold.test),
        counts=_fold_counts(plan, segs, before, train_segments, index, validation_segments, test_segments),
        label=fold.label,
    )


def _statistics(collected: BlockCollector, train: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel and mel bin over the training speakers' segments' frames."""
    w = collected.spk_weight[train].sum()
    if w <= 0:
        raise SerprepError(f"{where}: no training frames")
    mean = collected.spk_sum[train].sum(axis=0) / w
    var = collected.spk_sumsq[train].sum(axis=0) / w - mean**2
    std = np.sqrt(np.maximum(var, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)


def _fold_counts(plan: BuildPlan, segs: SegmentTable, before: np.ndarray, available: np.ndarray, after: np.ndarray,
                 validation: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """Segments per class before and after balancing (also by gender), and held out."""
    class_names = plan.class_names

    def per_class(ids: np.ndarray) -> dict[str, int]:
        counts = np.bincount(segs.emotion[ids], minlength=len(class_names))
        return {c: int(n) for c, n in zip(class_names, counts)}

    def by_gender(ids: np.ndarray) -> dict[str, dict[str, int]]:
        return {g: per_class(ids[segs.gender[ids] == gi]) for gi, g in enumerate(GENDERS)}

    return {
        "unit": "segments",
        "before": per_class(before),
        "available": per_class(available),
        "after": per_class(after),
        "before_by_gender": by_gender(before),
        "after_by_gender": by_gender(after),
        "validation": per_class(validation),
        "test": per_class(test),
        "copy_rate": {c: round(float(plan.copy_rate.get(c, 0.0)), 3) for c in class_names},
    }


def build_record(plan: BuildPlan, audio_sha256: Sequence[str], fold_notes: list[str], created: str) -> BuildRecord:
    """The root attributes describing the build (options, versions, manifest, fingerprint)."""
    options = plan.options
    return BuildRecord(
        corpus=options.corpus,
        created=created,
        versions=dict(plan.versions),
        segment_config=options.segments,
        build={
            "classes": plan.classes,
            "subset": plan.subset,
            "label_manifest_version": plan.label_manifest["version"],
            "augment": options.augment_record,
            "copy_rate": plan.copy_rate,
            "balance": options.balance,
            "hops": plan.hops,
            "max_copies": options.max_copies,
            "seed": options.seed,
            "fold_notes": fold_notes,
            # name, version and SHA-256 of the protocol file identify it; None = built without one.
            "protocol": options.protocol,
            # Only where asked for, so stores without functionals keep their bytes and checksums.
            **({"functionals": options.functionals} if options.functionals else {}),
        },
        label_manifest=plan.label_manifest,
        corpus_fingerprint=corpus_fingerprint(plan, audio_sha256),
    )


def corpus_fingerprint(plan: BuildPlan, audio_sha256: Sequence[str]) -> str:
    """SHA-256 over every utterance id, raw label, path and audio hash (sorted by id)."""
    h = hashlib.sha256()
    for u, digest in sorted(zip(plan.utts, audio_sha256), key=lambda t: t[0].utt_id):
        h.update(f"{u.utt_id}\t{u.emotion_raw}\t{u.path}\t{digest}\n".encode())
    return h.hexdigest()
