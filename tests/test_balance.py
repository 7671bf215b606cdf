"""Balanced augmented sampling and per-fold statistics: leakage guards on skewed corpora."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from serprep.balance import balanced_index, class_hops, copy_rates, utterance_copies
from serprep.store import StoreReader
from store_fixtures import build


@pytest.fixture(scope="module", params=["iemocap", "msp-improv"])
def balanced_store(request, iemocap_root, msp_root, tmp_path_factory):
    root, truth = iemocap_root if request.param == "iemocap" else msp_root
    out = tmp_path_factory.mktemp("balanced") / f"{request.param}.h5"
    build(request.param, root, out, augment="default", balance=True, seed=7,
          segments=__import__("serprep.config", fromlist=["SegmentConfig"]).SegmentConfig(frames=100, hop=60, min_hop=20))
    return out


def _all_folds(r: StoreReader):
    for scheme in r.fold_schemes():
        for k in r.fold_ids(scheme):
            yield r.fold(scheme, k)


def test_no_speaker_in_two_parts(balanced_store):
    r = StoreReader(balanced_store)
    m, segs = r.manifest(), r.segments()
    for f in _all_folds(r):
        train = set(m.speaker[f.train_utts]) | set(m.speaker[segs.utt[f.balanced_index]])
        val, test = set(m.speaker[f.validation_utts]), set(m.speaker[f.test_utts])
        assert not train & val and not train & test and not val & test, (f.scheme, f.fold)


def test_no_copy_of_a_heldout_utterance_in_training(balanced_store):
    r = StoreReader(balanced_store)
    segs = r.segments()
    assert (segs["copy"] > 0).any(), "balancing should have produced augmented copies"
    for f in _all_folds(r):
        held_out = set(f.validation_utts) | set(f.test_utts)
        assert not held_out & set(segs.utt[f.balanced_index])
        assert not held_out & set(segs.utt[f.train_segments])
        assert set(segs.utt[f.train_segments]) <= set(f.train_utts)


def test_evaluation_segments_are_plain_originals(balanced_store):
    r = StoreReader(balanced_store)
    segs = r.segments()
    for f in _all_folds(r):
        for ids, utts in ((f.test_segments, f.test_utts), (f.validation_segments, f.validation_utts)):
            assert (segs["copy"][ids] == 0).all() and (~segs.dense[ids]).all()
            assert set(segs.utt[ids]) == set(utts)  # every held-out utterance is evaluated


def test_balanced_index_draws_classes_equally(balanced_store):
    r = StoreReader(balanced_store)
    segs = r.segments()
    for f in _all_folds(r):
        counts = np.bincount(segs.emotion[f.balanced_index])
        counts = counts[counts > 0]
        assert counts.min() == counts.max(), (f.scheme, f.fold, counts)
        before = f.counts["before"]
        # Every class is brought to the majority class's count of plain training windows.
        assert set(f.counts["after"].values()) == {max(before.values())}
        assert set(f.balanced_index) <= set(f.train_segments)


def test_stats_equal_a_recomputation_from_training_segments(balanced_store):
    r = StoreReader(balanced_store)
    for f in list(_all_folds(r))[:4]:
        x, valid = r.read_segments(f.train_segments)
        frames = np.concatenate([x[i, :, : valid[i]] for i in range(len(valid))], axis=1).astype(np.float64)
        np.testing.assert_allclose(f.norm_mean, frames.mean(axis=1), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(f.norm_std, frames.std(axis=1), rtol=1e-3, atol=1e-4)
        # ...and differ from statistics that include the test speakers.
        xt, vt = r.read_segments(f.test_segments)
        everything = np.concatenate([frames] + [xt[i, :, : vt[i]] for i in range(len(vt))], axis=1)
        assert not np.allclose(f.norm_mean, everything.mean(axis=1), atol=1e-6)


def test_copies_record_their_chain_and_source(balanced_store):
    r = StoreReader(balanced_store)
    items = r.items()
    copies = items[items["copy"] > 0]
    assert len(copies) > 0
    m = r.manifest()
    for row in copies.itertuples():
        chain = json.loads(row.augmentation)
        assert isinstance(chain, list) and all({"name", "params"} <= set(t) for t in chain)
        assert m.status[row.utt] == "ok"
    assert (items.augmentation[items["copy"] == 0] == "").all()


def test_minority_classes_get_more_copies(balanced_store):
    r = StoreReader(balanced_store)
    build_info = r.build
    rates = build_info["copy_rate"]
    m = r.manifest()
    ok = m[m.status == "ok"]
    counts = ok.emotion.value_counts()
    assert rates[counts.idxmin()] > rates[counts.idxmax()]


def test_augmented_build_is_deterministic(iemocap_root, tmp_path):
    root, _ = iemocap_root
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    build("iemocap", root, a, augment="default", balance=True, seed=3, jobs=1)
    build("iemocap", root, b, augment="default", balance=True, seed=3, jobs=2)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert json.loads(fa.attrs["checksums"]) == json.loads(fb.attrs["checksums"])
    c = tmp_path / "c.h5"
    build("iemocap", root, c, augment="default", balance=True, seed=4, jobs=1)
    with h5py.File(a, "r") as fa, h5py.File(c, "r") as fc:
        assert json.loads(fa.attrs["checksums"])["features"] != json.loads(fc.attrs["checksums"])["features"]


def test_plain_store_has_no_copies_or_dense_windows(iemocap_root, tmp_path):
    root, _ = iemocap_root
    out = tmp_path / "plain.h5"
    build("iemocap", root, out)
    segs = StoreReader(out).segments()
    assert (segs["copy"] == 0).all() and not segs.dense.any()


def test_class_hops_and_rates():
    hops = class_hops({"neu": 1708, "hap": 1636, "ang": 1103, "sad": 1084}, 150, 50)
    assert hops["neu"] == 150 and hops["sad"] == round(150 * 1084 / 1708)
    assert class_hops({"a": 100, "b": 1}, 150, 50)["b"] == 50
    rates = copy_rates({"neu": 100.0, "sad": 40.0, "none": 0.0}, max_copies=4)
    assert rates == {"neu": 0.0, "sad": 1.5, "none": 0.0}
    n = [utterance_copies(1.5, 0, f"u{i}") for i in range(2000)]
    assert set(n) == {1, 2} and abs(np.mean(n) - 1.5) < 0.05


def test_balanced_index_subsamples_classes_over_the_target():
    rng = np.random.default_rng(0)
    idx = balanced_index({0: np.arange(20), 1: np.arange(20, 25)}, {}, rng, target=8)
    assert len(idx) == 16 and len(set(idx[idx < 20])) == 8
    assert sorted(np.bincount(np.where(idx >= 20, 1, 0)).tolist()) == [8, 8]


def test_balanced_index_uses_copies_before_repeats():
    rng = np.random.default_rng(0)
    idx = balanced_index({0: np.arange(10), 1: np.arange(10, 14)}, {1: np.arange(100, 103)}, rng)
    counts = np.bincount(np.where(idx >= 10, 1, 0))
    assert counts.tolist() == [10, 10]
    assert set(range(100, 103)) <= set(idx)  # every copy used before any repeat
