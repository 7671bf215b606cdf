"""MSP-Podcast: the generated tree, the reader against its truth (CSV, JSON, spellings), real
builds, the official partitions, unknown speakers and genders, layout errors, and scale."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import time
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from corpus_fixtures import GENERATORS, make_msp_podcast
from corpus_fixtures.msp_podcast import PODCAST_CODES, PODCAST_COLUMNS
from serprep.cli import main
from serprep.corpora import read_corpus
from serprep.errors import CorpusLayoutError, SerprepError
from serprep.labels import load_spec
from serprep.store import UNKNOWN_SPEAKER_PREFIX, StoreReader, is_known_speaker
from store_fixtures import build

FOUR = {"A": "ang", "H": "hap", "N": "neu", "S": "sad"}
ALL = {"A": "ang", "S": "sad", "H": "hap", "U": "sur", "F": "fea", "D": "dis", "C": "con", "N": "neu", "O": "oth"}
LABELLED_TESTS = ("Test1", "Test2")


@pytest.fixture(scope="module")
def podcast(tmp_path_factory):
    root = tmp_path_factory.mktemp("podcast") / "MSP-Podcast"
    return root, make_msp_podcast(root)


@pytest.fixture(scope="module")
def stores(podcast, tmp_path_factory):
    """Stores built by the real CLI, ``--classes all`` and ``--classes 4class``."""
    root, _ = podcast
    out = {}
    for classes in ("all", "4class"):
        path = tmp_path_factory.mktemp("podcast_store") / f"podcast-{classes}.h5"
        r = CliRunner().invoke(main, ["build", "msp-podcast", "--root", str(root), "--out", str(path),
                                      "--classes", classes, "--jobs", "2", "-q"])
        assert r.exit_code == 0, r.output
        out[classes] = (path, r.output)
    return out


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    return message


def _check_listing(root, truth) -> None:
    listing = read_corpus("msp-podcast", root)
    by_id = {u.utt_id: u for u in listing.utterances}
    assert sorted(by_id) == sorted(t["utt_id"] for t in truth) and len(by_id) == len(listing.utterances)
    for t in truth:
        u = by_id[t["utt_id"]]
        assert (u.corpus, u.session, u.speaker, u.gender, u.emotion_raw, u.path, u.duration) == (
            "msp-podcast", t["session"], t["speaker"], t["gender"], t["emotion_raw"], t["path"], None)
        assert (u.extras["partition"], u.extras["split_set"]) == (t["partition"], t["split_set"])
        for key in ("arousal", "valence", "dominance"):
            assert u.extras[key] == pytest.approx(t[key], nan_ok=True), key
        assert set(u.extras) == {"partition", "split_set", "arousal", "valence", "dominance"}
    assert len(listing.issues) == len(truth.skipped) and all(i.skipped for i in listing.issues)
    issues = {i.where: i for i in listing.issues}
    for s in truth.skipped:
        assert s["message"] in issues[s["where"]].message and issues[s["where"]].utt_id == s["utt_id"]
    assert not ({u.path for u in listing.utterances} | set(issues)) & set(truth.ignored)


# ----------------------------------------------------------------------------------- fixture


def test_generator_is_registered_deterministic_and_fast(podcast, tmp_path):
    assert GENERATORS["msp-podcast"] is make_msp_podcast
    t0 = time.perf_counter()
    a = make_msp_podcast(tmp_path / "a", seed=2)
    assert time.perf_counter() - t0 < 3.0
    b = make_msp_podcast(tmp_path / "b", seed=2)
    assert json.dumps(a) == json.dumps(b) and a.skipped == b.skipped and a.ignored == b.ignored  # NaN-safe
    for rel in ("Labels/labels_consensus.csv", *(t["path"] for t in a if not t["failed"])):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert [t["utt_id"] for t in a] != [t["utt_id"] for t in podcast[1]]


def test_fixture_reproduces_the_layout(podcast):
    root, truth = podcast
    with open(root / "Labels/labels_consensus.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == PODCAST_COLUMNS and len(rows) == len(truth) + 1 + len(truth.skipped)
    assert {t["emotion_raw"] for t in truth} == set(PODCAST_CODES) | {""}
    assert {t["split_set"] for t in truth} == {"Train", "Development", "Test1", "Test2", "Test3"}
    # Test3: labels withheld (no class, no ratings).
    test3 = [t for t in truth if t["partition"] == "Test3"]
    assert test3 and all(t["emotion_raw"] == "" and math.isnan(t["arousal"]) for t in test3)
    assert all(t["emotion_raw"] for t in truth if t["partition"] != "Test3")
    # Unknown speakers: one pseudo speaker per partition, genders F, M and U among them.
    unknown = [t for t in truth if t["speaker"].startswith(UNKNOWN_SPEAKER_PREFIX)]
    assert {t["speaker"] for t in unknown} == {f"unknown:{p}" for p in ("Train", "Development", "Test1", "Test2", "Test3")}
    assert {t["gender"] for t in unknown} == {"F", "M", "U"}
    assert {r[5] for r in rows[1:] if not r[5].isdigit()} == {"Unknown"}
    assert {r[6] for r in rows[1:]} == {"Female", "Male", "Unknown"}
    # Known speakers never cross partitions.
    parts = {}
    for t in truth:
        parts.setdefault(t["speaker"], set()).add(t["partition"])
    assert all(len(p) == 1 for p in parts.values())
    missing = [t for t in truth if t["failed"]]
    assert len(missing) == 1 and not (root / missing[0]["path"]).exists()
    for t in truth:
        if not t["failed"]:
            info = sf.info(str(root / t["path"]))
            assert (info.samplerate, info.channels, info.frames) == (16000, 1, t["n_samples"])
    for rel in truth.ignored:
        assert (root / rel).exists()
    assert any(rel.startswith("Audios/MSP-PODCAST_") for rel in truth.ignored)  # audio no row names


# ------------------------------------------------------------------------------------ reader


def test_reader_lists_exactly_the_rows(podcast):
    _check_listing(*podcast)


@pytest.mark.parametrize(
    "options",
    [{"label_name": "labels_concensus.csv"}, {"label_name": "labels_consensus.json"},
     {"label_name": "labels_concensus.json"}, {"json_too": True}, {"development_name": "Validation"}],
    ids=["concensus-csv", "json-1.12", "concensus-json", "csv-beside-json", "Validation"],
)
def test_label_table_variants(tmp_path, options):
    root = tmp_path / "MSP-Podcast"
    truth = make_msp_podcast(root, utts_per_speaker=2, seed=5, **options)
    _check_listing(root, truth)
    if options.get("development_name") == "Validation":
        dev = [t for t in truth if t["partition"] == "Development"]
        assert dev and {t["split_set"] for t in dev} == {"Validation"}
        assert "unknown:Development" in {t["speaker"] for t in dev}


def test_odd_rows_are_recorded_not_fatal(tmp_path):
    root = tmp_path / "MSP-Podcast"
    truth = make_msp_podcast(root, utts_per_speaker=2, seed=6, quirks=False)
    table = root / "Labels/labels_consensus.csv"
    lines = table.read_text().splitlines()
    names = [line.split(",")[0][:-4] for line in lines[1:4]]
    lines[1] = ",".join(lines[1].split(",")[:-1] + ["Test4"])  # unknown partition: skipped
    fields = lines[2].split(",")
    lines[2] = ",".join(fields[:6] + ["Other"] + fields[7:])  # unknown gender: skipped
    fields = lines[3].split(",")
    lines[3] = ",".join(fields[:2] + ["n/a"] + fields[3:])  # EmoAct not a number: NaN and a warning
    table.write_text("\n".join(lines) + "\n")
    listing = read_corpus("msp-podcast", root)
    issues = {i.utt_id: i for i in listing.issues}
    assert issues[names[0]].skipped and "Split_Set 'Test4'" in issues[names[0]].message
    assert issues[names[0]].where == "Labels/labels_consensus.csv:2"
    assert issues[names[1]].skipped and "Gender 'Other'" in issues[names[1]].message
    assert not issues[names[2]].skipped and "EmoAct 'n/a' is not a number" in issues[names[2]].message
    utts = {u.utt_id: u for u in listing.utterances}
    assert set(utts) == {t["utt_id"] for t in truth} - set(names[:2])
    assert math.isnan(utts[names[2]].extras["arousal"])
    # An utterance labelled twice is a layout error naming both lines.
    table.write_text("\n".join(lines + [lines[5]]) + "\n")
    with pytest.raises(CorpusLayoutError) as e:
        read_corpus("msp-podcast", root)
    assert f"{lines[5].split(',')[0][:-4]} is labelled twice (Labels/labels_consensus.csv:6" in _one_line(e)


# ------------------------------------------------------------------------------------ builds


@pytest.mark.parametrize("classes, class_map", [("all", ALL), ("4class", FOUR)])
def test_build_class_counts_durations_failures_and_unknown_gender(podcast, stores, classes, class_map):
    root, truth = podcast
    path, output = stores[classes]
    r = StoreReader(path)
    m = r.manifest().set_index("utt_id")
    assert set(m.index) == {t["utt_id"] for t in truth}
    selected = [t for t in truth if t["emotion_raw"] in class_map]
    expected = Counter(class_map[t["emotion_raw"]] for t in selected if not t["failed"])
    assert Counter(m.loc[m["status"] == "ok", "emotion"]) == expected
    assert r.vocab("emotion") == sorted(set(class_map.values()))
    for t in truth:
        row = m.loc[t["utt_id"]]
        assert (row["speaker"], row["gender"], row["emotion_raw"], row["partition"], row["split_set"]) == (
            t["speaker"], t["gender"], t["emotion_raw"], t["partition"], t["split_set"])
        assert row["arousal"] == pytest.approx(t["arousal"], nan_ok=True)
        in_class = t["emotion_raw"] in class_map
        assert row["emotion"] == (class_map[t["emotion_raw"]] if in_class else "")
        assert row["status"] == ("excluded" if not in_class else "failed" if t["failed"] else "ok")
        if row["status"] == "ok":
            assert row["duration"] == pytest.approx(t["duration"], abs=2e-3)
    # Withheld Test3 rows are in the manifest, visible and unselected.
    assert (m.loc[m["partition"] == "Test3", "status"] == "excluded").all()
    failures = dict(zip(r.failures()["path"], r.failures()["error"]))
    missing = next(t for t in truth if t["failed"])
    assert missing["failure"] in failures[missing["path"]] and missing["path"] in output
    for s in truth.skipped:
        assert s["message"] in failures[s["where"]]
    # Unknown gender: "U" in the manifest, -1 in the segments, counted by `serprep info`.
    n_unknown = sum(1 for t in selected if t["gender"] == "U" and not t["failed"])
    assert n_unknown > 0
    segs = r.segments()
    u_rows = np.flatnonzero((m["gender"] == "U").to_numpy())
    assert (segs.loc[segs["utt"].isin(u_rows), "gender"] == -1).all()
    assert (segs.loc[~segs["utt"].isin(u_rows), "gender"] >= 0).all()
    info = CliRunner().invoke(main, ["info", str(path)])
    assert info.exit_code == 0
    assert f" / U {n_unknown} utterances (U = gender unknown)" in info.output
    assert f"{missing['path']}: cannot read file" in info.output
    assert "official fold 3 (Test3): no labelled utterances; dropped" in info.output
    data = json.loads(CliRunner().invoke(main, ["info", str(path), "--json"]).output)
    assert data["utterances"]["by_gender"]["U"] == n_unknown and data["utterances"]["failed"] == 1


@pytest.mark.parametrize("classes, class_map", [("all", ALL), ("4class", FOUR)])
def test_official_partitions(podcast, stores, classes, class_map):
    _, truth = podcast
    r = StoreReader(stores[classes][0])
    labelled = [t for t in truth if t["emotion_raw"] in class_map]
    speakers_of = {p: {t["speaker"] for t in labelled if t["partition"] == p}
                   for p in ("Train", "Development", *LABELLED_TESTS)}
    m = r.manifest()
    folds = [r.fold("official", k) for k in r.fold_ids("official")]
    assert [f.label for f in folds] == list(LABELLED_TESTS)  # Test3 has no labelled utterance
    for f in folds:
        train, val, test = set(f.train_speakers), set(f.validation_speakers), set(f.test_speakers)
        assert not (train & val or train & test or val & test)
        assert train == speakers_of["Train"] and test == speakers_of[f.label]
        assert {s for s in val if is_known_speaker(s)} == {s for s in speakers_of["Development"] if is_known_speaker(s)}
        assert f"unknown:{f.label}" in test and "unknown:Train" in train
        assert set(m["partition"].iloc[f.test_utts]) == {f.label}
        assert set(m["partition"].iloc[f.train_utts]) == {"Train"}
        assert set(m["partition"].iloc[f.validation_utts]) <= {"Development"}


def test_official_validation_is_all_of_development(stores):
    # The official protocol validates on the whole Development partition: its utterances of
    # unknown speakers included (as the pseudo speaker unknown:Development), while Test and
    # Train speakers never validate.
    r = StoreReader(stores["4class"][0])
    manifest = r.manifest()
    for k in r.fold_ids("official"):
        fold = r.fold("official", k)
        assert set(manifest.loc[fold.validation_utts, "partition"]) == {"Development"}
        dev_ok = manifest.index[(manifest["partition"] == "Development") & (manifest["status"] == "ok")]
        assert sorted(fold.validation_utts) == sorted(dev_ok)
        assert "unknown:Development" in fold.validation_speakers


def test_build_refuses_a_speaker_in_two_partitions(tmp_path):
    root = tmp_path / "MSP-Podcast"
    truth = make_msp_podcast(root, utts_per_speaker=3, seed=7, quirks=False, shared_speaker=True)
    shared = next(t["speaker"] for t in truth if t["partition"] == "Test1" and t["speaker"] in
                  {u["speaker"] for u in truth if u["partition"] == "Train"})
    with pytest.raises(SerprepError, match=rf"speaker {shared} is in partitions Test1, Train; the official partitions "
                                           "must be speaker independent"):
        build("msp-podcast", root, tmp_path / "x.h5", classes="all")
    assert not (tmp_path / "x.h5").exists()
    r = CliRunner().invoke(main, ["build", "msp-podcast", "--root", str(root), "--out", str(tmp_path / "y.h5"),
                                  "--classes", "all", "--jobs", "1", "-q"])
    lines = [line for line in r.output.splitlines() if line]
    assert r.exit_code != 0 and lines[-1].startswith("error: ") and f"speaker {shared} is in partitions" in lines[-1]


def test_manifest_declares_every_code_and_the_official_scheme():
    spec = load_spec("msp-podcast")
    assert set(spec.codes) == set(PODCAST_CODES) | {""} and spec.version == "1.0"
    assert spec.class_map("all") == ALL and spec.class_map("4class") == FOUR
    assert spec.partition_column("official") == "partition" and spec.default_folds == "official"
    entry = spec.folds["official"]
    assert (entry["train"], entry["validation"], entry["test"]) == (["Train"], ["Development"], ["Test1", "Test2", "Test3"])
    assert all(e.get("description") for e in spec.folds.values())


# ----------------------------------------------------------------------------- layout errors


def test_layout_errors_are_one_line_and_point_the_way(podcast, tmp_path):
    root, _ = podcast
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusLayoutError) as e:
        read_corpus("msp-podcast", tmp_path / "empty")
    assert "not an MSP-Podcast root; expected MSP-Podcast layout: Labels/labels_consensus.csv" in _one_line(e)
    for low in ("Audios", "Labels"):
        with pytest.raises(CorpusLayoutError) as e:
            read_corpus("msp-podcast", root / low)
        assert f"did you mean {root}?" in _one_line(e)
    with pytest.raises(CorpusLayoutError) as e:
        read_corpus("msp-podcast", root.parent)
    assert f"did you mean {root}?" in _one_line(e)
    copy = tmp_path / "copy"
    (copy / "Labels").mkdir(parents=True)
    (copy / "Labels/labels_detailed.csv").write_text("FileName\n")
    with pytest.raises(CorpusLayoutError) as e:
        read_corpus("msp-podcast", copy)
    assert "Labels: no labels_consensus.csv" in _one_line(e) and "found labels_detailed.csv" in str(e.value)
    shutil.copy(root / "Labels/labels_consensus.csv", copy / "Labels")
    with pytest.raises(CorpusLayoutError) as e:
        read_corpus("msp-podcast", copy)
    assert "no Audios/ folder" in _one_line(e)
    (copy / "Audios").mkdir()
    table = copy / "Labels/labels_consensus.csv"
    table.write_text(table.read_text().replace("SpkrID", "Speaker", 1))
    with pytest.raises(CorpusLayoutError) as e:
        read_corpus("msp-podcast", copy)
    assert "no column SpkrID" in _one_line(e)
    table.unlink()
    (copy / "Labels/labels_consensus.json").write_text("{not json")
    with pytest.raises(CorpusLayoutError) as e:
        read_corpus("msp-podcast", copy)
    assert "labels_consensus.json: not valid JSON" in _one_line(e)
    r = CliRunner().invoke(main, ["build", "msp-podcast", "--root", str(tmp_path / "empty"),
                                  "--out", str(tmp_path / "x.h5"), "-q"])
    lines = [line for line in r.output.splitlines() if line]
    assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and "not an MSP-Podcast root" in lines[0]


# ------------------------------------------------------------------------------------- scale


def test_100k_rows_one_pass_without_touching_each_wav(tmp_path, monkeypatch):
    """The reader of a 100,000-row table: fast, and no file-system call per row."""
    root = tmp_path / "big"
    (root / "Audios").mkdir(parents=True)
    (root / "Labels").mkdir()
    rnd = random.Random(0)
    parts = ["Train"] * 6 + ["Development", "Test1", "Test1", "Test2"]
    with open(root / "Labels/labels_consensus.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(PODCAST_COLUMNS)
        for i in range(100_000):
            spk = str(rnd.randint(1, 2000)) if rnd.random() < 0.7 else "Unknown"
            w.writerow((f"MSP-PODCAST_{i // 40:04d}_{i % 40 + 1:04d}.wav", rnd.choice(PODCAST_CODES),
                        f"{rnd.uniform(1, 7):.4f}", f"{rnd.uniform(1, 7):.1f}", "", spk,
                        rnd.choice(("Male", "Female", "Unknown")), rnd.choice(parts)))
    calls = Counter()
    for name in ("stat", "lstat", "scandir", "listdir", "access"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, _name=name, **k: (calls.update([_name]), _real(*a, **k))[1])
    t0 = time.perf_counter()
    listing = read_corpus("msp-podcast", root)
    seconds = time.perf_counter() - t0
    monkeypatch.undo()
    assert len(listing.utterances) == 100_000 and not listing.issues
    assert 0 < sum(calls.values()) < 20, calls  # the label table and two folders, never a wav
    assert seconds < 8.0, seconds  # ~0.6 s on one core of a 2-core machine
    assert math.isnan(listing.utterances[0].extras["dominance"])


def test_ratings_reach_the_segments_on_the_1_to_7_scale(stores):
    r = StoreReader(stores["4class"][0])
    assert r.dimension_scales() == {name: (1.0, 7.0) for name in ("arousal", "valence", "dominance")}
    seg, man = r.segments(), r.manifest()
    for name in ("arousal", "valence", "dominance"):
        expected = man[name].to_numpy(np.float64)[seg["utt"].to_numpy()].astype(np.float32)
        np.testing.assert_array_equal(seg[name].to_numpy(), expected)  # NaN where the table has none
        rated = seg[name].dropna()
        assert len(rated) and rated.between(1, 7).all()
