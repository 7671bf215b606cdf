"""The serprep HDF5 feature store: schema, writer, reader and verification.

This module is the single definition of the on-disk format; ``sertrain`` imports it and never
reads the file any other way. Everything is plain HDF5 (readable with h5py alone, no pickles)
and nothing in it depends on where the file lives: copy it anywhere and it stays valid.

Schema (``SCHEMA_VERSION`` = 3; see "Schema versions" below for the stores of version 2)::

    /                       attrs: format="serprep-store", schema_version, corpus, created (UTC ISO),
                            versions (JSON), feature_kind (what the frames are: a kind of
                            serprep.features.FEATURE_KINDS, "logmel"), feature_channels (JSON
                            list of its channel names: ["static", "delta", "delta-delta"]),
                            feature_config (JSON), segment_config (JSON),
                            build (JSON: classes, subset, label manifest version, augmentation,
                            balancing, seed), label_manifest (JSON), corpus_fingerprint,
                            item_checksum (the per-item algorithm, "crc32"), dimensions (JSON
                            {"arousal": [low, high], ...}: the corpus' own scale of each rating
                            column of /segments; {} for a corpus without ratings), checksums
                            (JSON, see below), attrs_sha256 (SHA-256 over every other root attribute,
                            checksums included: the store's content id)
    /features               float32 [n_frames_total, C, n_mels] (C = len(feature_channels), 3 for
                            log-Mel): the frames of every item
                            (original utterance or augmented copy), items back to back; chunked
                            along frames, uncompressed (compression barely shrinks log-Mel and
                            slows random reads)
    /manifest/<column>      one 1-D dataset per utterance column (row i = utterance i): utt_id,
                            corpus, session, speaker, gender, emotion_raw, emotion ("" = outside
                            the chosen classes/subset), duration, path (relative to the corpus
                            root), status (ok | excluded | failed), n_segments, audio_sha256,
                            source_rate, and the corpus' extra columns
    /items/                 utt, copy (0 = original, k = augmented copy k), frame_start, n_frames,
                            augmentation (JSON: transform chain and sampled parameters)
    /segments/              item, utt, copy, offset (frame within the item), valid (real frames;
                            the rest of the window is zero padding), dense (1 = extra window from
                            a minority class's denser hop: training only), emotion, gender,
                            speaker (ids into /vocab/*; -1 = none), and float32 arousal, valence,
                            dominance: those of the three the corpus rates (the root
                            ``dimensions``), its utterance's rating on the corpus' scale (an
                            augmented copy's segments carry their source's), NaN = not rated
    /vocab/{emotion,gender,speaker}   string labels of the ids
    /failures/{utt_id,path,error}     files that were skipped, and why
    /warnings/{utt_id,path,message}   things the build accepted but a user should know
    /folds/<scheme>/<k>/    train_utts, validation_utts, test_utts, train_segments,
                            validation_segments, test_segments, balanced_index, norm_mean,
                            norm_std ([C, n_mels]); attrs: train/validation/test speakers and
                            class counts (JSON), and ``label`` where a fold has a name (the
                            official partition it tests, e.g. "Test1")
    /functionals/<set>/     only in stores built with ``--functionals <set>`` (``egemaps``: the 88
                            eGeMAPS v02 functionals of openSMILE): utt (int64 [n]: manifest rows of
                            the extracted utterances, ascending), values (float32 [n, n_features],
                            all finite: row k = utterance utt[k], original audio only, never an
                            augmented copy), names (str [n_features]: openSMILE's feature names);
                            attrs: feature_set, feature_level (JSON strings)

Genders are ``F`` and ``M`` (``/vocab/gender``); a corpus that does not know a speaker's gender
(MSP-Podcast) writes ``U`` in the manifest and -1 in ``segments/gender``. Speakers a corpus does
not identify are pseudo speakers named ``unknown:<group>`` (MSP-Podcast: one per partition),
so folds stay speaker independent; generated folds never draw them as validation speakers
(an official partition keeps them in its own part) and they are never speaker-task classes
(:func:`is_known_speaker`).

Dimensional ratings. IEMOCAP (rater means, 1-5), MSP-IMPROV (1-5, NaN where the file has
none) and MSP-Podcast (1-7) rate arousal, valence and dominance; the build copies each
utterance's manifest value to its segments unchanged (never rescaled, never imputed) and
records the scale, so a consumer reads ratings per segment from :meth:`StoreReader.segments`
and their scales from :meth:`StoreReader.dimension_scales` without the manifest. Other ratings
(MSP-IMPROV's naturalness) stay manifest extras.

Schema versions. A reader accepts :data:`READABLE_SCHEMA_VERSIONS`. Version 3 added the
``dimensions`` attribute with the rating columns of ``/segments``, and ``feature_kind`` and
``feature_channels``; a version 2 store opens as a store without ratings
(``dimension_scales()`` is empty, ``segments()`` has no rating columns) whose frames are
3-channel log-Mel (all a version 2 store can hold), everything else unchanged. A store whose
kind this serprep does not register, or whose channels are not that kind's, is refused. The
bump makes a serprep that reads only version 2 refuse a version 3 store rather than miss what
it cannot read (a store of another kind read as log-Mel would be a silent wrong result).

Strings are variable-length UTF-8. A segment's input is
``features[item.frame_start + offset : ... + valid]`` transposed to ``[C, valid, n_mels]`` and
zero-padded to ``segment_config.frames``.

Integrity. ``checksums`` maps every dataset (``"segments/emotion"``) to the SHA-256 of its
shape, dtype and values (``/features``: a SHA-256 over a CRC-32 per item), and every group or
dataset that has attributes (``"folds/loso/1@attrs"``) to the SHA-256 of those attributes.
``attrs_sha256`` covers the root attributes including that table, so it identifies the whole
content. HDF5 itself checksums the metadata of files written with ``libver="v110"`` (object
headers, B-trees, heaps), but not raw data nor the global heap that holds variable-length
strings: the table covers those. :class:`StoreReader` checks the root hash and every dataset
but ``/features`` each time it opens a store (cheap), and can check ``/features`` too
(``verify_features``); :func:`verify` checks everything. A reader also records the file's
identity (device, inode, size, modification time) and refuses to read from a file that is no
longer the one it checked. Schema 1 stores (no attribute checksums) are refused: rebuild them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple, Sequence

import h5py
import numpy as np

from .config import FeatureConfig, SegmentConfig
if TYPE_CHECKING:  # pandas is imported on first use: the build's writer never needs it
    import pandas as pd

from . import __version__
from .checksum import ITEM_CHECKSUM, combine_item_digests, frames_digest
from .errors import SerprepError, StoreError
from .features import DEFAULT_FEATURE_KIND, FeatureKind, feature_kind
from .output import GuardedFile, is_disk_full, publish, temp_path

FORMAT = "serprep-store"
SCHEMA_VERSION = 3
#: Schema versions this code reads: 2 is 3 without dimensional ratings and feature kind (read
#: as no ratings and 3-channel log-Mel, which is what every schema 2 store holds).
READABLE_SCHEMA_VERSIONS = (2, 3)
#: What the frames of a store without ``feature_kind`` (schema 2) are, whatever the default
#: kind of later builds.
UNSTATED_FEATURE_KIND = "logmel"
# 256 frames x 3 x 40 mels x 4 B = 120 KiB per chunk: a 300-frame segment touches 2-3 chunks.
CHUNK_FRAMES = 256
# Sized for the chunk layout: a minibatch of 64 segments touches up to ~190 chunks (23 MiB).
CHUNK_CACHE_BYTES = 64 * 1024 * 1024
CHUNK_CACHE_SLOTS = 100_003  # prime, >> chunks in cache, as HDF5 recommends
_STR = h5py.string_dtype("utf-8")
_DIGEST_BLOCK_BYTES = 16 * 1024 * 1024
#: Suffix of a checksum-table key that names an object's attributes rather than a dataset.
ATTRS_KEY = "@attrs"

#: The segment table's columns and their on-disk dtypes (the fields of :class:`SegmentTable`).
SEGMENT_DTYPES = {
    "item": np.int64, "utt": np.int64, "copy": np.int32, "offset": np.int64, "valid": np.int32,
    "dense": np.uint8, "emotion": np.int16, "gender": np.int16, "speaker": np.int32,
}
SEGMENT_COLUMNS = tuple(SEGMENT_DTYPES)
ITEM_COLUMNS = ("utt", "copy", "frame_start", "n_frames", "augmentation")
#: ``/vocab/gender``; the manifest writes :data:`UNKNOWN_GENDER` (segment id -1) for anyone else.
GENDERS = ("F", "M")
UNKNOWN_GENDER = "U"
#: Prefix of the pseudo speaker that stands for utterances whose speaker the corpus does not know.
UNKNOWN_SPEAKER_PREFIX = "unknown:"
#: Dimensional ratings a store can carry per segment (``/segments/<name>``, float32, NaN =
#: not rated), in this order; a store holds those its corpus rates (the root ``dimensions``).
DIMENSIONS = ("arousal", "valence", "dominance")
DIMENSION_DTYPE = np.float32
#: The datasets of a ``/functionals/<set>`` group.
FUNCTIONALS_ARRAYS = ("utt", "values", "names")


class ItemRow(NamedTuple):
    """One item (an utterance's original or an augmented copy) as :meth:`StoreWriter.add_block`
    takes it; ``/items`` gets ``utt``, ``copy``, ``n_frames``, ``augmentation`` and the item's
    ``frame_start``. ``digest`` is :func:`frames_digest` of its frames (None: computed there)."""

    utt: int
    copy: int
    n_frames: int
    augmentation: str
    digest: str | None = None


class FailureRow(NamedTuple):
    """A row of ``/failures`` (:meth:`StoreReader.failures`): a file or label line skipped."""

    utt_id: str
    path: str
    error: str


class WarningRow(NamedTuple):
    """A row of ``/warnings`` (:meth:`StoreReader.warnings`): accepted, but worth knowing."""

    utt_id: str
    path: str
    message: str


FAILURE_COLUMNS = FailureRow._fields
WARNING_COLUMNS = WarningRow._fields


@dataclass
class SegmentTable:
    """The segment table (row i = segment i) as :meth:`StoreReader.segments` returns it; the
    columns are cast to their on-disk dtypes (:data:`SEGMENT_DTYPES`) and must be equally long.

    ``dimensions``: the corpus' dimensional ratings of each segment's utterance (a name of
    :data:`DIMENSIONS` -> float32 values, NaN = not rated); empty for a corpus without them.
    """

    item: np.ndarray
    utt: np.ndarray
    copy: np.ndarray
    offset: np.ndarray
    valid: np.ndarray
    dense: np.ndarray
    emotion: np.ndarray
    gender: np.ndarray
    speaker: np.ndarray
    dimensions: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, dtype in SEGMENT_DTYPES.items():
            setattr(self, name, np.asarray(getattr(self, name), dtype=dtype).reshape(-1))
        unknown = sorted(set(self.dimensions) - set(DIMENSIONS))
        if unknown:
            raise StoreError(f"segment table: unknown dimension {unknown[0]!r}; known: {', '.join(DIMENSIONS)}")
        # In DIMENSIONS order, whatever order they came in: the table's columns are canonical.
        self.dimensions = {name: np.asarray(self.dimensions[name], dtype=DIMENSION_DTYPE).reshape(-1)
                           for name in DIMENSIONS if name in self.dimensions}
        lengths = {len(v) for v in self.columns().values()}
        if len(lengths) > 1:
            raise StoreError(f"segment table columns differ in length ({sorted(lengths)})")

    def __len__(self) -> int:
        return len(self.item)

    def columns(self) -> dict[str, np.ndarray]:
        """Column name -> array: :data:`SEGMENT_COLUMNS`, then the dimensions it has."""
        return {**{name: getattr(self, name) for name in SEGMENT_COLUMNS}, **self.dimensions}

    @classmethod
    def concat(cls, parts: Sequence["SegmentTable"]) -> "SegmentTable":
        """The rows of ``parts`` one after the other (an empty table for no parts); the parts
        must carry the same dimensions."""
        if not parts:
            return cls(**{name: np.zeros(0, dtype) for name, dtype in SEGMENT_DTYPES.items()})
        dims = [list(p.dimensions) for p in parts]
        if any(d != dims[0] for d in dims):
            raise StoreError(f"segment tables to join carry different dimensions ({dims[0]} and "
                             f"{next(d for d in dims if d != dims[0])})")
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in SEGMENT_COLUMNS},
                   dimensions={d: np.concatenate([p.dimensions[d] for p in parts]) for d in dims[0]})


@dataclass
class Manifest:
    """The utterance table (row i = utterance i) as :meth:`StoreReader.manifest` returns it.

    ``utterances`` are the corpus reader's :class:`serprep.corpora.Utterance` rows (id, corpus,
    session, speaker, gender, raw label, path and the corpus' extra columns); the other fields
    are what the build decided or found for each, in the same order. ``duration``: None = not
    known (written as NaN).
    """

    utterances: Sequence[Any]
    emotion: Sequence[str]
    duration: Sequence[float | None]
    status: Sequence[str]
    n_segments: Sequence[int]
    audio_sha256: Sequence[str]
    source_rate: Sequence[int]

    def columns(self) -> Iterator[tuple[str, list[Any]]]:
        """``(name, values)`` per manifest column, made one at a time (a large corpus' whole
        table at once was the largest allocation of a build's last phase)."""
        utts = self.utterances
        for name in ("utt_id", "corpus", "session", "speaker", "gender", "emotion_raw"):
            yield name, [getattr(u, name) for u in utts]
        yield "emotion", list(self.emotion)
        yield "duration", [float("nan") if d is None else float(d) for d in self.duration]
        yield "path", [u.path for u in utts]
        yield "status", list(self.status)
        yield "n_segments", [int(n) for n in self.n_segments]
        yield "audio_sha256", list(self.audio_sha256)
        yield "source_rate", [int(r) for r in self.source_rate]
        for key in sorted({k for u in utts for k in u.extras}):
            yield key, _extra_column([u.extras.get(key) for u in utts])


def _extra_column(values: list[Any]) -> list[Any]:
    """A corpus extra as a column: numbers (None -> NaN) or strings (None -> "")."""
    if all(isinstance(v, (int, float)) or v is None for v in values):
        return [float("nan") if v is None else float(v) for v in values]
    return ["" if v is None else str(v) for v in values]


@dataclass
class BuildRecord:
    """The root attributes a build writes about itself (the writer adds the format, schema,
    feature config and checksums); :meth:`StoreReader.record` reads them back."""

    corpus: str
    created: str  # UTC, ISO 8601, seconds
    versions: dict[str, str]
    segment_config: SegmentConfig
    build: dict[str, Any]  # classes, subset, augmentation, balancing, seed, fold notes, protocol
    label_manifest: dict[str, Any]
    corpus_fingerprint: str

    def attrs(self) -> dict[str, str]:
        """The root attributes, JSON values with sorted keys."""
        return {
            "corpus": self.corpus,
            "created": self.created,
            "versions": json.dumps(self.versions, sort_keys=True),
            "segment_config": json.dumps(self.segment_config.to_dict(), sort_keys=True),
            "build": json.dumps(self.build, sort_keys=True),
            "label_manifest": json.dumps(self.label_manifest, sort_keys=True),
            "corpus_fingerprint": self.corpus_fingerprint,
        }


class Functionals(NamedTuple):
    """One set of utterance functionals (``/functionals/<set>``), as
    :meth:`StoreReader.functionals` returns it and :meth:`StoreWriter.write_functionals`
    takes it: ``utt`` int64 ``[n]`` manifest rows, ``names`` the ``n_features`` feature names,
    ``values`` float32 ``[n, n_features]`` (row k = utterance ``utt[k]``)."""

    utt: np.ndarray
    names: list[str]
    values: np.ndarray


def is_known_speaker(speaker: str) -> bool:
    """False for the ``unknown:<group>`` pseudo speakers (many people under one name)."""
    return not speaker.startswith(UNKNOWN_SPEAKER_PREFIX)


def gender_id(gender: str) -> int:
    """Segment gender id: index into :data:`GENDERS`, -1 for unknown."""
    return GENDERS.index(gender) if gender in GENDERS else -1


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------
def dataset_digest(ds: h5py.Dataset) -> str:
    """SHA-256 of a dataset's shape, dtype and content (read in blocks, bounded memory)."""
    if ds.dtype.kind == "O" or h5py.check_string_dtype(ds.dtype) is not None:
        return _strings_digest(ds.shape, ds.asstr()[()] if ds.shape else [ds.asstr()[()]])
    h = _digest_header(ds.shape, ds.dtype)
    if not ds.shape:
        h.update(np.asarray(ds[()]).tobytes())
        return h.hexdigest()
    row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
    rows = max(1, _DIGEST_BLOCK_BYTES // max(1, row_bytes))
    for start in range(0, ds.shape[0], rows):
        h.update(np.ascontiguousarray(ds[start : start + rows]).tobytes())
    return h.hexdigest()


def array_digest(arr: np.ndarray) -> str:
    """:func:`dataset_digest` of the dataset h5py writes from ``arr``, without reading it back.

    The writer records checksums as it writes (re-reading ~180 small datasets cost a tenth
    of a 1-hour build); ``serprep verify`` recomputes them from the file with
    :func:`dataset_digest`, and the tests check that the two agree for every dataset.
    """
    if arr.dtype.kind == "O" or h5py.check_string_dtype(arr.dtype) is not None:
        return _strings_digest(arr.shape, arr.tolist() if arr.shape else [arr.item()])
    h = _digest_header(arr.shape, arr.dtype)
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _digest_header(shape: tuple[int, ...], dtype: np.dtype) -> "hashlib._Hash":
    h = hashlib.sha256()
    h.update(f"{tuple(shape)}|{dtype.str}".encode())
    return h


def _strings_digest(shape: tuple[int, ...], values: Iterable[str | bytes]) -> str:
    """SHA-256 of the shape and each value's UTF-8 bytes followed by a NUL."""
    h = hashlib.sha256()
    h.update(f"{tuple(shape)}|str".encode())
    texts = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
    if texts:  # one update over the joined text: the same bytes as value by value, far fewer calls
        h.update(("\x00".join(texts) + "\x00").encode("utf-8"))
    return h.hexdigest()


def features_digest(f: h5py.File) -> str:
    """Recompute the ``/features`` checksum from the stored frames and the item table."""
    algorithm = _plain(f.attrs["item_checksum"])
    ds = f["features"]
    starts = f["items/frame_start"][()]
    counts = f["items/n_frames"][()]
    expected = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else counts
    if not np.array_equal(starts, expected) or int(counts.sum()) != ds.shape[0]:
        return "items table does not tile /features"
    digests = []
    rows = max(1, _DIGEST_BLOCK_BYTES // (ds.dtype.itemsize * int(np.prod(ds.shape[1:]))))
    block_start, block = 0, ds[0:0]
    for start, count in zip(starts.tolist(), counts.tolist()):
        if start + count > block_start + len(block):
            block_start, block = start, ds[start : max(start + count, start + rows)]
        digests.append(frames_digest(block[start - block_start : start - block_start + count], algorithm))
    return combine_item_digests(ds.shape, digests, algorithm)


def attrs_digest(attrs: h5py.AttributeManager, skip: Iterable[str] = ()) -> str:
    """SHA-256 over an object's attributes (sorted by name), leaving out the names in ``skip``."""
    skipped = set(skip)
    h = hashlib.sha256()
    for key in sorted(attrs):
        if key in skipped:
            continue
        h.update(key.encode())
        h.update(b"=")
        h.update(repr(_plain(attrs[key])).encode())
        h.update(b"\x00")
    return h.hexdigest()


def root_digest(attrs: h5py.AttributeManager) -> str:
    """The store's content id: :func:`attrs_digest` of the root attributes but itself."""
    return attrs_digest(attrs, skip=("attrs_sha256",))


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _contents(f: h5py.File) -> tuple[list[str], list[str]]:
    """(datasets, groups and datasets that carry attributes), each sorted, in one visit."""
    datasets: list[str] = []
    attr_sets: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            datasets.append(name)
        if len(obj.attrs):
            attr_sets.append(name)

    f.visititems(visit)
    return sorted(datasets), sorted(attr_sets)


def _checksum_key_text(name: str) -> tuple[str, bool]:
    """How a checksum-table key reads in a message, and whether it names attributes."""
    if name.endswith(ATTRS_KEY):
        return f"attributes of /{name[: -len(ATTRS_KEY)]}", True
    return f"dataset /{name}", False


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_contents(f: h5py.File, *, features: bool, keep: Iterable[str] = ()) -> tuple[list[str], dict[str, Any]]:
    """Check an open store against its recorded checksums.

    Returns ``(problems, kept)``: one line per problem (no file name; empty = intact) and the
    values of the datasets named in ``keep`` (a name, or a group prefix ending in ``/``) as
    read for the check, so a reader need not read them twice. ``/features`` is only checked
    with ``features`` (it is the bulk of the file). Damaged HDF5 metadata is reported as a
    problem, not raised.
    """
    problems: list[str] = []
    kept: dict[str, Any] = {}
    wanted = set(keep)
    prefixes = tuple(k for k in wanted if k.endswith("/"))
    try:
        if _plain(f.attrs.get("attrs_sha256", "")) != root_digest(f.attrs):
            problems.append("root attributes (configs, build options or checksum table) changed since the store was written")
        try:
            recorded = json.loads(_plain(f.attrs["checksums"]))
        except (KeyError, ValueError, TypeError):
            return problems + ["no readable checksum table"], kept
        datasets, attr_sets = _contents(f)
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError... for damaged metadata
        return problems + [f"HDF5 metadata is damaged ({_short(exc)})"], kept
    present = set(datasets) | {name + ATTRS_KEY for name in attr_sets}
    for name in sorted(set(recorded) - present):
        what, plural = _checksum_key_text(name)
        problems.append(f"{what} {'are' if plural else 'is'} missing")
    for name in sorted(present - set(recorded)):
        what, plural = _checksum_key_text(name)
        problems.append(f"{what} {'were' if plural else 'was'} added after the store was written")
    for name in sorted(set(recorded) & present):
        if name == "features" and not features:
            continue
        try:
            if name.endswith(ATTRS_KEY):
                obj = name[: -len(ATTRS_KEY)]
                if attrs_digest(f[obj].attrs) != recorded[name]:
                    problems.append(f"attributes of /{obj} changed")
                continue
            if name == "features":
                digest = features_digest(f)
            else:
                value = _read_dataset(f[name])
                digest = _value_digest(value)
                if name in wanted or name.startswith(prefixes):
                    kept[name] = value
        except Exception as exc:
            problems.append(f"dataset /{name} is unreadable ({_short(exc)})")
            continue
        if digest != recorded[name]:
            problems.append(f"dataset /{name} checksum mismatch")
    return problems, kept


def _read_dataset(ds: h5py.Dataset) -> np.ndarray:
    """A dataset's values (strings decoded to a str array) in one read."""
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[()], dtype=object)
    return ds[()]


def _value_digest(value: np.ndarray) -> str:
    if value.dtype.kind == "O":
        return _strings_digest(value.shape, value.tolist() if value.shape else [value.item()])
    return array_digest(value)


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------
class StoreWriter:
    """Writes a store to a temporary file beside ``path``; :meth:`finalize` publishes it.

    Use as a context manager: on an exception the temporary file is removed and ``path`` is
    left untouched. Feature frames are appended a block of items per HDF5 write. The
    temporary file is ``.<name>.tmp-<host>-<pid>`` (see :mod:`serprep.output`); publishing
    never replaces a file that appeared at ``path`` meanwhile unless ``overwrite``. A full
    disk ends in one :class:`StoreError` ("no space left on device while writing ...") with
    the temporary file removed, never in a crash (see :class:`serprep.output.GuardedFile`).

    Its typed methods take what :class:`StoreReader` gives back: :meth:`add_block` frames with
    their :class:`ItemRow` s (``/items``, written by :meth:`finalize`), :meth:`write_manifest`
    a :class:`Manifest`, :meth:`write_segments` a :class:`SegmentTable`, :meth:`write_fold` a
    :class:`Fold`, :meth:`write_vocab`, :meth:`write_failures` / :meth:`write_warnings` rows
    and :meth:`write_record` a :class:`BuildRecord`; no caller lists a column.
    """

    def __init__(self, path: str | Path, feature_config: FeatureConfig, *, overwrite: bool = False,
                 kind: str = DEFAULT_FEATURE_KIND) -> None:
        self.path = Path(path)
        self.kind: FeatureKind = feature_kind(kind)
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path}: already exists (use --overwrite to replace it)")
        if not self.path.parent.is_dir():
            raise StoreError(f"{self.path}: output folder {self.path.parent} does not exist")
        self.overwrite = overwrite
        self.tmp_path = temp_path(self.path)
        self.cfg = feature_config
        self._sink = GuardedFile(self.tmp_path)
        self._done = False
        try:
            self._file = h5py.File(self._sink, "w", libver=("v110", "latest"))
            frame_shape = (len(self.kind.channels), feature_config.n_mels)
            self._features = self._file.create_dataset(
                "features", shape=(0, *frame_shape), maxshape=(None, *frame_shape), dtype=np.float32,
                chunks=(CHUNK_FRAMES, *frame_shape),
            )
        except BaseException:
            self.abort()
            raise
        self._check_sink()
        self._frames_written = 0
        self.items: dict[str, list[Any]] = {k: [] for k in ITEM_COLUMNS}
        self._item_digests: list[str] = []
        self._digests: dict[str, str] = {}

    def _check_sink(self) -> None:
        """Raise the first write error the file saw (see :class:`GuardedFile`) as one line."""
        error = self._sink.error
        if error is None:
            return
        if is_disk_full(error):
            raise StoreError(f"no space left on device while writing {self.path}; nothing written")
        raise StoreError(f"cannot write {self.path} ({error.strerror or error}); nothing written")

    # -- features ---------------------------------------------------------------------------
    def add_block(self, frames: np.ndarray, items: Sequence[ItemRow]) -> list[int]:
        """Append the frames of several items, back to back in storage layout ``[T, 3, n_mels]``.

        ``items`` are :class:`ItemRow` ``(utt, copy, n_frames, augmentation, digest)`` (plain
        tuples work too) in the order of their frames, ``digest`` being :func:`frames_digest`
        of the item's frames (None: computed here). Returns the item ids. The block goes to HDF5 in one write, straight from the
        caller's array: the extraction workers hand over whole blocks, so the writer never
        copies frames itself.
        """
        channels = len(self.kind.channels)
        if frames.ndim != 3 or frames.shape[1] != channels or frames.shape[2] != self.cfg.n_mels:
            raise StoreError(f"frame array of shape {frames.shape} does not match [T, {channels}, {self.cfg.n_mels}] "
                             f"({self.kind.name} frames)")
        if sum(item[2] for item in items) != frames.shape[0]:
            raise StoreError(f"items hold {sum(item[2] for item in items)} frames but the block has {frames.shape[0]}")
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        ids = []
        offset = 0  # within the block
        for utt, copy, n, augmentation, digest in items:
            self._item_digests.append(digest or frames_digest(frames[offset : offset + n]))
            ids.append(len(self.items["utt"]))
            for key, value in zip(ITEM_COLUMNS, (utt, copy, self._frames_written + offset, n, augmentation)):
                self.items[key].append(value)
            offset += n
        if frames.shape[0]:
            end = self._frames_written + frames.shape[0]
            self._features.resize(end, axis=0)
            self._features[self._frames_written : end] = frames
            self._frames_written = end
            self._check_sink()
        return ids

    def add_frames(self, utt: int, copy: int, frames: np.ndarray, augmentation: str = "",
                   digest: str | None = None) -> tuple[int, int]:
        """Append one item's frames ``[T, 3, n_mels]``; returns ``(item_id, frame_start)``."""
        start = self._frames_written
        (item_id,) = self.add_block(frames, [(utt, copy, frames.shape[0], augmentation, digest)])
        return item_id, start

    # -- tables -----------------------------------------------------------------------------
    def write_table(self, group: str, columns: dict[str, Iterable[Any]]) -> None:
        """Write a column table as one 1-D dataset per column (strings as UTF-8)."""
        g = self._file.require_group(group)
        for name, values in columns.items():
            data = _column_array(values)
            g.create_dataset(name, data=data)
            self._digests[f"{group}/{name}"] = array_digest(data)
        self._check_sink()

    def write_array(self, name: str, data: np.ndarray, **attrs: Any) -> None:
        data = np.asarray(data)
        ds = self._file.create_dataset(name, data=data)
        self._digests[name] = array_digest(data)
        for key, value in attrs.items():
            ds.attrs[key] = value
        self._check_sink()

    def write_segments(self, segments: SegmentTable, dimension_scales: dict[str, tuple[float, float]] | None = None) -> None:
        """``/segments``: the segment table, in its on-disk dtypes, and the root attribute
        ``dimensions``: the scale ``(low, high)`` of each rating column the table carries (the
        corpus' own; the two must name the same dimensions)."""
        scales = dict(dimension_scales or {})
        if set(scales) != set(segments.dimensions):
            raise StoreError(f"dimension scales given for {sorted(scales)} but the segment table carries "
                             f"{sorted(segments.dimensions)}")
        for name, scale in scales.items():
            _check_scale(name, scale)
        self.write_table("segments", segments.columns())
        self.set_attrs(dimensions=json.dumps({name: [float(lo), float(hi)] for name, (lo, hi) in scales.items()},
                                             sort_keys=True))

    def write_manifest(self, manifest: Manifest) -> None:
        """``/manifest``: one dataset per column, written one column at a time."""
        for name, values in manifest.columns():
            self.write_table("manifest", {name: values})

    def write_vocab(self, emotion: Sequence[str], speaker: Sequence[str]) -> None:
        """``/vocab``: the emotion and speaker labels of the segment ids (genders are fixed:
        :data:`GENDERS`)."""
        self.write_table("vocab", {"emotion": list(emotion), "gender": list(GENDERS), "speaker": list(speaker)})

    def write_failures(self, rows: Sequence[FailureRow]) -> None:
        """``/failures``: the files and label lines the build skipped (empty columns included)."""
        self._write_rows("failures", FAILURE_COLUMNS, rows)

    def write_warnings(self, rows: Sequence[WarningRow]) -> None:
        """``/warnings``: what the build accepted but reported (empty columns included)."""
        self._write_rows("warnings", WARNING_COLUMNS, rows)

    def write_record(self, record: BuildRecord) -> None:
        """The root attributes that describe the build (:class:`BuildRecord`)."""
        self.set_attrs(**record.attrs())

    def write_fold(self, fold: "Fold") -> None:
        """One fold as :meth:`StoreReader.fold` returns it; refuses non-finite statistics."""
        for name in ("norm_mean", "norm_std"):
            if not np.all(np.isfinite(getattr(fold, name))):
                raise StoreError(f"fold {fold.scheme}/{fold.fold}: normalisation statistics ({name}) are not finite")
        group = f"folds/{fold.scheme}/{fold.fold}"
        for name in FOLD_ARRAYS:
            value = getattr(fold, name)
            self.write_array(f"{group}/{name}", value.astype(np.float32) if name.startswith("norm_") else value)
        self.set_group_attrs(
            group,
            train_speakers=json.dumps(list(fold.train_speakers)),
            validation_speakers=json.dumps(list(fold.validation_speakers)),
            test_speakers=json.dumps(list(fold.test_speakers)),
            counts=json.dumps(fold.counts, sort_keys=True),
            # Only where there is a label, so stores without one keep their bytes and checksums.
            **({"label": json.dumps(fold.label)} if fold.label else {}),
        )

    def write_functionals(self, name: str, functionals: Functionals, feature_set: str, feature_level: str) -> None:
        """``/functionals/<name>``; refuses mismatched shapes or non-finite values (the build
        records such an utterance as failed instead: :mod:`serprep.functionals`)."""
        utt = np.asarray(functionals.utt, dtype=np.int64).reshape(-1)
        values = np.asarray(functionals.values, dtype=np.float32)
        names = list(functionals.names)
        if values.shape != (len(utt), len(names)):
            raise StoreError(f"functionals {name}: values of shape {values.shape} do not match "
                             f"{len(utt)} utterances x {len(names)} names")
        if not np.isfinite(values).all():
            raise StoreError(f"functionals {name}: values are not all finite")
        group = f"functionals/{name}"
        self.write_array(f"{group}/utt", utt)
        self.write_array(f"{group}/values", values)
        self.write_array(f"{group}/names", _column_array(names) if names else np.zeros(0, dtype=_STR))
        self.set_group_attrs(group, feature_set=json.dumps(feature_set), feature_level=json.dumps(feature_level))

    def _write_rows(self, group: str, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
        """A string table from rows, empty columns included."""
        self.write_table(group, {name: np.array([r[k] for r in rows], dtype=object) for k, name in enumerate(columns)})

    def set_group_attrs(self, group: str, **attrs: Any) -> None:
        g = self._file.require_group(group)
        for key, value in attrs.items():
            g.attrs[key] = value

    def set_attrs(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            self._file.attrs[key] = value

    # -- finish -----------------------------------------------------------------------------
    def finalize(self) -> Path:
        """Write items, checksums and the schema stamp, close, and publish at ``path``."""
        try:
            self.write_table("items", self.items)
            f = self._file
            f.attrs["format"] = FORMAT
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["feature_config"] = self.cfg.to_json()
            f.attrs["feature_kind"] = self.kind.name
            f.attrs["feature_channels"] = json.dumps(list(self.kind.channels))
            f.attrs["item_checksum"] = ITEM_CHECKSUM
            datasets, attr_sets = _contents(f)
            checksums = {name: self._digests.get(name) or dataset_digest(f[name])
                         for name in datasets if name != "features"}
            checksums["features"] = combine_item_digests(f["features"].shape, self._item_digests)
            for name in attr_sets:
                checksums[name + ATTRS_KEY] = attrs_digest(f[name].attrs)
            f.attrs["checksums"] = json.dumps(checksums, sort_keys=True)
            f.attrs["attrs_sha256"] = root_digest(f.attrs)
            f.close()
            # No fsync: it cost 0.18 s of a 2.3 s build (4-hour corpus). The rename is atomic
            # for a killed process; after a power cut a store may be incomplete, and its
            # checksums then say so on the next open.
            self._sink.close()
            self._check_sink()
            publish(self.tmp_path, self.path, self.overwrite)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file."""
        if hasattr(self, "_file"):
            with contextlib.suppress(Exception):
                self._file.close()
        with contextlib.suppress(Exception):
            self._sink.close()
        self.tmp_path.unlink(missing_ok=True)
        self._done = True

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()


def _check_scale(name: str, scale: Any) -> tuple[float, float]:
    """``(low, high)`` of a dimension's rating scale: two finite numbers, low < high."""
    try:
        lo, hi = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise StoreError(f"dimension {name!r}: scale {scale!r} is not a pair of numbers (low, high)") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise StoreError(f"dimension {name!r}: scale {scale!r} needs finite low < high")
    return lo, hi


def _column_array(values: Iterable[Any]) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind in "USO":
        return np.array([str(v) for v in values.tolist()], dtype=_STR)
    values = list(values)
    if values and all(isinstance(v, str) for v in values):
        return np.array(values, dtype=_STR)
    arr = np.asarray(values)
    if arr.dtype.kind in "USO":
        return np.array(["" if v is None else str(v) for v in values], dtype=_STR)
    if not values:
        return np.zeros(0, dtype=np.int64)
    return arr


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------
@dataclass
class Fold:
    """One speaker-independent fold as stored (indices into manifest rows / segment rows)."""

    scheme: str
    fold: int
    train_utts: np.ndarray
    validation_utts: np.ndarray
    test_utts: np.ndarray
    train_segments: np.ndarray
    validation_segments: np.ndarray
    test_segments: np.ndarray
    balanced_index: np.ndarray
    norm_mean: np.ndarray
    norm_std: np.ndarray
    train_speakers: list[str] = field(default_factory=list)
    validation_speakers: list[str] = field(default_factory=list)
    test_speakers: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # a fold's name where it has one (the official partition it tests)


FOLD_ARRAYS = (
    "train_utts", "validation_utts", "test_utts", "train_segments", "validation_segments",
    "test_segments", "balanced_index", "norm_mean", "norm_std",
)


@dataclass(frozen=True)
class FileIdentity:
    """What says a path still names the file that was checked: device, inode, size, mtime."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileIdentity":
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def differences(self, other: "FileIdentity") -> list[str]:
        names = {"device": "device", "inode": "inode (replaced)", "size": "size", "mtime_ns": "modification time"}
        return [label for key, label in names.items() if getattr(self, key) != getattr(other, key)]


class StoreReader:
    """Read-only, checked access to a store.

    Opening checks the schema, the root attribute hash and the checksum of every dataset and
    attribute set but ``/features`` (and ``/features`` too with ``verify_features``), and
    refuses a damaged or modified store with one :class:`StoreError` line. It records the
    file's identity and content id: every later read (a fold, the manifest, a minibatch, a
    re-open in another process) first checks that the path still names that file, so a store
    rebuilt or edited while a run reads it stops the run instead of mixing two files.

    The HDF5 file is opened lazily on first data access and re-opened in a new process
    (after a fork, or when unpickled in a DataLoader worker): HDF5 handles must not cross a
    fork. Small tables are loaded once and kept as numpy arrays.
    """

    def __init__(self, path: str | Path, *, verify_features: bool = False) -> None:
        self.path = Path(path)
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        keep = ["segments/", "vocab/", "items/frame_start"]
        identity = self._stat()
        with _open_store(self.path) as f:
            problems, kept = check_contents(f, features=verify_features, keep=keep)
            if problems:
                raise StoreError(_problems_line(self.path, problems))
            self.attrs = {k: _plain(v) for k, v in f.attrs.items()}
            self._checksums: dict[str, str] = json.loads(self.attrs["checksums"])
            self.n_frames_total = f["features"].shape[0]
            stored_channels = f["features"].shape[1] if f["features"].ndim == 3 else -1
        if self._stat() != identity:
            raise StoreError(f"{self.path}: the store changed while it was being checked; try again")
        self.identity = identity
        try:
            self.feature_config = FeatureConfig.from_dict(json.loads(self.attrs["feature_config"]))
            self.segment_config = SegmentConfig.from_dict(json.loads(self.attrs["segment_config"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"{self.path}: unreadable feature or segment configuration ({_short(exc)})") from None
        self.feature_kind, self.feature_channels = self._read_feature_kind(stored_channels)
        self._vocab = {name.split("/", 1)[1]: [str(v) for v in value.tolist()]
                       for name, value in kept.items() if name.startswith("vocab/")}
        self._segments = {k: kept[f"segments/{k}"] for k in SEGMENT_COLUMNS}
        self._scales = self._read_dimension_scales()
        self._dimensions = self._dimension_columns(kept)
        self._item_start = kept["items/frame_start"]
        self._schemes = _fold_ids_from(self._checksums)
        self._seg_start = self._item_start[self._segments["item"]] + self._segments["offset"]
        self._seg_valid = self._segments["valid"].astype(np.int64)

    def _read_feature_kind(self, stored: int) -> tuple[str, tuple[str, ...]]:
        """``(kind, channel names)`` of the frames: the root ``feature_kind`` and
        ``feature_channels`` (a schema 2 store has neither: log-Mel, 3 channels, all it could
        hold). A kind this serprep does not know, or channels other than the kind's, are refused:
        reading them as another kind would be a silent wrong result."""
        name = str(self.attrs.get("feature_kind", UNSTATED_FEATURE_KIND))
        try:
            kind = feature_kind(name)
        except SerprepError as exc:
            raise StoreError(f"{self.path}: store features are of kind {name!r}: {str(exc).split('; ', 1)[-1]}; "
                             "read it with a serprep that knows that kind") from None
        try:
            channels = tuple(json.loads(self.attrs["feature_channels"])) if "feature_channels" in self.attrs else kind.channels
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{self.path}: unreadable feature_channels attribute ({_short(exc)})") from None
        if channels != kind.channels:
            raise StoreError(f"{self.path}: store {name} frames have channels {list(channels)}, this serprep's {name} "
                             f"has {list(kind.channels)}")
        if stored != len(channels):
            raise StoreError(f"{self.path}: damaged store: /features holds {stored} channels per frame, "
                             f"{name} has {len(channels)}")
        return name, channels

    @property
    def n_channels(self) -> int:
        """Channels per frame (:attr:`feature_channels`): the ``C`` of :meth:`read_segments`."""
        return len(self.feature_channels)

    def _read_dimension_scales(self) -> dict[str, tuple[float, float]]:
        """The root ``dimensions`` attribute (absent in schema 2: no ratings), checked."""
        text = self.attrs.get("dimensions")
        if text is None:
            return {}
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            unknown = sorted(set(raw) - set(DIMENSIONS))
            if unknown:
                raise ValueError(f"unknown dimension {unknown[0]!r}")
            return {name: _check_scale(name, raw[name]) for name in DIMENSIONS if name in raw}
        except (ValueError, TypeError, StoreError) as exc:
            raise StoreError(f"{self.path}: unreadable dimensions attribute ({_short(exc)})") from None

    def _dimension_columns(self, kept: dict[str, Any]) -> dict[str, np.ndarray]:
        """``/segments/<dimension>`` of each dimension the store has a scale for (and only those:
        a rating column without its scale cannot be read correctly, so it is refused)."""
        n = len(self._segments["item"])
        for name in DIMENSIONS:
            if f"segments/{name}" in kept and name not in self._scales:
                raise StoreError(f"{self.path}: damaged store: /segments/{name} has no scale in the dimensions attribute")
        out = {}
        for name in self._scales:
            column = kept.get(f"segments/{name}")
            if column is None:
                raise StoreError(f"{self.path}: damaged store: the dimensions attribute names {name} "
                                 f"but /segments/{name} is missing")
            if column.dtype != DIMENSION_DTYPE or column.shape != (n,):
                raise StoreError(f"{self.path}: damaged store: /segments/{name} is {column.dtype} {list(column.shape)}, "
                                 f"expected float32 [{n}]")
            out[name] = column
        return out

    # -- identity ---------------------------------------------------------------------------
    def _stat(self) -> FileIdentity:
        try:
            return FileIdentity.of(self.path)
        except FileNotFoundError:
            raise StoreError(f"{self.path}: no such file") from None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read ({exc.strerror or exc})") from None

    def check_identity(self) -> None:
        """Raise :class:`StoreError` if the path no longer names the file checked at open."""
        try:
            now = FileIdentity.of(self.path)
        except OSError:
            raise StoreError(f"{self.path}: the store changed since it was opened (the file is gone); "
                             "nothing read from it after that") from None
        if now != self.identity:
            raise StoreError(
                f"{self.path}: the store changed since it was opened ({', '.join(self.identity.differences(now))} "
                "differ: rebuilt or modified while in use); results would mix two files, so stopping"
            )

    @contextlib.contextmanager
    def _reopen(self) -> Iterator[h5py.File]:
        """The file again, after checking it is the one checked at open."""
        self.check_identity()
        with _open_store(self.path) as f:
            self._check_content_id(f)
            yield f

    def _check_content_id(self, f: h5py.File) -> None:
        """Refuse a re-opened file whose content id is not the one checked at open."""
        if _plain(f.attrs.get("attrs_sha256", "")) != self.content_sha256:
            raise StoreError(f"{self.path}: the store changed since it was opened (content id differs)")

    def _verified(self, f: h5py.File, name: str) -> np.ndarray:
        """A dataset's values, checked against the checksum recorded for it."""
        if name not in self._checksums:
            raise StoreError(f"{self.path}: damaged or modified store: dataset /{name} is not in the checksum table")
        value = _read_dataset(f[name])
        if _value_digest(value) != self._checksums[name]:
            raise StoreError(f"{self.path}: damaged or modified store: dataset /{name} checksum mismatch")
        return value

    # -- metadata ---------------------------------------------------------------------------
    @property
    def corpus(self) -> str:
        return str(self.attrs["corpus"])

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the source corpus (utterance ids, labels, paths, audio): equal for two
        stores built from the same corpus files, whatever the build options."""
        return str(self.attrs["corpus_fingerprint"])

    @property
    def content_sha256(self) -> str:
        """SHA-256 identifying this store's content: the hash of its root attributes, which
        hold the checksum of every dataset and attribute set. Two stores with the same value
        hold the same data; a rebuilt store (even of the same corpus) gets a new one."""
        return str(self.attrs["attrs_sha256"])

    @property
    def build(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("build", "{}"))

    def record(self) -> BuildRecord:
        """The build's own root attributes, as :meth:`StoreWriter.write_record` wrote them."""
        try:
            return BuildRecord(
                corpus=str(self.attrs["corpus"]), created=str(self.attrs["created"]),
                versions=json.loads(self.attrs["versions"]), segment_config=self.segment_config,
                build=json.loads(self.attrs["build"]), label_manifest=json.loads(self.attrs["label_manifest"]),
                corpus_fingerprint=str(self.attrs["corpus_fingerprint"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"{self.path}: unreadable build record ({_short(exc)})") from None

    @property
    def n_segments(self) -> int:
        return len(self._seg_start)

    def vocab(self, name: str) -> list[str]:
        if name not in self._vocab:
            raise StoreError(f"{self.path}: no vocabulary {name!r}")
        return list(self._vocab[name])

    def manifest(self) -> "pd.DataFrame":
        """The utterance table (row i = utterance i)."""
        import pandas as pd

        with self._reopen() as f:
            cols = {name: self._verified(f, f"manifest/{name}") for name in f["manifest"]}
        order = [c for c in MANIFEST_LEADING if c in cols] + sorted(c for c in cols if c not in MANIFEST_LEADING)
        return pd.DataFrame({c: cols[c] for c in order})

    def segments(self) -> "pd.DataFrame":
        """The segment table (row i = segment index i): :data:`SEGMENT_COLUMNS`, then a float32
        column per dimensional rating the store has (:meth:`dimension_scales`; NaN = the
        utterance has no rating; an augmented copy's segments carry its source's ratings)."""
        import pandas as pd

        df = pd.DataFrame({**self._segments, **self._dimensions})
        df["dense"] = df["dense"].astype(bool)
        return df

    def dimension_scales(self) -> dict[str, tuple[float, float]]:
        """``{dimension: (low, high)}``: the corpus' own scale of each rating column of
        :meth:`segments`, in :data:`DIMENSIONS` order; empty for a corpus without dimensional
        ratings and for schema 2 stores."""
        return dict(self._scales)

    def items(self) -> "pd.DataFrame":
        return self._table("items", ITEM_COLUMNS)

    def failures(self) -> "pd.DataFrame":
        """Files the build skipped, and why."""
        return self._table("failures", FAILURE_COLUMNS)

    def warnings(self) -> "pd.DataFrame":
        """What the build accepted but reported (truncated files, unknown label codes...)."""
        return self._table("warnings", WARNING_COLUMNS)

    def _table(self, group: str, columns: tuple[str, ...]) -> "pd.DataFrame":
        import pandas as pd

        with self._reopen() as f:
            if group not in f:
                return pd.DataFrame(columns=list(columns))
            return pd.DataFrame({k: self._verified(f, f"{group}/{k}") for k in columns})

    def fold_schemes(self) -> list[str]:
        return sorted(self._schemes)

    def fold_ids(self, scheme: str) -> list[int]:
        if scheme not in self._schemes:
            if not self._schemes:
                raise StoreError(f"{self.path}: store has no folds")
            raise StoreError(f"{self.path}: no fold scheme {scheme!r}; store has {', '.join(self.fold_schemes())}")
        return list(self._schemes[scheme])

    def fold(self, scheme: str, k: int) -> Fold:
        ids = self.fold_ids(scheme)
        if k not in ids:
            raise StoreError(f"{self.path}: no fold {k} in scheme {scheme!r}; folds are {ids[0]}..{ids[-1]}")
        group = f"folds/{scheme}/{k}"
        with self._reopen() as f:
            arrays = {name: self._verified(f, f"{group}/{name}") for name in FOLD_ARRAYS}
            attrs = f[group].attrs
            expected = self._checksums.get(group + ATTRS_KEY)
            if expected is None:
                raise StoreError(f"{self.path}: damaged store: attributes of /{group} are not in the checksum table")
            if attrs_digest(attrs) != expected:
                raise StoreError(f"{self.path}: damaged or modified store: attributes of /{group} changed")
            meta = {k2: json.loads(_plain(v)) for k2, v in attrs.items()}
        for name in ("norm_mean", "norm_std"):
            if not np.all(np.isfinite(arrays[name])):
                raise StoreError(f"{self.path}: fold {scheme}/{k} has non-finite normalisation statistics ({name})")
        return Fold(scheme=scheme, fold=k, **arrays,
                    train_speakers=meta.get("train_speakers", []),
                    validation_speakers=meta.get("validation_speakers", []),
                    test_speakers=meta.get("test_speakers", []),
                    counts=meta.get("counts", {}),
                    label=str(meta.get("label", "")))

    def functional_sets(self) -> list[str]:
        """Names of the functionals sets the store holds (``serprep build --functionals``)."""
        return sorted({name.split("/")[1] for name in self._checksums
                       if name.startswith("functionals/") and name.endswith("/values") and name.count("/") == 2})

    def functionals(self, name: str) -> Functionals:
        """``(utt, names, values)`` of the functionals set ``name`` (checked against their
        checksums); a one-line :class:`StoreError` when the store has none."""
        if name not in self.functional_sets():
            held = ", ".join(self.functional_sets())
            raise StoreError(f"{self.path}: store has no {name!r} functionals "
                             + (f"(it has {held})" if held else f"(build it with serprep build ... --functionals {name})"))
        group = f"functionals/{name}"
        with self._reopen() as f:
            arrays = {key: self._verified(f, f"{group}/{key}") for key in FUNCTIONALS_ARRAYS}
        return Functionals(utt=arrays["utt"].astype(np.int64), names=[str(v) for v in arrays["names"].tolist()],
                           values=arrays["values"].astype(np.float32))

    # -- data -------------------------------------------------------------------------------
    def _features(self) -> h5py.Dataset:
        if self._handle is None or self._pid != os.getpid():
            # A handle inherited through fork is never used: open a fresh one in this process
            # (read_segments, the only caller, has just checked the file's identity).
            handle = _open_h5(self.path, rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=CHUNK_CACHE_SLOTS)
            try:
                self._check_content_id(handle)
            except StoreError:
                handle.close()
                raise
            self._handle, self._pid = handle, os.getpid()
        return self._handle["features"]

    def read_segments(self, indices: Iterable[int] | np.ndarray, max_gap: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Segments ``indices`` as ``(x [B, C, frames, n_mels] float32, valid [B] int64)``
        (``C`` = :attr:`n_channels`, 3 for log-Mel).

        Output order follows ``indices``. Reads go in ascending file order, and segments whose
        frame ranges overlap or lie within ``max_gap`` frames are served by one contiguous
        read (no h5py fancy indexing, which is very slow on chunked data). Each call first
        checks (one ``stat``) that the file is still the one opened.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_segments):
            raise StoreError(f"{self.path}: segment index out of range 0..{self.n_segments - 1}")
        self.check_identity()
        frames, n_mels = self.segment_config.frames, self.feature_config.n_mels
        out = np.zeros((idx.size, self.n_channels, frames, n_mels), dtype=np.float32)
        valid = self._seg_valid[idx]
        starts = self._seg_start[idx]
        ends = starts + valid
        ds = self._features()
        order = np.argsort(starts, kind="stable")
        i = 0
        try:
            while i < len(order):
                run_start, run_end = starts[order[i]], ends[order[i]]
                j = i + 1
                while j < len(order) and starts[order[j]] <= run_end + max_gap:
                    run_end = max(run_end, ends[order[j]])
                    j += 1
                block = ds[run_start:run_end]  # [n, 3, M] contiguous read
                for pos in order[i:j]:
                    s = starts[pos] - run_start
                    out[pos, :, : valid[pos]] = block[s : s + valid[pos]].transpose(1, 0, 2)
                i = j
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise StoreError(f"{self.path}: damaged store: cannot read /features ({_short(exc)}); "
                             "run serprep verify") from None
        return out, valid.copy()

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def __enter__(self) -> "StoreReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


MANIFEST_LEADING = (
    "utt_id", "corpus", "session", "speaker", "gender", "emotion_raw", "emotion", "duration", "path",
)


def _fold_ids_from(checksums: dict[str, str]) -> dict[str, list[int]]:
    """Fold schemes and numbers as recorded in the checksum table (not as groups found in the
    file: a group added later is not a fold)."""
    schemes: dict[str, set[int]] = {}
    for name in checksums:
        parts = name.split("/")
        if len(parts) == 4 and parts[0] == "folds" and parts[3] == "balanced_index" and parts[2].isdigit():
            schemes.setdefault(parts[1], set()).add(int(parts[2]))
    return {s: sorted(ids) for s, ids in schemes.items()}


def _problems_line(path: Path, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{path}: damaged or modified store: {problems[0]}"
    return (f"{path}: damaged or modified store, {len(problems)} problems (serprep verify lists them); "
            f"first: {problems[0]}")


def _open_h5(path: Path, **kwargs: Any) -> h5py.File:
    if not path.exists():
        raise StoreError(f"{path}: no such file")
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not a store")
    try:
        return h5py.File(path, "r", **kwargs)
    except Exception as exc:  # OSError for "not HDF5", others for damaged superblocks
        raise StoreError(f"{path}: not a readable HDF5 file ({_short(exc)})") from None


@contextlib.contextmanager
def _open_store(path: Path) -> Iterator[h5py.File]:
    """Open read-only, check that this is a store this code reads, and turn any HDF5 error
    raised while the caller reads it into one :class:`StoreError` line naming the file."""
    f = _open_h5(path)
    try:
        try:
            fmt = _plain(f.attrs.get("format", ""))
            version = _plain(f.attrs.get("schema_version", -1))
        except Exception as exc:
            raise StoreError(f"{path}: damaged store: unreadable root attributes ({_short(exc)})") from None
        if fmt != FORMAT:
            raise StoreError(f"{path}: not a serprep store (format attribute is {fmt!r})")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise StoreError(
                f"{path}: store schema version {version}, this serprep reads versions "
                f"{' and '.join(map(str, READABLE_SCHEMA_VERSIONS))} "
                f"(version 2 added checksums over every attribute); rebuild the store with this serprep ({__version__})"
            )
        try:
            yield f
        except StoreError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"{path}: damaged store ({_short(exc)}); run serprep verify") from None
    finally:
        with contextlib.suppress(Exception):
            f.close()


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------
def verify(path: str | Path) -> list[str]:
    """Re-check every recorded checksum, ``/features`` included; returns one line per problem,
    each starting with the path (empty = intact). Never raises for a damaged file."""
    path = Path(path)
    try:
        with _open_store(path) as f:
            problems, _ = check_contents(f, features=True)
    except StoreError as exc:
        return [str(exc)]
    return [f"{path}: damaged or modified store: {p}" for p in problems]


def count_datasets(path: str | Path) -> int:
    """Number of datasets in a store (for ``serprep verify``'s summary)."""
    with _open_store(Path(path)) as f:
        return len(_contents(f)[0])
