"""Utterance-level classification metrics (numpy only; checked against scikit-learn in tests).

Definitions (docs/method.md):
- WA: accuracy over utterances.
- UA: mean of per-class recall over the classes present in the reference labels (what
  ``sklearn.metrics.balanced_accuracy_score`` computes).
- macro-F1: unweighted mean of per-class F1 over the classes that occur in the reference or
  the predictions (``sklearn.metrics.f1_score(average="macro")``, zero when undefined).
- confusion matrix: rows = reference, columns = prediction, over all ``n_classes`` classes.
- by gender: UA, WA and per-class recall computed on each gender's utterances separately.

Regression metrics of a dimension (arousal, valence, dominance), over the pairs whose
reference is rated (NaN = not rated, left out; a non-finite prediction is an error):
- CCC (Lin's concordance correlation coefficient):
  ``2 cov(y, p) / (var(y) + var(p) + (mean(y) - mean(p))^2)`` with population (1/n) moments;
  1 = perfect agreement, a shift or a scale change lowers it (unlike Pearson's r).
- Pearson r: ``cov(y, p) / (std(y) std(p))``; NaN when either side is constant.
- RMSE: ``sqrt(mean((p - y)^2))``.
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


def _rated_pairs(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """(reference, prediction) as float64 over the rated pairs; shapes, non-finite predictions
    and infinite references are refused (never a silently wrong number)."""
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"reference and prediction differ in length ({y.size} vs {p.size})")
    if np.isinf(y).any():
        raise ValueError("reference ratings hold infinite values (NaN marks a missing rating)")
    rated = ~np.isnan(y)
    if not np.isfinite(p[rated]).all():
        raise ValueError("predictions hold non-finite values")
    return y[rated], p[rated]


def ccc(y_true: Any, y_pred: Any) -> float:
    """Concordance correlation coefficient over the rated pairs (see module docstring); NaN
    when there is no rated pair or both sides are one constant value."""
    y, p = _rated_pairs(y_true, y_pred)
    if y.size == 0:
        return float("nan")
    my, mp = y.mean(), p.mean()
    cov = ((y - my) * (p - mp)).mean()
    denom = y.var() + p.var() + (my - mp) ** 2
    return float(2 * cov / denom) if denom > 0 else float("nan")


def pearson_r(y_true: Any, y_pred: Any) -> float:
    """Pearson correlation over the rated pairs; NaN when either side is constant or empty."""
    y, p = _rated_pairs(y_true, y_pred)
    if y.size < 2:
        return float("nan")
    sy, sp = y.std(), p.std()
    if sy == 0 or sp == 0:
        return float("nan")
    return float(((y - y.mean()) * (p - p.mean())).mean() / (sy * sp))


def rmse(y_true: Any, y_pred: Any) -> float:
    """Root mean squared error over the rated pairs; NaN when there is none."""
    y, p = _rated_pairs(y_true, y_pred)
    return float(np.sqrt(((p - y) ** 2).mean())) if y.size else float("nan")


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """``{"n", "ccc", "pearson_r", "rmse"}`` of one dimension (JSON-ready; NaN as None)."""
    y, _ = _rated_pairs(y_true, y_pred)
    return {"n": int(y.size), "ccc": _none_if_nan(ccc(y_true, y_pred)),
            "pearson_r": _none_if_nan(pearson_r(y_true, y_pred)), "rmse": _none_if_nan(rmse(y_true, y_pred))}
