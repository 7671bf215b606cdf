"""EmoDB: reader, CLI builds and folds against the ground truth of the generated tree."""

from __future__ import annotations

import re
import shutil
import wave
from collections import Counter

import pytest
from click.testing import CliRunner

from corpus_fixtures import EMODB_CODES, make_emodb
from serprep.cli import main
from serprep.corpora import read_corpus
from serprep.corpora.emodb import SPEAKERS
from serprep.errors import CorpusLayoutError
from serprep.store import StoreReader

FOUR = {"W": "ang", "F": "hap", "N": "neu", "T": "sad"}
ALL = {"W": "ang", "L": "bor", "E": "dis", "A": "fea", "F": "hap", "T": "sad", "N": "neu"}


@pytest.fixture(scope="module")
def emodb(tmp_path_factory):
    """(root, truth): the folder holding wav/, lablaut/, labsilb/, silb/."""
    root = tmp_path_factory.mktemp("emodb") / "emodb"
    return root, make_emodb(root)


def _cli_build(root, out, *args):
    result = CliRunner().invoke(main, ["build", "emodb", "--root", str(root), "--out", str(out), "--jobs", "2", "-q",
                                       *args])
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture(scope="module")
def store_all(emodb, tmp_path_factory):
    return _cli_build(emodb[0], tmp_path_factory.mktemp("emodb_all") / "all.h5", "--classes", "all")


@pytest.fixture(scope="module")
def store_4class(emodb, tmp_path_factory):
    return _cli_build(emodb[0], tmp_path_factory.mktemp("emodb_4") / "4class.h5", "--classes", "4class")


# ------------------------------------------------------------------------------------- reader


def test_reader_lists_exactly_the_truth(emodb):
    root, truth = emodb
    listing = read_corpus("emodb", root)
    utts = {u.utt_id: u for u in listing.utterances}
    assert sorted(utts) == sorted(t["utt_id"] for t in truth)
    for t in truth:
        u = utts[t["utt_id"]]
        assert (u.corpus, u.session, u.speaker, u.gender, u.emotion_raw, u.path) == (
            "emodb", t["session"], t["speaker"], t["gender"], t["emotion_raw"], t["path"])
        assert u.extras == {"text": t["text"], "version": t["version"]}
        assert u.duration is None  # readers never decode audio
    # Ten speakers, genders from the speaker table, every emotion letter, a second version.
    assert {u.speaker: u.gender for u in utts.values()} == {f"spk{n}": g for n, g in SPEAKERS.items()}
    assert Counter(u.gender for u in utts.values()).keys() == {"F", "M"}
    assert {u.emotion_raw for u in utts.values()} == set(EMODB_CODES)
    assert any(u.extras["version"] == "b" for u in utts.values())


def test_reader_records_every_fault_and_ignores_litter(emodb):
    root, truth = emodb
    listing = read_corpus("emodb", root)
    assert sorted((i.where, i.utt_id) for i in listing.issues) == sorted((f["path"], f["utt_id"]) for f in truth.issues)
    assert all(i.skipped for i in listing.issues)
    by_path = {i.where: i.message for i in listing.issues}
    assert "speaker 02" in by_path["wav/02a01Fa.wav"] and "speaker table" in by_path["wav/02a01Fa.wav"]
    assert "not an EmoDB file name" in by_path["wav/13a7Fa.wav"]
    listed = {u.path for u in listing.utterances} | set(by_path)
    assert truth.ignored and all((root / p).exists() for p in truth.ignored)
    assert not listed & set(truth.ignored)
    assert all(p.startswith("wav/") and "/._" not in p for p in listed)


def test_generated_tree_has_the_real_layout(emodb, tmp_path):
    root, truth = emodb
    assert {p.name for p in root.iterdir() if p.is_dir()} == {"wav", "lablaut", "labsilb", "silb"}
    for t in truth:
        assert re.fullmatch(r"wav/\d{2}[ab]\d{2}[WLEAFTN][a-z]\.wav", t["path"])
        assert (root / "lablaut" / f"{t['utt_id']}.lablaut").is_file()
        if not t["corrupt"]:
            with wave.open(str(root / t["path"])) as w:
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
                assert w.getnframes() == t["n_samples"] and 0.5 <= t["duration"] <= 1.5
    assert sum(t["corrupt"] for t in truth) == 2
    # Deterministic for a seed.
    again = make_emodb(tmp_path / "again")
    assert [(t["utt_id"], t["n_samples"]) for t in again] == [(t["utt_id"], t["n_samples"]) for t in truth]


def test_unknown_text_is_a_warning_and_unknown_letter_is_kept(emodb, tmp_path):
    root, _ = emodb
    wav = tmp_path / "wav"
    wav.mkdir()
    shutil.copy(root / "wav" / "02a01Fa.wav", wav / "03a03Wa.wav")  # text a03 does not exist
    shutil.copy(root / "wav" / "02a01Fa.wav", wav / "08b01Xa.wav")  # emotion letter X does not exist
    listing = read_corpus("emodb", tmp_path)
    assert sorted(u.utt_id for u in listing.utterances) == ["03a03Wa", "08b01Xa"]
    (issue,) = listing.issues
    assert not issue.skipped and issue.where == "wav/03a03Wa.wav" and "text code a03" in issue.message
    assert {u.emotion_raw for u in listing.utterances} == {"W", "X"}


# ------------------------------------------------------------------------------------- builds


def _expected_counts(truth, class_map):
    return dict(sorted(Counter(class_map[t["emotion_raw"]] for t in truth
                               if t["emotion_raw"] in class_map and not t["corrupt"]).items()))


@pytest.mark.parametrize("which, class_map", [("all", ALL), ("4class", FOUR)])
def test_cli_build_counts_statuses_and_durations(emodb, store_all, store_4class, which, class_map):
    root, truth = emodb
    out, result = store_all if which == "all" else store_4class
    expected = _expected_counts(truth, class_map)
    assert "classes: " + ", ".join(f"{c} {n}" for c, n in expected.items()) in result.output
    n_failed = sum(t["corrupt"] and t["emotion_raw"] in class_map for t in truth)
    assert (f"skipped {n_failed} unreadable file(s)" in result.output) == (n_failed > 0)
    assert f"skipped {len(truth.issues)} label line(s)" in result.output
    r = StoreReader(out)
    assert r.vocab("emotion") == sorted(set(class_map.values()))
    m = r.manifest().set_index("utt_id")
    assert sorted(m.index) == sorted(t["utt_id"] for t in truth)
    for t in truth:
        row = m.loc[t["utt_id"]]
        assert (row.speaker, row.gender, row.emotion_raw, row.path, row.text, row.version) == (
            t["speaker"], t["gender"], t["emotion_raw"], t["path"], t["text"], t["version"])
        selected = t["emotion_raw"] in class_map
        assert row.emotion == (class_map[t["emotion_raw"]] if selected else "")
        assert row.status == ("failed" if selected and t["corrupt"] else "ok" if selected else "excluded")
        if not t["corrupt"]:
            assert row.duration == pytest.approx(t["duration"], abs=1e-3)
            assert row.source_rate == 16000 or row.status == "excluded"
    ok = m[m.status == "ok"]
    assert dict(sorted(Counter(ok.emotion).items())) == expected
    failures = set(r.failures().path)
    assert failures == {t["path"] for t in truth if t["corrupt"] and t["emotion_raw"] in class_map} | {
        f["path"] for f in truth.issues}


def _check_loso(out, truth):
    r = StoreReader(out)
    m = r.manifest()
    labelled = set(m.loc[m.emotion != "", "speaker"])
    gender = {t["speaker"]: t["gender"] for t in truth}
    assert labelled == set(gender) and len(labelled) == 10
    assert r.fold_schemes() == ["loso"]
    folds = [r.fold("loso", k) for k in r.fold_ids("loso")]
    assert len(folds) == 10
    tested = []
    for f in folds:
        train, val, test = set(f.train_speakers), set(f.validation_speakers), set(f.test_speakers)
        assert len(test) == 1 and len(val) == 2
        assert not (train & val or train & test or val & test)
        assert train | val | test == labelled
        assert sorted(gender[s] for s in val) == ["F", "M"]  # one of each gender
        for part, speakers in (("train_utts", train), ("validation_utts", val), ("test_utts", test)):
            assert set(m.speaker.iloc[getattr(f, part)]) <= speakers
        assert len(f.test_utts) > 0 and len(f.validation_utts) > 0
        tested += sorted(test)
    assert sorted(tested) == sorted(labelled)  # every speaker tested exactly once


def test_loso_folds_are_speaker_disjoint_and_cover_every_speaker(emodb, store_all, store_4class):
    _, truth = emodb
    for out, _ in (store_all, store_4class):
        _check_loso(out, truth)


def test_info_names_the_corpus(store_4class):
    out, _ = store_4class
    r = CliRunner().invoke(main, ["info", str(out)])
    assert r.exit_code == 0, r.output
    assert "corpus        emodb = EmoDB" in r.output and "folds loso (10)" in r.output
    assert "speakers      10 in 10 sessions" in r.output


# -------------------------------------------------------------------------------- layout errors


def _one_line(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _build_error(root, tmp_path):
    return CliRunner().invoke(main, ["build", "emodb", "--root", str(root), "--out", str(tmp_path / "x.h5"), "-q"])


def test_layout_errors_are_one_line_with_hints(emodb, tmp_path):
    root, _ = emodb
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    _one_line(_build_error(tmp_path / "other", tmp_path), "not an EmoDB root", "expected EmoDB layout: wav/SSTTTEV.wav",
              "found notes.txt")
    # One level too low (wav/ itself) and one level too high (the folder above the root).
    _one_line(_build_error(root / "wav", tmp_path), "looks like the wav/ folder itself", f"did you mean {root}?")
    _one_line(_build_error(root.parent, tmp_path), f"did you mean {root}?")
    with pytest.raises(CorpusLayoutError, match=f"did you mean {re.escape(str(root))}"):
        read_corpus("emodb", root / "wav")


def test_wav_folder_without_emodb_names(tmp_path):
    (tmp_path / "wav").mkdir()
    (tmp_path / "wav" / "take1.wav").write_bytes(b"")
    (tmp_path / "wav" / "._03a01Fa.wav").write_bytes(b"")
    with pytest.raises(CorpusLayoutError, match=r"no EmoDB file names .*1 \.wav file\(s\) skipped: wav/take1.wav: not an EmoDB file name.*holds ._03a01Fa.wav, take1.wav"):
        read_corpus("emodb", tmp_path)
