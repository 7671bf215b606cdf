"""Utterance-level classification metrics (numpy only; checked against scikit-learn in tests).

Definitions (docs/method.md):
- WA: accuracy over utterances.
- UA: mean of per-class recall over the classes present in the reference labels (what
  ``sklearn.metrics.balanced_accuracy_score`` computes).
- macro-F1: unweighted mean of per-class F1 over the classes that occur in the reference or
  the predictions (``sklearn.metrics.f1_score(average="macro")``, zero when undefined).
- confusion matrix: rows = reference, columns = prediction, over all ``n_classes`` classes.
- by gender: UA, WA and per-class recall computed on each gender's utterances separately.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``[n_classes, n_classes]`` int64 counts; rows are reference labels."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def recall_per_class(cm: np.ndarray) -> np.ndarray:
    """Recall per class; NaN for classes without reference utterances."""
    support = cm.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def weighted_accuracy(cm: np.ndarray) -> float:
    """WA: correct / total (NaN when empty)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def unweighted_accuracy(cm: np.ndarray) -> float:
    """UA: mean recall over classes present in the reference labels."""
    r = recall_per_class(cm)
    return float(np.nanmean(r)) if np.any(~np.isnan(r)) else float("nan")


def macro_f1(cm: np.ndarray) -> float:
    """Macro-F1 over classes seen in reference or prediction (sklearn's default label set)."""
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    seen = (support + predicted) > 0
    if not seen.any():
        return float("nan")
    denom = support + predicted
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(f1[seen].mean())


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    groups: Sequence[str] | np.ndarray | None = None,
) -> dict[str, Any]:
    """All utterance-level metrics as a JSON-ready dict.

    ``groups`` (e.g. the gender of each utterance) adds ``by_gender``: for each group, its
    utterance count, WA, UA and per-class recall (None where the group has no utterance of
    a class).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = len(class_names)
    cm = confusion(y_true, y_pred, n)
    recalls = recall_per_class(cm)
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "wa": weighted_accuracy(cm),
        "ua": unweighted_accuracy(cm),
        "macro_f1": macro_f1(cm),
        "classes": list(class_names),
        "confusion": cm.tolist(),
        "recall": {c: _none_if_nan(r) for c, r in zip(class_names, recalls)},
    }
    if groups is not None:
        groups = np.asarray(groups)
        by: dict[str, Any] = {}
        for g in sorted(set(groups.tolist())):
            sel = groups == g
            gcm = confusion(y_true[sel], y_pred[sel], n)
            by[str(g)] = {
                "n": int(sel.sum()),
                "wa": weighted_accuracy(gcm),
                "ua": unweighted_accuracy(gcm),
                "recall": {c: _none_if_nan(r) for c, r in zip(class_names, recall_per_class(gcm))},
            }
        out["by_gender"] = by
    return out


def _none_if_nan(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
