"""sertrain.train / checkpoint / evaluate / predict on a real store built by serprep.

The store is learnable (``sertrain_fixtures``): emotion is audible in pitch, loudness
and spectral tilt. Chance UA on 4 classes is 25 %.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sertrain.checkpoint import load_checkpoint
from sertrain.errors import InputError
from sertrain.evaluate import evaluate_checkpoint
from sertrain.predict import predict_files
from sertrain.train import multitask_loss, train_fold
from sertrain_fixtures import learnable_store, mels64_store, small_cfg, store_base

#: The stated bar: best-validation checkpoint after 5 short epochs (~40 optimiser steps),
#: utterance-level UA on the held-out session's two speakers.
MIN_TEST_UA = 0.75


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return learnable_store(store_base(tmp_path_factory), balance=True, augment="default")


@pytest.fixture(scope="module")
def learned(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("learned")
    return train_fold(store, 1, small_cfg(**{"train.epochs": 5}), out, device="cpu")


@pytest.fixture(scope="module")
def two_epochs(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    return train_fold(store, 2, small_cfg(**{"train.epochs": 2}), out, device="cpu")


def test_learns_emotion_on_held_out_speakers(learned):
    assert learned.test_speakers == ["Ses01F", "Ses01M"]
    assert learned.test["n"] >= 25
    assert learned.test["ua"] >= MIN_TEST_UA, learned.test
    # The default selection averages the 3 epochs with the best validation UA (ties: lower loss).
    ranked = sorted(learned.history, key=lambda h: (-h["val_ua"], h["val_loss"], h["epoch"]))
    assert learned.selected_epochs == sorted(h["epoch"] for h in ranked[:3])
    assert learned.best_epoch == max(learned.selected_epochs)
    assert learned.history[-1]["train_loss"] < learned.history[0]["train_loss"]


def test_reports_written(learned):
    out = learned.out_dir
    for name in ("best.pt", "last.pt", "metrics.json", "predictions.csv", "confusion.png", "curves.png",
                 "history.json", "config.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["ua"] == pytest.approx(learned.test["ua"])
    assert set(metrics["test"]["by_gender"]) == {"F", "M"}
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == learned.test["n"]
    assert set(pred["speaker"]) == {"Ses01F", "Ses01M"}
    probs = pred[[c for c in pred.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (pred["correct"] == (pred["emotion"] == pred["predicted"])).all()


def test_checkpoint_round_trip_weights_only(learned, store):
    payload = torch.load(learned.out_dir / "best.pt", weights_only=True)
    assert payload["format"] == "sertrain-checkpoint"
    ckpt = load_checkpoint(learned.out_dir / "best.pt")
    from serprep.store import StoreReader

    r = StoreReader(store)
    assert ckpt.emotion_classes == r.vocab("emotion") and ckpt.gender_classes == r.vocab("gender")
    assert ckpt.store_fingerprint == r.fingerprint
    assert json.loads(ckpt.feature_config_json) == r.feature_config.to_dict()
    assert json.loads(ckpt.segment_config_json) == r.segment_config.to_dict()
    fold = r.fold("loso", 1)
    np.testing.assert_array_equal(ckpt.norm_mean.numpy(), fold.norm_mean)
    np.testing.assert_array_equal(ckpt.norm_std.numpy(), fold.norm_std)
    assert ckpt.train_speakers == list(fold.train_speakers)
    assert ckpt.epoch == learned.best_epoch and ckpt.optimizer_state is None
    last = load_checkpoint(learned.out_dir / "last.pt")
    assert last.finished and last.optimizer_state is not None and last.rng_state is not None
    # The rebuilt model reproduces the run's test metrics.
    ev, info = evaluate_checkpoint(learned.out_dir / "best.pt", store, device="cpu")
    assert info["fold"] == 1 and info["same_store"]
    assert ev.metrics["ua"] == pytest.approx(learned.test["ua"])
    assert ev.metrics["confusion"] == learned.test["confusion"]


def test_same_seed_same_result(two_epochs, store, tmp_path):
    again = train_fold(store, 2, small_cfg(**{"train.epochs": 2}), tmp_path / "again", device="cpu")
    assert again.history[-1]["train_loss"] == two_epochs.history[-1]["train_loss"]
    assert again.test == two_epochs.test
    a = load_checkpoint(two_epochs.out_dir / "last.pt").model_state
    b = load_checkpoint(tmp_path / "again" / "last.pt").model_state
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly(two_epochs, store, tmp_path):
    out = tmp_path / "resumed"
    first = train_fold(store, 2, small_cfg(**{"train.epochs": 1}), out, device="cpu")
    assert first.epochs_run == 1
    with pytest.raises(InputError, match="already holds a run"):
        train_fold(store, 2, small_cfg(**{"train.epochs": 2}), out, device="cpu")
    resumed = train_fold(store, 2, small_cfg(**{"train.epochs": 2}), out, device="cpu", resume=True,
                         overrides={"train.epochs": 2})
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in two_epochs.history]
    assert resumed.test == two_epochs.test
    # Resuming a finished run only re-tests it.
    again = train_fold(store, 2, small_cfg(), out, device="cpu", resume=True, overrides={"train.epochs": 2})
    assert again.history == resumed.history and again.test == resumed.test


def test_predict_wav_matches_store_evaluation(learned, store):
    pred = pd.read_csv(learned.out_dir / "predictions.csv")
    row = pred.iloc[0]
    from serprep.store import StoreReader

    manifest = StoreReader(store).manifest()
    wav = store.parent / "IEMOCAP_full_release" / manifest.loc[int(row["utt"]), "path"]
    (res,) = predict_files(learned.out_dir / "best.pt", [wav], device="cpu")
    assert res.label == row["predicted"]
    for c, p in res.probabilities.items():
        assert p == pytest.approx(row[f"p_{c}"], abs=1e-4)
    assert sum(res.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError, match="no such audio file"):
        predict_files(learned.out_dir / "best.pt", [wav.with_name("missing.wav")], device="cpu")


def test_evaluate_refuses_other_features_and_seen_speakers(learned, store, tmp_path_factory):
    other = mels64_store(store_base(tmp_path_factory))
    with pytest.raises(InputError, match="n_mels 64 but the model was built for 40"):
        evaluate_checkpoint(learned.out_dir / "best.pt", other, device="cpu")
    with pytest.raises(InputError, match="were training speakers of this checkpoint"):
        evaluate_checkpoint(learned.out_dir / "best.pt", store, fold=2, device="cpu")


def test_multitask_loss_weights_and_ignored_labels():
    torch.manual_seed(0)
    out = {"emotion": torch.randn(4, 4), "gender": torch.randn(4, 2), "speaker": torch.randn(4, 3)}
    batch = {"emotion": torch.tensor([0, 1, 2, 3]), "gender": torch.tensor([0, 1, 0, 1]),
             "speaker": torch.tensor([0, -1, 2, -1])}
    ce = torch.nn.functional.cross_entropy
    single, parts = multitask_loss(out, batch, {})
    assert single == pytest.approx(float(ce(out["emotion"], batch["emotion"])))
    assert set(parts) == {"emotion", "total"}
    full, parts = multitask_loss(out, batch, {"gender": 0.5, "speaker": 0.25})
    expected = (ce(out["emotion"], batch["emotion"]) + 0.5 * ce(out["gender"], batch["gender"])
                + 0.25 * ce(out["speaker"][[0, 2]], torch.tensor([0, 2])))
    assert float(full) == pytest.approx(float(expected))
    # A batch with no training speaker leaves the speaker term out instead of producing NaN.
    batch["speaker"] = torch.full((4,), -1)
    loss, parts = multitask_loss(out, batch, {"gender": 0.5, "speaker": 0.25})
    assert torch.isfinite(loss) and "speaker" not in parts


def test_tensorboard_logs_every_epoch(store, tmp_path):
    """--tensorboard: the event files hold each epoch's losses and validation metrics, read
    back with TensorBoard's own reader, equal to history.json."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "tb"
    result = train_fold(store, 2, small_cfg(**{"train.epochs": 2, "train.steps_per_epoch": 2}), tmp_path / "run",
                        device="cpu", tensorboard=board)
    events = EventAccumulator(str(board))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("loss/train_total", "loss/train_emotion", "loss/validation_emotion", "validation/ua", "train/lr"):
        assert tag in tags, tags
    ua = events.Scalars("validation/ua")
    assert [e.step for e in ua] == [1, 2]
    assert [e.value for e in ua] == pytest.approx([h["val_ua"] for h in result.history])
    assert [e.value for e in events.Scalars("loss/train_total")] == pytest.approx(
        [h["train_loss"] for h in result.history], rel=1e-6)


def test_val_ua_selection_tests_the_best_validation_epoch(store, tmp_path):
    """--selection val_ua keeps one epoch, the one with the best validation UA, and best.pt
    holds exactly that epoch's weights (the state the epoch hook saw)."""
    states = {}
    result = train_fold(store, 1, small_cfg(**{"train.epochs": 3, "train.steps_per_epoch": 3,
                                               "train.selection": "val_ua"}), tmp_path / "run", device="cpu",
                        epoch_hook=lambda e, model, entry: states.update({e: {k: v.clone() for k, v in
                                                                              model.state_dict().items()}}))
    ranked = sorted(result.history, key=lambda h: (-h["val_ua"], h["val_loss"], h["epoch"]))
    assert result.selected_epochs == [ranked[0]["epoch"]] == [result.best_epoch]
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    for key, value in best.model_state.items():
        assert torch.equal(value, states[result.best_epoch][key]), key


def test_top3_average_holds_the_mean_of_three_epochs(store, tmp_path):
    states = {}
    result = train_fold(store, 1, small_cfg(**{"train.epochs": 4, "train.steps_per_epoch": 3}), tmp_path / "run",
                        device="cpu",
                        epoch_hook=lambda e, model, entry: states.update({e: {k: v.clone() for k, v in
                                                                              model.state_dict().items()}}))
    assert len(result.selected_epochs) == 3
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best.selected_epochs == result.selected_epochs
    key = next(k for k, v in best.model_state.items() if v.is_floating_point())
    mean = torch.stack([states[e][key].double() for e in result.selected_epochs]).mean(0).float()
    torch.testing.assert_close(best.model_state[key], mean)
