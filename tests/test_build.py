"""`serprep build` end to end on the tiny fixtures: manifest, segments, features, folds, safety."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from serprep.audio import load_audio
from serprep.config import FeatureConfig
from serprep.errors import SerprepError
from serprep.features import logmel_3ch
from serprep.segments import segment_offsets
from serprep.errors import StoreError
from serprep.store import SCHEMA_VERSION, StoreReader, verify
from store_fixtures import build, downgrade_to_schema_2

MERGED = {"ang": "ang", "hap": "hap", "exc": "hap", "neu": "neu", "sad": "sad"}


@pytest.fixture(scope="module")
def iemocap_store(iemocap_root, tmp_path_factory):
    root, truth = iemocap_root
    out = tmp_path_factory.mktemp("stores") / "iemocap.h5"
    summary = build("iemocap", root, out)
    return out, summary, truth


def test_manifest_keeps_every_utterance_with_mapped_classes(iemocap_store):
    out, summary, truth = iemocap_store
    m = StoreReader(out).manifest()
    assert len(m) == len(truth) == summary.n_utterances
    t = {d["utt_id"]: d for d in truth}
    for row in m.itertuples():
        d = t[row.utt_id]
        assert (row.speaker, row.gender, row.session, row.emotion_raw) == (d["speaker"], d["gender"], d["session"], d["emotion_raw"])
        assert row.emotion == MERGED.get(d["emotion_raw"], "")  # exc merged into hap; others kept, empty
        assert row.path == d["path"] and not row.path.startswith("/")
    labelled = [d for d in truth if d["emotion_raw"] in MERGED]
    assert summary.n_labelled == len(labelled)
    assert summary.n_extracted == len([d for d in labelled if not d["corrupt"]])
    assert set(m.loc[m.emotion == "", "status"]) == {"excluded"}
    assert list(m.columns[:9]) == ["utt_id", "corpus", "session", "speaker", "gender", "emotion_raw", "emotion", "duration", "path"]


def test_corrupt_files_are_skipped_and_recorded(iemocap_store, iemocap_root):
    out, summary, truth = iemocap_store
    corrupt = {d["path"] for d in truth if d["corrupt"] and d["emotion_raw"] in MERGED}
    assert corrupt, "fixture must hold a corrupt labelled file"
    r = StoreReader(out)
    failures = r.failures()
    assert set(failures["path"]) == corrupt
    assert all(p in e for p, e in zip(failures["path"], failures["error"]))
    root = str(iemocap_root[0])
    assert not any(root in e for e in failures["error"])  # no absolute paths in the store
    assert any("empty file" in e for e in failures["error"])
    m = r.manifest().set_index("path")
    assert set(m.loc[sorted(corrupt), "status"]) == {"failed"}


def test_segments_and_features_match_a_direct_computation(iemocap_store, iemocap_root):
    out, _, truth = iemocap_store
    root, _ = iemocap_root
    r = StoreReader(out)
    m = r.manifest()
    segs = r.segments()
    cfg = FeatureConfig()
    ok = m.index[m.status == "ok"]
    assert set(segs.utt) == set(ok)
    for i in ok[:12]:
        feats = logmel_3ch(load_audio(root / m.path[i], 16000).samples, cfg)
        mine = segs[segs.utt == i]
        offsets = segment_offsets(feats.shape[1], 300, 150)
        assert mine.offset.tolist() == offsets.tolist()
        x, valid = r.read_segments(mine.index.to_numpy())
        for k, o in enumerate(offsets):
            v = min(300, feats.shape[1] - o)
            assert valid[k] == v
            # Same code; only BLAS summation order may differ (workers use one thread).
            np.testing.assert_allclose(x[k, :, :v], feats[:, o : o + v], atol=1e-5, rtol=0)
            assert not x[k, :, v:].any()  # zero padding
        assert m.n_segments[i] == len(offsets)
    # Short (200-sample) and exact 3 s utterances.
    n_samples = {d["utt_id"]: d["n_samples"] for d in truth}
    lengths = {u: segs.valid[segs.utt == i].tolist() for i, u in zip(m.index, m.utt_id) if i in set(ok)}
    short = [u for u, n in n_samples.items() if n == 200 and u in lengths]
    exact = [u for u, n in n_samples.items() if n == 48000 and u in lengths]
    for u in short:
        assert lengths[u] == [2]
    for u in exact:
        assert lengths[u] == [300, 300]  # 301 frames with centring: last window aligned to the end


def test_read_segments_keeps_requested_order(iemocap_store):
    out, _, _ = iemocap_store
    r = StoreReader(out)
    n = r.n_segments
    idx = np.array([n - 1, 0, n // 2, 0, 3])
    x, valid = r.read_segments(idx)
    for k, i in enumerate(idx):
        xi, vi = r.read_segments([i])
        np.testing.assert_array_equal(x[k], xi[0])
        assert valid[k] == vi[0]


def test_folds_are_speaker_independent_and_cover_all_speakers(iemocap_store):
    out, _, _ = iemocap_store
    r = StoreReader(out)
    m = r.manifest()
    segs = r.segments()
    assert r.fold_schemes() == ["loso", "loso-speaker"]
    assert r.fold_ids("loso") == [1, 2, 3, 4, 5] and len(r.fold_ids("loso-speaker")) == 10
    for scheme in r.fold_schemes():
        for k in r.fold_ids(scheme):
            f = r.fold(scheme, k)
            parts = {name: set(m.speaker[getattr(f, f"{name}_utts")]) for name in ("train", "validation", "test")}
            assert not parts["train"] & parts["test"] and not parts["train"] & parts["validation"]
            assert not parts["validation"] & parts["test"]
            assert parts["test"] == set(f.test_speakers)
            assert set(m.speaker[segs.utt[f.train_segments]]) <= set(f.train_speakers)
            assert f.norm_mean.shape == f.norm_std.shape == (3, 40)
        if scheme == "loso":
            tested = [s for k in r.fold_ids(scheme) for s in r.fold(scheme, k).test_speakers]
            assert sorted(tested) == sorted(set(m.speaker))  # every speaker tested exactly once


def test_store_records_config_versions_and_checksums(iemocap_store):
    out, _, _ = iemocap_store
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "serprep-store" and f.attrs["schema_version"] == SCHEMA_VERSION == 3
        assert json.loads(f.attrs["feature_config"])["n_mels"] == 40
        versions = json.loads(f.attrs["versions"])
        assert {"serprep", "librosa", "h5py", "numpy"} <= set(versions)
        checksums = json.loads(f.attrs["checksums"])
        assert "features" in checksums and "manifest/utt_id" in checksums and "folds/loso/1@attrs" in checksums
        assert len(f.attrs["corpus_fingerprint"]) == 64
        assert f["features"].chunks is not None and f["features"].compression is None
        # No absolute paths anywhere in the metadata.
        for key, value in f.attrs.items():
            assert str(out.parent) not in str(value), key
    assert verify(out) == []


def test_moved_store_stays_valid(iemocap_store, tmp_path):
    out, _, _ = iemocap_store
    moved = tmp_path / "elsewhere" / "copy.h5"
    moved.parent.mkdir()
    shutil.copy(out, moved)
    assert verify(moved) == []
    a, b = StoreReader(out), StoreReader(moved)
    np.testing.assert_array_equal(a.read_segments([0, 5])[0], b.read_segments([0, 5])[0])


def test_verify_detects_damage(iemocap_store, tmp_path):
    out, _, _ = iemocap_store
    damaged = tmp_path / "damaged.h5"
    shutil.copy(out, damaged)
    with h5py.File(damaged, "r+") as f:
        f["features"][10, 0, 0] += 1.0
        f["segments/valid"][0] = 1
    problems = verify(damaged)
    assert any("/features checksum mismatch" in p for p in problems)
    assert any("/segments/valid checksum mismatch" in p for p in problems)


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_same_input_same_store_content(iemocap_root, iemocap_store, tmp_path, backend):
    root, _ = iemocap_root
    out, _, _ = iemocap_store
    again = tmp_path / "again.h5"
    build("iemocap", root, again, jobs=2, backend=backend)  # parallel workers give the same bytes as jobs=1
    with h5py.File(out, "r") as a, h5py.File(again, "r") as b:
        assert json.loads(a.attrs["checksums"]) == json.loads(b.attrs["checksums"])
        assert a.attrs["corpus_fingerprint"] == b.attrs["corpus_fingerprint"]


def test_augmented_store_is_the_same_with_threads_processes_and_one_job(iemocap_root, tmp_path):
    """Augmented copies draw from their own seeded generators, so where they run (the
    calling thread, worker threads, worker processes) does not change a byte (README)."""
    root, _ = iemocap_root
    options = dict(augment="default", balance=True, block_seconds=15.0)  # many blocks in flight
    stores = {}
    for name, jobs, backend in (("one", 1, "auto"), ("threads", 2, "threads"), ("processes", 2, "processes")):
        stores[name] = tmp_path / f"{name}.h5"
        summary = build("iemocap", root, stores[name], jobs=jobs, backend=backend, **options)
        assert summary.n_items > summary.n_extracted  # augmented copies were made
    with h5py.File(stores["one"], "r") as a:
        reference = (json.loads(a.attrs["checksums"]), a["features"][...].tobytes())
    for name in ("threads", "processes"):
        with h5py.File(stores[name], "r") as b:
            assert json.loads(b.attrs["checksums"]) == reference[0], name
            assert b["features"][...].tobytes() == reference[1], name


def test_strict_aborts_and_leaves_nothing(iemocap_root, tmp_path):
    root, _ = iemocap_root
    out = tmp_path / "strict.h5"
    with pytest.raises(SerprepError, match=r"Session\d/sentences/wav/.*\.wav: .*--strict"):
        build("iemocap", root, out, strict=True)
    assert list(tmp_path.iterdir()) == []  # neither the store nor its temporary file


def test_existing_output_is_refused_unless_overwrite(iemocap_store, iemocap_root):
    out, _, _ = iemocap_store
    root, _ = iemocap_root
    with pytest.raises(SerprepError, match="already exists .*--overwrite"):
        build("iemocap", root, out)


def test_class_set_and_subset_options(iemocap_root, tmp_path):
    root, truth = iemocap_root
    out = tmp_path / "impro.h5"
    build("iemocap", root, out, classes="4class", subset="improvised")
    m = StoreReader(out).manifest()
    for row in m.itertuples():
        d = next(t for t in truth if t["utt_id"] == row.utt_id)
        expected = d["emotion_raw"] if d["emotion_raw"] in ("ang", "hap", "neu", "sad") and d["mode"] == "improvised" else ""
        assert row.emotion == expected
    assert StoreReader(out).vocab("emotion") == ["ang", "hap", "neu", "sad"]


def test_msp_improv_store(msp_root, tmp_path):
    root, truth = msp_root
    out = tmp_path / "msp.h5"
    summary = build("msp-improv", root, out)
    r = StoreReader(out)
    m = r.manifest()
    assert len(m) == len(truth)
    four = {"A": "ang", "H": "hap", "S": "sad", "N": "neu"}
    assert [four.get(c, "") for c in m.emotion_raw] == m.emotion.tolist()
    assert r.fold_ids("loso") == [1, 2, 3, 4, 5, 6]
    # The 44.1 kHz file was resampled to 16 kHz: duration agrees with the truth.
    resampled = [d for d in truth if d["sample_rate"] != 16000 and not d["corrupt"]]
    assert resampled, "fixture must hold a file at another sample rate"
    for d in resampled:
        row = m[m.utt_id == d["utt_id"]].iloc[0]
        assert row.duration == pytest.approx(d["n_samples"] / d["sample_rate"], abs=1e-3)
        if d["emotion_raw"] in four:  # extracted: decoded at its own rate, resampled to 16 kHz
            assert row.source_rate == d["sample_rate"]
            n_frames = StoreReader(out).items().query("utt == @row.name and copy == 0").n_frames.iloc[0]
            assert n_frames == 1 + d["n_samples_16k"] // 160
    assert summary.failures and verify(out) == []


def test_a_fold_whose_test_speaker_failed_entirely_is_dropped_with_a_note(iemocap_root, tmp_path):
    root, truth = iemocap_root
    copy = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(root, copy)
    for t in truth:
        if t["speaker"] == "Ses02M":  # every utterance of one speaker becomes undecodable
            (copy / t["path"]).write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    summary = build("iemocap", copy, tmp_path / "s.h5")
    r = StoreReader(tmp_path / "s.h5")
    ids = r.fold_ids("loso-speaker")
    assert ids == list(range(1, 10))  # 10 planned, renumbered after dropping Ses02M's
    assert all(r.fold("loso-speaker", k).test_speakers != ["Ses02M"] for k in ids)
    assert any("loso-speaker fold 4: no test utterance was extracted (every one of Ses02M failed); dropped" in n
               for n in summary.fold_notes)
    assert any("Ses02M failed" in n for n in r.build["fold_notes"])


# --------------------------------------------------------------------------------------------
# Dimensional ratings
# --------------------------------------------------------------------------------------------
VAD_1_5 = {"arousal": (1.0, 5.0), "valence": (1.0, 5.0), "dominance": (1.0, 5.0)}


def _assert_segments_carry_manifest_ratings(r: StoreReader) -> None:
    """Each segment's rating columns equal its utterance's manifest value (as float32, NaN kept)."""
    seg, man = r.segments(), r.manifest()
    assert list(seg.columns[-len(r.dimension_scales()):]) == list(r.dimension_scales())
    for name in r.dimension_scales():
        assert seg[name].dtype == np.float32
        expected = man[name].to_numpy(np.float64)[seg["utt"].to_numpy()].astype(np.float32)
        np.testing.assert_array_equal(seg[name].to_numpy(), expected)  # NaN == NaN here


def test_iemocap_ratings_reach_every_segment_on_their_scale(iemocap_store, iemocap_root):
    out, _, truth = iemocap_store
    r = StoreReader(out)
    assert r.dimension_scales() == VAD_1_5
    _assert_segments_carry_manifest_ratings(r)
    # ... and the manifest's are the rater averages of the label files (fractional, unscaled).
    by_id = {d["utt_id"]: d for d in truth}
    seg, man = r.segments(), r.manifest()
    for utt in np.unique(seg["utt"].to_numpy())[:10]:
        row = seg[seg["utt"] == utt].iloc[0]
        d = by_id[man["utt_id"][utt]]
        assert (row.valence, row.arousal, row.dominance) == pytest.approx((d["valence"], d["arousal"], d["dominance"]))
    assert (seg["arousal"] % 1 != 0).any()  # averages, not rounded
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["dimensions"]) == {k: list(v) for k, v in VAD_1_5.items()}


def test_msp_improv_keeps_missing_ratings_as_nan(msp_root, tmp_path):
    root, truth = msp_root
    out = tmp_path / "msp.h5"
    build("msp-improv", root, out)
    r = StoreReader(out)
    assert r.dimension_scales() == VAD_1_5  # naturalness stays a manifest extra
    seg, man = r.segments(), r.manifest()
    assert "naturalness" in man.columns and "naturalness" not in seg.columns
    _assert_segments_carry_manifest_ratings(r)
    by_id = {d["utt_id"]: d for d in truth}
    missing = [u for u in np.unique(seg["utt"].to_numpy()) if np.isnan(by_id[man["utt_id"][u]]["dominance"])]
    assert missing, "fixture must hold an extracted utterance without a dominance rating"
    rows = seg[seg["utt"].isin(missing)]
    assert rows["dominance"].isna().all() and rows["arousal"].notna().all()
    assert seg["dominance"].notna().any()


def test_msp_podcast_scale_is_1_to_7_and_a_corpus_without_ratings_has_none():
    from serprep.assemble import dimension_scales

    assert dimension_scales("msp-podcast") == {k: (1.0, 7.0) for k in VAD_1_5}
    assert dimension_scales("iemocap") == VAD_1_5
    assert dimension_scales("emodb") == {} and dimension_scales("crema-d") == {}


def test_augmented_copies_carry_their_source_ratings(iemocap_root, tmp_path):
    root, _ = iemocap_root
    out = tmp_path / "aug.h5"
    summary = build("iemocap", root, out, augment="default", copies=1)
    assert summary.n_items > summary.n_extracted
    r = StoreReader(out)
    seg = r.segments()
    assert (seg["copy"] > 0).sum() > 0
    _assert_segments_carry_manifest_ratings(r)
    per_utt = seg[seg["copy"] == 0].groupby("utt")["arousal"].first()
    copies = seg[seg["copy"] > 0]
    np.testing.assert_array_equal(copies["arousal"].to_numpy(), per_utt[copies["utt"]].to_numpy())


def test_a_schema_2_store_opens_without_ratings(iemocap_store, tmp_path):
    out, _, _ = iemocap_store
    old = tmp_path / "v2.h5"
    shutil.copy(out, old)
    downgrade_to_schema_2(old)
    assert verify(old) == []
    r = StoreReader(old)
    assert r.attrs["schema_version"] == 2 and r.dimension_scales() == {}
    seg = r.segments()
    assert not {"arousal", "valence", "dominance"} & set(seg.columns) and len(seg) == StoreReader(out).n_segments
    np.testing.assert_array_equal(r.read_segments([0, 3])[0], StoreReader(out).read_segments([0, 3])[0])


def test_checksums_cover_the_ratings_and_their_scales(iemocap_store, tmp_path):
    out, _, _ = iemocap_store
    rating, scale = tmp_path / "rating.h5", tmp_path / "scale.h5"
    shutil.copy(out, rating)
    shutil.copy(out, scale)
    with h5py.File(rating, "r+") as f:
        f["segments/arousal"][0] += 1.0
    with pytest.raises(StoreError, match="dataset /segments/arousal checksum mismatch"):
        StoreReader(rating)
    assert any("/segments/arousal checksum mismatch" in p for p in verify(rating))
    with h5py.File(scale, "r+") as f:
        f.attrs["dimensions"] = json.dumps({k: [1.0, 7.0] for k in VAD_1_5})
    with pytest.raises(StoreError, match="root attributes"):
        StoreReader(scale)


def test_info_shows_the_ratings_and_their_scale(iemocap_store):
    from serprep.info import format_summary, store_summary

    out, _, _ = iemocap_store
    s = store_summary(out)
    assert list(s["dimensions"]) == ["arousal", "valence", "dominance"]
    assert s["dimensions"]["arousal"]["scale"] == [1.0, 5.0]
    assert s["dimensions"]["arousal"]["rated"] == s["utterances"]["extracted"]
    assert "  dimensions    arousal 1-5 (" in format_summary(s)
    assert "  features      logmel 40 x 3 channels (static, delta, delta-delta), 16000 Hz" in format_summary(s)


# --------------------------------------------------------------------------------------------
# Feature kind
# --------------------------------------------------------------------------------------------
#: The /features checksum of a default build of the demo corpus (hours 0.01, seed 0), as serprep
#: 0.5.0 wrote it before feature kinds existed (commit 1cb8f75, measured on this project's
#: machine). The kind registry must leave the log-Mel frames unchanged bit for bit. (FFT
#: rounding could differ on another CPU; a mismatch there means re-measuring at 1cb8f75 first.)
DEMO_FEATURES_SHA256 = {
    "iemocap": "0d9e353f777cd946d4e1da131a44bbf6098330837cfe7bf7a4cae23a2005ee0b",
    "msp-improv": "9bd56d1fbe4fd0bea61056ad2d766d27db602ba26b6bf285a31fe9f8a7d5c675",
}


@pytest.mark.parametrize("corpus, layout, folder", [("iemocap", "iemocap", "IEMOCAP_full_release"),
                                                     ("msp-improv", "msp-improv", "MSP-IMPROV")])
def test_logmel_features_are_unchanged_by_the_kind_registry(corpus, layout, folder, tmp_path):
    from serprep.demo import write_demo_corpus

    write_demo_corpus(tmp_path / folder, hours=0.01, seed=0, layout=layout)
    out = tmp_path / "demo.h5"
    build(corpus, tmp_path / folder, out)
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["checksums"])["features"] == DEMO_FEATURES_SHA256[corpus]
        assert f.attrs["feature_kind"] == "logmel" and f["features"].shape[1:] == (3, 40)
    assert verify(out) == []


def test_a_schema_2_store_reads_as_3_channel_logmel_in_sertrain(iemocap_store, tmp_path):
    from sertrain.model import InputSpec

    out, _, _ = iemocap_store
    old = tmp_path / "v2.h5"
    shutil.copy(out, old)
    downgrade_to_schema_2(old)
    with h5py.File(old, "r") as f:
        assert "feature_kind" not in f.attrs and "feature_channels" not in f.attrs
    r = StoreReader(old)
    assert (r.feature_kind, r.feature_channels) == ("logmel", ("static", "delta", "delta-delta"))
    assert InputSpec.from_reader(r) == InputSpec.from_reader(StoreReader(out))
    assert InputSpec.from_reader(r).channels == 3
