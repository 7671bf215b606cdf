"""Fault injection, `serprep build` (issue items 5-12).

Every test runs the real command as a subprocess on a tiny IEMOCAP-layout corpus and checks
the exit code, the one-line message, that no input changed and what is left beside the
output. Builds that must be caught mid-way read one utterance from a FIFO: the build blocks
there, deterministically, until the test writes the audio into it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import soundfile as sf

from corpus_fixtures import make_iemocap, speech_like, write_wav
from fault_helpers import assert_one_line_error, cli_env, command, listing, run, tree_digest
from serprep.errors import SerprepError
from serprep.store import StoreReader, verify

FOUR = {"ang", "hap", "exc", "neu", "sad"}


def corpus(tmp_path: Path, utts_per_speaker: int = 3) -> tuple[Path, list[dict]]:
    root = tmp_path / "corpus" / "IEMOCAP_full_release"
    truth = make_iemocap(root, utts_per_speaker=utts_per_speaker, corrupt=False)
    return root, truth


def labelled(truth: list[dict], k: int = 0) -> dict:
    return [t for t in truth if t["emotion_raw"] in FOUR and t["n_samples"] > 0][k]


def build_args(root: Path, out: Path, *extra: object) -> list[object]:
    return ["build", "iemocap", "--root", root, "--out", out, "-q", *extra]


def label_file(root: Path, utt: dict) -> Path:
    return root / f"Session{int(utt['session'][3:])}" / "dialog" / "EmoEvaluation" / f"{utt['dialog']}.txt"


def edit_summary_line(root: Path, utt: dict, new_line: str) -> None:
    path = label_file(root, utt)
    text = path.read_text()
    pattern = re.compile(rf"^\[[^\n]*\]\t{re.escape(utt['utt_id'])}\t[^\n]*$", re.M)
    assert pattern.search(text), utt["utt_id"]
    path.write_text(pattern.sub(new_line.replace("\\", "\\\\"), text, count=1))


class FifoUtterance:
    """One utterance's wav replaced by a FIFO: the build blocks on it until :meth:`feed`."""

    def __init__(self, root: Path, utt: dict) -> None:
        self.path = root / utt["path"]
        self.data = self.path.read_bytes()
        self.path.unlink()
        os.mkfifo(self.path)

    def feed(self) -> None:
        with open(self.path, "wb") as w:
            w.write(self.data)

    def release(self) -> None:
        """Unblock any reader still waiting (the test failed or the reader was killed)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        os.close(fd)


def _default_signals() -> None:
    """In the child: Ctrl-C and SIGTERM as a terminal would deliver them, even when pytest runs
    in the background with SIGINT ignored (which the child would inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def build_blocked_on_fifo(root: Path, truth: list[dict], out: Path, *extra: object,
                          stdout=subprocess.PIPE) -> Iterator[tuple[subprocess.Popen, FifoUtterance]]:
    """A build started in the background that is blocked reading one utterance from a FIFO,
    its temp file already written; killed on the way out if it is still running."""
    fifo = FifoUtterance(root, labelled(truth, 2))
    p = subprocess.Popen(command("serprep", *build_args(root, out, *extra)), env=cli_env(),
                         stdout=stdout, stderr=stdout, text=True, preexec_fn=_default_signals)
    try:
        wait_for(lambda: temp_files(out.parent, out.name), what="the build's temp file")
        yield p, fifo
    finally:
        fifo.release()
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def temp_files(folder: Path, out_name: str) -> list[Path]:
    return sorted(folder.glob(f".{out_name}.tmp-*"))


def children_of(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---------------------------------------------------------------------------------------------
# Item 5: non-finite features
# ---------------------------------------------------------------------------------------------
def test_huge_float_samples_are_a_failed_file_not_nan_features(tmp_path):
    root, truth = corpus(tmp_path)
    victim = labelled(truth, 1)
    sf.write(root / victim["path"], 1e30 * speech_like(16000, seed=3), 16000, subtype="FLOAT")
    before = tree_digest(root)
    out = tmp_path / "feats.h5"
    ran = run("serprep", *build_args(root, out, "--jobs", "2"))
    assert ran.returncode == 0, ran.stderr
    assert victim["path"] in ran.stdout and "not all finite" in ran.stdout
    assert "Warning" not in ran.stderr, ran.stderr  # numpy's overflow warnings stay off the terminal
    reader = StoreReader(out)
    failures = reader.failures()
    assert victim["utt_id"] in failures["utt_id"].tolist()
    for scheme in reader.fold_schemes():
        for k in reader.fold_ids(scheme):
            fold = reader.fold(scheme, k)
            assert np.isfinite(fold.norm_mean).all() and np.isfinite(fold.norm_std).all()
    assert verify(out) == []
    out_strict = tmp_path / "strict.h5"
    strict = run("serprep", *build_args(root, out_strict, "--strict"))
    assert_one_line_error(strict, victim["path"], "not all finite", "--strict")
    assert strict.stderr_lines[-1].startswith("error: ") and "Warning" not in strict.stderr, strict.stderr
    assert not out_strict.exists() and tree_digest(root) == before
    assert listing(tmp_path) == ["corpus", "feats.h5"]


# ---------------------------------------------------------------------------------------------
# Item 6: --out naming an input
# ---------------------------------------------------------------------------------------------
def test_out_inside_the_corpus_is_refused_before_any_work(tmp_path):
    root, truth = corpus(tmp_path)
    target = label_file(root, labelled(truth))
    before = tree_digest(root)
    ran = run("serprep", *build_args(root, target, "--overwrite"))
    assert_one_line_error(ran, str(target), "inside the corpus root")
    ran = run("serprep", *build_args(root, root / "feats.h5"))
    assert_one_line_error(ran, "inside the corpus root")
    assert tree_digest(root) == before


def test_out_equal_to_the_augmentation_preset_is_refused(tmp_path):
    root, _ = corpus(tmp_path)
    preset = tmp_path / "aug.toml"
    shutil.copyfile(Path(__file__).resolve().parents[2] / "serprep" / "manifests" / "augment" / "light.toml", preset)
    before = tree_digest(preset)
    ran = run("serprep", *build_args(root, preset, "--augment", preset, "--overwrite"))
    assert_one_line_error(ran, str(preset), "--augment")
    assert tree_digest(preset) == before


# ---------------------------------------------------------------------------------------------
# Item 7: an exclusive lock per output, and no surprise replacement
# ---------------------------------------------------------------------------------------------
def test_second_build_to_a_locked_path_fails_at_once_naming_the_holder(tmp_path):
    root, truth = corpus(tmp_path)
    out = tmp_path / "feats.h5"
    with build_blocked_on_fifo(root, truth, out, "--jobs", "1") as (first, fifo):
        t0 = time.monotonic()
        second = run("serprep", *build_args(root, out, "--overwrite"), timeout=60)  # blocks on the FIFO if unlocked
        assert time.monotonic() - t0 < 30
        assert_one_line_error(second, str(out), "another serprep build", f"PID {first.pid}")
        fifo.feed()
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert f"wrote {out}" in stdout and verify(out) == []
    assert listing(tmp_path) == ["corpus", "feats.h5"]


def test_a_file_that_appears_during_the_build_is_not_replaced(tmp_path):
    root, truth = corpus(tmp_path)
    out = tmp_path / "feats.h5"
    with build_blocked_on_fifo(root, truth, out, "--jobs", "1") as (p, fifo):
        out.write_bytes(b"a colleague's store")
        fifo.feed()
        _, stderr = p.communicate(timeout=120)
    errors = [l for l in stderr.splitlines() if l.startswith("error: ")]
    assert p.returncode == 1 and len(errors) == 1 and "appeared" in errors[0] and str(out) in errors[0], stderr
    assert out.read_bytes() == b"a colleague's store"
    assert listing(tmp_path) == ["corpus", "feats.h5"]


# ---------------------------------------------------------------------------------------------
# Item 8: kill -9 leaves no lingering workers; its temp file is cleaned up
# ---------------------------------------------------------------------------------------------
def test_killed_build_leaves_a_temp_that_the_next_build_removes(tmp_path):
    root, truth = corpus(tmp_path)
    out = tmp_path / "feats.h5"
    # Augmenting builds run in worker processes: those must die with the build.
    with build_blocked_on_fifo(root, truth, out, "--augment", "light", "--jobs", "2",
                               stdout=subprocess.DEVNULL) as (p, fifo):
        wait_for(lambda: len([c for c in children_of(p.pid) if "LokyProcess" in cmdline(c)]) == 2,
                 what="two worker processes")
        time.sleep(0.5)  # let a worker reach the FIFO
        workers = children_of(p.pid)  # the workers and any helper process (resource trackers)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        stale = temp_files(tmp_path, out.name)
        assert len(stale) == 1
        # They poll for their parent every 0.5 s.
        wait_for(lambda: not any(alive(w) for w in workers), timeout=3, what="the orphaned workers to exit")
    fifo.path.unlink()
    fifo.path.write_bytes(fifo.data)
    ran = run("serprep", *build_args(root, out, "--jobs", "1"))
    assert ran.returncode == 0, ran.stderr
    assert f"removed stale temporary file {stale[0].name}" in ran.stderr
    assert listing(tmp_path) == ["corpus", "feats.h5"] and verify(out) == []


@pytest.mark.parametrize("sig, code, what", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_build_removes_its_files_and_keeps_the_previous_store(tmp_path, sig, code, what):
    root, truth = corpus(tmp_path)
    out = tmp_path / "feats.h5"
    out.write_bytes(b"the previous store")
    with build_blocked_on_fifo(root, truth, out, "--jobs", "2", "--overwrite") as (p, fifo):
        time.sleep(0.3)  # the worker thread is now blocked on the FIFO
        p.send_signal(sig)
        wait_for(lambda: not temp_files(tmp_path, out.name), what="the temp file to be removed")
        fifo.feed()  # lets the running block finish: the build waits for it before exiting
        _, stderr = p.communicate(timeout=120)
    errors = [l for l in stderr.splitlines() if l.startswith("error: ")]
    assert p.returncode == code and errors == [f"error: {what}; nothing written (a previous store at --out "
                                               "is unchanged)"], stderr
    assert "Traceback" not in stderr
    assert out.read_bytes() == b"the previous store"
    assert listing(tmp_path) == ["corpus", "feats.h5"]


def test_clean_tmp_removes_only_temps_of_dead_processes(tmp_path):
    from serprep.output import temp_path

    finished = subprocess.Popen(["true"])
    finished.wait()
    host_tag = temp_path(tmp_path / "x.h5").name.split(".tmp-", 1)[1].rsplit("-", 1)[0]
    dead = tmp_path / f".a.h5.tmp-{host_tag}-{finished.pid}"
    live = tmp_path / f".b.h5.tmp-{host_tag}-{os.getpid()}"
    other_host = tmp_path / f".c.h5.tmp-elsewhere-{finished.pid}"
    unrelated = tmp_path / "notes.tmp-1"
    stale_lock, held_lock = tmp_path / ".a.h5.lock", tmp_path / ".b.h5.lock"
    for p in (dead, live, other_host, unrelated, stale_lock, held_lock):
        p.write_bytes(b"x")
    with open(held_lock, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # a build that is running
        ran = run("serprep", "clean-tmp", tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert f"removed {dead}" in ran.stdout and f"removed {stale_lock}" in ran.stdout
    assert listing(tmp_path) == sorted(p.name for p in (live, other_host, unrelated, held_lock))


# ---------------------------------------------------------------------------------------------
# Item 9: disk full
# ---------------------------------------------------------------------------------------------
def _mount_small_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    ran = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                         capture_output=True, text=True)
    return ran.returncode == 0


def test_disk_full_ends_in_one_line_and_keeps_the_old_store(tmp_path):
    root, _ = corpus(tmp_path)
    full = tmp_path / "full"
    if not _mount_small_tmpfs(full, "256k"):
        pytest.skip("cannot mount a tmpfs here: test_disk_full_with_a_failing_writer covers it")
    try:
        out = full / "feats.h5"
        out.write_bytes(b"the previous store")
        ran = run("serprep", *build_args(root, out, "--overwrite", "--jobs", "2"))
        assert_one_line_error(ran, f"no space left on device while writing {out}")
        assert out.read_bytes() == b"the previous store"
        assert listing(full) == ["feats.h5"]
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_disk_full_with_a_failing_writer(tmp_path, monkeypatch):
    """The same path without a tmpfs: the store's file object raises ENOSPC after 64 KiB."""
    import serprep.output as output
    from store_fixtures import build

    class FullDisk(output.GuardedFile):
        def __init__(self, path):
            super().__init__(path)
            self._room = 64 * 1024
            raw_write = self._f.write

            def write(view):
                if len(view) > self._room:
                    raise OSError(errno.ENOSPC, "No space left on device")
                self._room -= len(view)
                return raw_write(view)

            self._f = _Wrapped(self._f, write)

    class _Wrapped:
        def __init__(self, f, write):
            self._inner, self.write = f, write

        def __getattr__(self, name):
            return getattr(self._inner, name)

    monkeypatch.setattr("serprep.store.GuardedFile", FullDisk)
    root, _ = corpus(tmp_path)
    out = tmp_path / "out" / "feats.h5"
    out.parent.mkdir()
    out.write_bytes(b"the previous store")
    with pytest.raises(SerprepError, match=f"no space left on device while writing {re.escape(str(out))}"):
        build("iemocap", root, out, overwrite=True)
    assert out.read_bytes() == b"the previous store"
    assert listing(out.parent) == ["feats.h5"]


# ---------------------------------------------------------------------------------------------
# Item 10: --strict with two jobs stops cleanly
# ---------------------------------------------------------------------------------------------
def test_strict_abort_with_two_jobs_never_crashes(tmp_path):
    root, truth = corpus(tmp_path, utts_per_speaker=30)
    victim = labelled(truth, 40)
    (root / victim["path"]).write_bytes(os.urandom(100))
    out = tmp_path / "feats.h5"
    for _ in range(8):
        ran = run("serprep", *build_args(root, out, "--strict", "--jobs", "2"))
        assert_one_line_error(ran, victim["path"], "--strict")
        assert listing(tmp_path) == ["corpus"]


# ---------------------------------------------------------------------------------------------
# Item 11 (build): bad numbers are one line and leave nothing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_mels, fragment", [("0", "--n-mels 0"), ("2000", "--n-mels 2000")])
def test_impossible_mel_band_counts_are_refused(tmp_path, n_mels, fragment):
    root, _ = corpus(tmp_path)
    ran = run("serprep", *build_args(root, tmp_path / "feats.h5", "--n-mels", n_mels))
    assert_one_line_error(ran, fragment)
    assert listing(tmp_path) == ["corpus"]


# ---------------------------------------------------------------------------------------------
# Item 12: accepted with no word before; now a warning, a recorded failure, or a refusal
# ---------------------------------------------------------------------------------------------
def _truncate_wav(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: 44 + (len(data) - 44) // 2])  # header still announces every sample


def _one_hertz_wav(path: Path) -> None:
    write_wav(path, speech_like(4000, seed=1), sr=1)


def test_questionable_inputs_are_warned_or_recorded(tmp_path):
    root, truth = corpus(tmp_path)
    truncated, one_hz, unknown, backwards, malformed = (labelled(truth, k) for k in range(5))
    _truncate_wav(root / truncated["path"])
    _one_hertz_wav(root / one_hz["path"])
    edit_summary_line(root, unknown, f"[1.0000 - 2.0000]\t{unknown['utt_id']}\tzzz\t[2.5000, 2.5000, 2.5000]")
    edit_summary_line(root, backwards, f"[8.0000 - 6.0000]\t{backwards['utt_id']}\t{backwards['emotion_raw']}"
                                       "\t[2.5000, 2.5000, 2.5000]")
    edit_summary_line(root, malformed, f"[1.0000 - 2.0000]\t{malformed['utt_id']}\t{malformed['emotion_raw']}")
    before = tree_digest(root)
    out = tmp_path / "feats.h5"
    ran = run("serprep", *build_args(root, out))
    assert ran.returncode == 0, ran.stderr
    assert "warnings: 3" in ran.stdout
    for fragment in (f"{truncated['path']}: truncated file", "unknown label code 'zzz'", "ends before it starts",
                     f"{one_hz['path']}: sample rate 1 Hz is implausible", "malformed summary line"):
        assert fragment in ran.stdout, (fragment, ran.stdout)
    reader = StoreReader(out)
    warned = reader.warnings()
    assert sorted(warned["utt_id"]) == sorted([truncated["utt_id"], unknown["utt_id"], backwards["utt_id"]])
    failed = reader.failures()
    assert {one_hz["utt_id"], malformed["utt_id"]} <= set(failed["utt_id"])
    assert malformed["utt_id"] not in reader.manifest()["utt_id"].tolist()
    assert tree_digest(root) == before
    strict = run("serprep", *build_args(root, tmp_path / "strict.h5", "--strict"))
    assert_one_line_error(strict, "malformed summary line", "--strict")
    assert not (tmp_path / "strict.h5").exists()


def test_a_preset_given_by_name_is_an_input_too(tmp_path, monkeypatch):
    """`--augment default` reads the bundled default.toml: an --out naming that file is refused
    (the bundled folder is swapped for a copy, so a failure could not damage the checkout)."""
    import serprep.augment as augment
    from store_fixtures import build

    presets = tmp_path / "presets"
    shutil.copytree(augment.PRESET_DIR, presets)
    monkeypatch.setattr(augment, "PRESET_DIR", presets)
    root, _ = corpus(tmp_path)
    before = tree_digest(presets)
    with pytest.raises(SerprepError, match="is the --augment preset, an input of this build"):
        build("iemocap", root, presets / "default.toml", augment="default", overwrite=True)
    assert tree_digest(presets) == before


@pytest.mark.parametrize("args, fragment", [
    (("--segment-hop", "400"), "--segment-hop 400: need frames > 0 and 0 < hop <= frames"),
    (("--segment-frames", "0"), "--segment-frames 0"),
    (("--augment", "bogus"), "unknown augmentation preset 'bogus'"),
])
def test_bad_segment_and_augment_options_are_refused_before_any_work(tmp_path, args, fragment):
    root, _ = corpus(tmp_path)
    ran = run("serprep", *build_args(root, tmp_path / "feats.h5", *args))
    line = assert_one_line_error(ran, fragment)
    assert "SegmentConfig(" not in line
    assert listing(tmp_path) == ["corpus"] and "extracting" not in ran.stderr
