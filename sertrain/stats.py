"""Bootstrap confidence intervals and paired comparisons for utterance-level SER results.

After a cross-validation every test utterance of the corpus has been predicted once per run
(random seed); ``y_pred`` is ``[R, n]``. Every statistic is computed per run with the
definitions of :mod:`sertrain.metrics` and then averaged over the R runs, so run-to-run noise
is averaged *inside* each resample (the same resample is applied to every run).

Metrics (``METRICS``): ``wa``, ``ua``, ``macro_f1`` and ``ua_gap_f_minus_m`` (UA over the
utterances whose gender is exactly ``"F"`` minus UA over those whose gender is exactly
``"M"``; other gender labels count only towards the pooled metrics).

Resampling units:

- ``unit="utterance"``: resample the n utterances with replacement (n of n).
- ``unit="speaker"``: cluster bootstrap; resample the S speakers with replacement (S of S),
  each drawn speaker contributing all of its utterances as often as it is drawn. Utterances
  of one speaker are correlated, so with ~10 speakers this is the honest interval.

Intervals are percentile intervals at ``(1 - level) / 2`` and ``(1 + level) / 2`` (numpy's
default linear interpolation, as ``scipy.stats.bootstrap(method="percentile")``).

NaN rule: a resample whose statistic is undefined (e.g. a speaker resample without any
female or any male speaker for ``ua_gap_f_minus_m``) is dropped from the percentiles as long
as at most ``MAX_NAN_SHARE`` (1 %) of the resamples are undefined; above that share the
bootstrap distribution is conditioned too strongly on the draws that happen to work, and
``low``/``high`` are NaN. The point estimate is NaN only when it is undefined on the full
data (then the interval is NaN too).

Random streams (documented so results can be reproduced independently):

- bootstrap: ``numpy.random.default_rng(seed)``; resample ``b`` draws
  ``rng.integers(0, n_units, size=n_units)`` (``n_units`` = n utterances or S speakers,
  speakers in ``numpy.unique`` order).
- permutations (``paired_comparison``): ``numpy.random.default_rng(SeedSequence(seed).spawn(1)[0])``,
  an independent stream so the p-value does not depend on ``n_resamples``; permutation ``j``
  draws ``rng.integers(0, 2, size=n_units, dtype=bool)`` (True = swap A and B for that unit).

Implementation: every statistic is a function of a few count vectors per run (per-class
correct counts, prediction counts, and per-gender correct counts) plus shared support counts.
These counts are linear in the resample weights, so a batch of resamples is one matrix
product ``W @ X`` (or ``W_speakers @ X_speakers``), and a batch of sign-flip permutations is
``F_A - M @ (X_A - X_B)``. Work is chunked (64 MB per weight or mask block) to bound memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

__all__ = [
    "METRICS",
    "MAX_NAN_SHARE",
    "Interval",
    "PairedDifference",
    "bootstrap_intervals",
    "paired_comparison",
]

METRICS: tuple[str, ...] = ("wa", "ua", "macro_f1", "ua_gap_f_minus_m")

#: Largest share of undefined (NaN) resamples that is still dropped silently; see module doc.
MAX_NAN_SHARE: float = 0.01

_UNITS = ("utterance", "speaker")
# Tolerance for ties in the permutation test: permuted and observed deltas are computed from
# identical integer counts but possibly in a different floating-point order.
_TIE_TOL = 1e-12
# Rows of a weight/mask chunk are (chunk, n) float64; ~64 MB per chunk bounds peak memory.
_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Interval:
    """Point estimate (mean over runs on the full data) and percentile bootstrap interval."""

    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready dict; NaN becomes None."""
        return {"estimate": _none_if_nan(self.estimate), "low": _none_if_nan(self.low),
                "high": _none_if_nan(self.high)}


@dataclass(frozen=True)
class PairedDifference:
    """``delta = metric(A) - metric(B)``, its paired bootstrap interval and permutation p-value."""

    delta: float
    low: float
    high: float
    p_value: float

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready dict; NaN becomes None."""
        return {"delta": _none_if_nan(self.delta), "low": _none_if_nan(self.low),
                "high": _none_if_nan(self.high), "p_value": _none_if_nan(self.p_value)}


# --------------------------------------------------------------------------------------------
# public API


def bootstrap_intervals(
    y_true: Any,
    y_pred: Any,
    gender: Any,
    speaker: Any,
    n_classes: int,
    *,
    unit: str = "utterance",
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals of WA, UA, macro-F1 and the F-M UA gap.

    Args:
        y_true: ``[n]`` reference class ids in ``0..n_classes-1``.
        y_pred: ``[R, n]`` predictions of R runs (or ``[n]`` for a single run).
        gender: ``[n]`` gender labels (``"F"``/``"M"`` enter the gap metric).
        speaker: ``[n]`` speaker labels (the resampling unit for ``unit="speaker"``).
        n_classes: number of classes K.
        unit: ``"utterance"`` (iid bootstrap) or ``"speaker"`` (cluster bootstrap).
        n_resamples: bootstrap resamples (any >= 1; 1000 is the default used in reports).
        level: confidence level in (0, 1).
        seed: non-negative seed of ``numpy.random.default_rng``.

    Returns:
        ``{metric: Interval}`` for every name in ``METRICS``; the estimate is the mean over
        runs of the metric on the full data. See the module docstring for the NaN rule.
    """
    data = _validate(y_true, y_pred, None, gender, speaker, n_classes, unit, n_resamples, 1, level, seed)
    enc = _Encoding(data["y_true"], data["gender"], data["n_classes"], data["n_runs"])
    units, n_units = data["units"], data["n_units"]

    # Everything is aggregated to the resampling unit first (identity for utterances), so the
    # bootstrap only ever multiplies (B, n_units) weights with (n_units, F) counts.
    x = _aggregate(enc.features(data["y_pred"]), units, n_units)
    estimate = enc.metrics(x.sum(axis=0, keepdims=True))

    rng = np.random.default_rng(seed)
    stats = _bootstrap_stats(rng, n_units, n_resamples, [x], enc)[0]
    lo_q, hi_q = _quantile_levels(level)
    out: dict[str, Interval] = {}
    for m in METRICS:
        est = float(estimate[m][0])
        low, high = _percentile_interval(stats[m], lo_q, hi_q, est)
        out[m] = Interval(est, low, high)
    return out


def paired_comparison(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    gender: Any,
    speaker: Any,
    n_classes: int,
    *,
    unit: str = "utterance",
    n_resamples: int = 1000,
    n_permutations: int = 10000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, PairedDifference]:
    """Paired comparison of two systems evaluated on the same utterances and runs.

    ``delta = metric(A) - metric(B)`` (each the mean over its R runs). The interval is a
    paired percentile bootstrap: A and B share every resample (of utterances or speakers).
    The p-value is a two-sided paired permutation (sign-flip) test: each permutation swaps
    A's and B's predictions independently per unit (utterance or speaker), the same swap for
    all R runs (run r of A is paired with run r of B), and
    ``p = (1 + #{|delta_perm| >= |delta_obs| - 1e-12}) / (1 + n_permutations)``.
    With ``unit="speaker"`` there are only ``2**S`` distinct swap patterns, and the identity
    and the full swap both reach ``|delta_obs|``, so p cannot fall below about ``2 / 2**S``
    (~0.002 for 10 speakers). p is NaN when delta is (a gender absent from the data).

    Args:
        y_true: ``[n]`` reference class ids.
        pred_a, pred_b: ``[R, n]`` (or ``[n]``) predictions of systems A and B; same shape.
        gender, speaker, n_classes, unit, n_resamples, level, seed: as in
            :func:`bootstrap_intervals` (the bootstrap resamples are the same ones).
        n_permutations: sign-flip permutations (>= 1).

    Returns:
        ``{metric: PairedDifference}`` for every name in ``METRICS``.
    """
    data = _validate(y_true, pred_a, pred_b, gender, speaker, n_classes, unit, n_resamples,
                     n_permutations, level, seed)
    enc = _Encoding(data["y_true"], data["gender"], data["n_classes"], data["n_runs"])
    units, n_units = data["units"], data["n_units"]

    xa = _aggregate(enc.features(data["y_pred"]), units, n_units)
    xb = _aggregate(enc.features(data["pred_b"]), units, n_units)
    fa, fb = xa.sum(axis=0, keepdims=True), xb.sum(axis=0, keepdims=True)
    obs_a, obs_b = enc.metrics(fa), enc.metrics(fb)
    delta_obs = {m: float(obs_a[m][0] - obs_b[m][0]) for m in METRICS}

    rng_boot = np.random.default_rng(seed)
    sa, sb = _bootstrap_stats(rng_boot, n_units, n_resamples, [xa, xb], enc)

    rng_perm = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    exceed = _permutation_counts(rng_perm, n_units, n_permutations, xa, xb, fa, fb, enc, delta_obs)

    lo_q, hi_q = _quantile_levels(level)
    out: dict[str, PairedDifference] = {}
    for m in METRICS:
        d = delta_obs[m]
        low, high = _percentile_interval(sa[m] - sb[m], lo_q, hi_q, d)
        p = float("nan") if math.isnan(d) else (1.0 + exceed[m]) / (1.0 + n_permutations)
        out[m] = PairedDifference(d, low, high, p)
    return out


# --------------------------------------------------------------------------------------------
# encoding: counts that determine every metric, linear in utterance weights


class _Encoding:
    """Maps utterances to count features; computes all metrics from a batch of summed features.

    Feature layout (columns of the ``[n, F]`` matrix):
    shared (same for every run and system): support[K], support_F[K], support_M[K];
    then per run r: correct[K], predicted[K], correct_F[K], correct_M[K].
    """

    def __init__(self, y_true: np.ndarray, gender: np.ndarray, n_classes: int, n_runs: int) -> None:
        self.k = n_classes
        self.r = n_runs
        self.y_true = y_true
        n = y_true.shape[0]
        self.is_f = gender == "F"
        self.is_m = gender == "M"
        k = n_classes
        self.n_shared = 3 * k
        self.n_features = 3 * k + 4 * k * n_runs
        shared = np.zeros((n, self.n_shared), dtype=np.float64)
        rows = np.arange(n)
        shared[rows, y_true] = 1.0
        shared[rows[self.is_f], k + y_true[self.is_f]] = 1.0
        shared[rows[self.is_m], 2 * k + y_true[self.is_m]] = 1.0
        self._shared = shared

    def features(self, y_pred: np.ndarray) -> np.ndarray:
        """``[n, F]`` per-utterance one-hot count features for predictions ``[R, n]``."""
        k, n = self.k, self.y_true.shape[0]
        x = np.zeros((n, self.n_features), dtype=np.float64)
        x[:, : self.n_shared] = self._shared
        rows = np.arange(n)
        for r in range(self.r):
            base = self.n_shared + 4 * k * r
            pred = y_pred[r]
            correct = pred == self.y_true
            x[rows[correct], base + self.y_true[correct]] = 1.0
            x[rows, base + k + pred] = 1.0
            cf, cm = correct & self.is_f, correct & self.is_m
            x[rows[cf], base + 2 * k + self.y_true[cf]] = 1.0
            x[rows[cm], base + 3 * k + self.y_true[cm]] = 1.0
        return x

    def metrics(self, f: np.ndarray) -> dict[str, np.ndarray]:
        """Metrics (each ``[B]``, mean over runs) from summed features ``[B, F]``."""
        k, r = self.k, self.r
        b = f.shape[0]
        support = f[:, :k]
        sup_f = f[:, k : 2 * k]
        sup_m = f[:, 2 * k : 3 * k]
        per_run = f[:, self.n_shared :].reshape(b, r, 4, k)
        correct, predicted = per_run[:, :, 0], per_run[:, :, 1]
        cor_f, cor_m = per_run[:, :, 2], per_run[:, :, 3]

        with np.errstate(invalid="ignore", divide="ignore"):
            total = support.sum(axis=1)
            wa = correct.sum(axis=2) / total[:, None]
            ua = _ua(correct, support)
            gap = _ua(cor_f, sup_f) - _ua(cor_m, sup_m)
            # Macro-F1 label set: classes in the reference or in this run's predictions.
            denom = support[:, None, :] + predicted
            seen = denom > 0
            f1 = np.where(seen, 2.0 * correct / np.where(seen, denom, 1.0), 0.0)
            n_seen = seen.sum(axis=2)
            mf1 = np.where(n_seen > 0, f1.sum(axis=2) / np.maximum(n_seen, 1), np.nan)
        # A NaN run (only possible for the gap, and then in every run) makes the mean NaN.
        return {
            "wa": wa.mean(axis=1),
            "ua": ua.mean(axis=1),
            "macro_f1": mf1.mean(axis=1),
            "ua_gap_f_minus_m": gap.mean(axis=1),
        }


def _ua(correct: np.ndarray, support: np.ndarray) -> np.ndarray:
    """UA ``[B, R]`` from correct ``[B, R, K]`` and support ``[B, K]``; NaN without support."""
    present = support > 0
    recall = np.where(present[:, None, :], correct / np.where(present, support, 1.0)[:, None, :], 0.0)
    n_present = present.sum(axis=1)
    return np.where(n_present[:, None] > 0, recall.sum(axis=2) / np.maximum(n_present, 1)[:, None], np.nan)


def _aggregate(x: np.ndarray, units: np.ndarray, n_units: int) -> np.ndarray:
    """Sum utterance features per resampling unit (``units`` is None for utterances)."""
    if units is None:
        return x
    out = np.zeros((n_units, x.shape[1]), dtype=np.float64)
    np.add.at(out, units, x)
    return out


# --------------------------------------------------------------------------------------------
# resampling engines


def _chunks(total: int, n_units: int) -> Iterator[int]:
    """Chunk sizes whose ``(chunk, n_units)`` float64 matrix stays within ``_CHUNK_BYTES``."""
    size = max(1, min(total, _CHUNK_BYTES // (8 * max(n_units, 1))))
    done = 0
    while done < total:
        c = min(size, total - done)
        yield c
        done += c


def _bootstrap_stats(
    rng: np.random.Generator, n_units: int, n_resamples: int, xs: list[np.ndarray], enc: _Encoding
) -> list[dict[str, np.ndarray]]:
    """Metric values ``[n_resamples]`` of every system in ``xs`` under shared resamples."""
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in xs]
    for c in _chunks(n_resamples, n_units):
        w = np.empty((c, n_units), dtype=np.float64)
        for i in range(c):
            # One draw per resample (not per chunk) keeps the stream independent of chunking.
            w[i] = np.bincount(rng.integers(0, n_units, size=n_units), minlength=n_units)
        for j, x in enumerate(xs):
            parts[j].append(enc.metrics(w @ x))
    return [{m: np.concatenate([p[m] for p in ps]) for m in METRICS} for ps in parts]


def _permutation_counts(
    rng: np.random.Generator,
    n_units: int,
    n_permutations: int,
    xa: np.ndarray,
    xb: np.ndarray,
    fa: np.ndarray,
    fb: np.ndarray,
    enc: _Encoding,
    delta_obs: dict[str, float],
) -> dict[str, int]:
    """Number of sign-flip permutations with ``|delta_perm| >= |delta_obs| - tol`` per metric."""
    # Swapping unit u moves its per-run counts from A to B and back: with mask M (P, units),
    # F_A' = F_A - M @ (X_A - X_B) and F_B' = F_B + M @ (X_A - X_B). Shared columns cancel.
    diff = xa - xb
    exceed = {m: 0 for m in METRICS}
    thresholds = {m: abs(d) - _TIE_TOL for m, d in delta_obs.items()}
    for c in _chunks(n_permutations, n_units):
        mask = np.empty((c, n_units), dtype=np.float64)
        for i in range(c):
            mask[i] = rng.integers(0, 2, size=n_units, dtype=bool)
        shift = mask @ diff
        sa, sb = enc.metrics(fa - shift), enc.metrics(fb + shift)
        for m in METRICS:
            if not math.isnan(thresholds[m]):
                exceed[m] += int(np.count_nonzero(np.abs(sa[m] - sb[m]) >= thresholds[m]))
    return exceed


def _quantile_levels(level: float) -> tuple[float, float]:
    alpha = 1.0 - level
    return alpha / 2.0, 1.0 - alpha / 2.0


def _percentile_interval(values: np.ndarray, lo_q: float, hi_q: float, estimate: float) -> tuple[float, float]:
    """Percentile interval applying the NaN rule of the module docstring."""
    if math.isnan(estimate):
        return float("nan"), float("nan")
    finite = values[~np.isnan(values)]
    nan_share = 1.0 - finite.size / values.size
    if finite.size == 0 or nan_share > MAX_NAN_SHARE:
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [lo_q, hi_q])
    return float(low), float(high)


# --------------------------------------------------------------------------------------------
# validation


def _validate(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    gender: Any,
    speaker: Any,
    n_classes: int,
    unit: str,
    n_resamples: int,
    n_permutations: int,
    level: float,
    seed: int,
) -> dict[str, Any]:
    """Check and normalise inputs; raise ``ValueError`` with a one-line message."""
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}; expected one of {', '.join(_UNITS)}")
    if not _is_int(n_classes) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    if not _is_int(n_resamples) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    if not _is_int(n_permutations) or n_permutations < 1:
        raise ValueError(f"n_permutations must be an integer >= 1, got {n_permutations!r}")
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")

    yt = _int_array(y_true, "y_true")
    if yt.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {yt.shape}")
    n = yt.shape[0]
    if n == 0:
        raise ValueError("empty input: y_true has no utterances")
    _check_range(yt, n_classes, "y_true")

    preds = []
    for name, p in (("y_pred" if pred_b is None else "pred_a", pred_a), ("pred_b", pred_b)):
        if p is None:
            continue
        arr = _int_array(p, name)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != n or arr.shape[0] < 1:
            raise ValueError(f"{name} must have shape (R, {n}) or ({n},), got {np.shape(p)}")
        _check_range(arr, n_classes, name)
        preds.append(arr)
    if len(preds) == 2 and preds[0].shape != preds[1].shape:
        raise ValueError(f"pred_a and pred_b must have the same shape, got {preds[0].shape} and {preds[1].shape}")

    g = np.asarray(gender)
    s = np.asarray(speaker)
    if g.shape != (n,):
        raise ValueError(f"gender must have shape ({n},), got {g.shape}")
    if s.shape != (n,):
        raise ValueError(f"speaker must have shape ({n},), got {s.shape}")
    g = g.astype(str)

    if unit == "speaker":
        _, codes = np.unique(s.astype(str), return_inverse=True)
        units: np.ndarray | None = codes.reshape(-1).astype(np.int64)
        n_units = int(units.max()) + 1
    else:
        units, n_units = None, n

    return {
        "y_true": yt,
        "y_pred": preds[0],
        "pred_b": preds[1] if len(preds) == 2 else None,
        "gender": g,
        "n_classes": int(n_classes),
        "n_runs": preds[0].shape[0],
        "units": units,
        "n_units": n_units,
    }


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _int_array(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _check_range(arr: np.ndarray, n_classes: int, name: str) -> None:
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(f"{name} has class ids outside 0..{n_classes - 1} (min {arr.min()}, max {arr.max()})")


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
