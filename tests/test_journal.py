"""The build journal in-process: block files round-trip exactly and refuse damage; an
interrupted build keeps its journal and `resume` finishes it into the store an uninterrupted
build writes; what happens to a journal with and without --resume / --overwrite; changed audio
and damaged block files are extracted again. (tests/faults/test_fault_resume.py kills the
real command with SIGKILL.)"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from corpus_fixtures import make_iemocap, speech_like, write_wav
from serprep.assemble import BlockCollector
from serprep.blocks import BlockJob
from serprep.build import BuildOptions, build_store
from serprep.cli import main
from serprep.config import FeatureConfig, SegmentConfig
from serprep.errors import SerprepError
from serprep.features import LogMelExtractor
from serprep.journal import (BlockDamaged, JournalError, block_name, journal_path, read_block, read_block_meta,
                             write_block)
from store_fixtures import assert_same_store

BLOCK_SECONDS = 2.0  # ~10 blocks on this corpus
AUGMENTED = {"augment": "default", "balance": True}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("journal") / "IEMOCAP_full_release"
    return root, make_iemocap(root, utts_per_speaker=3, corrupt=True)


@pytest.fixture(scope="module")
def references(corpus, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted builds, plain and augmented, with the same options as the tests."""
    folder = tmp_path_factory.mktemp("references")
    out = {"plain": folder / "plain.h5", "augmented": folder / "augmented.h5"}
    build(corpus[0], out["plain"])
    build(corpus[0], out["augmented"], **AUGMENTED)
    return out


def build(root: Path, out: Path, log: list[str] | None = None, **options):
    options.setdefault("jobs", 1)
    options.setdefault("block_seconds", BLOCK_SECONDS)
    logs = [] if log is None else log
    return build_store(BuildOptions(corpus="iemocap", root=root, out=out, progress=False, **options), log=logs.append)


def interrupt(monkeypatch, root: Path, out: Path, after: int, **options) -> str:
    """Build until block ``after`` reaches the writer, then raise KeyboardInterrupt there (as
    Ctrl-C would); returns the note the interrupt carries."""
    original = BlockCollector.add
    calls = itertools.count()

    def add(self, block, writer):
        if next(calls) == after:
            raise KeyboardInterrupt
        return original(self, block, writer)

    monkeypatch.setattr(BlockCollector, "add", add)
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            build(root, out, **options)
    finally:
        monkeypatch.setattr(BlockCollector, "add", original)
    return (getattr(info.value, "__notes__", None) or [""])[0]


def blocks_in(out: Path) -> list[str]:
    return sorted(p.name for p in journal_path(out).glob("block-*.blk"))


# ---------------------------------------------------------------------------------------------
# Block files
# ---------------------------------------------------------------------------------------------
def _assert_same_value(a, b, where="block"):
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for key in a:
            _assert_same_value(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            _assert_same_value(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def extracted(corpus, tmp_path_factory):
    """Blocks of augmented items (dense windows, copies), a failed file and an empty block."""
    root, truth = corpus
    from serprep.extract import Task

    failed = next(t for t in truth if t["corrupt"])
    good = [t for t in truth if not t["corrupt"]][:3]
    # Short windows, so the originals get dense (minority-class) windows too.
    job = BlockJob(str(root), LogMelExtractor(FeatureConfig()), SegmentConfig(frames=50, hop=40, min_hop=10),
                   "default", 0, False)
    tasks = [Task(k, t["utt_id"], t["path"], 2, 15) for k, t in enumerate(good)]
    return [job((0, tasks)), job((1, [Task(9, failed["utt_id"], failed["path"], 0, 40)]))]


def test_block_files_round_trip_exactly(extracted, tmp_path):
    blocks, empty = extracted
    assert empty["entries"][0]["error"] and empty["frames"].shape[0] == 0
    assert any(it["dense"].any() for e in blocks["entries"] for it in e["items"])
    for index, block in enumerate(extracted):
        path = write_block(tmp_path, index, "f" * 64, block)
        assert path.name == block_name(index) and sorted(os.listdir(tmp_path))[-1] == path.name
        _assert_same_value(block, read_block(path, "f" * 64, index))
    assert sorted(os.listdir(tmp_path)) == [block_name(0), block_name(1)]  # no temp file left


@pytest.mark.parametrize("where, problem", [
    ("header", "header checksum mismatch"), ("frames", "frame checksum mismatch"), ("truncate", "truncated"),
    ("fingerprint", "another block or plan"), ("index", "another block or plan"),
])
def test_damaged_block_files_are_refused(extracted, tmp_path, where, problem):
    path = write_block(tmp_path, 0, "f" * 64, extracted[0])
    data = bytearray(path.read_bytes())
    if where == "header":
        data[100] ^= 0x01
    elif where == "frames":
        data[-7] ^= 0x01  # the last frame's bytes: only the per-item CRC-32 sees it
    elif where == "truncate":
        del data[-1:]
    path.write_bytes(bytes(data))
    fingerprint, index = ("e" * 64 if where == "fingerprint" else "f" * 64), (3 if where == "index" else 0)
    with pytest.raises(BlockDamaged, match=problem):
        read_block(path, fingerprint, index)
    if where == "frames":  # the cheap check at resume cannot see it; the full read does
        assert read_block_meta(path, fingerprint, index)["block"] == 0
    else:  # the cheap check (header and length only) sees the rest
        with pytest.raises(BlockDamaged, match="truncated or extended" if where == "truncate" else problem):
            read_block_meta(path, fingerprint, index)


# ---------------------------------------------------------------------------------------------
# Interrupt and resume (in-process)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["plain", "augmented"])
def test_an_interrupted_build_resumes_into_the_same_store(corpus, references, tmp_path, monkeypatch, kind):
    root, _ = corpus
    options = AUGMENTED if kind == "augmented" else {}
    out = tmp_path / "feats.h5"
    note = interrupt(monkeypatch, root, out, after=4, **options)
    assert blocks_in(out) == [block_name(k) for k in range(5)]
    assert note.startswith("5 of ") and str(journal_path(out)) in note and "--resume" in note
    assert not out.exists()
    logs: list[str] = []
    extracted: list[int] = []  # jobs=1: blocks are extracted in this process
    monkeypatch.setattr(BlockJob, "__call__", _recording(BlockJob.__call__, extracted))
    summary = build(root, out, log=logs, resume=True, **options)
    assert summary.kept_blocks == 5 and summary.n_blocks > 5
    assert extracted == list(range(5, summary.n_blocks))  # only the missing blocks
    assert any(f"resuming from {journal_path(out)}: 5 of {summary.n_blocks} blocks kept" in line for line in logs)
    assert_same_store(references[kind], out)
    assert sorted(os.listdir(tmp_path)) == ["feats.h5"]  # journal, temp file and lock gone


def _recording(call, indices: list[int]):
    def record(self, item):
        indices.append(item[0])
        return call(self, item)
    return record


def test_a_journal_is_neither_ignored_nor_reused_silently(corpus, references, tmp_path, monkeypatch):
    root, _ = corpus
    out = tmp_path / "feats.h5"
    interrupt(monkeypatch, root, out, after=3)
    with pytest.raises(JournalError, match=r"feats\.h5\.partial: holds 4 extracted block\(s\) of an interrupted "
                                           r"build of feats\.h5; continue it with --resume, or start over with --overwrite"):
        build(root, out)
    with pytest.raises(JournalError, match=r"was written by another build \(options differ: seed 0 -> 1\); resume "
                                           "with the same options and corpus, or start over with --overwrite"):
        build(root, out, resume=True, seed=1)
    with pytest.raises(JournalError, match=r"options differ: augment None -> .*balance False -> True"):
        build(root, out, resume=True, **AUGMENTED)
    assert len(blocks_in(out)) == 4  # refusals leave it as it was
    logs: list[str] = []
    summary = build(root, out, log=logs, overwrite=True)
    assert summary.kept_blocks == 0 and "discarded 4 extracted block(s) of an earlier build" in logs[0]
    assert_same_store(references["plain"], out)
    assert sorted(os.listdir(tmp_path)) == ["feats.h5"]
    again = tmp_path / "again.h5"
    logs.clear()
    build(root, again, log=logs, resume=True)  # nothing to resume: just builds, and says so
    assert logs[0] == f"nothing to resume: {journal_path(again)} does not exist; building from the start"
    assert_same_store(references["plain"], again)


def test_open_journal_refuses_blocks_it_was_not_told_what_to_do_with(corpus, tmp_path, monkeypatch):
    """Under the lock, whatever the early check in check_options saw."""
    from serprep.build import package_versions, plan_options
    from serprep.corpora import read_corpus
    from serprep.journal import open_journal
    from serprep.labels import load_spec
    from serprep.plan import plan_build

    root, _ = corpus
    out = tmp_path / "feats.h5"
    interrupt(monkeypatch, root, out, after=1)
    spec = load_spec("iemocap")
    options = plan_options(BuildOptions(corpus="iemocap", root=root, out=out, block_seconds=BLOCK_SECONDS), spec)
    plan = plan_build(options, spec, read_corpus("iemocap", root), {}, package_versions())
    with pytest.raises(JournalError, match=r"holds 2 extracted block\(s\) .*--resume, or start over with --overwrite"):
        open_journal(out, plan, root, resume=False, overwrite=False, enabled=True, log=print)
    assert open_journal(out, plan, root, resume=True, overwrite=False, enabled=True, log=print).kept.keys() == {0, 1}


def test_an_error_removes_the_journal_like_the_temp_file(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    out = tmp_path / "feats.h5"
    interrupt(monkeypatch, root, out, after=2)
    assert len(blocks_in(out)) == 3
    with pytest.raises(SerprepError, match="--strict: aborting; nothing written"):
        build(root, out, resume=True, strict=True)  # the corpus holds an undecodable file
    assert os.listdir(tmp_path) == []


def test_changed_audio_and_damaged_blocks_are_extracted_again(corpus, tmp_path, monkeypatch):
    source, truth = corpus
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(source, root)
    out = tmp_path / "feats.h5"
    interrupt(monkeypatch, root, out, after=5)
    journal = journal_path(out)
    # Block 1 read a file that is now different; block 3's frames were damaged on disk (a
    # power cut, say); block 4's header too.
    changed = read_block_meta(journal / block_name(1), _fingerprint(journal), 1)["stats"][0][0]
    write_wav(root / changed, speech_like(20000, seed=99), 16000)
    for index, offset in ((3, -9), (4, 90)):
        data = bytearray((journal / block_name(index)).read_bytes())
        data[offset] ^= 0xFF
        (journal / block_name(index)).write_bytes(bytes(data))
    logs: list[str] = []
    summary = build(root, out, log=logs, resume=True)
    assert summary.kept_blocks == 4  # 0, 2, 3 and 5 pass the cheap checks; 3 fails when read
    assert any("4 of" in line and "1 damaged block file(s) dropped" in line
               and f"1 block(s) dropped whose audio changed since (first: {changed})" in line for line in logs), logs
    assert "journal block 3 failed its checksums when read back; extracting it again" in logs
    reference = tmp_path / "reference.h5"
    build(root, reference)  # uninterrupted, on the corpus as it is now
    assert_same_store(reference, out)


def _fingerprint(journal: Path) -> str:
    import json

    return json.loads((journal / "plan.json").read_text())["plan"]["fingerprint"]


def test_no_journal_keeps_nothing_and_cannot_resume(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    out = tmp_path / "feats.h5"
    assert interrupt(monkeypatch, root, out, after=3, journal=False) == ""
    assert os.listdir(tmp_path) == []
    with pytest.raises(SerprepError, match="--resume continues from the journal, which --no-journal turns off"):
        build(root, out, resume=True, journal=False)


def test_the_journal_never_lands_on_the_corpus_or_a_foreign_folder(corpus, tmp_path):
    source, _ = corpus
    root = tmp_path / "feats.h5.partial"  # a corpus whose folder is named like the journal
    shutil.copytree(source, root)
    with pytest.raises(SerprepError, match=r"its journal folder .*feats\.h5\.partial would hold the corpus root"):
        build(root, tmp_path / "feats.h5")
    assert sorted(os.listdir(tmp_path)) == ["feats.h5.partial"]
    foreign = tmp_path / "other.h5.partial"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(JournalError, match=r"other\.h5\.partial: is not a serprep journal \(it holds notes\.txt\)"):
        build(root, tmp_path / "other.h5", resume=True)
    assert (foreign / "notes.txt").read_text() == "mine" and not (tmp_path / "other.h5").exists()


def test_clean_tmp_lists_journals_and_removes_them_on_request(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    out = tmp_path / "feats.h5"
    interrupt(monkeypatch, root, out, after=1)
    listed = CliRunner().invoke(main, ["clean-tmp", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert f"kept {journal_path(out)}/ (2 extracted block(s)" in listed.output and "--resume` continues it" in listed.output
    assert len(blocks_in(out)) == 2
    removed = CliRunner().invoke(main, ["clean-tmp", str(tmp_path), "--journals"])
    assert removed.exit_code == 0, removed.output
    assert f"removed {journal_path(out)}/ (2 extracted block(s)" in removed.output
    assert os.listdir(tmp_path) == []
