"""StoreWriter internals a user relies on: frames land where the item table says, checksums
recorded while writing equal a recomputation from the file, attributes are covered, and
stores of another schema version are refused."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from serprep.config import FeatureConfig
from serprep.errors import StoreError
from serprep.store import (CHUNK_FRAMES, SEGMENT_DTYPES, SegmentTable, StoreReader, StoreWriter, _plain, attrs_digest,
                           dataset_digest, root_digest, verify)


def _minimal_tables(writer: StoreWriter, n_utts: int) -> None:
    """The groups `verify` expects in any store."""
    writer.write_table("manifest", {"utt_id": [f"u{i}" for i in range(n_utts)]})
    writer.write_table("segments", {"item": np.arange(n_utts), "offset": np.zeros(n_utts, np.int64)})
    writer.write_table("vocab", {"emotion": ["ang", "neu"]})


def test_blocks_of_items_land_where_the_item_table_says(tmp_path):
    cfg = FeatureConfig(n_mels=8)
    writer = StoreWriter(tmp_path / "s.h5", cfg)
    rng = np.random.default_rng(0)
    # Blocks that end mid-chunk, a block of one chunk exactly, an empty block, single items.
    blocks = [[1, 255], [256], [], [257, 2 * CHUNK_FRAMES + 3, 7], [1000], [13]]
    items, ids = [], []
    for k, lengths in enumerate(blocks):
        frames = [rng.standard_normal((n, 3, 8)).astype(np.float32) for n in lengths]
        block = np.concatenate(frames) if frames else np.zeros((0, 3, 8), np.float32)
        if len(lengths) == 1 and k % 2:
            ids.append(writer.add_frames(k, 0, block)[0])
        else:
            ids += writer.add_block(block, [(k, 0, n, "", None) for n in lengths])
        items += frames
    _minimal_tables(writer, len(blocks))
    writer.finalize()
    assert ids == list(range(len(items)))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        starts, counts = f["items/frame_start"][()], f["items/n_frames"][()]
        assert counts.tolist() == [len(x) for x in items]
        assert f["features"].shape == (sum(counts), 3, 8)
        for x, start in zip(items, starts):
            np.testing.assert_array_equal(f["features"][start : start + len(x)], x)
    assert verify(tmp_path / "s.h5") == []


def test_a_block_must_hold_exactly_its_items_frames(tmp_path):
    writer = StoreWriter(tmp_path / "s.h5", FeatureConfig())
    with pytest.raises(StoreError, match="items hold 5 frames but the block has 6"):
        writer.add_block(np.zeros((6, 3, 40), np.float32), [(0, 0, 2, "", None), (1, 0, 3, "", None)])
    with pytest.raises(StoreError, match=r"does not match \[T, 3, 40\]"):
        writer.add_block(np.zeros((6, 3, 64), np.float32), [(0, 0, 6, "", None)])
    writer.abort()
    assert not any(tmp_path.iterdir())


def test_checksums_recorded_while_writing_match_the_file(tmp_path):
    writer = StoreWriter(tmp_path / "s.h5", FeatureConfig())
    writer.add_frames(0, 0, np.ones((5, 3, 40), np.float32))
    writer.write_table("manifest", {
        "utt_id": ["a", "b\u00e9", ""], "duration": [1.5, float("nan"), 2.0], "n": [1, 2, 3],
        "flag": np.array([True, False, True]),
    })
    writer.write_table("failures", {"path": np.array([], dtype=object)})
    writer.write_array("folds/loso/1/norm_mean", np.zeros((3, 40), np.float32))
    writer.write_array("folds/loso/1/test_utts", np.arange(0))
    writer.finalize()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        recorded = json.loads(_plain(f.attrs["checksums"]))
        for name in ("manifest/utt_id", "manifest/duration", "manifest/n", "manifest/flag", "failures/path",
                     "folds/loso/1/norm_mean", "folds/loso/1/test_utts", "items/frame_start"):
            assert recorded[name] == dataset_digest(f[name]), name


def test_attribute_sets_are_in_the_checksum_table(tmp_path):
    writer = StoreWriter(tmp_path / "s.h5", FeatureConfig())
    writer.add_frames(0, 0, np.ones((5, 3, 40), np.float32))
    _minimal_tables(writer, 1)
    writer.write_array("folds/loso/1/norm_mean", np.zeros((3, 40), np.float32), unit="z")
    writer.set_group_attrs("folds/loso/1", test_speakers='["a"]')
    writer.finalize()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        recorded = json.loads(_plain(f.attrs["checksums"]))
        assert recorded["folds/loso/1@attrs"] == attrs_digest(f["folds/loso/1"].attrs)
        assert recorded["folds/loso/1/norm_mean@attrs"] == attrs_digest(f["folds/loso/1/norm_mean"].attrs)
        # The content id covers every root attribute, the checksum table included.
        assert _plain(f.attrs["attrs_sha256"]) == root_digest(f.attrs)
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        f.attrs["checksums"] = f.attrs["checksums"].replace(recorded["manifest/utt_id"], "0" * 64)
    assert any("root attributes" in p for p in verify(tmp_path / "s.h5"))


def test_schema_1_stores_are_refused_with_a_rebuild_hint(tmp_path):
    path = tmp_path / "old.h5"
    writer = StoreWriter(path, FeatureConfig())
    writer.add_frames(0, 0, np.ones((5, 3, 40), np.float32))
    _minimal_tables(writer, 1)
    writer.finalize()
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 1
    (problem,) = verify(path)
    assert str(path) in problem and "schema version 1" in problem and "rebuild" in problem
    with pytest.raises(StoreError, match="schema version 1"):
        StoreReader(path)


def test_fold_statistics_must_be_finite_to_be_written_and_read(tmp_path):
    from serprep.store import Fold

    def fold(mean):
        ids = np.arange(2)
        return Fold("loso", 1, ids, ids, ids, ids, ids, ids, ids, mean, np.ones((3, 40), np.float32),
                    ["a"], ["b"], ["c"], {})

    writer = StoreWriter(tmp_path / "s.h5", FeatureConfig())
    writer.add_frames(0, 0, np.ones((5, 3, 40), np.float32))
    writer.write_table("manifest", {"utt_id": ["u0"]})
    writer.write_segments(SegmentTable(**{k: np.zeros(1, dtype=t) for k, t in SEGMENT_DTYPES.items()}))
    writer.write_table("vocab", {"emotion": ["ang", "neu"]})
    writer.set_attrs(segment_config='{"frames": 300, "hop": 150, "min_hop": 50}')
    nan_mean = np.zeros((3, 40), np.float32)
    nan_mean[1, 2] = np.nan
    with pytest.raises(StoreError, match=r"fold loso/1: normalisation statistics \(norm_mean\) are not finite"):
        writer.write_fold(fold(nan_mean))
    # Written around write_fold (checksums intact): the reader refuses it when the fold is read.
    good = fold(np.zeros((3, 40), np.float32))
    writer.write_fold(Fold(**{**good.__dict__, "fold": 2}))
    for name in ("train_utts", "validation_utts", "test_utts", "train_segments", "validation_segments",
                 "test_segments", "balanced_index", "norm_std"):
        writer.write_array(f"folds/loso/1/{name}", getattr(good, name))
    writer.write_array("folds/loso/1/norm_mean", nan_mean)
    writer.set_group_attrs("folds/loso/1", test_speakers='["c"]')
    writer.finalize()
    reader = StoreReader(tmp_path / "s.h5")
    assert reader.fold("loso", 2).norm_mean.shape == (3, 40)
    with pytest.raises(StoreError, match="fold loso/1 has non-finite normalisation statistics"):
        reader.fold("loso", 1)


def test_typed_tables_read_back_as_the_reader_returns_them(tmp_path):
    """write_manifest / write_segments / write_vocab / write_failures / write_warnings /
    write_record mirror StoreReader.manifest / segments / vocab / failures / warnings / record."""
    from serprep.config import SegmentConfig
    from serprep.corpora import Utterance
    from serprep.store import BuildRecord, FailureRow, Manifest

    utts = [Utterance("u0", "c", "S1", "spk0", "F", "ang", "a/u0.wav", extras={"valence": 2.5, "mode": "impro"}),
            Utterance("u1", "c", "S1", "spk1", "M", "xxx", "a/u1.wav", extras={"valence": None})]
    writer = StoreWriter(tmp_path / "s.h5", FeatureConfig())
    writer.add_frames(0, 0, np.ones((5, 3, 40), np.float32))
    writer.write_manifest(Manifest(utterances=utts, emotion=["ang", ""], duration=[1.25, None], status=["ok", "excluded"],
                                   n_segments=[1, 0], audio_sha256=["ab" * 32, ""], source_rate=[16000, 0]))
    segments = SegmentTable(item=[0], utt=[0], copy=[0], offset=[0], valid=[5], dense=[0], emotion=[0], gender=[0],
                            speaker=[0])
    writer.write_segments(segments)
    writer.write_vocab(["ang", "neu"], ["spk0", "spk1"])
    writer.write_failures([FailureRow("u9", "a/u9.wav", "empty file")])
    writer.write_warnings([])
    record = BuildRecord(corpus="c", created="2026-01-01T00:00:00+00:00", versions={"serprep": "x"},
                         segment_config=SegmentConfig(), build={"seed": 3}, label_manifest={"version": "1"},
                         corpus_fingerprint="f" * 64)
    writer.write_record(record)
    writer.finalize()
    reader = StoreReader(tmp_path / "s.h5")
    m = reader.manifest()
    assert m.utt_id.tolist() == ["u0", "u1"] and m.emotion.tolist() == ["ang", ""] and m.path.tolist() == ["a/u0.wav", "a/u1.wav"]
    assert m.duration[0] == 1.25 and np.isnan(m.duration[1]) and m.status.tolist() == ["ok", "excluded"]
    assert m.n_segments.tolist() == [1, 0] and m.audio_sha256.tolist() == ["ab" * 32, ""]
    assert m.source_rate.tolist() == [16000, 0] and m["mode"].tolist() == ["impro", ""]
    assert m.valence[0] == 2.5 and np.isnan(m.valence[1])
    segs = reader.segments()
    assert list(segs.columns) == list(SEGMENT_DTYPES) and segs.valid.tolist() == [5]
    assert {k: segs[k].dtype for k in segs if k != "dense"} == {k: np.dtype(t) for k, t in SEGMENT_DTYPES.items() if k != "dense"}
    assert reader.vocab("speaker") == ["spk0", "spk1"] and reader.vocab("gender") == ["F", "M"]
    assert reader.failures().values.tolist() == [["u9", "a/u9.wav", "empty file"]]
    assert reader.warnings().empty and list(reader.warnings().columns) == ["utt_id", "path", "message"]
    assert reader.record() == record
    with pytest.raises(StoreError, match=r"segment table columns differ in length \(\[1, 2\]\)"):
        SegmentTable(item=[0, 1], utt=[0], copy=[0], offset=[0], valid=[5], dense=[0], emotion=[0], gender=[0],
                     speaker=[0])


def _one_segment(**dimensions) -> SegmentTable:
    return SegmentTable(item=[0, 0], utt=[0, 0], copy=[0, 0], offset=[0, 2], valid=[3, 3], dense=[0, 0], emotion=[0, 0],
                        gender=[0, 0], speaker=[0, 0], dimensions=dimensions)


def _readable_store(path, segments: SegmentTable, scales, kind: str = "logmel", **root_attrs) -> None:
    """A store StoreReader opens: one 5-frame item of ``kind``, ``segments`` and a build record."""
    from serprep.config import SegmentConfig
    from serprep.features import FEATURE_KINDS
    from serprep.store import BuildRecord

    writer = StoreWriter(path, FeatureConfig(), kind=kind)
    writer.add_frames(0, 0, np.arange(5 * len(FEATURE_KINDS[kind].channels) * 40, dtype=np.float32).reshape(5, -1, 40))
    writer.write_table("manifest", {"utt_id": ["u0"]})
    writer.write_vocab(["ang"], ["s"])
    writer.write_segments(segments, scales)
    writer.write_record(BuildRecord(corpus="c", created="2026-01-01T00:00:00+00:00", versions={}, segment_config=SegmentConfig(),
                                    build={}, label_manifest={}, corpus_fingerprint="f" * 64))
    writer.set_attrs(**root_attrs)
    writer.finalize()


def test_rating_columns_and_their_scales_read_back(tmp_path):
    """Rating columns come back float32, NaN kept, in DIMENSIONS order, with their scales."""
    _readable_store(tmp_path / "s.h5", _one_segment(valence=[2.5, 2.5], arousal=[np.nan, np.nan]),
                    {"valence": (1, 7), "arousal": (1, 7)})
    r = StoreReader(tmp_path / "s.h5")
    assert r.dimension_scales() == {"arousal": (1.0, 7.0), "valence": (1.0, 7.0)}
    segs = r.segments()
    assert list(segs.columns)[-2:] == ["arousal", "valence"] and segs.valence.dtype == np.float32
    assert segs.valence.tolist() == [2.5, 2.5] and segs.arousal.isna().all()
    assert verify(tmp_path / "s.h5") == []


def test_rating_columns_need_their_scales_and_known_names(tmp_path):
    writer = StoreWriter(tmp_path / "s.h5", FeatureConfig())
    with pytest.raises(StoreError, match=r"scales given for \[\] but the segment table carries \['arousal'\]"):
        writer.write_segments(_one_segment(arousal=[3.0, 3.0]))
    with pytest.raises(StoreError, match=r"dimension 'arousal': scale \(5, 1\) needs finite low < high"):
        writer.write_segments(_one_segment(arousal=[3.0, 3.0]), {"arousal": (5, 1)})
    writer.abort()
    with pytest.raises(StoreError, match="unknown dimension 'naturalness'"):
        _one_segment(naturalness=[3.0, 3.0])
    with pytest.raises(StoreError, match="carry different dimensions"):
        SegmentTable.concat([_one_segment(arousal=[1, 2]), _one_segment()])
    joined = SegmentTable.concat([_one_segment(arousal=[1, 2]), _one_segment(arousal=[3, np.nan])])
    assert np.array_equal(joined.dimensions["arousal"], [1, 2, 3, np.nan], equal_nan=True)


def test_a_rating_column_without_its_scale_is_refused(tmp_path):
    """A store whose /segments holds a rating column the dimensions attribute does not scale
    (checksums recomputed: not damage the table can see) is refused, not read unscaled."""
    _readable_store(tmp_path / "s.h5", _one_segment(arousal=[3.0, 3.0]), {"arousal": (1, 5)}, dimensions="{}")
    with pytest.raises(StoreError, match="/segments/arousal has no scale in the dimensions attribute"):
        StoreReader(tmp_path / "s.h5")



def test_the_store_says_what_its_frames_are(tmp_path):
    _readable_store(tmp_path / "s.h5", _one_segment(), {})
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["feature_kind"] == "logmel"
        assert json.loads(f.attrs["feature_channels"]) == ["static", "delta", "delta-delta"]
    r = StoreReader(tmp_path / "s.h5")
    assert (r.feature_kind, r.feature_channels, r.n_channels) == ("logmel", ("static", "delta", "delta-delta"), 3)


def _one_channel_kind():
    """A registered kind of one channel (the log-Mel static channel alone): a future kind."""
    import dataclasses as dc

    from serprep.features import FeatureKind, LogMelExtractor, check_feature_config

    class StaticOnly(LogMelExtractor):
        kind, channels = "static1", ("static",)

        def frames_block(self, signals):
            block, counts = super().frames_block(signals)
            return np.ascontiguousarray(block[:, :1]), counts

    return FeatureKind(name="static1", channels=("static",), extractor=StaticOnly, check_config=check_feature_config,
                       description="test kind")


def test_another_kind_is_read_with_its_channels_and_refused_once_unregistered(tmp_path, monkeypatch):
    from serprep.features import FEATURE_KINDS, make_extractor
    from sertrain.errors import InputError
    from sertrain.model import InputSpec

    monkeypatch.setitem(FEATURE_KINDS, "static1", _one_channel_kind())
    assert make_extractor("static1", FeatureConfig()).frames(np.ones(1600, np.float32)).shape == (11, 1, 40)
    path = tmp_path / "s.h5"
    _readable_store(path, _one_segment(), {}, kind="static1")
    r = StoreReader(path)
    assert (r.feature_kind, r.n_channels) == ("static1", 1)
    x, valid = r.read_segments([0, 1])
    assert x.shape == (2, 1, 300, 40) and valid.tolist() == [3, 3]
    np.testing.assert_array_equal(x[1, 0, :3], np.arange(5 * 40, dtype=np.float32).reshape(5, 40)[2:5])
    with pytest.raises(InputError, match=r"store features are of kind 'static1' \(1 channels\); sertrain trains on logmel stores only"):
        InputSpec.from_reader(r)
    with pytest.raises(StoreError, match=r"does not match \[T, 1, 40\] \(static1 frames\)"):
        StoreWriter(tmp_path / "t.h5", FeatureConfig(), kind="static1").add_frames(0, 0, np.ones((5, 3, 40), np.float32))
    monkeypatch.delitem(FEATURE_KINDS, "static1")
    with pytest.raises(StoreError, match=r"s.h5: store features are of kind 'static1': this serprep knows logmel; "):
        StoreReader(path)


def test_a_store_whose_channels_are_not_its_kinds_is_refused(tmp_path):
    from serprep.store import root_digest

    path = tmp_path / "s.h5"
    _readable_store(path, _one_segment(), {})
    with h5py.File(path, "r+") as f:  # as a writer of another channel order would have made it
        f.attrs["feature_channels"] = json.dumps(["delta", "static", "delta-delta"])
        f.attrs["attrs_sha256"] = root_digest(f.attrs)
    with pytest.raises(StoreError, match=r"store logmel frames have channels \['delta', 'static', 'delta-delta'\], "
                                         r"this serprep's logmel has \['static', 'delta', 'delta-delta'\]"):
        StoreReader(path)
