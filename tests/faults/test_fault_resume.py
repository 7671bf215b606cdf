"""Fault injection, resumable builds: the real `serprep build` killed with SIGKILL (or
interrupted with Ctrl-C) at chosen points, then `--resume`; the result must hold exactly the
content of an uninterrupted build (checksum table, corpus fingerprint, /features values).

The kill points are deterministic: one audio file is replaced by a FIFO, so the build blocks
reading it, and the test waits (polling the journal) until every block before it is
journaled. A labelled file in the middle block stops the extraction half-way; an unlabelled
file (its duration is read from its header in the background) stops the build after every
block is written, during the final assembly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from corpus_fixtures import make_iemocap
from fault_helpers import assert_one_line_error, cli_env, command, listing, run, tree_digest
from store_fixtures import assert_same_store, build
from test_fault_build import FifoUtterance, _default_signals, alive, children_of, cmdline, temp_files, wait_for

from serprep.audio import audio_duration
from serprep.build import BuildOptions, package_versions, plan_options
from serprep.corpora import read_corpus
from serprep.journal import journal_path
from serprep.labels import load_spec
from serprep.plan import BuildPlan, durations_needed, plan_build, plan_difference

BLOCK_SECONDS = 2.0  # small blocks: ~10 on this corpus (~15 augmented)
AUGMENTED = ("--augment", "default", "--balance")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("resume") / "corpus" / "IEMOCAP_full_release"
    return root, make_iemocap(root, utts_per_speaker=3, corrupt=False)


@pytest.fixture(scope="module")
def references(corpus, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted builds with the options of the killed ones (in-process, one job)."""
    folder = tmp_path_factory.mktemp("references")
    out = {"plain": folder / "plain.h5", "augmented": folder / "augmented.h5"}
    build("iemocap", corpus[0], out["plain"], block_seconds=BLOCK_SECONDS)
    build("iemocap", corpus[0], out["augmented"], block_seconds=BLOCK_SECONDS, augment="default", balance=True)
    return out


def the_plan(root: Path, augmented: bool) -> BuildPlan:
    """The plan the command will follow, computed here from the same inputs."""
    spec = load_spec("iemocap")
    extra = {"augment": "default", "balance": True} if augmented else {}
    options = plan_options(BuildOptions(corpus="iemocap", root=root, out=root / "x.h5", block_seconds=BLOCK_SECONDS,
                                        **extra), spec)
    listing = read_corpus("iemocap", root)
    durations = {i: audio_duration(root / listing.utterances[i].path)
                 for i in durations_needed(options, spec, listing.utterances)}
    return plan_build(options, spec, listing, durations, package_versions())


def build_args(root: Path, out: Path, *extra: object) -> list[object]:
    return ["build", "iemocap", "--root", root, "--out", out, "-q", "--block-seconds", BLOCK_SECONDS, *extra]


def journaled(out: Path) -> list[int]:
    return sorted(int(p.name[6:12]) for p in journal_path(out).glob("block-*.blk"))


def start(root: Path, out: Path, *extra: object) -> subprocess.Popen:
    return subprocess.Popen(command("serprep", *build_args(root, out, *extra)), env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)


def kill_when(p: subprocess.Popen, out: Path, blocks: list[int]) -> None:
    """SIGKILL the build once exactly ``blocks`` are journaled and it is blocked on the FIFO."""
    try:
        wait_for(lambda: journaled(out) == blocks or p.poll() is not None, what=f"blocks {blocks} in the journal")
        time.sleep(0.3)  # nothing more may arrive: the build is blocked on the FIFO
        assert p.poll() is None and journaled(out) == blocks, (journaled(out), p.poll())
        os.kill(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()


def restore(fifo: FifoUtterance) -> None:
    fifo.release()
    fifo.path.unlink()
    fifo.path.write_bytes(fifo.data)


def resume_and_compare(root: Path, out: Path, reference: Path, kept: int, n_blocks: int, *extra: object) -> None:
    before = tree_digest(root)
    ran = run("serprep", *build_args(root, out, "--resume", *extra))
    assert ran.returncode == 0, ran.stderr
    assert (f"resuming from {journal_path(out)}: {kept} of {n_blocks} blocks kept, {n_blocks - kept} to extract"
            in ran.stderr), ran.stderr
    assert_same_store(reference, out)
    assert tree_digest(root) == before  # the corpus is input only
    assert listing(out.parent) == ["feats.h5"]  # journal, temp and lock files gone


def test_killed_half_way_then_resumed(corpus, references, tmp_path):
    root, truth = corpus
    plan = the_plan(root, augmented=False)
    half = len(plan.blocks) // 2
    assert len(plan.blocks) >= 8
    out = tmp_path / "feats.h5"
    fifo = FifoUtterance(root, {"path": plan.block_tasks(half)[0].path})
    try:
        kill_when(start(root, out, "--jobs", "1"), out, list(range(half)))
    finally:
        restore(fifo)
    header = json.loads((journal_path(out) / "plan.json").read_text())
    # The command planned what the test planned.
    assert header["plan"]["fingerprint"] == plan.fingerprint, plan_difference(header["plan"], plan)
    assert len(temp_files(tmp_path, out.name)) == 1
    # The journal is neither ignored nor reused for another build (one line each).
    plain = run("serprep", *build_args(root, out))
    assert_one_line_error(plain, f"{journal_path(out)}: holds {half} extracted block(s)", "--resume", "--overwrite")
    other = run("serprep", *build_args(root, out, "--resume", "--seed", "1"))
    assert_one_line_error(other, "was written by another build (options differ: seed 0 -> 1)")
    assert "removed stale temporary file" in other.stderr  # the killed build's HDF5 temp file
    resume_and_compare(root, out, references["plain"], half, len(plan.blocks), "--jobs", "2")


def test_augmented_build_killed_half_way_then_resumed(corpus, references, tmp_path):
    """Balanced augmentation reads every labelled file's header while planning, so no FIFO
    here: the build is killed as soon as half of its blocks are journaled (possibly while it
    writes the next block file: its temp file is then cleaned up on resume)."""
    root, _ = corpus
    plan = the_plan(root, augmented=True)
    n, half = len(plan.blocks), len(plan.blocks) // 2
    out = tmp_path / "feats.h5"
    p = start(root, out, *AUGMENTED, "--jobs", "2")
    try:
        wait_for(lambda: len([c for c in children_of(p.pid) if "LokyProcess" in cmdline(c)]) == 2,
                 what="two worker processes")
        workers = children_of(p.pid)
        wait_for(lambda: len(journaled(out)) >= half or p.poll() is not None, what="half of the blocks")
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait() == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    wait_for(lambda: not any(alive(w) for w in workers), timeout=3, what="the orphaned workers to exit")
    kept = journaled(out)
    assert kept == list(range(len(kept))) and half <= len(kept) < n, (kept, n)
    resume_and_compare(root, out, references["augmented"], len(kept), n, *AUGMENTED, "--jobs", "2")


def test_killed_during_the_final_assembly_then_resumed(corpus, references, tmp_path):
    root, truth = corpus
    plan = the_plan(root, augmented=False)
    n = len(plan.blocks)
    out = tmp_path / "feats.h5"
    unlabelled = plan.utts[plan.unlabelled[0]]
    fifo = FifoUtterance(root, {"path": unlabelled.path})  # its header is read after the blocks
    try:
        kill_when(start(root, out, "--jobs", "2"), out, list(range(n)))
        assert len(temp_files(tmp_path, out.name)) == 1
    finally:
        restore(fifo)
    resume_and_compare(root, out, references["plain"], n, n)


@pytest.mark.parametrize("sig, code, what", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_keeps_the_journal_and_says_how_to_resume(corpus, references, tmp_path, sig, code, what):
    root, _ = corpus
    plan = the_plan(root, augmented=False)
    half = len(plan.blocks) // 2
    out = tmp_path / "feats.h5"
    out.write_bytes(b"the previous store")
    fifo = FifoUtterance(root, {"path": plan.block_tasks(half)[0].path})
    try:
        p = start(root, out, "--jobs", "2", "--overwrite")
        wait_for(lambda: journaled(out) == list(range(half)), what="half of the blocks")
        time.sleep(0.3)
        p.send_signal(sig)
        wait_for(lambda: not temp_files(tmp_path, out.name), what="the temp file to be removed")
        fifo.feed()  # lets the running block finish: the build waits for it before exiting
        _, stderr = p.communicate(timeout=120)
    finally:
        restore(fifo)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert p.returncode == code and errors == [
        f"error: {what}; no store written (a previous store at --out is unchanged); {half} of {len(plan.blocks)} "
        f"extracted blocks kept in {journal_path(out)}: the same command with --resume continues the build"], stderr
    assert out.read_bytes() == b"the previous store" and journaled(out) == list(range(half))
    ran = run("serprep", *build_args(root, out, "--jobs", "2", "--overwrite", "--resume"))
    assert ran.returncode == 0, ran.stderr
    assert_same_store(references["plain"], out)
    assert listing(tmp_path) == ["feats.h5"]
