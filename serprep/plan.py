"""The plan of a build: what is extracted, in which blocks, and everything the store will say
that does not depend on the audio bytes.

A :class:`BuildPlan` is a pure value. :func:`plan_build` computes it from the content options
(:class:`PlanOptions`), the corpus listing, the label manifest, the header durations that
balancing needs (:func:`durations_needed`) and the package versions; it reads no file. The
plan is JSON-serialisable (:meth:`BuildPlan.to_dict`) and named by its :attr:`~BuildPlan.fingerprint`,
a SHA-256 over its sections' digests (:data:`SECTIONS`). Two builds with the same
fingerprint extract the same blocks and write the same store, so a journal of extracted
blocks (:mod:`serprep.journal`) is resumed only by a build with the same fingerprint, and
:func:`plan_difference` says in words what differs otherwise.

Options that do not change a byte of the store (``--jobs``, ``--backend``, ``--strict``,
``--overwrite``, ``--quiet``, ``--task-timeout``, the corpus root's location) are not in it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .balance import class_hops, copy_rates, utterance_copies
from .config import FeatureConfig, SegmentConfig
from .corpora import CorpusListing, Utterance
from .errors import SerprepError
from .extract import Task
from .folds import ResolvedFold, resolve_folds
from .labels import CorpusSpec
from .segments import segment_offsets
from .store import FailureRow, WarningRow

#: Version of the plan's JSON form; part of the fingerprint.
PLAN_FORMAT = 1
#: The plan's sections, in the order :func:`plan_difference` reports them.
SECTIONS = ("options", "label_manifest", "versions", "listing", "durations", "derived")


class EmptyPlan(SerprepError):
    """No utterance falls in the chosen class set and subset: nothing to build."""


@dataclass(frozen=True)
class PlanOptions:
    """The build options that shape a store's content (``BuildOptions`` minus how it is run)."""

    corpus: str
    classes: str  # resolved: the manifest's default when not given
    subset: str
    features: FeatureConfig
    segments: SegmentConfig
    augment: str | None  # preset name or file as given (the workers load it); None: no augmentation
    augment_record: Any  # what the store records for it: {"preset", "spec"} (None without augmentation)
    copies: int
    balance: bool
    max_copies: int
    seed: int
    block_seconds: float
    protocol: dict[str, Any] | None  # name, version, sha256, title, built_in (None: no protocol)
    #: ``--functionals`` set (serprep.functionals); None: none, and absent from the JSON form,
    #: so the plans (and journals) of builds without it are those of earlier serpreps.
    functionals: str | None = None

    @property
    def needs_durations(self) -> bool:
        """Balanced augmentation plans copy rates from header durations, read before extraction."""
        return bool(self.augment and self.balance)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the augmentation as recorded (name and transforms), not the path given."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "augment_record"}
        if self.functionals is None:
            del out["functionals"]
        out.update(features=self.features.to_dict(), segments=self.segments.to_dict(), augment=self.augment_record)
        return out


@dataclass(frozen=True)
class BuildPlan:
    """Everything decided before extraction; see the module docstring. Treat it as immutable."""

    options: PlanOptions
    label_manifest: dict[str, Any]  # version, file, classes, subsets, folds (as the store records it)
    versions: dict[str, str]
    utts: tuple[Utterance, ...]
    skipped: tuple[FailureRow, ...]  # label lines the reader skipped
    warnings: tuple[WarningRow, ...]  # the reader's warnings and unknown label codes
    durations: tuple[float | None, ...]  # header durations read for planning (None: not read)
    classes: str
    subset: str
    emotion: tuple[str, ...]  # class of each utterance ("" = not selected)
    class_names: tuple[str, ...]
    labelled: tuple[int, ...]
    speakers: tuple[str, ...]
    fold_sets: dict[str, tuple[ResolvedFold, ...]]
    fold_notes: tuple[str, ...]
    hops: dict[str, int]
    copy_rate: dict[str, float]
    tasks: tuple[Task, ...]
    blocks: tuple[tuple[int, ...], ...]  # positions in ``tasks``, ~block_seconds of audio each
    total_seconds: float

    @property
    def unlabelled(self) -> list[int]:
        """Utterances outside the classes/subset (their durations are read from headers)."""
        return [i for i, e in enumerate(self.emotion) if not e]

    def block_tasks(self, k: int) -> list[Task]:
        """The tasks of block ``k``, in extraction order."""
        return [self.tasks[t] for t in self.blocks[k]]

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-serialisable values, one key per section (:data:`SECTIONS`)."""
        return {
            "format": PLAN_FORMAT,
            "options": self.options.to_dict(),
            "label_manifest": self.label_manifest,
            "versions": dict(self.versions),
            "listing": {"utterances": [_utterance_dict(u) for u in self.utts],
                        "skipped": [list(r) for r in self.skipped], "warnings": [list(r) for r in self.warnings]},
            "durations": list(self.durations),
            "derived": {
                "classes": self.classes, "subset": self.subset, "emotion": list(self.emotion),
                "class_names": list(self.class_names), "labelled": list(self.labelled),
                "speakers": list(self.speakers), "fold_notes": list(self.fold_notes), "hops": self.hops,
                "copy_rate": self.copy_rate,
                "fold_sets": {scheme: [dataclasses.asdict(f) for f in folds] for scheme, folds in self.fold_sets.items()},
                "tasks": [[t.utt, t.utt_id, t.path, t.copies, t.class_hop] for t in self.tasks],
                "blocks": [list(b) for b in self.blocks], "total_seconds": self.total_seconds,
            },
        }

    @cached_property
    def section_digests(self) -> dict[str, str]:
        """SHA-256 of each section (:data:`SECTIONS`): over its canonical JSON for the small
        ones, over the ``repr`` of its values' tuples, streamed, for the ones that grow with the
        corpus (a 100 000-utterance listing is hashed without a copy of it as JSON)."""
        return {
            "options": _json_digest(self.options.to_dict()),
            "label_manifest": _json_digest(self.label_manifest),
            "versions": _json_digest(self.versions),
            "listing": _rows_digest(self._listing_rows()),
            "durations": _rows_digest([repr(self.durations)]),
            "derived": _rows_digest(self._derived_rows()),
        }

    def _listing_rows(self) -> Iterator[str]:
        """The listing section as text rows (one per utterance), for its digest."""
        for u in self.utts:
            yield repr((u.utt_id, u.corpus, u.session, u.speaker, u.gender, u.emotion_raw, u.path, u.duration,
                        u.extras))  # a reader fills extras in a fixed order
        yield repr(self.skipped)
        yield repr(self.warnings)

    def _derived_rows(self) -> Iterator[str]:
        """The derived section as text rows (one per task), for its digest."""
        yield repr((self.classes, self.subset, self.class_names, self.speakers, self.fold_notes,
                    list(self.hops.items()), list(self.copy_rate.items()), self.total_seconds))
        yield repr(self.emotion)
        yield repr(self.labelled)
        yield repr([(scheme, [dataclasses.astuple(f) for f in folds]) for scheme, folds in self.fold_sets.items()])
        for t in self.tasks:
            yield repr((t.utt, t.utt_id, t.path, t.copies, t.class_hop))
        yield repr(self.blocks)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 naming the plan: equal for equal plans, different if any section differs."""
        return _json_digest({"format": PLAN_FORMAT, "sections": self.section_digests})

    def summary(self) -> dict[str, Any]:
        """What a journal records about the plan to explain a mismatch later (small: the
        options and versions in full, digests of the rest)."""
        return {"fingerprint": self.fingerprint, "sections": self.section_digests,
                "options": self.options.to_dict(), "versions": dict(self.versions),
                "label_manifest_version": self.label_manifest.get("version"),
                "n_utterances": len(self.utts), "n_blocks": len(self.blocks)}


def _utterance_dict(u: Utterance) -> dict[str, Any]:
    """An utterance of the listing as JSON values."""
    return {"utt_id": u.utt_id, "corpus": u.corpus, "session": u.session, "speaker": u.speaker,
            "gender": u.gender, "emotion_raw": u.emotion_raw, "path": u.path, "duration": u.duration,
            "extras": u.extras}


def _json_digest(value: Any) -> str:
    """SHA-256 of canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _rows_digest(rows: Iterable[str]) -> str:
    """SHA-256 over text rows, each followed by a newline."""
    h = hashlib.sha256()
    for row in rows:
        h.update(row.encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def plan_difference(recorded: Mapping[str, Any], plan: BuildPlan) -> str:
    """What differs between a plan's :meth:`~BuildPlan.summary` and ``plan``, in words
    ("options differ: seed 0 -> 1"); empty when the fingerprints agree."""
    if recorded.get("fingerprint") == plan.fingerprint:
        return ""
    now = plan.summary()
    digests = recorded.get("sections") or {}
    parts = []
    for name in SECTIONS:
        if digests.get(name) == now["sections"][name]:
            continue
        if name in ("options", "versions"):
            changes = _changed_keys(recorded.get(name) or {}, now[name])
            parts.append(f"{name} differ: {changes}" if changes else f"{name} differ")
        elif name == "label_manifest":
            parts.append(f"label manifest differs (version {recorded.get('label_manifest_version')} -> "
                         f"{now['label_manifest_version']})")
        elif name == "listing":
            parts.append(f"corpus listing differs ({recorded.get('n_utterances')} -> {now['n_utterances']} "
                         "utterances; labels, paths or label lines changed)")
        elif name == "durations":
            parts.append("audio durations read from the file headers differ")
        else:
            parts.append("the plan derived from them differs (another serprep?)")
    return "; ".join(parts) or "another plan format"


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 4) -> str:
    """``"seed 0 -> 1, features.n_mels 40 -> 64"``: the keys whose values differ (nested
    dicts on both sides by dotted key)."""
    changes: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changes += [f"{key}.{change}" for change in _changed_keys(a, b, limit=10**6).split(", ")]
        else:
            changes.append(f"{key} {_short(a)} -> {_short(b)}")
    text = ", ".join(changes[:limit])
    return text + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def _short(value: Any, width: int = 40) -> str:
    """A value for a one-line message, cut to ``width`` characters."""
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------
def assign_classes(utts: Sequence[Utterance], spec: CorpusSpec, classes: str, subset: str) -> list[str]:
    """Class of each utterance under the chosen class set and subset ("" = not selected)."""
    class_map = spec.class_map(classes)
    column, values = spec.subset_filter(subset)
    out = []
    for u in utts:
        in_subset = column is None or str(u.extras.get(column, "")) in values
        out.append(class_map.get(u.emotion_raw, "") if in_subset else "")
    return out


def durations_needed(options: PlanOptions, spec: CorpusSpec, utts: Sequence[Utterance]) -> list[int]:
    """Utterances whose header duration :func:`plan_build` needs (balanced augmentation plans
    copy rates from them; other builds need none before extraction)."""
    if not options.needs_durations:
        return []
    return [i for i, e in enumerate(assign_classes(utts, spec, options.classes, options.subset)) if e]


def plan_build(options: PlanOptions, spec: CorpusSpec, listing: CorpusListing,
               durations: Mapping[int, float | None], versions: Mapping[str, str]) -> BuildPlan:
    """Classes, folds, hops, augmentation copies and work blocks of a build (reads nothing).

    ``durations`` holds the header duration of each utterance :func:`durations_needed` names.
    Raises :class:`EmptyPlan` when no utterance falls in the class set and subset.
    """
    utts = tuple(listing.utterances)
    emotion = assign_classes(utts, spec, options.classes, options.subset)
    class_names = spec.class_names(options.classes)
    labelled = [i for i, e in enumerate(emotion) if e]
    if not labelled:
        raise EmptyPlan(f"no utterance falls in class set {options.classes!r} / subset {options.subset!r}")
    header = tuple(durations.get(i) for i in range(len(utts)))
    fold_sets, fold_notes = plan_folds(spec, [utts[i] for i in labelled])
    # Segment hops: denser for minority classes when balancing (whole-corpus class shares:
    # the extra windows are training-only, so test utterances are never cut differently).
    class_utts = {c: sum(1 for i in labelled if emotion[i] == c) for c in class_names}
    seg = options.segments
    hops = class_hops(class_utts, seg.hop, seg.min_hop) if options.balance else {c: seg.hop for c in class_names}
    copy_rate = _copy_rates(options, utts, emotion, labelled, class_names, fold_sets, hops, header)
    n_copies = {i: utterance_copies(copy_rate[emotion[i]], options.seed, utts[i].utt_id) for i in labelled}
    tasks = tuple(Task(i, utts[i].utt_id, utts[i].path, n_copies[i], hops[emotion[i]]) for i in labelled)
    sizes = [header[i] or _duration_hint(utts[i]) for i in labelled]
    return BuildPlan(
        options=options, label_manifest=label_manifest_record(spec), versions=dict(versions), utts=utts,
        skipped=tuple(FailureRow(i.utt_id, i.where, i.message) for i in listing.issues if i.skipped),
        warnings=tuple(_code_warnings(utts, spec))
        + tuple(WarningRow(i.utt_id, i.where, i.message) for i in listing.issues if not i.skipped),
        durations=header, classes=options.classes, subset=options.subset, emotion=tuple(emotion),
        class_names=tuple(class_names), labelled=tuple(labelled), speakers=tuple(sorted({u.speaker for u in utts})),
        fold_sets={s: tuple(f) for s, f in fold_sets.items()}, fold_notes=tuple(fold_notes), hops=hops,
        copy_rate=copy_rate, tasks=tasks, blocks=tuple(_blocks(tasks, sizes, options.block_seconds)),
        total_seconds=sum(d * (1 + n_copies[i]) for i, d in zip(labelled, sizes)),
    )


def label_manifest_record(spec: CorpusSpec) -> dict[str, Any]:
    """The label manifest as a store records it (``label_manifest`` attribute)."""
    return {"version": spec.version, "file": spec.path.name, "classes": spec.classes,
            "subsets": spec.subsets, "folds": spec.folds}


def _code_warnings(utts: Sequence[Utterance], spec: CorpusSpec) -> list[WarningRow]:
    """A warning per utterance whose label code the manifest does not document."""
    known = set(spec.codes)
    return [WarningRow(u.utt_id, u.path, f"unknown label code {u.emotion_raw!r} (not in {spec.path.name}); "
                                         "kept outside the classes")
            for u in utts if u.emotion_raw not in known]


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


def _copy_rates(options: PlanOptions, utts: Sequence[Utterance], emotion: list[str], labelled: list[int],
                class_names: list[str], fold_sets: dict[str, list[ResolvedFold]], hops: dict[str, int],
                durations: Sequence[float | None]) -> dict[str, float]:
    """Augmentation copies per class: the most any fold's training part needs, as a rate
    (fractional copies per utterance); each fold's index then takes only what it needs."""
    copy_rate = {c: 0.0 for c in class_names}
    if not options.augment:
        return copy_rate
    if not options.balance:
        return {c: float(options.copies) for c in class_names}
    est = {i: _estimated_segments(durations[i], options.features, options.segments, hops[emotion[i]])
           for i in labelled}
    for folds in fold_sets.values():
        for fold in folds:
            train = set(fold.train)
            counts = {c: 0.0 for c in class_names}
            for i in labelled:
                if utts[i].speaker in train:
                    counts[emotion[i]] += est[i]
            for c, rate in copy_rates(counts, options.max_copies).items():
                copy_rate[c] = max(copy_rate[c], rate)
    return copy_rate


def _estimated_segments(duration: float | None, cfg: FeatureConfig, seg: SegmentConfig, hop: int) -> int:
    """Windows an utterance of ``duration`` seconds will get at ``hop`` (0 if unknown)."""
    if not duration:
        return 0
    n = cfg.n_frames(int(round(duration * cfg.sample_rate)))
    return len(segment_offsets(n, seg.frames, hop))


def _duration_hint(u: Utterance) -> float:
    """A duration estimate for sizing work blocks: the label file's times, else 4 s."""
    start, end = u.extras.get("start"), u.extras.get("end")
    if isinstance(start, float) and isinstance(end, float) and end > start:
        return end - start
    return 4.0


def _blocks(tasks: Sequence[Task], durations: list[float], block_seconds: float) -> Iterator[tuple[int, ...]]:
    """Consecutive task positions, cut after ~``block_seconds`` of audio (copies included)."""
    block: list[int] = []
    seconds = 0.0
    for position, (task, dur) in enumerate(zip(tasks, durations)):
        block.append(position)
        seconds += (dur or 1.0) * (1 + task.copies)
        if seconds >= block_seconds:
            yield tuple(block)
            block, seconds = [], 0.0
    if block:
        yield tuple(block)
