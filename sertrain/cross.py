"""Cross-corpus training and testing (``sertrain cross``): train on every labelled utterance of
one or more stores, test the selected model on every labelled utterance of other stores.

What a cross run is (docs/results.md, "Cross-corpus runs", describes every file it writes):

- **Stores.** Every store must have the same feature configuration and segment
  configuration (every key the store records) and the shared 4-class vocabulary
  ``ang, hap, neu, sad`` (``serprep build ... --classes 4class``, IEMOCAP also
  ``4class-merged``). A test store with the content of a training store, or built from the
  same corpus files (same corpus fingerprint), is refused, and so are two training stores of
  one corpus: the test must be on speakers never trained on.
- **Training data.** The original utterances of the training speakers (segment rows with
  ``copy == 0``: the plain windows and, in a ``--balance`` store, the denser training-only
  windows of minority classes). Augmented copies are left out: they would be honest (a copy
  is made from its own utterance only), but how many a store holds was chosen to balance that
  store's own folds, so they would make the training set depend on each store's build options
  rather than on its speakers. The balanced index draws every class equally often over the
  union of the training stores (the majority class's count of plain windows), like a store's
  fold index; corpora are not balanced against each other.
- **Validation.** A seeded, speaker-disjoint share of each training store's speakers
  (``validation_share``, at least one speaker per store, at least one left to train;
  alternating genders so the choice is gender balanced where the store allows; pseudo
  speakers ``unknown:<group>`` never validate). These speakers' plain windows choose the
  model (``train.selection``) and early stopping; they are never trained on.
- **Normalisation.** Mean and standard deviation per channel and mel band over the valid
  frames of the training segments, each frame counted once per training window holding it:
  the definition a store uses for a fold's statistics (:mod:`serprep.extract` and
  :mod:`serprep.build`). A store keeps statistics per fold only (no per-speaker sums), and no
  fold's training speakers are a cross run's, so they are computed here from the features read
  through :class:`serprep.store.StoreReader`; the test stores are normalised with them.
- **Reading.** :class:`StoreUnion` presents the training stores as one read-only store: a
  global segment index maps to (store, local segment), every minibatch is read from each
  store with ``StoreReader.read_segments``; no feature array is copied or concatenated. The
  training loop is :func:`sertrain.train.train_fold` itself (same selection rules, early
  stopping, checkpoints, resume), run on the union's one fold (scheme ``cross``).
- **Test.** The selected model (``best.pt``) of each seed scores the plain windows of every
  labelled original utterance of each test store; utterance decisions and metrics are those
  of :mod:`sertrain.evaluate`. Per test store: mean ± sample std over seeds, and the 95 %
  percentile bootstrap intervals of :mod:`sertrain.results` / :mod:`sertrain.stats` over test
  utterances and over test speakers.
- **Within-corpus reference** (``within``): a ``sertrain cv`` folder run on a test store (the
  same store content) adds that cv's pooled metrics as a reference row for its test store.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from serprep.store import DIMENSIONS, UNKNOWN_SPEAKER_PREFIX, Fold, is_known_speaker

from .checkpoint import load_checkpoint, store_content_id
from .config import Config, apply_overrides
from .cv import software_versions, store_provenance
from .data import SegmentBatchDataset, SegmentLabels, open_store, speaker_map
from .errors import InputError
from .evaluate import Evaluation, clean_json, evaluate_loader, evaluation_loader
from .model import InputSpec, check_input_spec
from .report import interval_text, intervals_table, pct, pct_pm, render
from .results import CI_SEED, CV_FORMAT, N_RESAMPLES, PooledPredictions, intervals, sample_mean_std
from .runtime import resolve_device, resolve_precision
from .train import FoldResult, Logger, _quiet, train_fold

#: Format tag of a cross run's metrics.json.
CROSS_FORMAT = "sertrain-cross/1"
#: The fold scheme name of a cross run (checkpoints and run metrics record it).
CROSS_SCHEME = "cross"
#: The class vocabulary every store of a cross run must have.
SHARED_CLASSES = ("ang", "hap", "neu", "sad")
DEFAULT_VALIDATION_SHARE = 0.2
#: Metrics of a test row: (key, column title).
ROW_METRICS = (("wa", "WA"), ("ua", "UA"), ("macro_f1", "F1"), ("ua_F", "UA F"), ("ua_M", "UA M"))
#: Segments read per batch while computing the normalisation statistics.
STATS_BATCH = 256


# --------------------------------------------------------------------------------------------
# Stores
# --------------------------------------------------------------------------------------------
@dataclass
class StoreEntry:
    """One store of a cross run: its reader, its path as given, and a short unique label (the
    file name without ``.h5``) used in file names, speaker names and tables."""

    reader: Any
    name: str
    label: str


def store_labels(names: Sequence[str]) -> list[str]:
    """File stems, made unique (``feats``, ``feats-2``) and safe in file names."""
    labels: list[str] = []
    for name in names:
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem) or "store"
        label, k = stem, 2
        while label in labels:
            label, k = f"{stem}-{k}", k + 1
        labels.append(label)
    return labels


def open_entries(train: Sequence[str | Path], test: Sequence[str | Path],
                 verify: bool = False) -> tuple[list[StoreEntry], list[StoreEntry]]:
    """Open every store (``open_store``; ``verify`` checks the frames too) and refuse, in one
    line, any that cannot take part (:func:`check_stores`)."""
    names = [str(p) for p in (*train, *test)]
    labels = store_labels(names)
    entries: list[StoreEntry] = []
    try:
        for name, label in zip(names, labels):
            entries.append(StoreEntry(open_store(name, verify_features=verify), name, label))
        train_entries, test_entries = entries[: len(train)], entries[len(train):]
        check_stores(train_entries, test_entries)
    except BaseException:
        for e in entries:
            e.reader.close()
        raise
    return train_entries, test_entries


def check_stores(train: Sequence[StoreEntry], test: Sequence[StoreEntry]) -> None:
    """Refuse, in one line naming the store and what differs: another class vocabulary than
    ang/hap/neu/sad, another feature or segment configuration than the first training
    store's, another gender vocabulary, a store given twice; a test store that is a training
    store (same content), shares an utterance's audio with one (``audio_sha256``), or holds the
    same corpus (the store's ``corpus``: another build or subset of it has the same
    speakers); and two training stores that share audio or a corpus."""
    if not train or not test:
        raise InputError("a cross run needs at least one --train and one --test store")
    ref = train[0]
    ref_features = ref.reader.feature_config.to_dict()
    ref_segments = ref.reader.segment_config.to_dict()
    for e in (*train, *test):
        classes = list(e.reader.vocab("emotion"))
        if classes != list(SHARED_CLASSES):
            raise InputError(
                f"{e.name}: emotion classes {', '.join(classes)} are not the shared 4-class space "
                f"{', '.join(SHARED_CLASSES)} (build the store with --classes 4class, or 4class-merged for IEMOCAP)")
        if (e.reader.feature_kind, e.reader.feature_channels) != (ref.reader.feature_kind, ref.reader.feature_channels):
            raise InputError(f"{e.name}: features are {e.reader.feature_kind} {list(e.reader.feature_channels)}, "
                             f"{ref.name}'s {ref.reader.feature_kind} {list(ref.reader.feature_channels)}; "
                             "every store of a cross run needs the same")
        for what, ours, theirs in (("feature config", e.reader.feature_config.to_dict(), ref_features),
                                   ("segment config", e.reader.segment_config.to_dict(), ref_segments)):
            diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            if diff:
                k = diff[0]
                more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
                raise InputError(f"{e.name}: {what} differs from {ref.name}'s: {k} is {ours.get(k)!r} here, "
                                 f"{theirs.get(k)!r} there{more}; every store of a cross run needs the same")
        if list(e.reader.vocab("gender")) != list(ref.reader.vocab("gender")):
            raise InputError(f"{e.name}: gender vocabulary {e.reader.vocab('gender')} differs from {ref.name}'s "
                             f"{ref.reader.vocab('gender')}")
    audio: dict[int, set[str]] = {}

    def shared(a: StoreEntry, b: StoreEntry) -> int:
        """How many extracted utterances of ``a`` have the audio of one of ``b``'s."""
        for e in (a, b):
            if id(e) not in audio:
                m = e.reader.manifest()
                audio[id(e)] = set(m.loc[m["status"] == "ok", "audio_sha256"].astype(str)) - {""}
        return len(audio[id(a)] & audio[id(b)])

    def refuse_overlap(e: StoreEntry, other: StoreEntry, role: str) -> None:
        """``role``: "training" (both train), "test" (``e`` tests, ``other`` trains) or
        "test store" (both test: only the same store twice is refused)."""
        content = store_content_id(e.reader, e.name)
        if content == store_content_id(other.reader, other.name):
            if role == "test":
                raise InputError(f"{e.name}: test store is also a training store ({other.name}, same content "
                                 f"{content[:16]}); a cross-corpus test must be on another corpus")
            raise InputError(f"{e.name}: the same store as {role} store {other.name} (given twice)")
        if role == "test store":  # two test stores of one corpus are two tests, not a leak
            return
        what = f"{e.name}: test store" if role == "test" else f"{e.name}:"
        n = shared(e, other)
        if n:
            raise InputError(f"{what} shares {n} utterance(s) (same audio sha256) with training store {other.name}")
        if str(e.reader.corpus) == str(other.reader.corpus):
            why = ("its speakers were trained on or chose the model" if role == "test" else
                   "train on one store per corpus (its speakers would be split into training and validation twice)")
            raise InputError(f"{what} holds the same corpus ({e.reader.corpus}) as training store {other.name}: {why}")

    for i, e in enumerate(train):
        for other in train[:i]:
            refuse_overlap(e, other, "training")
    for i, e in enumerate(test):
        for other in train:
            refuse_overlap(e, other, "test")
        for other in test[:i]:
            refuse_overlap(e, other, "test store")


def union_speaker(label: str, speaker: str) -> str:
    """A speaker's name in a union of stores: ``<label>/<speaker>``; a pseudo speaker keeps
    its ``unknown:`` prefix in front (``unknown:<label>/<group>``), so it stays recognisable."""
    if speaker.startswith(UNKNOWN_SPEAKER_PREFIX):
        return f"{UNKNOWN_SPEAKER_PREFIX}{label}/{speaker[len(UNKNOWN_SPEAKER_PREFIX):]}"
    return f"{label}/{speaker}"


class StoreUnion:
    """Several :class:`serprep.store.StoreReader` seen as one read-only store.

    Global segment ``i`` is local segment ``i - segment_offsets[s]`` of store ``s``; utterance
    and speaker ids are shifted the same way (speaker names become ``<label>/<speaker>``,
    utterance ids ``<label>/<utt_id>``). Emotion and gender ids are shared (the stores were
    checked to have the same vocabularies). :meth:`read_segments` reads each store's part of
    a batch with that store's own ``read_segments`` and puts the rows back in the order asked:
    features are never copied into one array. It offers what :func:`sertrain.train.train_fold`
    uses of a reader, with one fold, scheme ``cross`` (:meth:`set_fold`). Picklable: DataLoader
    workers re-open each store themselves, as with a single reader.
    """

    def __init__(self, readers: Sequence[Any], labels: Sequence[str], name: str | None = None):
        if not readers or len(readers) != len(labels):
            raise ValueError("a union needs one label per reader, and at least one reader")
        self.readers = list(readers)
        self.labels = list(labels)
        self.path = name or " + ".join(str(getattr(r, "path", lab)) for r, lab in zip(readers, labels))
        first = self.readers[0]
        self.feature_config = first.feature_config
        self.feature_kind, self.feature_channels = first.feature_kind, first.feature_channels
        self.segment_config = first.segment_config
        self._emotion = list(first.vocab("emotion"))
        self._gender = list(first.vocab("gender"))
        seg_parts, man_parts, speakers = [], [], []
        seg_off, utt_off, spk_off = [0], [0], [0]
        for s, (reader, label) in enumerate(zip(self.readers, self.labels)):
            # Dimensional ratings stay out of a union: each corpus rates on its own scale
            # (IEMOCAP 1-5, MSP-Podcast 1-7) and cross-corpus dimensional targets are not
            # supported yet, so a union has none (dimension_scales() is empty; --aux vad is refused).
            seg = reader.segments().drop(columns=list(DIMENSIONS), errors="ignore")
            man = reader.manifest()
            vocab = [union_speaker(label, str(v)) for v in reader.vocab("speaker")]
            seg = seg.assign(utt=seg["utt"].to_numpy(np.int64) + utt_off[-1],
                             speaker=seg["speaker"].to_numpy(np.int64) + spk_off[-1], store=s)
            man = pd.DataFrame({
                "utt_id": [f"{label}/{u}" for u in man["utt_id"].astype(str)],
                "corpus": man["corpus"].astype(str).to_numpy(),
                "speaker": [union_speaker(label, str(v)) for v in man["speaker"].astype(str)],
                "gender": man["gender"].astype(str).to_numpy(),
                "emotion": man["emotion"].astype(str).to_numpy(),
                "status": man["status"].astype(str).to_numpy(),
                "store": s,
            })
            seg_parts.append(seg)
            man_parts.append(man)
            speakers.extend(vocab)
            seg_off.append(seg_off[-1] + int(reader.n_segments))
            utt_off.append(utt_off[-1] + len(man))
            spk_off.append(spk_off[-1] + len(vocab))
        self._segments = pd.concat(seg_parts, ignore_index=True)
        self._manifest = pd.concat(man_parts, ignore_index=True)
        self._speakers = speakers
        self.segment_offsets = np.asarray(seg_off, dtype=np.int64)
        self.utt_offsets = np.asarray(utt_off, dtype=np.int64)
        self.speaker_offsets = np.asarray(spk_off, dtype=np.int64)
        self._fold: Fold | None = None
        self._identity: dict[str, Any] = {}

    # -- what train_fold reads -------------------------------------------------------------
    @property
    def n_segments(self) -> int:
        return int(self.segment_offsets[-1])

    @property
    def corpus(self) -> str:
        return "+".join(dict.fromkeys(str(r.corpus) for r in self.readers))

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the stores' corpus fingerprints, in order."""
        return hashlib.sha256(json.dumps([str(r.fingerprint) for r in self.readers]).encode()).hexdigest()

    @property
    def content_sha256(self) -> str:
        """SHA-256 over the stores' content ids and labels and the fold's identity (validation
        share, seed and speakers): a checkpoint of this union names exactly this training set."""
        payload = {"format": "sertrain-store-union/1",
                   "stores": [[lab, store_content_id(r, str(getattr(r, "path", lab)))]
                              for r, lab in zip(self.readers, self.labels)],
                   "fold": self._identity}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @property
    def build(self) -> dict[str, Any]:
        return {"union": [{"label": lab, **r.build} for r, lab in zip(self.readers, self.labels)]}

    def vocab(self, name: str) -> list[str]:
        if name == "emotion":
            return list(self._emotion)
        if name == "gender":
            return list(self._gender)
        if name == "speaker":
            return list(self._speakers)
        raise InputError(f"{self.path}: no vocabulary {name!r}")

    def segments(self) -> pd.DataFrame:
        """The stores' segment tables back to back (row = global segment id), with global
        ``utt`` and ``speaker`` ids and a ``store`` column."""
        return self._segments.copy()

    def dimension_scales(self) -> dict[str, tuple[float, float]]:
        """None: a union carries no dimensional ratings (see :meth:`__init__`)."""
        return {}

    def manifest(self) -> pd.DataFrame:
        """The stores' utterance tables back to back (row = global utterance id): utt_id,
        corpus, speaker (union names), gender, emotion, status, store."""
        return self._manifest.copy()

    def set_fold(self, fold: Fold, identity: dict[str, Any]) -> None:
        """The union's one fold (scheme ``cross``, number 1) and what identifies it."""
        self._fold, self._identity = fold, dict(identity)

    def fold_schemes(self) -> list[str]:
        return [CROSS_SCHEME] if self._fold is not None else []

    def fold_ids(self, scheme: str) -> list[int]:
        if scheme != CROSS_SCHEME or self._fold is None:
            raise InputError(f"{self.path}: a union of stores has one fold, scheme {CROSS_SCHEME!r}")
        return [1]

    def fold(self, scheme: str, k: int) -> Fold:
        if k not in self.fold_ids(scheme):
            raise InputError(f"{self.path}: a union of stores has one fold, {CROSS_SCHEME} fold 1")
        assert self._fold is not None
        return self._fold

    # -- features -------------------------------------------------------------------------
    def locate(self, indices: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(store index, local segment id) of each global segment id."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_segments):
            raise InputError(f"{self.path}: segment index out of range 0..{self.n_segments - 1}")
        store = np.searchsorted(self.segment_offsets, idx, side="right") - 1
        return store, idx - self.segment_offsets[store]

    def read_segments(self, indices: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(x [B, C, frames, n_mels] float32, valid [B] int64)`` in the order of ``indices``:
        one ``read_segments`` call per store that holds some of them."""
        store, local = self.locate(indices)
        frames, n_mels = self.segment_config.frames, self.feature_config.n_mels
        x = np.zeros((len(store), len(self.feature_channels), frames, n_mels), dtype=np.float32)
        valid = np.zeros(len(store), dtype=np.int64)
        for s in np.unique(store):
            pos = np.flatnonzero(store == s)
            xs, vs = self.readers[int(s)].read_segments(local[pos])
            x[pos] = xs
            valid[pos] = vs
        return x, valid

    def close(self) -> None:
        for r in self.readers:
            r.close()


# --------------------------------------------------------------------------------------------
# The split: validation speakers, training segments, balanced index, statistics
# --------------------------------------------------------------------------------------------
def labelled_speakers(reader: Any) -> pd.DataFrame:
    """One row per speaker with labelled original segments: speaker, gender (``F``, ``M`` or
    ``U``), known (False for an ``unknown:`` pseudo speaker), segments, utterances; by name."""
    seg = reader.segments()
    seg = seg[(seg["copy"] == 0) & (seg["emotion"] >= 0)]
    vocab = list(reader.vocab("speaker"))
    genders = list(reader.vocab("gender"))
    rows = []
    for sid, part in seg.groupby("speaker"):
        g = part["gender"].to_numpy()
        gender = genders[int(g[0])] if g[0] >= 0 and (g == g[0]).all() else "U"
        name = vocab[int(sid)]
        rows.append({"speaker": name, "gender": gender, "known": is_known_speaker(name),
                     "segments": len(part), "utterances": int(part["utt"].nunique())})
    return pd.DataFrame(rows, columns=["speaker", "gender", "known", "segments", "utterances"]).sort_values(
        "speaker", ignore_index=True)


def choose_validation(reader: Any, name: str, share: float, seed: int) -> list[str]:
    """Validation speakers of one training store (sorted): ``share`` x its known speakers with
    labelled utterances, rounded half up, at least one, leaving at least one to train; picked from a generator seeded by (``seed``, the store's
    corpus fingerprint), so the split of a store does not depend on the other stores or on the
    order of ``--train``; genders alternate (the one with more speakers first; a tie drawn)."""
    if not 0 < share < 1:
        raise InputError(f"--validation-share must be between 0 and 1 (exclusive), got {share}")
    table = labelled_speakers(reader)
    candidates = table[table["known"]]
    n_val = min(max(1, int(math.floor(share * len(candidates) + 0.5))), len(candidates), len(table) - 1)
    if n_val < 1:
        raise InputError(f"{name}: {len(table)} speaker(s) with labelled utterances ({len(candidates)} known); a "
                         "training store needs at least two, one of them to validate on")
    rng = np.random.default_rng([int(seed), zlib.crc32(str(reader.fingerprint).encode())])
    groups = {g: list(part["speaker"]) for g, part in candidates.groupby("gender")}
    for g in groups:
        groups[g] = [groups[g][i] for i in rng.permutation(len(groups[g]))]
    known = [g for g in ("F", "M") if g in groups]
    if len(known) == 2 and (len(groups["F"]) == len(groups["M"]) and rng.random() < 0.5
                            or len(groups["M"]) > len(groups["F"])):
        known.reverse()
    order: list[str] = []
    queues = [groups[g] for g in known]
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    for g in sorted(set(groups) - {"F", "M"}):  # unknown gender: only when F and M run out
        order.extend(groups[g])
    return sorted(order[:n_val])


def segment_statistics(reader: Any, segment_ids: np.ndarray | Sequence[int],
                       batch: int = STATS_BATCH) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mean, std, frames)`` per channel and mel band over the valid frames of the segments
    ``segment_ids`` of ``reader`` (a store or a :class:`StoreUnion`), each frame counted once
    per segment that holds it: the definition of a store's fold statistics (float64 sums;
    ``std = sqrt(max(E[x^2] - mean^2, 1e-12))``). Reads through ``reader.read_segments``."""
    ids = np.sort(np.asarray(segment_ids, dtype=np.int64))
    shape = (len(reader.feature_channels), reader.feature_config.n_mels)
    total = np.zeros(shape, dtype=np.float64)
    total_sq = np.zeros(shape, dtype=np.float64)
    frames = 0
    for start in range(0, len(ids), batch):
        x, valid = reader.read_segments(ids[start : start + batch])
        # Frames past ``valid`` are zero padding: they add nothing to either sum.
        total += x.sum(axis=(0, 2), dtype=np.float64)
        total_sq += np.square(x).sum(axis=(0, 2), dtype=np.float64)
        frames += int(np.asarray(valid).sum())
    if frames == 0:
        raise InputError(f"{getattr(reader, 'path', 'store')}: no training frames to compute statistics from")
    mean = total / frames
    std = np.sqrt(np.maximum(total_sq / frames - mean**2, 1e-12))
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        raise InputError(f"{getattr(reader, 'path', 'store')}: training features give non-finite statistics")
    return mean, std, frames


@dataclass
class CrossSplit:
    """The union of the training stores with its one fold, and what a result says about it."""

    union: StoreUnion
    fold: Fold
    record: dict[str, Any] = field(default_factory=dict)


def make_split(train: Sequence[StoreEntry], share: float, seed: int, log: Logger = _quiet) -> CrossSplit:
    """Validation speakers per training store, the union's training and validation segments,
    balanced index and normalisation statistics (see the module docstring)."""
    from serprep.balance import balanced_index

    validation = {e.label: choose_validation(e.reader, e.name, share, seed) for e in train}
    union = StoreUnion([e.reader for e in train], [e.label for e in train],
                       name=" + ".join(e.name for e in train))
    seg = union.segments()
    vocab = union.vocab("speaker")
    speaker = seg["speaker"].to_numpy(np.int64)
    val_names = {union_speaker(lab, s) for lab, speakers in validation.items() for s in speakers}
    original = (seg["copy"].to_numpy() == 0) & (seg["emotion"].to_numpy() >= 0)
    plain = original & ~seg["dense"].to_numpy(bool)
    is_val = np.array([v in val_names for v in vocab], dtype=bool)[speaker]
    train_segments = np.flatnonzero(original & ~is_val)
    validation_segments = np.flatnonzero(plain & is_val)
    emotion = seg["emotion"].to_numpy(np.int64)
    classes = union.vocab("emotion")
    originals = {k: train_segments[emotion[train_segments] == k] for k in range(len(classes))}
    before = train_segments[plain[train_segments]]
    target = int(np.bincount(emotion[before], minlength=len(classes)).max()) if len(before) else 0
    index = balanced_index(originals, {}, np.random.default_rng([int(seed), 1]), target=target)
    if len(index) == 0:
        raise InputError(f"{union.path}: no labelled training utterances left after choosing validation speakers")
    mean, std, frames = segment_statistics(union, train_segments)
    utt = seg["utt"].to_numpy(np.int64)
    train_speakers = sorted({vocab[i] for i in np.unique(speaker[train_segments])})
    fold = Fold(
        scheme=CROSS_SCHEME, fold=1,
        train_utts=np.unique(utt[train_segments]), validation_utts=np.unique(utt[validation_segments]),
        test_utts=np.zeros(0, np.int64), train_segments=train_segments, validation_segments=validation_segments,
        test_segments=np.zeros(0, np.int64), balanced_index=index,
        norm_mean=mean.astype(np.float32), norm_std=std.astype(np.float32),
        train_speakers=train_speakers, validation_speakers=sorted(val_names), test_speakers=[],
        counts={"unit": "segments", "before": _per_class(emotion[before], classes),
                "available": _per_class(emotion[train_segments], classes),
                "after": _per_class(emotion[index], classes),
                "validation": _per_class(emotion[validation_segments], classes)},
    )
    identity = {"validation_share": float(share), "validation_seed": int(seed),
                "validation_speakers": sorted(val_names)}
    union.set_fold(fold, identity)
    store_of = seg["store"].to_numpy(np.int64)
    stores = []
    for s, e in enumerate(train):
        mine_train = train_segments[store_of[train_segments] == s]
        mine_val = validation_segments[store_of[validation_segments] == s]
        table = labelled_speakers(e.reader)
        stores.append({
            "label": e.label, "path": e.name, "corpus": str(e.reader.corpus),
            "n_speakers": int(len(table)),
            "train_speakers": sorted(set(table["speaker"]) - set(validation[e.label])),
            "validation_speakers": validation[e.label],
            "train_utterances": int(len(np.unique(utt[mine_train]))),
            "validation_utterances": int(len(np.unique(utt[mine_val]))),
            "train_segments": int(len(mine_train)),
            "validation_segments": int(len(mine_val)),
        })
        log(f"{e.label}: {len(table)} speakers; validation {', '.join(validation[e.label])} "
            f"({stores[-1]['validation_utterances']} utts); training {stores[-1]['train_utterances']} utts")
    record = {
        **identity,
        "stores": stores,
        "train_segments": int(len(train_segments)),
        "validation_segments": int(len(validation_segments)),
        "balanced_index": int(len(index)),
        "counts": fold.counts,
        "normalisation": {"frames": int(frames), "segments": int(len(train_segments)),
                          "definition": "mean and std per channel and mel band over the valid frames of the "
                                        "training segments, each frame once per window holding it"},
        "union_content_sha256": union.content_sha256,
    }
    return CrossSplit(union, fold, record)


def _per_class(ids: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts)}


# --------------------------------------------------------------------------------------------
# Testing
# --------------------------------------------------------------------------------------------
def scored_segment_ids(reader: Any) -> np.ndarray:
    """Plain windows (not dense, not augmented) of every labelled original utterance."""
    seg = reader.segments()
    keep = (seg["copy"].to_numpy() == 0) & ~seg["dense"].to_numpy(bool) & (seg["emotion"].to_numpy() >= 0)
    return np.flatnonzero(keep)


def score_store(model: torch.nn.Module, ckpt: Any, entry: StoreEntry, device: torch.device,
                num_workers: int = 0) -> Evaluation:
    """Score ``model`` (the checkpoint ``ckpt``'s) on every labelled utterance of a test store,
    normalised with the checkpoint's statistics (:func:`sertrain.evaluate.evaluate_loader`)."""
    cfg = ckpt.run_config()
    reader = entry.reader
    check_input_spec(ckpt.input_spec, InputSpec.from_reader(reader), entry.name)
    classes = list(reader.vocab("emotion"))
    if classes != list(ckpt.emotion_classes):
        raise InputError(f"{entry.name}: emotion classes {classes} differ from the checkpoint's {ckpt.emotion_classes}")
    dataset = SegmentBatchDataset(reader, SegmentLabels.from_reader(reader), ckpt.norm_mean.numpy(),
                                  ckpt.norm_std.numpy(), speaker_map(list(reader.vocab("speaker")), ckpt.train_speakers))
    loader = evaluation_loader(dataset, scored_segment_ids(reader), cfg.train.eval_batch_size, num_workers)
    return evaluate_loader(model, loader, reader.manifest(), classes, device, cfg.train.aggregate,
                           resolve_precision(cfg.train.amp, device))


def seed_metrics(metrics: dict[str, Any]) -> dict[str, float | None]:
    """WA, UA, macro-F1, UA F and UA M of one test (None where undefined)."""
    by = metrics.get("by_gender") or {}
    out = {k: metrics.get(k) for k in ("wa", "ua", "macro_f1")}
    for g in ("F", "M"):
        out[f"ua_{g}"] = (by.get(g) or {}).get("ua")
    return clean_json(out)


def summarise_test(label: str, entry: StoreEntry, predictions: pd.DataFrame, per_seed: list[dict[str, Any]],
                   n_resamples: int) -> dict[str, Any]:
    """One test store over seeds: per-seed metrics, mean ± sample std, bootstrap intervals."""
    classes = list(SHARED_CLASSES)
    pooled = PooledPredictions.from_frame(predictions.assign(fold=0), classes, where=f"predictions of {label}")
    return {
        "label": label,
        "store": entry.name,
        "corpus": str(entry.reader.corpus),
        "content_sha256": store_content_id(entry.reader, entry.name),
        "n_utterances": int(pooled.n),
        "n_speakers": int(pooled.keys["speaker"].nunique()),
        "per_seed": per_seed,
        "summary": {key: sample_mean_std([r[key] for r in per_seed]) for key, _ in ROW_METRICS},
        "intervals": intervals(pooled, n_resamples, CI_SEED),
        "confusion_total": np.sum([np.asarray(r["confusion"]) for r in per_seed], axis=0).tolist(),
        "within": None,
    }


# --------------------------------------------------------------------------------------------
# Within-corpus reference (a sertrain cv folder on a test store)
# --------------------------------------------------------------------------------------------
def read_within(run_dirs: Sequence[str | Path], tests: Sequence[StoreEntry]) -> dict[str, dict[str, Any]]:
    """For each ``sertrain cv`` folder, the test store whose content it was run on and that
    cv's pooled metrics per seed; anything that does not match is refused in one line."""
    by_content = {store_content_id(e.reader, e.name): e for e in tests}
    out: dict[str, dict[str, Any]] = {}
    for run in run_dirs:
        run = Path(run)
        path = run / "metrics.json"
        if not path.is_file():
            hint = " (an --aux grid: pass one setting's folder)" if (run / "comparison.json").is_file() else ""
            raise InputError(f"--within {run}: no metrics.json, not a sertrain cv folder{hint}")
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"--within {run}: unreadable metrics.json ({exc})") from None
        if not isinstance(metrics, dict) or metrics.get("format") != CV_FORMAT:
            found = metrics.get("format") if isinstance(metrics, dict) else None
            raise InputError(f"--within {run}: metrics.json is format {found!r}, not a sertrain cv run ({CV_FORMAT})")
        content = str((metrics.get("store") or {}).get("content_sha256") or "")
        entry = by_content.get(content)
        if entry is None:
            tested = ", ".join(f"{e.name} {c[:16]}" for c, e in by_content.items())
            raise InputError(f"--within {run}: its cv ran on store content {content[:16] or '(none)'} "
                             f"({(metrics.get('store') or {}).get('path', '?')}), which is none of the test stores "
                             f"({tested})")
        if entry.label in out:
            raise InputError(f"--within {run}: a second cv folder for test store {entry.name} "
                             f"(already {out[entry.label]['run_dir']})")
        classes = list(metrics.get("classes") or [])
        try:
            frame = pd.read_csv(run / "predictions.csv", dtype={"utt_id": str, "speaker": str, "gender": str})
            pooled = PooledPredictions.from_frame(frame, classes, where=f"--within {run}/predictions.csv")
        except OSError as exc:
            raise InputError(f"--within {run}: cannot read predictions.csv ({exc.strerror or exc})") from None
        per_seed = [{"seed": s, **seed_metrics(m)} for s, m in zip(pooled.seeds, pooled.metrics_per_seed())]
        out[entry.label] = {
            "run_dir": str(run),
            "title": metrics.get("title"),
            "scheme": metrics.get("scheme"),
            "folds": metrics.get("folds"),
            "seeds": metrics.get("seeds"),
            "store_content_sha256": content,
            "n_utterances": int(pooled.n),
            "n_speakers": int(pooled.keys["speaker"].nunique()),
            "per_seed": per_seed,
            "summary": {key: sample_mean_std([r[key] for r in per_seed]) for key, _ in ROW_METRICS},
            "intervals": metrics.get("intervals"),
        }
    return out


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def run_cross(
    train: Sequence[str | Path],
    test: Sequence[str | Path],
    cfg: Config,
    out_dir: str | Path,
    *,
    seeds: Sequence[int] | None = None,
    validation_share: float = DEFAULT_VALIDATION_SHARE,
    validation_seed: int = 0,
    within: Sequence[str | Path] = (),
    device: str = "auto",
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    verify: bool = False,
    log: Logger | None = None,
    report: Logger | None = None,
    n_resamples: int = N_RESAMPLES,
) -> dict[str, Any]:
    """Train on ``train`` (store paths) once per seed, test every selected model on each
    ``test`` store, write the results to ``out_dir`` and return its metrics.json content.

    Every refusal (stores that cannot take part, a ``within`` folder that matches no test
    store, an ``out_dir`` already holding a run without ``resume``) happens before training.
    Files: ``seed_<s>/`` per seed (``best.pt``, ``last.pt``, ``config.json``,
    ``history.json``, ``metrics.json`` with each test store's metrics,
    ``predictions_<label>.csv``, ``curves.png``) and in ``out_dir`` ``metrics.json`` (format
    :data:`CROSS_FORMAT`), ``predictions.csv``, ``table.txt``, ``confusion_<label>.png`` and
    ``curves.png``.
    """
    log = log or _quiet
    report = report or log
    out = Path(out_dir)
    seed_list = [int(s) for s in (seeds if seeds else [cfg.train.seed])]
    if len(set(seed_list)) != len(seed_list):
        raise InputError(f"seeds must differ, got {seed_list}")
    cfg = apply_overrides(cfg, {"data.scheme": CROSS_SCHEME})
    train_entries, test_entries = open_entries(train, test, verify)
    split: CrossSplit | None = None
    try:
        within_runs = read_within(within, test_entries)
        if not resume:
            for s in seed_list:
                if (out / f"seed_{s}" / "last.pt").exists():
                    raise InputError(f"{out / f'seed_{s}'} already holds a run (last.pt): pass --resume to continue "
                                     "it, or another --out")
        split = make_split(train_entries, validation_share, validation_seed, log)
        provenance = {"protocol": None, "deviations": []}
        dev = resolve_device(device)
        runs: list[dict[str, Any]] = []
        frames: dict[str, list[pd.DataFrame]] = {e.label: [] for e in test_entries}
        per_seed: dict[str, list[dict[str, Any]]] = {e.label: [] for e in test_entries}
        histories: dict[str, list[dict[str, Any]]] = {}
        for seed in seed_list:
            where = out / f"seed_{seed}"
            run_cfg = apply_overrides(cfg, {"train.seed": seed})
            run_over = {**(overrides or {}), "loss.aux": cfg.loss.aux, "data.scheme": CROSS_SCHEME, "train.seed": seed}
            if len(seed_list) > 1:
                log(f"[seed_{seed}]")
            result: FoldResult = train_fold(split.union, 1, run_cfg, where, device=str(dev), resume=resume,
                                            overrides=run_over, log=log, provenance=provenance, test=False,
                                            label=f"cross seed {seed}")
            ckpt = load_checkpoint(where / "best.pt", map_location="cpu")
            model = ckpt.build_model().to(dev)
            tests: dict[str, Any] = {}
            for e in test_entries:
                ev = score_store(model, ckpt, e, dev, ckpt.run_config().train.num_workers)
                ev.predictions.to_csv(where / f"predictions_{e.label}.csv", index=False, float_format="%.6f")
                frames[e.label].append(ev.predictions.assign(test_store=e.label, seed=seed))
                per_seed[e.label].append({"seed": seed, **seed_metrics(ev.metrics),
                                          "confusion": ev.metrics["confusion"]})
                tests[e.label] = {"store": e.name, "content_sha256": store_content_id(e.reader, e.name),
                                  "metrics": clean_json(ev.metrics)}
                log(f"cross seed {seed}: test {e.label} ({ev.metrics['n']} utts) UA {pct(ev.metrics['ua'])}% "
                    f"WA {pct(ev.metrics['wa'])}% F1 {pct(ev.metrics['macro_f1'])}%")
            run_metrics = json.loads((where / "metrics.json").read_text())
            run_metrics.update({"format": "sertrain-cross-run/1", "tests": tests})
            (where / "metrics.json").write_text(json.dumps(clean_json(run_metrics), indent=2) + "\n")
            histories[f"seed {seed}"] = result.history
            runs.append({"seed": seed, "dir": str(where.relative_to(out)), "best_epoch": result.best_epoch,
                         "selected_epochs": result.selected_epochs or [result.best_epoch],
                         "epochs_run": result.epochs_run, "validation": result.validation,
                         "tests": {k: v["metrics"] for k, v in tests.items()}, "history": result.history})
        return _write_summary(out, cfg, seed_list, split, train_entries, test_entries, runs, frames, per_seed,
                              histories, within_runs, n_resamples, report)
    finally:
        if split is not None:
            split.union.close()
        for e in (*train_entries, *test_entries):
            e.reader.close()


def _write_summary(out: Path, cfg: Config, seed_list: list[int], split: CrossSplit, train: list[StoreEntry],
                   test: list[StoreEntry], runs: list[dict[str, Any]], frames: dict[str, list[pd.DataFrame]],
                   per_seed: dict[str, list[dict[str, Any]]], histories: dict[str, list[dict[str, Any]]],
                   within: dict[str, dict[str, Any]], n_resamples: int, report: Logger) -> dict[str, Any]:
    from .plots import plot_confusion, plot_curves

    tests = []
    all_preds = []
    for e in test:
        preds = pd.concat(frames[e.label], ignore_index=True)
        all_preds.append(preds)
        entry = summarise_test(e.label, e, preds, per_seed[e.label], n_resamples)
        entry["within"] = within.get(e.label)
        tests.append(entry)
        plot_confusion(np.asarray(entry["confusion_total"]), list(SHARED_CLASSES), out / f"confusion_{e.label}.png",
                       title=f"{' + '.join(t.label for t in train)} -> {e.label}: summed over seeds")
    title = (f"{cfg.name} / cross-corpus / aux {cfg.loss.aux}: trained on "
             + " + ".join(e.label if e.label == str(e.reader.corpus) else f"{e.label} ({e.reader.corpus})"
                          for e in train))
    metrics = {
        "format": CROSS_FORMAT,
        "title": title,
        "protocol": None,
        "versions": software_versions(),
        "config": cfg.to_dict(),
        "aux": cfg.loss.aux,
        "seeds": seed_list,
        "classes": list(SHARED_CLASSES),
        "train_stores": [{"label": e.label, **store_provenance(e.reader, e.name)} for e in train],
        "test_stores": [{"label": e.label, **store_provenance(e.reader, e.name)} for e in test],
        "split": split.record,
        "runs": runs,
        "tests": tests,
    }
    table = cross_table(metrics)
    metrics["table"] = table
    preds = pd.concat(all_preds, ignore_index=True)
    preds = preds[["test_store", "seed", *[c for c in preds.columns if c not in ("test_store", "seed")]]]
    preds.to_csv(out / "predictions.csv", index=False, float_format="%.6f")
    (out / "metrics.json").write_text(json.dumps(clean_json(metrics), indent=2) + "\n")
    (out / "table.txt").write_text(table + "\n")
    plot_curves(histories, out / "curves.png", title=f"{title}: one line per seed")
    report(f"\n{title}: test metrics of the selected checkpoint (%)")
    report(table + "\n")
    return metrics


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------
def cross_table(metrics: dict[str, Any]) -> str:
    """One row per test store (the cross result) and, when a ``--within`` cv was given, a
    reference row under it; then what the numbers are; then each test store's intervals."""
    train = " + ".join(s["label"] for s in metrics["train_stores"])
    n_seeds = len(metrics["seeds"])
    head = ["test store", "corpus", "model", "utts", "spk", "seeds", *[t for _, t in ROW_METRICS],
            "UA 95 % CI utts", "UA 95 % CI spk"]
    body = []
    for t in metrics["tests"]:
        iv = t["intervals"]
        body.append([t["label"], t["corpus"], f"cross: {train}", str(t["n_utterances"]), str(t["n_speakers"]),
                     str(len(t["per_seed"])), *[pct_pm(t["summary"][k]) for k, _ in ROW_METRICS],
                     interval_text(iv["utterance"]["ua"]), interval_text(iv["speaker"]["ua"])])
        w = t.get("within")
        if w:
            wiv = w.get("intervals") or {}
            body.append(["", "", f"within: {w.get('scheme') or '?'} cv", str(w["n_utterances"]),
                         str(w["n_speakers"]), str(len(w["per_seed"])), *[pct_pm(w["summary"][k]) for k, _ in ROW_METRICS],
                         interval_text((wiv.get("utterance") or {}).get("ua")),
                         interval_text((wiv.get("speaker") or {}).get("ua"))])
    split = metrics["split"]
    val = "; ".join(f"{s['label']} {', '.join(s['validation_speakers'])}" for s in split["stores"])
    ci = metrics["tests"][0]["intervals"] if metrics["tests"] else {"n_resamples": N_RESAMPLES, "seed": CI_SEED}
    notes = [
        f"cross: trained on the original utterances of {train} but the validation speakers ({val}; "
        f"validation share {split['validation_share']}, seed {split['validation_seed']}), which chose the model; "
        "tested on every labelled utterance of the test store",
        ("±: sample std (ddof=1) over seeds of the metric over all test utterances; " if n_seeds > 1 else
         "one seed: the metric over all test utterances; ")
        + f"CI: 95 % percentile bootstrap of UA ({ci['n_resamples']} resamples, seed {ci['seed']}) over test "
        "utterances, or over test speakers with all their utterances (the honest one), seeds averaged inside",
    ]
    if any(t.get("within") for t in metrics["tests"]):
        notes.append("within: that store's own sertrain cv (--within): pooled over its test folds per seed, "
                     "± over its seeds, its CIs as its metrics.json reports them")
    parts = [render(head, body), *notes]
    for t in metrics["tests"]:
        parts.append(f"\n{t['label']} ({t['corpus']}), cross from {train}:")
        parts.append(intervals_table(t["intervals"]))
    return "\n".join(parts)
