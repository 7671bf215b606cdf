"""Fault injection, the command lines themselves: usage errors, exports, reports, options.

Each is the one-line ``error:`` promise applied to what click or a small command would
otherwise print as a usage block or a traceback, or to a write that could replace a file.
"""

from __future__ import annotations

import pytest

from corpus_fixtures import make_iemocap
from fault_helpers import assert_one_line_error, listing, run, tree_digest
from store_fixtures import build


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("fault_cli")
    root = base / "IEMOCAP_full_release"
    make_iemocap(root, utts_per_speaker=3, corrupt=False)
    out = base / "feats.h5"
    build("iemocap", root, out)
    return out


@pytest.mark.parametrize("tool, args, fragment", [
    ("sertrain", ["train"], "Missing argument 'STORE'. (see "),
    ("sertrain", ["train", "x.h5", "--fold", "abc", "--out", "r"], "Invalid value for '--fold'"),
    ("sertrain", ["train", "x.h5", "--out", "r"], "Missing option '--fold'"),
    ("sertrain", ["cv", "x.h5", "--out", "r", "--nope"], "No such option '--nope'"),
    ("serprep", ["bogus"], "No such command 'bogus'"),
    ("serprep", ["build", "iemocap", "--root", "x"], "Missing option '--out'"),
    ("serprep", ["clean-tmp", "/nonexistent-folder"], "/nonexistent-folder: no such folder"),
])
def test_usage_errors_are_one_line(tool, args, fragment):
    ran = run(tool, *args)
    assert_one_line_error(ran, fragment)
    assert "Usage:" not in ran.stderr


def test_short_help_option_on_both_commands():
    for tool in ("serprep", "sertrain"):
        ran = run(tool, "-h")
        assert ran.returncode == 0 and "Usage:" in ran.stdout


def test_manifest_export_never_replaces_a_file_unasked(store, tmp_path):
    before = tree_digest(store)
    assert_one_line_error(run("serprep", "manifest", store, "--out", store, "--overwrite"),
                          "is the store being exported", code=1)
    other = tmp_path / "notes.wav"
    other.write_bytes(b"audio")
    assert_one_line_error(run("serprep", "manifest", store, "--out", other), "already exists", "--overwrite", code=1)
    assert other.read_bytes() == b"audio" and tree_digest(store) == before
    ok = run("serprep", "manifest", store, "--out", other, "--overwrite")
    assert ok.returncode == 0 and other.read_text().startswith("utt_id,")
    assert listing(tmp_path) == ["notes.wav"]  # no temp file left


def test_report_with_an_unknown_scheme_leaves_nothing(store, tmp_path):
    ran = run("serprep", "report", store, "--out", tmp_path / "rep", "--scheme", "bogus")
    assert_one_line_error(ran, "no fold scheme 'bogus'", "loso", code=1)
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("hours", ["0", "-1"])
def test_demo_corpus_needs_positive_hours(tmp_path, hours):
    ran = run("serprep", "demo-corpus", "--out", tmp_path / "c", "--hours", hours)
    assert_one_line_error(ran, f"--hours {float(hours)}: must be a positive number of hours", code=1)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("option, key", [(("--lr", "nan"), "train.lr"), (("--w-gender", "nan"), "loss.weights.gender"),
                                         (("--lr", "inf"), "train.lr"),
                                         (("--set", "train.weight_decay=nan"), "train.weight_decay")])
def test_non_finite_config_values_are_refused_before_training(store, tmp_path, option, key):
    ran = run("sertrain", "train", store, "--fold", "1", "--out", tmp_path / "run", *option)
    assert_one_line_error(ran, f"{key} must be a finite number", code=2)
    assert not (tmp_path / "run").exists()


def test_evaluate_refuses_the_speakers_that_chose_the_epoch(tmp_path_factory):
    """loso fold 1 stops early on Ses02F; loso-speaker fold 3 tests Ses02F: not a test."""
    from sertrain_fixtures import learnable_store, short_run_checkpoint, store_base

    base = store_base(tmp_path_factory)
    ckpt, store = short_run_checkpoint(base), learnable_store(base)
    ran = run("sertrain", "evaluate", ckpt, store, "--scheme", "loso-speaker", "--fold", "3")
    assert_one_line_error(ran, "test speakers Ses02F of loso-speaker fold 3 were the validation speakers",
                          "--split validation", code=2)
    ok = run("sertrain", "evaluate", ckpt, store, "--split", "validation")
    assert ok.returncode == 0 and "validation [Ses02F]" in ok.stdout, ok.stderr
