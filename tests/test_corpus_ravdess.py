"""RAVDESS: reader (every layout), CLI builds, the speech/song subsets and folds against the
ground truth of the generated trees."""

from __future__ import annotations

import re
import wave
from collections import Counter

import pytest
from click.testing import CliRunner

from corpus_fixtures import RAVDESS_CODES, make_ravdess
from serprep.cli import main
from serprep.corpora import read_corpus
from serprep.errors import CorpusLayoutError
from serprep.store import StoreReader
from store_fixtures import build

ALL = {"01": "neu", "02": "cal", "03": "hap", "04": "sad", "05": "ang", "06": "fea", "07": "dis", "08": "sur"}
FOUR = {"05": "ang", "03": "hap", "01": "neu", "04": "sad"}
NAME = re.compile(r"^03-0[12]-0[1-8]-0[12]-0[12]-0[12]-(\d{2})$")


@pytest.fixture(scope="module")
def ravdess(tmp_path_factory):
    """(root, truth): the speech zip's folder with the song zip extracted into its actor folders."""
    root = tmp_path_factory.mktemp("ravdess") / "Audio_Speech_Actors_01-24"
    return root, make_ravdess(root)


@pytest.fixture(scope="module")
def ravdess_zips(tmp_path_factory):
    """(root, truth): a folder holding Audio_Speech_Actors_01-24/ and Audio_Song_Actors_01-24/."""
    root = tmp_path_factory.mktemp("ravdess_zips") / "RAVDESS"
    return root, make_ravdess(root, layout="zips", seed=1)


def _cli_build(root, out, *args):
    result = CliRunner().invoke(main, ["build", "ravdess", "--root", str(root), "--out", str(out), "--jobs", "2", "-q",
                                       *args])
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture(scope="module")
def store_all(ravdess, tmp_path_factory):
    return _cli_build(ravdess[0], tmp_path_factory.mktemp("ravdess_all") / "all.h5", "--classes", "all")


@pytest.fixture(scope="module")
def store_4class(ravdess, tmp_path_factory):
    return _cli_build(ravdess[0], tmp_path_factory.mktemp("ravdess_4") / "4class.h5", "--classes", "4class")


# ------------------------------------------------------------------------------------- reader


def _check_listing(root, truth):
    listing = read_corpus("ravdess", root)
    utts = {u.utt_id: u for u in listing.utterances}
    assert sorted(utts) == sorted(t["utt_id"] for t in truth)
    for t in truth:
        u = utts[t["utt_id"]]
        assert (u.corpus, u.session, u.speaker, u.gender, u.emotion_raw, u.path) == (
            "ravdess", t["session"], t["speaker"], t["gender"], t["emotion_raw"], t["path"])
        assert u.extras == {key: t[key] for key in ("vocal_channel", "intensity", "statement", "repetition")}
        assert u.duration is None
    assert sorted((i.where, i.utt_id) for i in listing.issues) == sorted((f["path"], f["utt_id"]) for f in truth.issues)
    assert all(i.skipped for i in listing.issues)
    listed = {u.path for u in listing.utterances} | {i.where for i in listing.issues}
    assert truth.ignored and all((root / p).exists() for p in truth.ignored)
    assert not listed & set(truth.ignored)
    return listing


@pytest.mark.parametrize("layout", ["merged", "zips", "speech"])
def test_reader_lists_exactly_the_truth_in_every_layout(layout, ravdess, ravdess_zips, tmp_path):
    if layout == "merged":
        root, truth = ravdess
    elif layout == "zips":
        root, truth = ravdess_zips
    else:
        root = tmp_path / "Audio_Speech_Actors_01-24"
        truth = make_ravdess(root, layout="speech", seed=2, speech_per_actor=2, corrupt=False)
    listing = _check_listing(root, truth)
    utts = listing.utterances
    # 24 actors, odd male / even female, whatever the layout.
    genders = {u.speaker: u.gender for u in utts}
    assert sorted(genders) == [f"Actor_{a:02d}" for a in range(1, 25)]
    assert all(g == ("M" if int(s[-2:]) % 2 else "F") for s, g in genders.items())
    channels = Counter(u.extras["vocal_channel"] for u in utts)
    if layout == "speech":
        assert set(channels) == {"speech"}
    else:
        assert channels["song"] == 23  # every actor but 18
        assert "Actor_18" not in {u.speaker for u in utts if u.extras["vocal_channel"] == "song"}
        assert {u.emotion_raw for u in utts if u.extras["vocal_channel"] == "speech"} == set(RAVDESS_CODES)
    if layout == "zips":
        assert {u.path.split("/")[0] for u in utts} == {"Audio_Speech_Actors_01-24", "Audio_Song_Actors_01-24"}
        assert all(u.path.startswith("Audio_Song") == (u.extras["vocal_channel"] == "song") for u in utts)


def test_reader_records_faults(ravdess):
    root, truth = ravdess
    issues = {i.where: i for i in read_corpus("ravdess", root).issues}
    assert "actor field 06 disagrees with its folder Actor_05" in issues["Actor_05/03-01-03-01-02-01-06.wav"].message
    assert "not a RAVDESS audio file name" in issues["Actor_10/03-01-05-02-01-10.wav"].message
    assert {f["reason"] for f in truth.issues} == {"actor", "name"}


def test_generated_tree_has_the_real_layout(ravdess, tmp_path):
    root, truth = ravdess
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [f"Actor_{a:02d}" for a in range(1, 25)]
    stereo = 0
    for t in truth:
        m = NAME.match(t["utt_id"])
        assert m and t["path"] == f"Actor_{m.group(1)}/{t['utt_id']}.wav"
        assert not (t["emotion_raw"] == "01" and t["intensity"] == "strong")  # neutral: normal only
        if t["vocal_channel"] == "song":
            assert t["emotion_raw"] in ("01", "02", "03", "04", "05", "06")
        if not t["corrupt"]:
            with wave.open(str(root / t["path"])) as w:
                assert (w.getframerate(), w.getsampwidth()) == (48000, 2)
                assert w.getnframes() == t["n_samples"] and w.getnchannels() == t["channels"]
                stereo += w.getnchannels() == 2
    assert stereo == 1 and sum(t["corrupt"] for t in truth) == 2
    again = make_ravdess(tmp_path / "again", speech_per_actor=1, song_per_actor=0, corrupt=False, faults=False)
    once_more = make_ravdess(tmp_path / "more", speech_per_actor=1, song_per_actor=0, corrupt=False, faults=False)
    assert [(t["utt_id"], t["n_samples"]) for t in again] == [(t["utt_id"], t["n_samples"]) for t in once_more]
    assert (tmp_path / "again" / again[0]["path"]).read_bytes() == (tmp_path / "more" / once_more[0]["path"]).read_bytes()


def _write(path, data=b"RIFF"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_doubtful_names_are_warnings_and_video_modalities_are_skipped(tmp_path):
    actor = tmp_path / "Actor_07"
    for name in ("03-01-01-02-01-01-07",   # neutral at strong intensity: kept, warned
                 "03-02-07-01-01-01-07",   # song with disgust: kept, warned
                 "03-01-09-01-01-01-07",   # unknown emotion code: kept (the build warns)
                 "01-01-05-01-01-01-07",   # full audio-video modality: skipped
                 "03-03-05-01-01-01-07",   # vocal channel 03: skipped
                 "03-01-05-01-01-01-25"):  # actor 25: skipped
        _write(actor / f"{name}.wav")
    listing = read_corpus("ravdess", tmp_path)
    assert sorted(u.utt_id for u in listing.utterances) == [
        "03-01-01-02-01-01-07", "03-01-09-01-01-01-07", "03-02-07-01-01-01-07"]
    warned = sorted(i.utt_id for i in listing.issues if not i.skipped)
    skipped = {i.utt_id: i.message for i in listing.issues if i.skipped}
    assert warned == ["03-01-01-02-01-01-07", "03-02-07-01-01-01-07"]
    assert "modality 01 (full audio-video) is not audio-only" in skipped["01-01-05-01-01-01-07"]
    assert "vocal channel 03" in skipped["03-03-05-01-01-01-07"]
    assert "actor 25 is not 01-24" in skipped["03-01-05-01-01-01-25"]


def test_actor_folders_at_the_root_win_over_zip_folders_beside_them(tmp_path):
    # Some copies hold the speech actors at the top level and again under a zip-named folder.
    for base in (tmp_path, tmp_path / "audio_speech_actors_01-24"):
        _write(base / "Actor_01" / "03-01-05-01-01-01-01.wav")
    listing = read_corpus("ravdess", tmp_path)
    assert [u.path for u in listing.utterances] == ["Actor_01/03-01-05-01-01-01-01.wav"]


def test_the_same_file_twice_is_a_layout_error(tmp_path):
    for zip_dir in ("Audio_Speech_Actors_01-24", "Audio_Song_Actors_01-24"):
        _write(tmp_path / zip_dir / "Actor_02" / "03-02-03-01-01-01-02.wav")
    with pytest.raises(CorpusLayoutError, match=r"03-02-03-01-01-01-02.wav is both Audio_Song_Actors_01-24/Actor_02/"
                                                r"03-02-03-01-01-01-02.wav and Audio_Speech_Actors_01-24/Actor_02/"):
        read_corpus("ravdess", tmp_path)


# ------------------------------------------------------------------------------------- builds


def _expected(truth, class_map, channels=("speech",)):
    return dict(sorted(Counter(class_map[t["emotion_raw"]] for t in truth if t["emotion_raw"] in class_map
                               and t["vocal_channel"] in channels and not t["corrupt"]).items()))


def _check_manifest(out, truth, class_map, channels):
    r = StoreReader(out)
    assert r.vocab("emotion") == sorted(set(class_map.values()))
    m = r.manifest().set_index("utt_id")
    assert sorted(m.index) == sorted(t["utt_id"] for t in truth)  # song files too: listed, excluded
    for t in truth:
        row = m.loc[t["utt_id"]]
        assert (row.speaker, row.gender, row.emotion_raw, row.path, row.vocal_channel, row.intensity, row.statement,
                row.repetition) == (t["speaker"], t["gender"], t["emotion_raw"], t["path"], t["vocal_channel"],
                                    t["intensity"], t["statement"], t["repetition"])
        selected = t["emotion_raw"] in class_map and t["vocal_channel"] in channels
        assert row.emotion == (class_map[t["emotion_raw"]] if selected else "")
        assert row.status == ("excluded" if not selected else "failed" if t["corrupt"] else "ok")
        if not t["corrupt"]:
            assert row.duration == pytest.approx(t["duration"], abs=1e-3)
    assert dict(sorted(Counter(m.emotion[m.status == "ok"]).items())) == _expected(truth, class_map, channels)
    assert set(r.failures().path) == {t["path"] for t in truth if t["corrupt"] and t["emotion_raw"] in class_map
                                    and t["vocal_channel"] in channels} | {
        f["path"] for f in truth.issues}
    return r, m


@pytest.mark.parametrize("which, class_map", [("all", ALL), ("4class", FOUR)])
def test_cli_build_counts_speech_only_by_default(ravdess, store_all, store_4class, which, class_map):
    root, truth = ravdess
    out, result = store_all if which == "all" else store_4class
    expected = _expected(truth, class_map)
    assert "classes: " + ", ".join(f"{c} {n}" for c, n in expected.items()) in result.output
    assert f"skipped {len(truth.issues)} label line(s)" in result.output
    r, m = _check_manifest(out, truth, class_map, ("speech",))
    assert r.build["subset"] == "speech"
    song = m[m.vocal_channel == "song"]
    assert len(song) == 23 and set(song.status) == {"excluded"} and set(song.emotion) == {""}
    assert (m.loc[m.source_rate > 0, "source_rate"] == 48000).all()


def test_subset_all_reads_both_zip_folders(ravdess_zips, tmp_path):
    root, truth = ravdess_zips
    out, result = _cli_build(root, tmp_path / "both.h5", "--classes", "all", "--subset", "all")
    assert "classes: " + ", ".join(f"{c} {n}" for c, n in _expected(truth, ALL, ("speech", "song")).items()) in result.output
    _check_manifest(out, truth, ALL, ("speech", "song"))


def test_song_subset_folds_leave_out_actor_18(ravdess_zips, tmp_path):
    root, truth = ravdess_zips
    out = tmp_path / "song.h5"
    build("ravdess", root, out, classes="4class", subset="song")
    r, m = _check_manifest(out, truth, FOUR, ("song",))
    labelled = set(m.speaker[m.emotion != ""])
    assert "Actor_18" not in labelled
    gender = {t["speaker"]: t["gender"] for t in truth}
    _check_folds(r, "5fold", labelled, gender, k=5)
    _check_folds(r, "loso", labelled, gender, k=len(labelled))


def _check_folds(r, scheme, labelled, gender, k):
    m = r.manifest()
    folds = [r.fold(scheme, i) for i in r.fold_ids(scheme)]
    assert len(folds) == k
    tested = []
    per_fold = []
    for f in folds:
        train, val, test = set(f.train_speakers), set(f.validation_speakers), set(f.test_speakers)
        assert not (train & val or train & test or val & test)
        assert train | val | test == labelled
        assert sorted(gender[s] for s in val) == ["F", "M"]  # 2 validation actors, one of each gender
        for part, speakers in (("train_utts", train), ("validation_utts", val), ("test_utts", test)):
            assert set(m.speaker.iloc[getattr(f, part)]) <= speakers
        assert len(f.test_utts) > 0 and len(f.validation_utts) > 0
        tested += sorted(test)
        per_fold.append(Counter(gender[s] for s in test))
    assert sorted(tested) == sorted(labelled)  # every actor tested exactly once
    for g in ("F", "M"):  # genders dealt evenly: counts per fold differ by at most one
        counts = [c[g] for c in per_fold]
        assert max(counts) - min(counts) <= 1, (scheme, g, counts)
    sizes = [sum(c.values()) for c in per_fold]
    assert max(sizes) - min(sizes) <= 1


def test_folds_are_speaker_disjoint_gender_balanced_and_cover_every_actor(ravdess, store_all, store_4class):
    _, truth = ravdess
    gender = {t["speaker"]: t["gender"] for t in truth}
    for out, _ in (store_all, store_4class):
        r = StoreReader(out)
        assert sorted(r.fold_schemes()) == ["5fold", "loso"]
        labelled = set(gender)
        _check_folds(r, "5fold", labelled, gender, k=5)
        _check_folds(r, "loso", labelled, gender, k=24)


def test_info_names_the_corpus(store_4class):
    out, _ = store_4class
    r = CliRunner().invoke(main, ["info", str(out)])
    assert r.exit_code == 0, r.output
    assert "corpus        ravdess = RAVDESS" in r.output and "labels        4class / subset speech" in r.output
    assert "folds 5fold (5)" in r.output and "folds loso (24)" in r.output


# -------------------------------------------------------------------------------- layout errors


def _one_line(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _build_error(root, tmp_path):
    return CliRunner().invoke(main, ["build", "ravdess", "--root", str(root), "--out", str(tmp_path / "x.h5"), "-q"])


def test_layout_errors_are_one_line_with_hints(ravdess, ravdess_zips, tmp_path):
    root, _ = ravdess
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    _one_line(_build_error(tmp_path / "other", tmp_path), "not a RAVDESS root", "expected RAVDESS layout: Actor_01..Actor_24",
              "found readme.txt")
    # One level too low: an actor folder.
    _one_line(_build_error(root / "Actor_01", tmp_path), "looks like one actor's folder", f"did you mean {root}?")
    # One level too high: the folder above the one holding both zip folders.
    zips_root, _ = ravdess_zips
    _one_line(_build_error(zips_root.parent, tmp_path), f"did you mean {zips_root}?")
    # The parent of the speech folder holds a zip folder: accepted, read through it.
    listing = read_corpus("ravdess", root.parent)
    assert all(u.path.startswith("Audio_Speech_Actors_01-24/Actor_") for u in listing.utterances)


def test_wrong_level_hints_above_plain_actor_folders(tmp_path):
    _write(tmp_path / "speech" / "Actor_03" / "03-01-05-01-01-01-03.wav")
    with pytest.raises(CorpusLayoutError, match=f"did you mean {re.escape(str(tmp_path / 'speech'))}"):
        read_corpus("ravdess", tmp_path)
    (tmp_path / "Audio_Song_Actors_01-24").mkdir()
    with pytest.raises(CorpusLayoutError, match="Audio_Song_Actors_01-24 holds no Actor_NN folders"):
        read_corpus("ravdess", tmp_path)
    _write(tmp_path / "Actor_04" / "readme.txt")
    _write(tmp_path / "Actor_04" / "take 1.wav")
    with pytest.raises(CorpusLayoutError, match=r"no RAVDESS audio file names .*1 \.wav file\(s\) skipped: Actor_04/take 1.wav: not a RAVDESS"):
        read_corpus("ravdess", tmp_path)
