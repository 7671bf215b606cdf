"""`sertrain baseline`: eGeMAPS functionals + a linear classifier on the folds of `sertrain cv`,
standardised with the training speakers only, C chosen on the validation speakers, reported
in cv's table and metrics.json format; `cv --baseline` refuses a baseline of another store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from serprep.demo import write_demo_corpus
from serprep.store import Functionals, StoreReader
from sertrain.baseline import C_GRID, check_baseline_for, choose_c, fit, fold_data, run_baseline
from sertrain.cli import main
from sertrain.compare import load_run
from sertrain.errors import InputError
from sertrain.metrics import classification_metrics
from sertrain_fixtures import assert_one_line_error
from store_fixtures import build


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> Path:
    """The demo corpus (classes differ acoustically), built with its eGeMAPS functionals."""
    base = tmp_path_factory.mktemp("baseline")
    write_demo_corpus(base / "corpus", hours=0.15, seed=0)
    out = base / "demo.h5"
    build("iemocap", base / "corpus", out, functionals="egemaps")
    return out


@pytest.fixture(scope="module")
def baseline_run(demo_store, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "baseline"
    return out, run_baseline(demo_store, out, report=lambda line: None)


def test_the_baseline_beats_chance_on_the_demo_corpus(baseline_run):
    _, metrics = baseline_run
    n_classes = len(metrics["classes"])
    assert n_classes == 4
    assert metrics["summary"]["pooled"]["ua"] > 1 / n_classes + 0.2  # chance is 25 %
    assert metrics["summary"]["ua"]["mean"] > 1 / n_classes + 0.2


def test_it_writes_cv_results_on_the_same_folds(baseline_run, demo_store):
    out, metrics = baseline_run
    reader = StoreReader(demo_store)
    assert metrics["folds"] == reader.fold_ids("loso") and metrics["classes"] == reader.vocab("emotion")
    run = load_run(out)  # the cv format: sertrain compare reads it
    manifest = reader.manifest()
    for k in metrics["folds"]:
        fold = reader.fold("loso", k)
        tested = set(run.pooled.keys.loc[run.pooled.keys["fold"] == k, "utt_id"])
        assert tested == set(manifest.utt_id[fold.test_utts])  # every test utterance of the fold, once
    table = (out / "table.txt").read_text()
    assert table.splitlines()[0].split()[-1] == "C"
    for r in metrics["runs"]:
        assert f"{r['C']:.0e}" in table and r["C"] in C_GRID
    assert (out / "predictions.csv").exists() and (out / "confusion.png").exists()


def _fold_inputs(demo_store: Path, k: int = 1):
    reader = StoreReader(demo_store)
    return reader.functionals("egemaps"), reader.manifest(), reader.fold("loso", k), reader.vocab("emotion")


def test_standardisation_uses_the_training_speakers_only(demo_store):
    functionals, manifest, fold, classes = _fold_inputs(demo_store)
    data = fold_data(functionals, manifest, fold, classes, "demo.h5")
    train_rows = np.searchsorted(functionals.utt, data.utt["train"])
    raw = functionals.values[train_rows].astype(np.float64)
    np.testing.assert_allclose(data.mean, raw.mean(axis=0))
    np.testing.assert_allclose(data.x["train"].mean(axis=0), 0, atol=1e-9)
    # Move every validation and test utterance far away: the statistics do not move.
    held_out = np.isin(functionals.utt, np.concatenate([fold.validation_utts, fold.test_utts]))
    assert held_out.any()
    shifted = Functionals(functionals.utt, functionals.names,
                          functionals.values + np.where(held_out[:, None], 1000.0, 0.0).astype(np.float32))
    moved = fold_data(shifted, manifest, fold, classes, "demo.h5")
    np.testing.assert_array_equal(moved.mean, data.mean)
    np.testing.assert_array_equal(moved.std, data.std)
    np.testing.assert_array_equal(moved.x["train"], data.x["train"])
    assert not set(data.utt["train"]) & set(np.concatenate([fold.validation_utts, fold.test_utts]))


def test_c_is_the_best_on_the_validation_speakers_and_never_sees_the_test_speakers(demo_store):
    functionals, manifest, fold, classes = _fold_inputs(demo_store, 2)
    data = fold_data(functionals, manifest, fold, classes, "demo.h5")
    c, scores, model = choose_c("svm", data, classes)
    expected = {g: classification_metrics(data.y["validation"], fit("svm", g, data.x["train"], data.y["train"])
                                          .predict(data.x["validation"]), classes)["ua"] for g in C_GRID}
    assert scores == expected
    assert c == min(g for g in C_GRID if expected[g] == max(expected.values()))  # ties: the smaller C
    np.testing.assert_array_equal(model.predict(data.x["test"]),
                                  fit("svm", c, data.x["train"], data.y["train"]).predict(data.x["test"]))
    # Other test labels and features change nothing about the choice.
    data.y["test"] = np.roll(data.y["test"], 1)
    data.x["test"] = -data.x["test"]
    assert choose_c("svm", data, classes)[:2] == (c, scores)
    # A validation set whose labels are those the C-grid's worst model predicts moves the choice there.
    worst = min(C_GRID, key=lambda g: (expected[g], -g))
    data.y["validation"] = fit("svm", worst, data.x["train"], data.y["train"]).predict(data.x["validation"])
    assert choose_c("svm", data, classes)[0] == min(
        g for g in C_GRID if np.array_equal(fit("svm", g, data.x["train"], data.y["train"]).predict(
            data.x["validation"]), data.y["validation"]))


def test_logistic_regression_too(demo_store, tmp_path):
    metrics = run_baseline(demo_store, tmp_path / "logreg", model="logreg", folds=[1, 2], report=lambda line: None)
    assert metrics["baseline"]["model"] == "logistic regression" and metrics["folds"] == [1, 2]


def test_cli_prints_the_cv_table_and_refuses_a_store_without_functionals(demo_store, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["baseline", str(demo_store), "--out", str(tmp_path / "b"), "--folds", "1,2",
                                  "--c-grid", "0.001,0.1"])
    assert result.exit_code == 0, result.output
    assert "eGeMAPS baseline (linear SVM) / loso" in result.output and "mean ± std" in result.output
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["baseline"]["c_grid"] == [0.001, 0.1]
    plain = tmp_path / "plain.h5"
    build("iemocap", demo_store.parent / "corpus", plain)
    result = runner.invoke(main, ["baseline", str(plain), "--out", str(tmp_path / "c")])
    assert_one_line_error(result, 2, f"{plain}: store has no 'egemaps' functionals (build it with serprep build ... "
                                     "--functionals egemaps)")
    result = runner.invoke(main, ["baseline", str(demo_store), "--c-grid", "0,1"])
    assert_one_line_error(result, 2, "--c-grid expects positive numbers")


def test_cv_refuses_a_baseline_of_another_store_or_scheme(baseline_run, demo_store):
    out, metrics = baseline_run
    own = StoreReader(demo_store).content_sha256
    check_baseline_for(metrics, out, own, "loso")
    with pytest.raises(InputError, match="a baseline of another store"):
        check_baseline_for(metrics, out, "0" * 64, "loso")
    with pytest.raises(InputError, match="a baseline of fold scheme 'loso', this cv uses 'loso-speaker'"):
        check_baseline_for(metrics, out, own, "loso-speaker")


def test_the_cv_table_shows_the_baseline_row_with_a_paired_delta_where_the_runs_compare(baseline_run, demo_store,
                                                                                       tmp_path):
    """`cv --baseline`'s table, fed a cv-format run of the same folds (a logistic-regression
    baseline stands in for a trained model here) and one of other folds."""
    from sertrain.baseline import baseline_comparison

    out, _ = baseline_run
    same = run_baseline(demo_store, tmp_path / "all", model="logreg", report=lambda line: None)
    fewer = run_baseline(demo_store, tmp_path / "two", model="logreg", folds=[1, 2], report=lambda line: None)
    text = baseline_comparison({"all": tmp_path / "all", "two": tmp_path / "two"}, {"all": same, "two": fewer},
                               out, n_resamples=1000)
    head, _, row_all, row_two, row_base, *notes = text.splitlines()
    assert head.split()[:2] == ["model", "runs"] and "Δ UA vs eGeMAPS linear SVM" in head
    assert row_all.startswith("model, aux all") and "[" in row_all  # a paired interval
    assert row_two.startswith("model, aux two") and row_two.split()[-2:] == ["-", "-"]  # no Δ, no p
    assert row_base.startswith("eGeMAPS linear SVM")
    assert notes[-1].startswith(f"no paired Δ for two: {tmp_path / 'two'} and {out} differ in folds ([1, 2] vs [1, 2, 3, 4, 5])")
