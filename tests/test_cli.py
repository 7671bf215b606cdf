"""The `serprep` command line as a user meets it: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import shutil

import h5py
import pandas as pd
import pytest
from click.testing import CliRunner

from serprep.cli import main


@pytest.fixture(scope="module")
def cli_store(iemocap_root, tmp_path_factory):
    root, _ = iemocap_root
    out = tmp_path_factory.mktemp("cli") / "feats.h5"
    result = CliRunner().invoke(main, ["build", "iemocap", "--root", str(root), "--out", str(out), "--jobs", "1", "-q"])
    assert result.exit_code == 0, result.output
    return out, result


def _one_line_error(result, *fragments):
    assert result.exit_code != 0
    lines = [l for l in result.output.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_build_prints_summary_and_skips(cli_store):
    out, result = cli_store
    assert f"wrote {out}" in result.output
    assert "skipped 2 unreadable file(s)" in result.output
    assert "empty file (0 bytes)" in result.output


def test_info_human_and_json(cli_store):
    out, _ = cli_store
    r = CliRunner().invoke(main, ["info", str(out)])
    assert r.exit_code == 0
    assert "corpus        iemocap" in r.output and "folds loso (5)" in r.output
    j = CliRunner().invoke(main, ["info", str(out), "--json"])
    data = json.loads(j.output)
    assert data["utterances"]["failed"] == 2 and len(data["folds"]["loso"]) == 5
    assert data["feature_config"]["n_mels"] == 40


def test_manifest_csv(cli_store, tmp_path):
    out, _ = cli_store
    csv = tmp_path / "utts.csv"
    r = CliRunner().invoke(main, ["manifest", str(out), "--out", str(csv)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(csv, keep_default_na=False)
    assert list(df.columns[:9]) == ["utt_id", "corpus", "session", "speaker", "gender", "emotion_raw", "emotion", "duration", "path"]
    assert {"mode", "valence", "transcript", "status"} <= set(df.columns)
    assert len(df) == 80


def test_verify_ok_and_damaged(cli_store, tmp_path):
    out, _ = cli_store
    r = CliRunner().invoke(main, ["verify", str(out)])
    assert r.exit_code == 0 and "OK" in r.output
    bad = tmp_path / "bad.h5"
    shutil.copy(out, bad)
    with h5py.File(bad, "r+") as f:
        f["features"][0, 0, 0] = 123.0
    r = CliRunner().invoke(main, ["verify", str(bad)])
    assert r.exit_code == 1 and "/features checksum mismatch" in r.output


def test_truncated_store_is_refused(cli_store, tmp_path):
    out, _ = cli_store
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(out.read_bytes()[:5000])
    for cmd in (["info", str(bad)], ["verify", str(bad)]):
        r = CliRunner().invoke(main, cmd)
        assert r.exit_code != 0 and str(bad) in r.output


def test_not_a_store(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = [1, 2, 3]
    _one_line_error(CliRunner().invoke(main, ["info", str(other)]), str(other), "not a serprep store")
    _one_line_error(CliRunner().invoke(main, ["info", str(tmp_path / "missing.h5")]), "no such file")


def test_build_errors_are_one_line(iemocap_root, cli_store, tmp_path):
    root, _ = iemocap_root
    out, _ = cli_store
    run = CliRunner().invoke
    _one_line_error(run(main, ["build", "iemocap", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "x.h5")]),
                    "corpus root is not a directory")
    (tmp_path / "empty").mkdir()
    _one_line_error(run(main, ["build", "iemocap", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "x.h5")]),
                    "not an IEMOCAP root", "expected IEMOCAP_full_release layout")
    _one_line_error(run(main, ["build", "iemocap", "--root", str(root), "--out", str(out)]), "already exists", "--overwrite")
    _one_line_error(run(main, ["build", "iemocap", "--root", str(root), "--out", str(tmp_path / "x.h5"), "--classes", "7class"]),
                    "unknown class set '7class'", "4class-merged")
    r = run(main, ["build", "iemocap", "--root", str(root), "--out", str(tmp_path / "s.h5"), "--strict", "-j", "1", "-q"])
    assert r.exit_code == 1 and "--strict" in r.output and not (tmp_path / "s.h5").exists()
    assert not list(tmp_path.glob(".s.h5.tmp*"))


def test_help_of_every_command():
    for cmd in ([], ["build"], ["info"], ["verify"], ["manifest"], ["report"], ["demo-corpus"]):
        r = CliRunner().invoke(main, cmd + ["--help"])
        assert r.exit_code == 0 and "Usage:" in r.output, cmd


def test_report_writes_pngs_and_summary(iemocap_root, tmp_path):
    from store_fixtures import build

    root, _ = iemocap_root
    store = tmp_path / "bal.h5"
    build("iemocap", root, store, augment="light", balance=True)
    r = CliRunner().invoke(main, ["report", str(store), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    for name in ("class_counts.png", "spectrograms.png"):
        data = (tmp_path / "rep" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "| fold | test | ang | hap | neu | sad |" in md and md.count("->") >= 20


def test_clean_corpus_store_has_empty_failure_table(tmp_path):
    from corpus_fixtures import make_iemocap
    from store_fixtures import build

    root = tmp_path / "IEMOCAP_full_release"
    make_iemocap(root, utts_per_speaker=4, corrupt=False)
    store = tmp_path / "clean.h5"
    build("iemocap", root, store)
    r = CliRunner().invoke(main, ["info", str(store)])
    assert r.exit_code == 0, r.output
    assert "skipped files" not in r.output and ", 0 failed;" in r.output
    assert CliRunner().invoke(main, ["report", str(store), "--out", str(tmp_path / "rep")]).exit_code == 0


def test_unwritable_output_is_a_one_line_error(cli_store, tmp_path):
    out, _ = cli_store
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(CliRunner().invoke(main, ["manifest", str(out), "--out", str(tmp_path / "nodir" / "u.csv")]),
                    "non-existent directory")
    _one_line_error(CliRunner().invoke(main, ["report", str(out), "--out", str(blocker / "rep")]), str(blocker))
