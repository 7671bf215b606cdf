"""The ``sertrain`` CLI through click's CliRunner: commands, outputs and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from sertrain.cli import main
from sertrain_fixtures import assert_one_line_error, learnable_store, mels64_store, no_folds_store, store_base

FAST = ["--epochs", "1", "--num-workers", "0", "--device", "cpu", "--config", "cpu-small"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return learnable_store(store_base(tmp_path_factory), balance=True, augment="default")


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "f3"
    result = CliRunner().invoke(main, ["train", str(store), "--fold", "3", "--out", str(out), *FAST, "-q"])
    assert result.exit_code == 0, result.output
    return out, result


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_for_every_command():
    for cmd in ([], ["cv"], ["baseline"], ["train"], ["evaluate"], ["predict"]):
        result = run(*cmd, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output
    assert "--aux" in run("cv", "--help").output and "--resume" in run("train", "--help").output


def test_train_prints_row_and_writes_files(trained):
    out, result = trained
    assert "Ses03F,Ses03M" in result.output and "UA" in result.output
    for name in ("best.pt", "last.pt", "metrics.json", "predictions.csv", "confusion.png", "curves.png"):
        assert (out / name).is_file()
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["config"]["train"]["epochs"] == 1 and ckpt["config"]["name"] == "cpu-small"


def test_overrides_reach_the_config(store, tmp_path):
    out = tmp_path / "o"
    result = run("train", store, "--fold", "1", "--out", out, *FAST, "--lr", "0.002", "--batch-size", "16",
                 "--aux", "gender", "--set", "model.lstm_hidden=16", "--steps-per-epoch", "2", "-q")
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["lr"] == 0.002 and cfg["train"]["batch_size"] == 16
    assert cfg["loss"]["aux"] == "gender" and cfg["model"]["lstm_hidden"] == 16
    assert len(json.loads((out / "history.json").read_text())) == 1


def test_evaluate_text_and_json(trained, store, tmp_path):
    out, _ = trained
    result = run("evaluate", out / "best.pt", store, "--fold", "3")
    assert result.exit_code == 0, result.output
    assert "UA" in result.output and "confusion" in result.output and "gender F" in result.output
    result = run("evaluate", out / "best.pt", store, "--json", "--aggregate", "max", "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["fold"] == 3 and data["aggregate"] == "max" and 0 <= data["metrics"]["ua"] <= 1
    assert (tmp_path / "ev" / "confusion.png").is_file()


def test_predict_text_and_json(trained, store):
    out, _ = trained
    wavs = sorted((store.parent / "IEMOCAP_full_release" / "Session3" / "sentences" / "wav").glob("*/*.wav"))[:2]
    result = run("predict", out / "best.pt", *wavs)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 2 and "ang" in result.stdout
    result = run("predict", out / "best.pt", *wavs, "--json")
    data = json.loads(result.stdout)
    assert [d["file"] for d in data] == [str(w) for w in wavs]
    assert all(abs(sum(d["probabilities"].values()) - 1) < 1e-5 for d in data)


def test_cv_aux_grid_comparison(store, tmp_path):
    out = tmp_path / "cv"
    result = run("cv", store, "--out", out, "--folds", "1,2", "--aux", "none,gender+speaker", *FAST,
                 "--steps-per-epoch", "2", "-q")
    assert result.exit_code == 0, result.output
    assert result.output.count("mean ± std  ") == 2 and "auxiliary-task comparison" in result.output
    assert "epoch" not in result.output  # -q: tables only
    for aux in ("none", "gender+speaker"):
        for k in (1, 2):
            assert (out / aux / f"fold_{k}" / "best.pt").is_file()
        summary = json.loads((out / aux / "metrics.json").read_text())
        assert summary["folds"] == [1, 2] and [r["fold"] for r in summary["runs"]] == [1, 2]
        assert summary["format"] == "sertrain-cv/2" and "mean" in summary["summary"]["ua"]
        for name in ("predictions.csv", "confusion.png", "curves.png", "table.txt"):
            assert (out / aux / name).is_file()
    comparison = (out / "comparison.md").read_text()
    assert "none" in comparison and "gender+speaker" in comparison and "Δ UA vs none [95 % CI]" in comparison
    # The Δ column is the paired difference of pooled UA to `none`, the same as `sertrain compare`.
    grid = json.loads((out / "comparison.json").read_text())
    assert grid["baseline"] == "none" and grid["settings"]["none"]["delta_vs_baseline"] is None
    delta = grid["settings"]["gender+speaker"]["delta_vs_baseline"]["ua"]
    pooled = {a: json.loads((out / a / "metrics.json").read_text())["summary"]["pooled"]["ua"] for a in ("none", "gender+speaker")}
    assert delta["delta"] == pytest.approx(pooled["gender+speaker"] - pooled["none"])
    assert delta["low"] <= delta["delta"] <= delta["high"] and 0 < delta["p_value"] <= 1
    assert (out / "report.html").is_file()
    none_cfg = json.loads((out / "none" / "fold_1" / "config.json").read_text())
    assert none_cfg["loss"]["aux"] == "none"
    # The settings really train different objectives: single-task loss = emotion CE only.
    (h_none,) = json.loads((out / "none" / "fold_1" / "history.json").read_text())
    (h_mtl,) = json.loads((out / "gender+speaker" / "fold_1" / "history.json").read_text())
    assert h_none["train_loss"] == h_none["train_loss_emotion"] and h_none["train_loss_gender"] is None
    assert h_mtl["train_loss"] > h_mtl["train_loss_emotion"] and h_mtl["train_loss_speaker"] is not None
    # --resume over a finished cv re-tests without retraining.
    again = run("cv", store, "--out", out, "--folds", "1,2", "--aux", "none,gender+speaker", *FAST,
                "--steps-per-epoch", "2", "-q", "--resume")
    assert again.exit_code == 0, again.output


def test_single_setting_cv_layout(store, tmp_path):
    out = tmp_path / "cv1"
    result = run("cv", store, "--out", out, "--folds", "4", *FAST, "--steps-per-epoch", "1", "-q")
    assert result.exit_code == 0, result.output
    assert (out / "fold_4" / "best.pt").is_file() and (out / "metrics.json").is_file()


def test_errors_are_one_line(store, trained, tmp_path, tmp_path_factory):
    out, _ = trained
    base = store_base(tmp_path_factory)
    assert_one_line_error(run("train", no_folds_store(base), "--fold", "1", "--out", tmp_path / "a", *FAST),
                          2, "store has no folds")
    assert_one_line_error(run("train", store, "--fold", "7", "--out", tmp_path / "b", *FAST),
                          2, "fold 7 does not exist in scheme 'loso' (folds 1..5)")
    assert_one_line_error(run("cv", store, "--out", tmp_path / "c", "--folds", "0,1", *FAST), 2, "fold 0 does not exist")
    assert_one_line_error(run("train", tmp_path / "missing.h5", "--fold", "1", "--out", tmp_path / "d", *FAST),
                          2, "missing.h5: store not found")
    assert_one_line_error(run("evaluate", tmp_path / "none.pt", store), 2, "checkpoint not found")
    # A bad input file is that file's error line; exit 1 (the command ran and reported it).
    assert_one_line_error(run("predict", out / "best.pt", tmp_path / "nope.wav"), 1, "nope.wav: no such audio file")
    assert_one_line_error(run("evaluate", out / "best.pt", mels64_store(base)), 2,
                          "n_mels 64 but the model was built for 40")
    assert_one_line_error(run("train", store, "--fold", "1", "--out", tmp_path / "e", *FAST, "--set", "train.nope=1"),
                          2, "unknown config key 'train.nope'")
    assert_one_line_error(run("cv", store, "--out", tmp_path / "f", "--aux", "none,emotion", *FAST), 2, "--aux")
    assert_one_line_error(run("train", store, "--fold", "3", "--out", out, *FAST), 2, "already holds a run")
    not_ckpt = tmp_path / "x.pt"
    not_ckpt.write_text("hello")
    assert_one_line_error(run("predict", not_ckpt, tmp_path / "x.pt"), 2, "not a readable sertrain checkpoint")
    not_store = tmp_path / "x.h5"
    not_store.write_bytes(b"not hdf5")
    assert_one_line_error(run("train", not_store, "--fold", "1", "--out", tmp_path / "g", *FAST), 1, "x.h5")
    if not torch.cuda.is_available():
        assert_one_line_error(run("train", store, "--fold", "1", "--out", tmp_path / "h", "--device", "cuda"),
                              2, "no CUDA device")
