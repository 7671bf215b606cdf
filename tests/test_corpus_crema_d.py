"""CREMA-D: the generated tree, the reader against its truth, real builds, generated folds, layout errors."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter

import pytest
import soundfile as sf
from click.testing import CliRunner

from corpus_fixtures import GENERATORS, make_crema_d
from corpus_fixtures.crema_d import CREMA_EMOTIONS, CREMA_SENTENCES, DEMOGRAPHICS_HEADER, HEADER_ONLY
from serprep.cli import main
from serprep.corpora import corpus_info, read_corpus
from serprep.errors import CorpusLayoutError
from serprep.labels import load_spec
from serprep.store import StoreReader

FOUR = {"ANG": "ang", "HAP": "hap", "NEU": "neu", "SAD": "sad"}
ALL = {c: c.lower() for c in CREMA_EMOTIONS}


@pytest.fixture(scope="module")
def crema(tmp_path_factory):
    root = tmp_path_factory.mktemp("crema") / "CREMA-D"
    return root, make_crema_d(root)


@pytest.fixture(scope="module")
def stores(crema, tmp_path_factory):
    """Stores built by the real CLI, ``--classes all`` and ``--classes 4class``."""
    root, _ = crema
    out = {}
    for classes in ("all", "4class"):
        path = tmp_path_factory.mktemp("crema_store") / f"crema-{classes}.h5"
        r = CliRunner().invoke(main, ["build", "crema-d", "--root", str(root), "--out", str(path),
                                      "--classes", classes, "--jobs", "2", "-q"])
        assert r.exit_code == 0, r.output
        out[classes] = (path, r.output)
    return out


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------------- fixture


def test_generator_is_registered_deterministic_and_fast(crema, tmp_path):
    assert GENERATORS["crema-d"] is make_crema_d
    t0 = time.perf_counter()
    a = make_crema_d(tmp_path / "a", seed=3)
    assert time.perf_counter() - t0 < 3.0
    b = make_crema_d(tmp_path / "b", seed=3)
    assert a == b and a.skipped == b.skipped and a.ignored == b.ignored
    for t in a:
        assert (tmp_path / "a" / t["path"]).read_bytes() == (tmp_path / "b" / t["path"]).read_bytes()
    assert a != crema[1]  # another seed, another corpus


def test_fixture_reproduces_the_layout(crema):
    root, truth = crema
    assert (root / "VideoDemographics.csv").read_text().splitlines()[0] == DEMOGRAPHICS_HEADER
    assert Counter(t["gender"] for t in {t["speaker"]: t for t in truth}.values()) == {"F": 9, "M": 11}
    assert {t["sentence"] for t in truth} == set(CREMA_SENTENCES)
    assert {t["emotion_raw"] for t in truth} == set(CREMA_EMOTIONS)
    for t in truth:
        assert t["path"] == f"AudioWAV/{t['speaker']}_{t['sentence']}_{t['emotion_raw']}_{t['intensity']}.wav"
        assert 1001 <= int(t["speaker"]) <= 1091
        if t["sentence"] != "IEO":
            assert t["intensity"] == "XX"
        elif t["emotion_raw"] == "NEU":
            assert t["intensity"] == "XX"
        else:
            assert t["intensity"] in ("LO", "MD", "HI")
    assert {t["intensity"] for t in truth if t["sentence"] == "IEO"} >= {"LO", "MD", "HI"}
    # The release's header-only file (44 bytes, no frames) and a 0-byte file.
    header_only = root / f"AudioWAV/{HEADER_ONLY}.wav"
    assert header_only.stat().st_size == 44 and header_only.read_bytes()[:4] == b"RIFF"
    assert sf.info(str(header_only)).frames == 0
    failed = {t["utt_id"]: t["failure"] for t in truth if t["failed"]}
    assert failed[HEADER_ONLY] == "audio has no samples" and list(failed.values()).count("empty file (0 bytes)") == 1
    assert any((root / t["path"]).stat().st_size == 0 for t in truth if t["failed"])
    for t in truth:
        if not t["failed"]:
            info = sf.info(str(root / t["path"]))
            assert (info.samplerate, info.channels, info.frames) == (16000, 1, t["n_samples"])
            assert 0.5 <= t["duration"] <= 1.5
    for rel in truth.ignored:
        assert (root / rel).exists()


# ------------------------------------------------------------------------------------ reader


def test_reader_lists_exactly_the_truth(crema):
    root, truth = crema
    listing = read_corpus("crema-d", root)
    by_id = {u.utt_id: u for u in listing.utterances}
    assert sorted(by_id) == sorted(t["utt_id"] for t in truth) and len(by_id) == len(listing.utterances)
    for t in truth:
        u = by_id[t["utt_id"]]
        assert (u.corpus, u.session, u.speaker, u.gender, u.emotion_raw, u.path, u.duration) == (
            "crema-d", t["session"], t["speaker"], t["gender"], t["emotion_raw"], t["path"], None)
        assert u.extras == {"sentence": t["sentence"], "intensity": t["intensity"], "age": t["age"],
                            "race": t["race"], "ethnicity": t["ethnicity"]}
    # The empty files are listed: their failure is the build's to record.
    assert {HEADER_ONLY} <= set(by_id)
    # Skipped: exactly the truth's, each recorded with where and why.
    assert len(listing.issues) == len(truth.skipped) and all(i.skipped for i in listing.issues)
    issues = {i.where: i for i in listing.issues}
    for s in truth.skipped:
        assert s["message"] in issues[s["where"]].message and issues[s["where"]].utt_id == s["utt_id"]
    # Litter is neither an utterance nor an issue.
    named = {u.path for u in listing.utterances} | set(issues)
    assert not named & set(truth.ignored)


def test_demographics_variants_bom_crlf_and_a_bad_sex(tmp_path):
    root = tmp_path / "CREMA-D"
    truth = make_crema_d(root, n_female=1, n_male=2, quirks=False)
    demo = root / "VideoDemographics.csv"
    lines = demo.read_text().splitlines()
    bad_actor = lines[1].split(",")[0]
    lines[1] = lines[1].replace('"Male"', '"M/F"').replace('"Female"', '"M/F"')
    demo.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    listing = read_corpus("crema-d", root)
    assert sorted(u.utt_id for u in listing.utterances) == sorted(t["utt_id"] for t in truth if t["speaker"] != bad_actor)
    assert {i.utt_id.split("_")[0] for i in listing.issues} == {bad_actor}
    assert all("is not Male or Female" in i.message and "VideoDemographics.csv:2" in i.message for i in listing.issues)


def test_unknown_emotion_code_is_kept_and_warned_by_the_build(tmp_path):
    root = tmp_path / "CREMA-D"
    truth = make_crema_d(root, n_female=1, n_male=1, quirks=False)
    shutil.copy(root / truth[0]["path"], root / "AudioWAV" / f"{truth[0]['speaker']}_TIE_CAL_XX.wav")
    utts = {u.utt_id: u for u in read_corpus("crema-d", root).utterances}
    assert utts[f"{truth[0]['speaker']}_TIE_CAL_XX"].emotion_raw == "CAL"
    out = tmp_path / "s.h5"
    r = CliRunner().invoke(main, ["build", "crema-d", "--root", str(root), "--out", str(out), "--jobs", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert "unknown label code 'CAL'" in " ".join(StoreReader(out).warnings()["message"])


# ------------------------------------------------------------------------------------ builds


@pytest.mark.parametrize("classes, class_map", [("all", ALL), ("4class", FOUR)])
def test_build_class_counts_durations_and_failures(crema, stores, classes, class_map):
    root, truth = crema
    path, output = stores[classes]
    r = StoreReader(path)
    m = r.manifest().set_index("utt_id")
    assert set(m.index) == {t["utt_id"] for t in truth}
    expected = Counter(class_map[t["emotion_raw"]] for t in truth if t["emotion_raw"] in class_map and not t["failed"])
    ok = m[m["status"] == "ok"]
    assert Counter(ok["emotion"]) == expected
    assert r.vocab("emotion") == sorted(set(class_map.values()))
    for t in truth:
        row = m.loc[t["utt_id"]]
        assert (row["speaker"], row["gender"], row["emotion_raw"], row["path"], row["sentence"], row["intensity"]) == (
            t["speaker"], t["gender"], t["emotion_raw"], t["path"], t["sentence"], t["intensity"])
        assert row["age"] == t["age"]
        if t["failed"]:
            assert row["status"] == ("failed" if t["emotion_raw"] in class_map else "excluded")
        else:
            assert row["status"] == ("ok" if t["emotion_raw"] in class_map else "excluded")
            assert row["duration"] == pytest.approx(t["duration"], abs=2e-3)
    # Failures: the bad audio in the class set and every skipped file, never a crash.
    failures = dict(zip(r.failures()["path"], r.failures()["error"]))
    for t in truth:
        if t["failed"] and t["emotion_raw"] in class_map:
            assert t["failure"] in failures[t["path"]]
    for s in truth.skipped:
        assert s["message"] in failures[s["where"]]
    assert f"AudioWAV/{HEADER_ONLY}.wav: audio has no samples" in output
    info = CliRunner().invoke(main, ["info", str(path)])
    assert info.exit_code == 0
    assert f"AudioWAV/{HEADER_ONLY}.wav: audio has no samples" in info.output
    assert "empty file (0 bytes)" in info.output
    n_failed = sum(1 for t in truth if t["failed"] and t["emotion_raw"] in class_map)
    data = json.loads(CliRunner().invoke(main, ["info", str(path), "--json"]).output)
    assert data["utterances"]["failed"] == n_failed
    assert data["utterances"]["by_class"] == dict(sorted(expected.items()))
    assert data["utterances"]["speakers"] == 20


@pytest.mark.parametrize("scheme, k", [("5fold", 5), ("10fold", 10)])
def test_generated_folds_are_speaker_independent_and_gender_balanced(crema, stores, scheme, k):
    _, truth = crema
    gender = {t["speaker"]: t["gender"] for t in truth}
    path, _ = stores["4class"]
    r = StoreReader(path)
    m = r.manifest()
    assert r.fold_ids(scheme) == list(range(1, k + 1))
    tested: list[str] = []
    per_fold = {"F": [], "M": []}
    for i in r.fold_ids(scheme):
        f = r.fold(scheme, i)
        train, val, test = set(f.train_speakers), set(f.validation_speakers), set(f.test_speakers)
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(gender)
        assert len(val) == 4 and Counter(gender[s] for s in val) == {"F": 2, "M": 2}
        for part, speakers in (("train", train), ("validation", val), ("test", test)):
            assert set(m["speaker"].iloc[getattr(f, f"{part}_utts")]) <= speakers
        tested += f.test_speakers
        for g in per_fold:
            per_fold[g].append(sum(1 for s in test if gender[s] == g))
    assert sorted(tested) == sorted(gender)  # every actor tested exactly once
    for counts in per_fold.values():
        assert max(counts) - min(counts) <= 1, per_fold


def test_manifest_declares_every_code_and_the_schemes():
    spec = load_spec("crema-d")
    assert set(spec.codes) == set(CREMA_EMOTIONS) and spec.version == "1.0"
    assert spec.class_map("all") == ALL and spec.class_map("4class") == FOUR
    assert (spec.default_folds, set(spec.folds)) == ("5fold", {"5fold", "10fold"})
    assert all(entry.get("description") for entry in spec.folds.values())
    assert corpus_info("crema-d").manifest == "crema_d.toml"


# ----------------------------------------------------------------------------- layout errors


def test_layout_errors_are_one_line_and_point_the_way(crema, tmp_path):
    root, _ = crema
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusLayoutError) as e:
        read_corpus("crema-d", tmp_path / "empty")
    assert "not a CREMA-D root; expected CREMA-D layout: AudioWAV/" in _one_line(e) and "an empty folder" in str(e.value)
    with pytest.raises(CorpusLayoutError) as e:  # one level too low
        read_corpus("crema-d", root / "AudioWAV")
    assert f"did you mean {root}?" in _one_line(e)
    with pytest.raises(CorpusLayoutError) as e:  # one level too high
        read_corpus("crema-d", root.parent)
    assert f"did you mean {root}?" in _one_line(e)


def test_missing_demographics_and_lfs_pointers(tmp_path):
    root = tmp_path / "CREMA-D"
    truth = make_crema_d(root, n_female=1, n_male=1, quirks=False)
    demo = (root / "VideoDemographics.csv").read_text()
    (root / "VideoDemographics.csv").unlink()
    with pytest.raises(CorpusLayoutError) as e:
        read_corpus("crema-d", root)
    assert "VideoDemographics.csv: missing" in _one_line(e) and "found AudioWAV/" in str(e.value)
    r = CliRunner().invoke(main, ["build", "crema-d", "--root", str(root), "--out", str(tmp_path / "x.h5"), "-q"])
    lines = [line for line in r.output.splitlines() if line]
    assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and "VideoDemographics.csv" in lines[0]
    (root / "VideoDemographics.csv").write_text(demo.replace('"Sex"', '"Gender"'))
    with pytest.raises(CorpusLayoutError) as e:
        read_corpus("crema-d", root)
    assert "no column Sex" in _one_line(e)
    (root / "VideoDemographics.csv").write_text(demo)
    first = sorted((root / "AudioWAV").glob("*.wav"))[0]
    first.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 51238\n")
    with pytest.raises(CorpusLayoutError) as e:
        read_corpus("crema-d", root)
    assert "Git LFS pointer" in _one_line(e) and "git lfs pull" in str(e.value)
    assert len(truth) == 14
