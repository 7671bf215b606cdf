"""The build journal: extracted blocks kept beside ``--out`` so that a killed build resumes.

A killed HDF5 file cannot be trusted, so the writer also writes each extracted block, in plan
order and before appending it to the store, to ``<out>.partial/`` (``feats.h5.partial/`` for
``feats.h5``)::

    plan.json           the plan's summary (serprep.plan.BuildPlan.summary): fingerprint,
                        section digests, options and versions, block count
    block-000017.blk    block 17: the extraction result (entries, per-item arrays, frames)

Each file is written to ``.NAME.tmp-HOST-PID`` and renamed into place, so a block file is
there whole or not at all after a ``kill -9``. There is no fsync (a killed process loses
nothing the kernel already holds); instead a block file carries checksums and is verified
before use: a SHA-256 over its header and small arrays, the frames' length, and the CRC-32 of
every item's frames that the worker computed for the store anyway (:mod:`serprep.checksum`).
A block file that fails a check (a power cut, a disk error) is extracted again. A block file
also records the size and modification time of each audio file it read: a block whose files
changed since is extracted again as well. ``serprep build --resume`` keeps the blocks that
pass, extracts the others and assembles the store from both, in plan order: the store an
uninterrupted build writes (tests/faults/test_fault_resume.py, tests/test_journal.py).

Block file layout: ``MAGIC`` | little-endian u64 JSON length, u64 array-blob length, u64
frames length | SHA-256 of JSON + blob | JSON (block number, plan fingerprint, audio file
stats, frame shape, the entries with every array replaced by a reference into the blob) |
blob | frames (float32 ``[T, 3, n_mels]``, C order).

What happens to a journal (:func:`open_journal`): a build that succeeds removes it; a build
interrupted (Ctrl-C, SIGTERM) keeps it when it holds a block; a build that fails with an
error (``--strict``, a full disk, a worker that died) removes it, as it removes its temp file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from . import __version__
from .checksum import frames_digest
from .errors import SerprepError, StoreError
from .output import is_disk_full, lock_held, remove_stale_temps, temp_path

if TYPE_CHECKING:
    from .plan import BuildPlan

JOURNAL_SUFFIX = ".partial"
HEADER = "plan.json"
FORMAT = "serprep-journal"
VERSION = 1
MAGIC = b"SERPBLK1"
_PREFIX = struct.Struct("<8sQQQ32s")  # magic, JSON length, blob length, frames length, SHA-256
_BLOCK_NAME = re.compile(r"block-(\d{6,})\.blk")
_ALIGN = 8


class JournalError(SerprepError):
    """A journal that cannot be used as asked (refusals, unreadable or foreign folders)."""


class BlockDamaged(Exception):
    """A block file that fails a check; the caller extracts the block again."""


def journal_path(out: Path) -> Path:
    """The journal folder of the store ``out``."""
    return out.with_name(out.name + JOURNAL_SUFFIX)


def block_name(index: int) -> str:
    """File name of block ``index`` in a journal."""
    return f"block-{index:06d}.blk"


# --------------------------------------------------------------------------------------------
# One block file
# --------------------------------------------------------------------------------------------
def encode_block(index: int, fingerprint: str, block: dict[str, Any]) -> tuple[bytes, bytes, bytes, np.ndarray]:
    """``(prefix, JSON, blob, frames)`` of a block file, in that order on disk."""
    arrays: list[bytes] = []
    size = 0

    def encode(value: Any) -> Any:
        """JSON values, arrays replaced by ``{"__array__": [dtype, shape, offset]}``."""
        nonlocal size
        if isinstance(value, np.ndarray):
            a = np.ascontiguousarray(value)
            ref = {"__array__": [a.dtype.str, list(a.shape), size]}
            pad = -a.nbytes % _ALIGN
            arrays.append(a.tobytes() + b"\0" * pad)
            size += a.nbytes + pad
            return ref
        if isinstance(value, dict):
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if value is None or type(value) in (str, int, float, bool):
            return value
        raise TypeError(f"block {index}: cannot journal a {type(value).__name__}")

    frames = np.ascontiguousarray(block["frames"], dtype=np.float32)
    meta = {"format": VERSION, "block": index, "fingerprint": fingerprint, "stats": block.get("stats") or [],
            "frames": list(frames.shape), "entries": encode(block["entries"])}
    text = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    blob = b"".join(arrays)
    digest = hashlib.sha256(text + blob).digest()
    return _PREFIX.pack(MAGIC, len(text), len(blob), frames.nbytes, digest), text, blob, frames


def write_block(folder: Path, index: int, fingerprint: str, block: dict[str, Any]) -> Path:
    """Write block ``index`` atomically (temp file, then rename); returns its path."""
    prefix, text, blob, frames = encode_block(index, fingerprint, block)
    final = folder / block_name(index)
    tmp = temp_path(final)
    try:
        with open(tmp, "wb", buffering=0) as f:
            for part in (prefix, text, blob, memoryview(frames.view(np.uint8).reshape(-1))):
                _write_all(f, part)
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        out = folder.with_name(folder.name[: -len(JOURNAL_SUFFIX)])
        if is_disk_full(exc):
            raise StoreError(f"no space left on device while writing {out} (its journal {folder.name}/); "
                             "nothing written") from None
        raise StoreError(f"cannot write {final} ({exc.strerror or exc}); nothing written") from None
    return final


def _write_all(f: Any, data: bytes | memoryview) -> None:
    """Write all of ``data`` to an unbuffered file (which may write less per call)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += f.write(view[done:])


def read_block_meta(path: Path, fingerprint: str, index: int) -> dict[str, Any]:
    """A block file's metadata, its header checked (cheap: the frames are not read, only
    their length); raises :class:`BlockDamaged`."""
    return _read(path, fingerprint, index, frames=False)[0]


def read_block(path: Path, fingerprint: str, index: int) -> dict[str, Any]:
    """A block as the extraction returned it (``entries``, ``frames``, ``stats``), every check
    passed, the frames' CRC-32 per item included; raises :class:`BlockDamaged`."""
    meta, blob, frames_bytes = _read(path, fingerprint, index, frames=True)
    shape = tuple(meta["frames"])
    if len(frames_bytes) != 4 * int(np.prod(shape)):
        raise BlockDamaged("frame array does not match its shape")
    frames = np.frombuffer(frames_bytes, dtype=np.float32).reshape(shape)
    entries = _decode(meta["entries"], blob)
    start = 0
    for entry in entries:
        for item in entry["items"]:
            n = item["n_frames"]
            if start + n > shape[0] or frames_digest(frames[start : start + n]) != item["digest"]:
                raise BlockDamaged("frame checksum mismatch")
            start += n
    if start != shape[0]:
        raise BlockDamaged("items do not cover the frames")
    return {"entries": entries, "frames": frames, "stats": meta["stats"]}


def _read(path: Path, fingerprint: str, index: int, frames: bool) -> tuple[dict[str, Any], bytes, bytearray]:
    """``(meta, blob, frame bytes)``; the frame bytes only with ``frames`` (else empty)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PREFIX.size)
            if len(head) != _PREFIX.size:
                raise BlockDamaged("shorter than its header")
            magic, n_text, n_blob, n_frames, digest = _PREFIX.unpack(head)
            if magic != MAGIC:
                raise BlockDamaged("not a serprep journal block")
            if os.fstat(f.fileno()).st_size != _PREFIX.size + n_text + n_blob + n_frames:
                raise BlockDamaged("truncated or extended")
            text, blob = f.read(n_text), f.read(n_blob)
            data = bytearray(n_frames if frames else 0)
            if frames and f.readinto(data) != n_frames:
                raise BlockDamaged("truncated")
    except OSError as exc:
        raise BlockDamaged(f"unreadable ({exc.strerror or exc})") from None
    if hashlib.sha256(text + blob).digest() != digest:
        raise BlockDamaged("header checksum mismatch")
    try:
        meta = json.loads(text)
    except ValueError:
        raise BlockDamaged("unreadable header") from None
    if meta.get("format") != VERSION or meta.get("block") != index or meta.get("fingerprint") != fingerprint:
        raise BlockDamaged("written for another block or plan")
    return meta, blob, data


def _decode(value: Any, blob: bytes) -> Any:
    """Undo :func:`encode_block`'s array references (read-only arrays over ``blob``)."""
    if isinstance(value, dict):
        ref = value.get("__array__")
        if ref is not None and len(value) == 1:
            dtype, shape, offset = np.dtype(ref[0]), tuple(ref[1]), ref[2]
            count = int(np.prod(shape))
            return np.frombuffer(blob, dtype=dtype, count=count, offset=offset).reshape(shape)
        return {k: _decode(v, blob) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, blob) for v in value]
    return value


def audio_stats(root: str, path: str) -> list[Any]:
    """``[path, size, mtime_ns]`` of an audio file (``None`` twice when it cannot be stat'ed):
    what says on resume that the file is still the one a block was extracted from."""
    try:
        st = os.stat(os.path.join(root, path))
    except OSError:
        return [path, None, None]
    return [path, st.st_size, st.st_mtime_ns]


def changed_audio(stats: list[list[Any]], root: Path) -> str | None:
    """The first audio file whose size or modification time differs from ``stats``."""
    for path, size, mtime in stats:
        if audio_stats(str(root), path) != [path, size, mtime]:
            return path
    return None


# --------------------------------------------------------------------------------------------
# The journal folder
# --------------------------------------------------------------------------------------------
_TEMP_NAME = re.compile(r"\.(plan\.json|block-\d{6,}\.blk)\.tmp-.+-\d+")


@dataclass
class JournalFolder:
    """What an existing journal folder holds (:func:`inspect_journal`)."""

    path: Path
    header: dict[str, Any] | None  # plan.json; None when missing or unreadable
    blocks: dict[int, Path]
    size: int  # bytes in block files

    @property
    def out_name(self) -> str:
        """Name of the store the journal belongs to."""
        return self.path.name[: -len(JOURNAL_SUFFIX)]


def inspect_journal(folder: Path) -> JournalFolder | None:
    """The journal at ``folder`` (None when there is none), after removing the temp files of
    dead processes in it. A path that is not a folder of journal files is refused
    (:class:`JournalError`): it is never read, written or removed."""
    if not os.path.lexists(folder):
        return None
    if folder.is_symlink() or not folder.is_dir():
        raise JournalError(f"{folder}: exists and is not a journal folder; move it away (a build keeps "
                           "its extracted blocks there)")
    remove_stale_temps(folder)
    blocks: dict[int, Path] = {}
    size = 0
    for entry in sorted(folder.iterdir()):
        match = _BLOCK_NAME.fullmatch(entry.name)
        if match and entry.is_file() and not entry.is_symlink():
            blocks[int(match.group(1))] = entry
            size += entry.stat().st_size
        elif not (entry.name == HEADER or _TEMP_NAME.fullmatch(entry.name)):
            raise JournalError(f"{folder}: is not a serprep journal (it holds {entry.name}); move it away")
    return JournalFolder(folder, _read_header(folder / HEADER), blocks, size)


def interrupted_journals(folder: Path) -> list[JournalFolder]:
    """The journals in ``folder`` that no running build holds (``serprep clean-tmp``); folders
    named like one that are not journals are left out."""
    found = []
    for entry in sorted(Path(folder).glob("*" + JOURNAL_SUFFIX)):
        if entry.name == JOURNAL_SUFFIX or lock_held(entry.with_name(entry.name[: -len(JOURNAL_SUFFIX)])):
            continue
        try:
            journal = inspect_journal(entry)
        except JournalError:
            continue
        if journal is not None:
            found.append(journal)
    return found


def _read_header(path: Path) -> dict[str, Any] | None:
    """``plan.json`` of a journal, or None when missing, unreadable or foreign."""
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) and header.get("format") == FORMAT else None


def discard_journal(folder: Path) -> None:
    """Remove a journal: its block and temp files, then ``plan.json`` (so a removal killed
    half-way leaves a smaller journal that still resumes), then the folder. Nothing else in
    it is touched."""
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if _BLOCK_NAME.fullmatch(entry.name) or _TEMP_NAME.fullmatch(entry.name):
            entry.unlink(missing_ok=True)
    (folder / HEADER).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


class Journal:
    """The open journal of one build (used under the build's output lock)."""

    def __init__(self, folder: Path, plan: BuildPlan, kept: dict[int, Path]) -> None:
        self.folder = folder
        self.fingerprint = plan.fingerprint
        self.n_blocks = len(plan.blocks)
        #: Blocks found on resume whose header and audio files passed the checks.
        self.kept = dict(kept)

    def write(self, index: int, block: dict[str, Any]) -> None:
        """Journal a freshly extracted block (atomically)."""
        write_block(self.folder, index, self.fingerprint, block)

    def load(self, index: int) -> dict[str, Any] | None:
        """A kept block, fully verified; None (and the file removed) when it fails a check."""
        try:
            return read_block(self.kept[index], self.fingerprint, index)
        except BlockDamaged:
            self.kept[index].unlink(missing_ok=True)
            return None

    def n_written(self) -> int:
        """Block files in the folder now."""
        try:
            return sum(1 for p in self.folder.iterdir() if _BLOCK_NAME.fullmatch(p.name))
        except OSError:
            return 0

    def discard(self) -> None:
        """Remove the journal (:func:`discard_journal`)."""
        discard_journal(self.folder)

    def keep_after_interrupt(self) -> str:
        """Keep the journal of an interrupted build if it holds a block (else remove it);
        returns what to tell the user ("" when nothing was kept)."""
        n = self.n_written()
        if not n:
            self.discard()
            return ""
        return (f"{n} of {self.n_blocks} extracted blocks kept in {self.folder}: the same command with --resume "
                "continues the build")


def open_journal(out: Path, plan: BuildPlan, root: Path, *, resume: bool, overwrite: bool, enabled: bool,
                 log: Callable[[str], None]) -> Journal | None:
    """Settle what is at ``out``'s journal path, then open the journal (None if not ``enabled``).

    An existing journal that holds blocks is resumed with ``resume`` when it was written for
    the same plan (refused otherwise, naming what differs), discarded with ``overwrite``, and
    refused without either (one line suggesting them). An empty one is discarded.
    """
    folder = journal_path(out)
    found = inspect_journal(folder)
    kept: dict[int, Path] = {}
    if found is not None and resume and found.blocks:
        kept = _resumable(found, plan, root, log)
    elif found is not None:
        _settle(found, resume, overwrite, log)
    elif resume:
        log(f"nothing to resume: {folder} does not exist; building from the start")
    if not enabled:
        return None
    if not kept:
        folder.mkdir(exist_ok=True)
        header = {"format": FORMAT, "version": VERSION, "serprep": __version__, "out": out.name,
                  "plan": plan.summary()}
        tmp = temp_path(folder / HEADER)
        tmp.write_text(json.dumps(header, sort_keys=True, indent=1), encoding="utf-8")
        os.replace(tmp, folder / HEADER)
    return Journal(folder, plan, kept)


def refuse_unresumed(out: Path) -> None:
    """Before any work (read-only): refuse a build without ``--resume`` or ``--overwrite``
    while ``out``'s journal holds blocks (:func:`open_journal` checks again under the lock)."""
    folder = journal_path(out)
    if folder.is_dir() and not folder.is_symlink():
        n = sum(1 for p in folder.iterdir() if _BLOCK_NAME.fullmatch(p.name))
        if n:
            raise JournalError(_unresumed_message(folder, n))


def _unresumed_message(folder: Path, n: int) -> str:
    """The refusal of a build that neither resumes nor overwrites a journal with blocks."""
    out_name = folder.name[: -len(JOURNAL_SUFFIX)]
    return (f"{folder}: holds {n} extracted block(s) of an interrupted build of {out_name}; continue it with "
            "--resume, or start over with --overwrite")


def _settle(found: JournalFolder, resume: bool, overwrite: bool, log: Callable[[str], None]) -> None:
    """A journal this build will not resume: refused if it holds blocks (unless
    ``overwrite``), otherwise removed."""
    n = len(found.blocks)
    if n and not overwrite:
        raise JournalError(_unresumed_message(found.path, n))
    discard_journal(found.path)
    if n:
        log(f"discarded {n} extracted block(s) of an earlier build in {found.path} (--overwrite)")
    elif resume:
        log(f"nothing to resume in {found.path} (no block was finished); building from the start")


def _resumable(found: JournalFolder, plan: BuildPlan, root: Path, log: Callable[[str], None]) -> dict[int, Path]:
    """The blocks of ``found`` this plan can use; refuses a journal of another plan."""
    from .plan import plan_difference

    if found.header is None:
        raise JournalError(f"{found.path}: its {HEADER} is missing or unreadable, so its blocks cannot be "
                           "checked; start over with --overwrite")
    difference = plan_difference(found.header.get("plan") or {}, plan)
    if difference:
        raise JournalError(f"{found.path}: was written by another build ({difference}); resume with the same "
                           "options and corpus, or start over with --overwrite")
    kept: dict[int, Path] = {}
    damaged, changed = 0, []
    for index, path in found.blocks.items():
        try:
            if index >= len(plan.blocks):
                raise BlockDamaged("not a block of this plan")
            moved = changed_audio(read_block_meta(path, plan.fingerprint, index)["stats"], root)
        except BlockDamaged:
            damaged += 1
            path.unlink(missing_ok=True)
            continue
        if moved is not None:
            changed.append(moved)
            path.unlink(missing_ok=True)
            continue
        kept[index] = path
    n = len(plan.blocks)
    notes = [f"{damaged} damaged block file(s) dropped"] if damaged else []
    if changed:
        notes.append(f"{len(changed)} block(s) dropped whose audio changed since (first: {changed[0]})")
    log(f"resuming from {found.path}: {len(kept)} of {n} blocks kept, {n - len(kept)} to extract"
        + "".join(f"; {note}" for note in notes))
    return kept


@contextlib.contextmanager
def journal_lifetime(journal: Journal | None) -> Iterator[None]:
    """Around the part of a build that fills the journal: on success the journal is removed
    (the store is published); on Ctrl-C or SIGTERM it is kept if it holds a block, and the
    ``KeyboardInterrupt`` carries a note saying so (``--resume`` continues); on any other
    error it is removed, like the temp file ("nothing written")."""
    if journal is None:
        yield
        return
    try:
        yield
    except KeyboardInterrupt as exc:
        note = journal.keep_after_interrupt()
        if note:
            exc.add_note(note)
        raise
    except BaseException:
        journal.discard()
        raise
    journal.discard()
