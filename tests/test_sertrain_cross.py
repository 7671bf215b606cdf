"""``sertrain cross``: cross-corpus training and testing on tiny IEMOCAP- and MSP-IMPROV-shaped
stores (the synthetic demo corpora of ``serprep.demo`` in both layouts, built by serprep).

Stores (module scope): ``iemo`` (IEMOCAP layout, 4class-merged), ``msp`` (MSP-IMPROV layout,
4class, ``--augment light --balance``: minority classes have dense training-only windows and
augmented copies, neither of which may be tested, nor copies trained on), and variants that
must be refused: the IEMOCAP corpus with all classes, with 64 mel bands, with ``4class`` (a
subset of the same utterances); the MSP-IMPROV corpus with another segment hop, and as two
disjoint subsets (improvised, natural: other utterances of the same speakers).
"""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from serprep.config import FeatureConfig, SegmentConfig
from serprep.demo import write_demo_corpus
from serprep.store import StoreReader
from sertrain.checkpoint import load_checkpoint
from sertrain.cli import main
from sertrain.cross import (
    CROSS_FORMAT,
    SHARED_CLASSES,
    StoreEntry,
    StoreUnion,
    choose_validation,
    labelled_speakers,
    make_split,
    segment_statistics,
    scored_segment_ids,
)
from sertrain.data import SegmentBatchDataset, SegmentLabels, normalize, speaker_map
from sertrain.metrics import classification_metrics
from sertrain.report import pct, pct_pm
from sertrain_fixtures import assert_one_line_error
from store_fixtures import build

FAST = ["--num-workers", "0", "--device", "cpu", "--config", "cpu-small", "--batch-size", "8", "-q"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("cross")
    iemo_root, msp_root = base / "IEMOCAP_full_release", base / "MSP-IMPROV"
    write_demo_corpus(iemo_root, hours=0.05, seed=0, layout="iemocap")
    write_demo_corpus(msp_root, hours=0.05, seed=1, layout="msp-improv")
    out = {
        "iemo": (iemo_root, "iemocap", {"classes": "4class-merged"}),
        "msp": (msp_root, "msp-improv", {"classes": "4class", "balance": True, "augment": "light"}),
        "iemo_all": (iemo_root, "iemocap", {"classes": "all"}),
        "iemo_mels64": (iemo_root, "iemocap", {"classes": "4class-merged", "features": FeatureConfig(n_mels=64)}),
        "iemo_4class": (iemo_root, "iemocap", {"classes": "4class"}),
        "msp_impro": (msp_root, "msp-improv", {"classes": "4class", "subset": "improvised"}),
        "msp_natural": (msp_root, "msp-improv", {"classes": "4class", "subset": "natural"}),
        "msp_hop100": (msp_root, "msp-improv", {"classes": "4class",
                                                "segments": SegmentConfig(frames=300, hop=100, min_hop=50)}),
    }
    paths = {}
    for name, (root, corpus, options) in out.items():
        paths[name] = base / f"{name}.h5"
        build(corpus, root, paths[name], **options)
    return paths


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def entry(path) -> StoreEntry:
    return StoreEntry(StoreReader(path), str(path), path.stem)


def labelled_utterances(path) -> pd.DataFrame:
    m = StoreReader(path).manifest()
    return m[(m["status"] == "ok") & (m["emotion"] != "")]


# ---------------------------------------------------------------------------------------------
# The union of stores: same features as each store alone, without copying


def test_union_reads_what_each_store_reads(stores):
    a, b = StoreReader(stores["iemo"]), StoreReader(stores["msp"])
    union = StoreUnion([a, b], ["iemo", "msp"])
    assert union.n_segments == a.n_segments + b.n_segments
    rng = np.random.default_rng(0)
    idx = rng.permutation(union.n_segments)[:70]  # both stores, unsorted
    assert (idx < a.n_segments).any() and (idx >= a.n_segments).any()
    x, valid = union.read_segments(idx)
    for row, g in enumerate(idx):
        reader, local = (a, g) if g < a.n_segments else (b, g - a.n_segments)
        xs, vs = reader.read_segments([local])
        assert valid[row] == vs[0] and np.array_equal(x[row], xs[0])
    # Labels, utterances and speakers map to the store's own; the stores' ratings (each on its
    # corpus' scale) stay out of the union.
    assert a.dimension_scales() and b.dimension_scales()
    assert union.dimension_scales() == {} and not set(union.segments().columns) & {"arousal", "valence", "dominance"}
    labels = SegmentLabels.from_reader(union)
    assert labels.dimensions == {}
    seg_b, man_b = b.segments(), b.manifest()
    g = int(idx[idx >= a.n_segments][0])
    local = g - a.n_segments
    assert labels.emotion[g] == seg_b["emotion"][local]
    assert union.manifest()["utt_id"][labels.utt[g]] == "msp/" + man_b["utt_id"][seg_b["utt"][local]]
    assert union.vocab("speaker")[labels.speaker[g]] == "msp/" + b.vocab("speaker")[seg_b["speaker"][local]]
    # The dataset over the union normalises exactly what the store alone gives.
    mean = np.random.default_rng(1).normal(size=(3, 40)).astype(np.float32)
    std = np.abs(np.random.default_rng(2).normal(size=(3, 40))).astype(np.float32) + 0.5
    ds = SegmentBatchDataset(union, labels, mean, std, speaker_map(union.vocab("speaker"), []))
    batch = ds[list(idx[:16])]
    for row, g in enumerate(idx[:16]):
        reader, local = (a, g) if g < a.n_segments else (b, g - a.n_segments)
        xs, vs = reader.read_segments([local])
        ref = normalize(torch.from_numpy(xs), torch.from_numpy(vs), torch.from_numpy(mean), torch.from_numpy(std))
        assert torch.equal(batch["x"][row], ref[0])
    # A DataLoader worker gets a pickled copy: it reads the same.
    again = pickle.loads(pickle.dumps(union))
    x2, v2 = again.read_segments(idx[:10])
    assert np.array_equal(x2, x[:10]) and np.array_equal(v2, valid[:10])


# ---------------------------------------------------------------------------------------------
# The split: speaker disjoint, gender balanced, seeded; statistics of the training speakers only


def test_validation_speakers_are_disjoint_and_gender_balanced(stores):
    train = [entry(stores["iemo"]), entry(stores["msp"])]
    split = make_split(train, 0.2, 0)
    fold, union = split.fold, split.union
    assert set(fold.train_speakers).isdisjoint(fold.validation_speakers)
    vocab = np.array(union.vocab("speaker"))
    seg = union.segments()
    spk = vocab[seg["speaker"].to_numpy()]
    assert set(spk[fold.train_segments]) == set(fold.train_speakers)
    assert set(spk[fold.validation_segments]) == set(fold.validation_speakers)
    assert set(fold.balanced_index) <= set(fold.train_segments)
    # Training: originals only (dense windows included), validation: plain windows only.
    assert (seg["copy"].to_numpy()[fold.train_segments] == 0).all() and (seg["copy"].to_numpy() > 0).any()
    assert seg["dense"].to_numpy()[fold.train_segments].any()  # the msp store was built with --balance
    assert not seg["dense"].to_numpy()[fold.validation_segments].any()
    counts = np.bincount(seg["emotion"].to_numpy()[fold.balanced_index], minlength=4)
    assert len(set(counts.tolist())) == 1  # every class equally often
    for e, record in zip(train, split.record["stores"]):
        table = labelled_speakers(e.reader)
        n = len(table)
        assert len(record["validation_speakers"]) == max(1, math.floor(0.2 * n + 0.5))
        genders = table.set_index("speaker")["gender"][record["validation_speakers"]]
        assert abs((genders == "F").sum() - (genders == "M").sum()) <= 1
        assert set(record["validation_speakers"]) | set(record["train_speakers"]) == set(table["speaker"])
        assert not set(record["validation_speakers"]) & set(record["train_speakers"])
    # Seeded: the same seed gives the same speakers, whatever the order of the stores; another
    # seed, others; a larger share, more (still alternating genders).
    again = make_split(list(reversed(train)), 0.2, 0)
    assert sorted(again.fold.validation_speakers) == sorted(fold.validation_speakers)
    iemo = train[0].reader
    picks = {tuple(choose_validation(iemo, "iemo", 0.2, s)) for s in range(6)}
    assert len(picks) > 1
    four = choose_validation(iemo, "iemo", 0.4, 0)
    g = labelled_speakers(iemo).set_index("speaker")["gender"][four]
    assert len(four) == 4 and (g == "F").sum() == 2


def test_normalisation_statistics_come_from_training_speakers_only(stores):
    train = [entry(stores["iemo"]), entry(stores["msp"])]
    split = make_split(train, 0.2, 0)
    frames, frames_all = [], []
    for e, record in zip(train, split.record["stores"]):
        reader = StoreReader(e.name)  # a reference read through a fresh reader, store by store
        seg = reader.segments()
        vocab = reader.vocab("speaker")
        names = np.array([vocab[i] for i in seg["speaker"]])
        keep = (seg["copy"] == 0).to_numpy() & (seg["emotion"] >= 0).to_numpy()
        for ids, sink in ((np.flatnonzero(keep & np.isin(names, record["train_speakers"])), frames),
                          (np.flatnonzero(keep), frames_all)):
            x, valid = reader.read_segments(ids)
            sink.extend(x[i, :, : valid[i]].astype(np.float64) for i in range(len(ids)))
    ref = np.concatenate(frames, axis=1)  # [3, frames, n_mels]
    np.testing.assert_allclose(split.fold.norm_mean, ref.mean(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(split.fold.norm_std, ref.std(axis=1), rtol=1e-5, atol=1e-5)
    assert split.record["normalisation"]["frames"] == ref.shape[1]
    everyone = np.concatenate(frames_all, axis=1)
    assert not np.allclose(split.fold.norm_mean, everyone.mean(axis=1), rtol=1e-5, atol=1e-5)
    # The same definition as a store's own fold statistics (dense windows and copies included).
    reader = StoreReader(stores["msp"])
    f = reader.fold("loso", 2)
    mean, std, _ = segment_statistics(reader, f.train_segments)
    np.testing.assert_allclose(mean, f.norm_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, f.norm_std, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# End to end, both directions


@pytest.fixture(scope="module")
def msp_cv(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("msp_cv") / "cv"
    result = run("cv", stores["msp"], "--out", out, "--folds", "1,2", "--epochs", "1", "--steps-per-epoch", "1",
                 "--no-report", *FAST)
    assert result.exit_code == 0, result.output
    return out


def _check_run(out, train_path, test_path, seeds, epochs):
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["format"] == CROSS_FORMAT and metrics["seeds"] == seeds
    assert metrics["classes"] == list(SHARED_CLASSES)
    assert [s["path"] for s in metrics["train_stores"]] == [str(train_path)]
    (test,) = metrics["tests"]
    utts = labelled_utterances(test_path)
    assert test["n_utterances"] == len(utts) and test["label"] == test_path.stem
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == len(seeds) * len(utts) and set(preds["test_store"]) == {test_path.stem}
    for seed, per_seed in zip(seeds, test["per_seed"]):
        run_dir = out / f"seed_{seed}"
        mine = pd.read_csv(run_dir / f"predictions_{test_path.stem}.csv")
        assert sorted(mine["utt_id"]) == sorted(utts["utt_id"])  # every labelled utterance, once
        m = classification_metrics(mine["emotion"].map(SHARED_CLASSES.index), mine["predicted"].map(SHARED_CLASSES.index),
                                   SHARED_CLASSES, groups=mine["gender"].to_numpy())
        assert per_seed["ua"] == pytest.approx(m["ua"]) and per_seed["wa"] == pytest.approx(m["wa"])
        assert per_seed["ua_F"] == pytest.approx(m["by_gender"]["F"]["ua"])
        assert len(json.loads((run_dir / "history.json").read_text())) == epochs
        run_metrics = json.loads((run_dir / "metrics.json").read_text())
        assert run_metrics["tests"][test_path.stem]["metrics"]["ua"] == pytest.approx(m["ua"])
        # The checkpoint: the cross fold of exactly this split, trained without validation or test speakers.
        ckpt = load_checkpoint(run_dir / "best.pt")
        assert ckpt.scheme == "cross" and ckpt.store_content_sha256 == metrics["split"]["union_content_sha256"]
        label = train_path.stem
        (record,) = metrics["split"]["stores"]
        assert sorted(ckpt.train_speakers) == sorted(f"{label}/{s}" for s in record["train_speakers"])
        assert not {s.split("/", 1)[1] for s in ckpt.train_speakers} & set(record["validation_speakers"])
        assert not {s.split("/", 1)[1] for s in ckpt.train_speakers} & set(mine["speaker"].astype(str))
    ua = [r["ua"] for r in test["per_seed"]]
    assert test["summary"]["ua"]["mean"] == pytest.approx(np.mean(ua))
    iv = test["intervals"]["speaker"]["ua"]
    assert iv["low"] <= test["summary"]["ua"]["mean"] <= iv["high"]
    for name in ("table.txt", "curves.png", f"confusion_{test_path.stem}.png"):
        assert (out / name).is_file()
    return metrics


def test_cross_iemocap_to_msp_with_within_reference_and_resume(stores, msp_cv, tmp_path):
    out = tmp_path / "i2m"
    args = ["cross", "--train", stores["iemo"], "--test", stores["msp"], "--out", out, "--epochs", "2",
            "--steps-per-epoch", "2", "--seeds", "2", "--within", msp_cv, *FAST]
    result = run(*args)
    assert result.exit_code == 0, result.output
    metrics = _check_run(out, stores["iemo"], stores["msp"], [0, 1], 2)
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.startswith("msp "))
    assert "msp-improv" in row and "cross: iemo" in row
    within_row = lines[lines.index(row) + 1]
    assert "within: loso cv" in within_row
    # The reference row is the cv's own pooled result on that store.
    cv = json.loads((msp_cv / "metrics.json").read_text())
    within = metrics["tests"][0]["within"]
    assert within["store_content_sha256"] == cv["store"]["content_sha256"]
    assert within["summary"]["ua"]["mean"] == pytest.approx(cv["summary"]["pooled"]["ua"])
    assert within["n_utterances"] == cv["summary"]["pooled"]["n_utterances"]
    assert f"  {pct(cv['summary']['pooled']['ua'])}  " in within_row
    assert f"  {pct_pm(metrics['tests'][0]['summary']['ua'])}  " in row and " ± " in row  # 2 seeds: mean ± std
    assert "UA 95 % CI spk" in result.stdout and "95 % CI speakers (" in result.stdout
    # --resume over a finished run only re-tests; without it the folder is refused.
    history = (out / "seed_1" / "history.json").read_text()
    again = run(*args, "--resume")
    assert again.exit_code == 0, again.output
    assert (out / "seed_1" / "history.json").read_text() == history
    assert json.loads((out / "metrics.json").read_text())["tests"][0]["per_seed"] == metrics["tests"][0]["per_seed"]
    assert_one_line_error(run(*args), 2, "already holds a run")


def test_cross_msp_to_iemocap(stores, tmp_path):
    out = tmp_path / "m2i"
    result = run("cross", "--train", stores["msp"], "--test", stores["iemo"], "--out", out, "--epochs", "1",
                 "--steps-per-epoch", "2", "--aux", "none", *FAST)
    assert result.exit_code == 0, result.output
    metrics = _check_run(out, stores["msp"], stores["iemo"], [0], 1)
    assert metrics["aux"] == "none" and metrics["tests"][0]["within"] is None
    assert any(line.startswith("iemo ") and "cross: msp" in line for line in result.stdout.splitlines())
    assert "within:" not in result.stdout


# ---------------------------------------------------------------------------------------------
# Refusals: one line, exit 2, nothing written


@pytest.mark.parametrize("train, test, fragment", [
    ("iemo_all", "msp", "iemo_all.h5: emotion classes ang, "),
    ("iemo", "iemo_mels64", "iemo_mels64.h5: feature config differs from"),
    ("msp_hop100", "iemo", "segment config differs from"),
    ("iemo", "iemo", "test store is also a training store"),
    ("iemo", "iemo_4class", "iemo_4class.h5: test store shares "),
    ("msp_impro", "msp_natural", "msp_natural.h5: test store holds the same corpus (msp-improv) as training store"),
])
def test_incompatible_stores_are_refused(stores, tmp_path, train, test, fragment):
    out = tmp_path / "out"
    result = run("cross", "--train", stores[train], "--test", stores[test], "--out", out, *FAST)
    assert_one_line_error(result, 2, fragment)
    assert not out.exists()


def test_feature_mismatch_names_the_key(stores, tmp_path):
    result = run("cross", "--train", stores["iemo"], "--test", stores["iemo_mels64"], "--out", tmp_path / "o", *FAST)
    assert "n_mels is 64 here, 40 there" in result.stderr
    result = run("cross", "--train", stores["msp_hop100"], "--test", stores["iemo"], "--out", tmp_path / "o", *FAST)
    assert f"iemo.h5: segment config differs from {stores['msp_hop100']}'s: hop is 150 here, 100 there" in result.stderr
    result = run("cross", "--train", stores["iemo"], "--train", stores["iemo_4class"], "--test", stores["msp"],
                 "--out", tmp_path / "o", *FAST)
    # Every utterance of the 4class build is one of the 4class-merged build's (hap without exc).
    n = len(labelled_utterances(stores["iemo_4class"]))
    assert_one_line_error(result, 2, f"iemo_4class.h5: shares {n} utterance(s) (same audio sha256) with training "
                                     f"store {stores['iemo']}")
    assert_one_line_error(run("cross", "--train", tmp_path / "none.h5", "--test", stores["msp"], "--out",
                              tmp_path / "o", *FAST), 2, "none.h5: store not found")
    assert_one_line_error(run("cross", "--train", stores["iemo"], "--test", stores["msp"], "--out", tmp_path / "o",
                              "--validation-share", "1", *FAST), 2, "--validation-share")
    # Both stores rate arousal/valence/dominance, each on its corpus' scale; a union carries none yet.
    result = run("cross", "--train", stores["iemo"], "--test", stores["msp"], "--out", tmp_path / "o",
                 "--aux", "gender+speaker+vad", *FAST)
    assert_one_line_error(result, 2, "--aux gender+speaker+vad asks for arousal+valence+dominance but the store has "
                                     "no dimensional ratings")
    assert not (tmp_path / "o").exists()


def test_within_must_be_a_cv_of_a_test_store(stores, msp_cv, tmp_path):
    base = ["cross", "--train", stores["iemo"], "--test", stores["msp"], "--out", tmp_path / "o", *FAST]
    fake = tmp_path / "fake"
    fake.mkdir()
    cv = json.loads((msp_cv / "metrics.json").read_text())
    cv["store"]["content_sha256"] = StoreReader(stores["iemo"]).content_sha256  # a cv of the training store
    (fake / "metrics.json").write_text(json.dumps(cv))
    assert_one_line_error(run(*base, "--within", fake), 2, "which is none of the test stores")
    assert_one_line_error(run(*base, "--within", tmp_path), 2, "no metrics.json, not a sertrain cv folder")
    (fake / "metrics.json").write_text(json.dumps({"format": "sertrain-cross/1"}))
    assert_one_line_error(run(*base, "--within", fake), 2, "not a sertrain cv run")
    assert_one_line_error(run(*base, "--within", msp_cv, "--within", msp_cv), 2, "a second cv folder for test store")
    assert not (tmp_path / "o").exists()


def test_test_segments_are_every_labelled_utterance_once(stores):
    reader = StoreReader(stores["msp"])
    ids = scored_segment_ids(reader)
    seg = reader.segments()
    assert not seg["dense"].to_numpy()[ids].any() and seg["dense"].any()
    assert (seg["copy"].to_numpy()[ids] == 0).all() and (seg["copy"].to_numpy() > 0).any()
    assert set(seg["utt"].to_numpy()[ids]) == set(labelled_utterances(stores["msp"]).index)


def test_help_describes_the_command():
    result = run("cross", "--help")
    assert result.exit_code == 0
    for option in ("--train STORE", "--test STORE", "--validation-share", "--validation-seed", "--within RUN_DIR",
                   "--seeds N", "--aux", "--bootstrap", "--selection", "--resume"):
        assert option in result.output, option
    assert "--scheme" not in result.output  # a cross run has one fold scheme of its own
    assert "cross" in run("--help").output
