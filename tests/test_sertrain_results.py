"""sertrain.results and sertrain.report: statistics over folds × seeds and the tables that
print them, checked against direct numpy / scikit-learn computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from sertrain.errors import InputError
from sertrain.metrics import classification_metrics
from sertrain.report import comparison_table, cv_table, intervals_table, run_table
from sertrain.results import PooledPredictions, cv_results, sample_mean_std, summary_text

CLASSES = ["ang", "hap", "neu", "sad"]


def synthetic_cv(n_folds: int = 3, seeds: tuple[int, ...] = (0, 1), n_per_speaker: int = 40, seed: int = 0):
    """Runs and predictions of a cv over ``n_folds`` folds (two speakers each) and ``seeds``,
    built the way run_cv builds them: classification_metrics per run, one predictions table."""
    rng = np.random.default_rng(seed)
    runs, frames = [], []
    truth = {}
    for fold in range(1, n_folds + 1):
        speakers = [f"S{fold}F", f"S{fold}M"]
        ids = [f"{s}_{i:03d}" for s in speakers for i in range(n_per_speaker)]
        truth[fold] = (ids, np.repeat(speakers, n_per_speaker), rng.integers(0, 4, len(ids)))
    for fold, (ids, spk, y) in truth.items():
        gender = np.array([s[-1] for s in spk])
        for s in seeds:
            correct = rng.random(len(ids)) < 0.5 + 0.1 * fold
            pred = np.where(correct, y, (y + rng.integers(1, 4, len(y))) % 4)
            runs.append({"fold": fold, "seed": s, "test_speakers": sorted(set(spk)), "best_epoch": 2 + s,
                         "test": classification_metrics(y, pred, CLASSES, groups=gender)})
            frames.append(pd.DataFrame({"fold": fold, "seed": s, "utt_id": ids, "speaker": spk, "gender": gender,
                                        "emotion": [CLASSES[i] for i in y], "predicted": [CLASSES[i] for i in pred]}))
    return runs, pd.concat(frames, ignore_index=True)


def test_sample_mean_std_is_ddof_1_and_skips_missing():
    s = sample_mean_std([0.5, 0.7, None, float("nan")])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1)) and s["n"] == 2
    assert sample_mean_std([0.4]) == {"mean": 0.4, "std": None, "n": 1}
    assert sample_mean_std([None])["mean"] is None


def test_cv_results_counts_and_statistics():
    runs, preds = synthetic_cv(n_folds=3, seeds=(0, 1))
    res = cv_results(runs, preds, CLASSES, n_resamples=1000)
    s = res["summary"]
    assert (s["n_runs"], s["n_folds"], s["n_seeds"]) == (6, 3, 2)
    uas = [r["test"]["ua"] for r in runs]
    assert s["ua"]["mean"] == pytest.approx(np.mean(uas))
    assert s["ua"]["std"] == pytest.approx(np.std(uas, ddof=1))
    # Per fold: over that fold's seeds.
    f2 = [r["test"]["ua"] for r in runs if r["fold"] == 2]
    entry = res["per_fold"][1]
    assert entry["fold"] == 2 and entry["runs"] == 2 and entry["seeds"] == [0, 1] and entry["n"] == 80
    assert entry["ua"]["std"] == pytest.approx(np.std(f2, ddof=1))
    assert entry["best_epochs"] == [2, 3]
    # Pooled: all utterances of one seed at once, then the mean over seeds (sklearn as reference).
    per_seed = []
    for seed in (0, 1):
        part = preds[preds["seed"] == seed]
        per_seed.append(balanced_accuracy_score(part["emotion"], part["predicted"]))
    assert s["pooled"]["n_utterances"] == 240
    assert s["pooled"]["ua"] == pytest.approx(np.mean(per_seed))
    wa = np.mean([accuracy_score(preds[preds.seed == k]["emotion"], preds[preds.seed == k]["predicted"]) for k in (0, 1)])
    f1 = np.mean([f1_score(preds[preds.seed == k]["emotion"], preds[preds.seed == k]["predicted"], average="macro")
                  for k in (0, 1)])
    assert s["pooled"]["wa"] == pytest.approx(wa) and s["pooled"]["macro_f1"] == pytest.approx(f1)
    # The intervals hold the pooled estimate and are ordered.
    for unit in ("utterance", "speaker"):
        iv = res["intervals"][unit]["ua"]
        assert iv["low"] <= s["pooled"]["ua"] <= iv["high"]
    assert res["intervals"]["n_speakers"] == 6 and res["intervals"]["n_resamples"] == 1000
    assert np.sum(res["confusion_total"]) == 6 * 80


def test_summary_text_says_what_the_number_is():
    runs, preds = synthetic_cv(n_folds=2, seeds=(0, 1, 2))
    res = cv_results(runs, preds, CLASSES)
    s = res["summary"]
    expected = (f"UA {100 * s['ua']['mean']:.1f} ± {100 * s['ua']['std']:.1f}: mean ± sample std (ddof=1) over "
                f"2 folds × 3 seeds = 6 runs; pooled over 160 test utterances: {100 * s['pooled']['ua']:.1f}")
    assert res["summary_text"] == expected
    one = {"n_runs": 1, "n_folds": 1, "n_seeds": 1, "ua": {"mean": 0.5, "std": None},
           "pooled": {"n_utterances": 10, "ua": 0.5}}
    assert summary_text(one) == "UA 50.0: mean over 1 folds × 1 seed = 1 runs; pooled over 10 test utterances: 50.0"


def test_cv_table_rows_and_notes():
    runs, preds = synthetic_cv(n_folds=3, seeds=(0, 1))
    res = cv_results(runs, preds, CLASSES)
    lines = cv_table(res).splitlines()
    assert lines[0].split()[:5] == ["fold", "test", "speakers", "utts", "seeds"]
    assert [ln.split()[0] for ln in lines[2:5]] == ["1", "2", "3"]
    mean_row = next(ln for ln in lines if ln.startswith("mean ± std"))
    assert "6 runs" in mean_row and f"{100 * res['summary']['ua']['mean']:.1f} ± {100 * res['summary']['ua']['std']:.1f}" in mean_row
    assert next(ln for ln in lines if ln.startswith("pooled")).split()[3] == "240"
    assert res["summary_text"] in lines
    assert "per fold: mean ± sample std (ddof=1) over seeds" in lines[-1]
    ivs = intervals_table(res["intervals"]).splitlines()
    assert ivs[0].split()[:2] == ["pooled", "estimate"] and "CI speakers (6)" in ivs[0]
    assert [ln.split()[0] for ln in ivs[2:5]] == ["WA", "UA", "F1"] and ivs[5].startswith("UA F - M")


def test_one_seed_table_has_no_seed_column_and_no_std_per_fold():
    runs, preds = synthetic_cv(n_folds=2, seeds=(0,))
    table = cv_table(cv_results(runs, preds, CLASSES))
    assert "seeds" not in table.splitlines()[0] and "±" not in table.splitlines()[2]
    assert run_table(runs[:1]).splitlines()[2].startswith("1 ")


def test_comparison_table_delta_column():
    runs, preds = synthetic_cv(n_folds=2, seeds=(0,))
    res = cv_results(runs, preds, CLASSES)
    delta = {"ua": {"delta": 0.021, "low": -0.01, "high": 0.05, "p_value": 0.2345}}
    table = comparison_table({"none": {**res, "delta_vs_baseline": None},
                              "gender": {**res, "delta_vs_baseline": delta}}, "none")
    lines = table.splitlines()
    assert "Δ UA vs none [95 % CI]" in lines[0]
    assert lines[2].startswith("none") and lines[2].split()[-2:] == ["-", "-"]
    assert "+2.1 [-1.0, 5.0]" in lines[3] and lines[3].rstrip().endswith("0.23")


def test_pooled_predictions_refuse_unequal_seeds_and_unknown_classes():
    runs, preds = synthetic_cv(n_folds=2, seeds=(0, 1))
    with pytest.raises(InputError, match="seed 1 did not predict the same test utterances"):
        PooledPredictions.from_frame(preds.drop(index=preds.index[-1]), CLASSES)
    bad = preds.copy()
    bad.loc[0, "predicted"] = "fear"
    with pytest.raises(InputError, match="fear"):
        PooledPredictions.from_frame(bad, CLASSES)
    pooled = PooledPredictions.from_frame(preds.sample(frac=1, random_state=0), CLASSES)  # order does not matter
    assert pooled.y_pred.shape == (2, 160) and pooled.seeds == [0, 1]
