"""Corpus readers against the ground truth of the on-the-fly fixtures."""

from __future__ import annotations

import math
import shutil

import pytest

from serprep.corpora import read_corpus
from serprep.corpora.iemocap import parse_utterance_id
from serprep.errors import CorpusLayoutError


def test_iemocap_every_summary_line_and_nothing_else(iemocap_root):
    root, truth = iemocap_root
    utts = read_corpus("iemocap", root).utterances
    assert sorted(u.utt_id for u in utts) == sorted(t["utt_id"] for t in truth)
    by_id = {u.utt_id: u for u in utts}
    for t in truth:
        u = by_id[t["utt_id"]]
        assert (u.session, u.speaker, u.gender, u.emotion_raw, u.path) == (
            t["session"], t["speaker"], t["gender"], t["emotion_raw"], t["path"])
        assert u.extras["mode"] == t["mode"] and u.extras["dialog"] == t["dialog"]
        assert u.extras["transcript"] == t["transcript"]
        for key in ("valence", "arousal", "dominance", "start", "end"):
            assert u.extras[key] == pytest.approx(t[key], abs=1e-4, nan_ok=True), key
    # Stray files never become utterances.
    assert all(u.path.endswith(".wav") and "/._" not in u.path and "/dialog/" not in u.path for u in utts)


def test_iemocap_speaker_is_the_speaking_actor_not_the_dialog_prefix(iemocap_root):
    root, _ = iemocap_root
    utts = read_corpus("iemocap", root).utterances
    assert len({u.speaker for u in utts}) == 10
    mismatched = [u for u in utts if u.utt_id[5] != u.gender]
    assert mismatched, "fixture should contain turns whose speaker differs from the dialog prefix"
    for u in mismatched:
        assert u.speaker == u.utt_id[:5] + u.utt_id.rsplit("_", 1)[1][0]


@pytest.mark.parametrize(
    "utt_id, expected",
    [
        ("Ses03M_impro05a_F012", ("Ses03M_impro05a", "Ses03", "F")),
        ("Ses05M_script01_1b_F022", ("Ses05M_script01_1b", "Ses05", "F")),
        ("Ses01M_impro01_F003", ("Ses01M_impro01", "Ses01", "F")),
        ("Ses03M_script01_1b_M012", ("Ses03M_script01_1b", "Ses03", "M")),
    ],
)
def test_iemocap_irregular_dialog_names(utt_id, expected):
    assert parse_utterance_id(utt_id) == expected


def test_iemocap_wrong_folder_says_what_was_expected(tmp_path, iemocap_root):
    (tmp_path / "something").mkdir()
    with pytest.raises(CorpusLayoutError, match=r"not an IEMOCAP root.*expected IEMOCAP_full_release layout.*found something/"):
        read_corpus("iemocap", tmp_path)
    # Pointing at the parent of IEMOCAP_full_release gives a hint.
    root, _ = iemocap_root
    with pytest.raises(CorpusLayoutError, match="did you mean"):
        read_corpus("iemocap", root.parent)


def test_iemocap_malformed_summary_line_is_skipped_and_named_with_file_and_line(tmp_path, iemocap_root):
    root, _ = iemocap_root
    copy = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(root / "Session1" / "dialog" / "EmoEvaluation", copy / "Session1" / "dialog" / "EmoEvaluation")
    label = sorted(p for p in (copy / "Session1/dialog/EmoEvaluation").glob("Ses*.txt"))[0]
    lines = label.read_text().splitlines()
    label.write_text("\n".join(lines + ["[1.0 - x]\tSes01F_impro01_F999\tneu"]) + "\n")
    listing = read_corpus("iemocap", copy)
    (issue,) = listing.issues
    assert issue.where == f"Session1/dialog/EmoEvaluation/{label.name}:{len(lines) + 1}"
    assert issue.message.startswith("malformed summary line") and issue.utt_id == "Ses01F_impro01_F999"
    assert issue.skipped and "Ses01F_impro01_F999" not in {u.utt_id for u in listing.utterances}


def test_msp_improv_reader(msp_root):
    root, truth = msp_root
    utts = read_corpus("msp-improv", root).utterances
    assert sorted(u.utt_id for u in utts) == sorted(t["utt_id"] for t in truth)
    by_id = {u.utt_id: u for u in utts}
    for t in truth:
        u = by_id[t["utt_id"]]
        assert (u.session, u.speaker, u.gender, u.emotion_raw, u.path) == (
            t["session"], t["speaker"], t["gender"], t["emotion_raw"], t["path"])
        assert (u.extras["sentence"], u.extras["target_emotion"], u.extras["scenario"]) == (
            t["sentence"], t["target_emotion"], t["scenario"])
        for key in ("valence", "arousal", "dominance", "naturalness"):
            assert (math.isnan(u.extras[key]) and math.isnan(t[key])) or u.extras[key] == pytest.approx(t[key]), key
    assert len({u.speaker for u in utts}) == 12
    assert {u.emotion_raw for u in utts} == {"A", "H", "S", "N", "O", "X"}


def test_msp_improv_layout_variants(msp_root_variant):
    root, truth = msp_root_variant
    utts = read_corpus("msp-improv", root).utterances
    assert sorted((u.utt_id, u.path) for u in utts) == sorted((t["utt_id"], t["path"]) for t in truth)


def test_msp_improv_wrong_folder(tmp_path, iemocap_root):
    root, _ = iemocap_root
    with pytest.raises(CorpusLayoutError, match=r"not an MSP-IMPROV root; expected MSP-IMPROV layout: Evaluation.txt.*found .*Session1/"):
        read_corpus("msp-improv", root)


def test_unknown_root_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusLayoutError, match="corpus root is not a directory"):
        read_corpus("iemocap", tmp_path / "nope")
