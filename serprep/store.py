"""The serprep HDF5 feature store: schema, writer, reader and verification.

This module is the single definition of the on-disk format; ``sertrain`` imports it and never
reads the file any other way. Everything is plain HDF5 (readable with h5py alone, no pickles)
and nothing in it depends on where the file lives: copy it anywhere and it stays valid.

Schema (``SCHEMA_VERSION`` = 1)::

    /                       attrs: format="serprep-store", schema_version, corpus, created (UTC ISO),
                            versions (JSON), feature_config (JSON), segment_config (JSON),
                            build (JSON: classes, subset, label manifest version, augmentation,
                            balancing, seed), label_manifest (JSON), corpus_fingerprint,
                            checksums (JSON: dataset path -> sha256; /features: SHA-256 over
                            per-item checksums, see serprep.checksum), item_checksum (the per-item
                            algorithm, "crc32"), attrs_sha256
    /features               float32 [n_frames_total, 3, n_mels]: the frames of every item
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
                            speaker (ids into /vocab/*; -1 = none)
    /vocab/{emotion,gender,speaker}   string labels of the ids
    /failures/{utt_id,path,error}     files that were skipped, and why
    /folds/<scheme>/<k>/    train_utts, validation_utts, test_utts, train_segments,
                            validation_segments, test_segments, balanced_index, norm_mean,
                            norm_std ([3, n_mels]); attrs: train/validation/test speakers and
                            class counts (JSON)

Strings are variable-length UTF-8. A segment's input is
``features[item.frame_start + offset : ... + valid]`` transposed to ``[3, valid, n_mels]`` and
zero-padded to ``segment_config.frames``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import h5py
import numpy as np

from .config import FeatureConfig, SegmentConfig
if TYPE_CHECKING:  # pandas is imported on first use: the build's writer never needs it
    import pandas as pd

from .checksum import ITEM_CHECKSUM, ITEM_CHECKSUMS_LEGACY, combine_item_digests, frames_digest
from .errors import StoreError
from .features import FEATURE_CHANNELS

FORMAT = "serprep-store"
SCHEMA_VERSION = 1
# 256 frames x 3 x 40 mels x 4 B = 120 KiB per chunk: a 300-frame segment touches 2-3 chunks.
CHUNK_FRAMES = 256
# Sized for the chunk layout: a minibatch of 64 segments touches up to ~190 chunks (23 MiB).
CHUNK_CACHE_BYTES = 64 * 1024 * 1024
CHUNK_CACHE_SLOTS = 100_003  # prime, >> chunks in cache, as HDF5 recommends
_STR = h5py.string_dtype("utf-8")
_DIGEST_BLOCK_BYTES = 16 * 1024 * 1024

SEGMENT_COLUMNS = ("item", "utt", "copy", "offset", "valid", "dense", "emotion", "gender", "speaker")
ITEM_COLUMNS = ("utt", "copy", "frame_start", "n_frames", "augmentation")


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
    algorithm = _plain(f.attrs.get("item_checksum", ITEM_CHECKSUMS_LEGACY))
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


def _attrs_digest(attrs: h5py.AttributeManager) -> str:
    h = hashlib.sha256()
    for key in sorted(attrs):
        if key in ("checksums", "attrs_sha256"):
            continue
        h.update(key.encode())
        h.update(b"=")
        h.update(repr(_plain(attrs[key])).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _all_datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------
class StoreWriter:
    """Writes a store to a temporary file beside ``path``; :meth:`finalize` renames it.

    Use as a context manager: on an exception the temporary file is removed and ``path`` is
    left untouched. Feature frames are appended a block of items per HDF5 write.
    """

    def __init__(self, path: str | Path, feature_config: FeatureConfig, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path}: already exists (use --overwrite to replace it)")
        if not self.path.parent.is_dir():
            raise StoreError(f"{self.path}: output folder {self.path.parent} does not exist")
        self.tmp_path = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.cfg = feature_config
        self._file = h5py.File(self.tmp_path, "w", libver=("v110", "latest"))
        frame_shape = (FEATURE_CHANNELS, feature_config.n_mels)
        self._features = self._file.create_dataset(
            "features", shape=(0, *frame_shape), maxshape=(None, *frame_shape), dtype=np.float32,
            chunks=(CHUNK_FRAMES, *frame_shape),
        )
        self._frames_written = 0
        self.items: dict[str, list[Any]] = {k: [] for k in ITEM_COLUMNS}
        self._item_digests: list[str] = []
        self._digests: dict[str, str] = {}
        self._done = False

    # -- features ---------------------------------------------------------------------------
    def add_block(self, frames: np.ndarray, items: list[tuple[int, int, int, str, str | None]]) -> list[int]:
        """Append the frames of several items, back to back in storage layout ``[T, 3, n_mels]``.

        ``items`` are ``(utt, copy, n_frames, augmentation, digest)`` in the order of their
        frames, ``digest`` being :func:`frames_digest` of the item's frames (None: computed
        here). Returns the item ids. The block goes to HDF5 in one write, straight from the
        caller's array: the extraction workers hand over whole blocks, so the writer never
        copies frames itself.
        """
        if frames.ndim != 3 or frames.shape[1] != FEATURE_CHANNELS or frames.shape[2] != self.cfg.n_mels:
            raise StoreError(f"frame array of shape {frames.shape} does not match [T, 3, {self.cfg.n_mels}]")
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

    def write_array(self, name: str, data: np.ndarray, **attrs: Any) -> None:
        data = np.asarray(data)
        ds = self._file.create_dataset(name, data=data)
        self._digests[name] = array_digest(data)
        for key, value in attrs.items():
            ds.attrs[key] = value

    def set_group_attrs(self, group: str, **attrs: Any) -> None:
        g = self._file.require_group(group)
        for key, value in attrs.items():
            g.attrs[key] = value

    def set_attrs(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            self._file.attrs[key] = value

    # -- finish -----------------------------------------------------------------------------
    def finalize(self) -> Path:
        """Write items, checksums and the schema stamp, close, and rename into place."""
        self.write_table("items", self.items)
        f = self._file
        f.attrs["format"] = FORMAT
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["feature_config"] = self.cfg.to_json()
        f.attrs["item_checksum"] = ITEM_CHECKSUM
        checksums = {name: self._digests.get(name) or dataset_digest(f[name])
                     for name in _all_datasets(f) if name != "features"}
        checksums["features"] = combine_item_digests(f["features"].shape, self._item_digests)
        f.attrs["checksums"] = json.dumps(checksums, sort_keys=True)
        f.attrs["attrs_sha256"] = _attrs_digest(f.attrs)
        f.close()
        os.replace(self.tmp_path, self.path)
        self._done = True
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file."""
        try:
            self._file.close()
        except Exception:
            pass
        self.tmp_path.unlink(missing_ok=True)
        self._done = True

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()


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


FOLD_ARRAYS = (
    "train_utts", "validation_utts", "test_utts", "train_segments", "validation_segments",
    "test_segments", "balanced_index", "norm_mean", "norm_std",
)


class StoreReader:
    """Read-only access to a store.

    The HDF5 file is opened lazily on first data access and re-opened in a new process
    (after a fork, or when unpickled in a DataLoader worker): HDF5 handles must not cross a
    fork. Small tables are loaded once and kept as numpy arrays.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        with _open_checked(self.path) as f:
            self.attrs = {k: _plain(v) for k, v in f.attrs.items()}
            self.feature_config = FeatureConfig.from_dict(json.loads(self.attrs["feature_config"]))
            self.segment_config = SegmentConfig.from_dict(json.loads(self.attrs["segment_config"]))
            self._vocab = {k: list(f["vocab"][k].asstr()[()]) for k in f["vocab"]}
            self._segments = {k: f["segments"][k][()] for k in SEGMENT_COLUMNS}
            self._item_start = f["items/frame_start"][()]
            self._schemes = {s: sorted(int(k) for k in f["folds"][s]) for s in f.get("folds", {})}
            self.n_frames_total = f["features"].shape[0]
        self._seg_start = self._item_start[self._segments["item"]] + self._segments["offset"]
        self._seg_valid = self._segments["valid"].astype(np.int64)

    # -- metadata ---------------------------------------------------------------------------
    @property
    def corpus(self) -> str:
        return str(self.attrs["corpus"])

    @property
    def fingerprint(self) -> str:
        return str(self.attrs["corpus_fingerprint"])

    @property
    def build(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("build", "{}"))

    @property
    def n_segments(self) -> int:
        return len(self._seg_start)

    def vocab(self, name: str) -> list[str]:
        if name not in self._vocab:
            raise StoreError(f"{self.path}: no vocabulary {name!r}")
        return list(self._vocab[name])

    def manifest(self) -> "pd.DataFrame":
        """The utterance table (row i = utterance index i)."""
        import pandas as pd

        with _open_checked(self.path) as f:
            g = f["manifest"]
            cols = {}
            for name in g:
                ds = g[name]
                cols[name] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
            order = [c for c in MANIFEST_LEADING if c in cols] + sorted(c for c in cols if c not in MANIFEST_LEADING)
        return pd.DataFrame({c: cols[c] for c in order})

    def segments(self) -> "pd.DataFrame":
        """The segment table (row i = segment index i)."""
        import pandas as pd

        df = pd.DataFrame({k: v for k, v in self._segments.items()})
        df["dense"] = df["dense"].astype(bool)
        return df

    def items(self) -> "pd.DataFrame":
        import pandas as pd

        with _open_checked(self.path) as f:
            g = f["items"]
            return pd.DataFrame({k: (g[k].asstr()[()] if h5py.check_string_dtype(g[k].dtype) else g[k][()]) for k in ITEM_COLUMNS})

    def failures(self) -> "pd.DataFrame":
        import pandas as pd

        with _open_checked(self.path) as f:
            g = f.get("failures")
            if g is None or "utt_id" not in g:
                return pd.DataFrame(columns=["utt_id", "path", "error"])
            return pd.DataFrame({k: g[k].asstr()[()] for k in ("utt_id", "path", "error")})

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
        with _open_checked(self.path) as f:
            g = f["folds"][scheme][str(k)]
            arrays = {name: g[name][()] for name in FOLD_ARRAYS}
            meta = {k2: json.loads(_plain(v)) for k2, v in g.attrs.items()}
        return Fold(scheme=scheme, fold=k, **arrays,
                    train_speakers=meta.get("train_speakers", []),
                    validation_speakers=meta.get("validation_speakers", []),
                    test_speakers=meta.get("test_speakers", []),
                    counts=meta.get("counts", {}))

    # -- data -------------------------------------------------------------------------------
    def _features(self) -> h5py.Dataset:
        if self._handle is None or self._pid != os.getpid():
            # A handle inherited through fork is never used: open a fresh one in this process.
            self._handle = h5py.File(self.path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=CHUNK_CACHE_SLOTS)
            self._pid = os.getpid()
        return self._handle["features"]

    def read_segments(self, indices: Iterable[int] | np.ndarray, max_gap: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Segments ``indices`` as ``(x [B, 3, frames, n_mels] float32, valid [B] int64)``.

        Output order follows ``indices``. Reads go in ascending file order, and segments whose
        frame ranges overlap or lie within ``max_gap`` frames are served by one contiguous
        read (no h5py fancy indexing, which is very slow on chunked data).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_segments):
            raise StoreError(f"{self.path}: segment index out of range 0..{self.n_segments - 1}")
        frames, n_mels = self.segment_config.frames, self.feature_config.n_mels
        out = np.zeros((idx.size, FEATURE_CHANNELS, frames, n_mels), dtype=np.float32)
        valid = self._seg_valid[idx]
        starts = self._seg_start[idx]
        ends = starts + valid
        ds = self._features()
        order = np.argsort(starts, kind="stable")
        i = 0
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


class _open_checked:
    """Context manager: open read-only and check that this is a store this code can read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f: h5py.File | None = None

    def __enter__(self) -> h5py.File:
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such file")
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as exc:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({_short(exc)})") from None
        fmt = _plain(self.f.attrs.get("format", ""))
        if fmt != FORMAT:
            self.f.close()
            raise StoreError(f"{self.path}: not a serprep store (format attribute is {fmt!r})")
        version = int(_plain(self.f.attrs.get("schema_version", -1)))
        if version != SCHEMA_VERSION:
            self.f.close()
            raise StoreError(
                f"{self.path}: store schema version {version}, this serprep reads version {SCHEMA_VERSION}; rebuild the store or install a matching serprep"
            )
        missing = [g for g in ("features", "manifest", "segments", "items", "vocab") if g not in self.f]
        if missing:
            self.f.close()
            raise StoreError(f"{self.path}: damaged store, missing {', '.join(missing)}")
        return self.f

    def __exit__(self, *exc: Any) -> None:
        if self.f is not None:
            self.f.close()


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------
def verify(path: str | Path) -> list[str]:
    """Re-check every recorded checksum; returns a list of problems (empty = intact)."""
    path = Path(path)
    problems: list[str] = []
    try:
        with _open_checked(path) as f:
            try:
                recorded = json.loads(_plain(f.attrs["checksums"]))
            except (KeyError, ValueError):
                return [f"{path}: no checksum table"]
            if _plain(f.attrs.get("attrs_sha256", "")) != _attrs_digest(f.attrs):
                problems.append(f"{path}: metadata attributes changed since the store was written")
            present = set(_all_datasets(f))
            for name in sorted(set(recorded) - present):
                problems.append(f"{path}: dataset /{name} is missing")
            for name in sorted(present - set(recorded)):
                problems.append(f"{path}: dataset /{name} was added after the store was written")
            for name in sorted(set(recorded) & present):
                try:
                    digest = features_digest(f) if name == "features" else dataset_digest(f[name])
                except (OSError, ValueError) as exc:
                    problems.append(f"{path}: dataset /{name} is unreadable ({_short(exc)})")
                    continue
                if digest != recorded[name]:
                    problems.append(f"{path}: dataset /{name} checksum mismatch (damaged or modified)")
    except StoreError as exc:
        problems.append(str(exc))
    except OSError as exc:
        problems.append(f"{path}: unreadable ({_short(exc)})")
    return problems


def iter_dataset_names(path: str | Path) -> Iterator[str]:
    with _open_checked(Path(path)) as f:
        yield from _all_datasets(f)
