"""sertrain.metrics / aggregation / tables, checked against scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
)

from sertrain.evaluate import aggregate
from sertrain.metrics import classification_metrics

CLASSES = ["ang", "hap", "neu", "sad"]


@pytest.mark.parametrize("seed", range(8))
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    y_true = rng.integers(0, 4, n)
    # Skewed, partly correct predictions; some seeds leave a class out of y_true or y_pred.
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, 4, n))
    if seed % 3 == 0:
        y_true[y_true == 3] = 2
    if seed % 4 == 1:
        y_pred[y_pred == 0] = 1
    genders = rng.choice(["F", "M"], n)
    m = classification_metrics(y_true, y_pred, CLASSES, groups=genders)
    labels_seen = sorted(set(y_true) | set(y_pred))
    assert m["wa"] == pytest.approx(accuracy_score(y_true, y_pred))
    with warnings.catch_warnings():  # sklearn warns when y_pred has classes y_true lacks
        warnings.simplefilter("ignore")
        assert m["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
        assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
        assert m["macro_f1"] == pytest.approx(
            f1_score(y_true, y_pred, labels=labels_seen, average="macro", zero_division=0)
        )
    assert m["confusion"] == confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    for c, name in enumerate(CLASSES):
        if (y_true == c).any():
            assert m["recall"][name] == pytest.approx(recall_score(y_true == c, y_pred == c))
        else:
            assert m["recall"][name] is None
    for g in ("F", "M"):
        sel = genders == g
        if not sel.any():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert m["by_gender"][g]["ua"] == pytest.approx(balanced_accuracy_score(y_true[sel], y_pred[sel]))
        assert m["by_gender"][g]["n"] == int(sel.sum())


def test_perfect_and_constant_predictions():
    y = np.array([0, 1, 2, 3, 0, 1])
    m = classification_metrics(y, y, CLASSES)
    assert m["wa"] == m["ua"] == m["macro_f1"] == 1.0
    m = classification_metrics(y, np.zeros_like(y), CLASSES)
    assert m["ua"] == pytest.approx(0.25)
    assert m["wa"] == pytest.approx(2 / 6)


def test_aggregate_mean_and_max():
    utts = np.array([7, 3, 7, 3, 9])
    post = np.array([[0.6, 0.4], [0.2, 0.8], [0.1, 0.9], [0.4, 0.6], [0.5, 0.5]])
    u, s, n = aggregate(utts, post, "mean")
    assert u.tolist() == [3, 7, 9] and n.tolist() == [2, 2, 1]
    np.testing.assert_allclose(s, [[0.3, 0.7], [0.35, 0.65], [0.5, 0.5]])
    u, s, n = aggregate(utts, post, "max")
    np.testing.assert_allclose(s, [[0.4, 0.8], [0.6, 0.9], [0.5, 0.5]])
    with pytest.raises(ValueError):
        aggregate(utts, post, "median")
