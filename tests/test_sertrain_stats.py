"""sertrain.stats: bootstrap intervals and paired permutation tests.

Checked against closed forms (normal approximation, exact binomial sign test), scipy's
bootstrap with scikit-learn statistics, and a slow per-resample loop that replays the
documented random streams and recomputes every metric with scikit-learn.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

import sertrain.stats as st
from sertrain.stats import (
    METRICS,
    MAX_NAN_SHARE,
    Interval,
    PairedDifference,
    bootstrap_intervals,
    paired_comparison,
)

K = 4


# --------------------------------------------------------------------------------------------
# data helpers


def _labels(rng: np.random.Generator, n: int, k: int = K) -> np.ndarray:
    """Balanced reference labels in random order."""
    return rng.permutation(np.arange(n) % k)


def _predict(rng: np.random.Generator, y: np.ndarray, n_correct: int, k: int = K) -> np.ndarray:
    """Predictions with exactly ``n_correct`` correct utterances (random positions, random wrong class)."""
    pred = (y + rng.integers(1, k, y.shape[0])) % k  # always wrong
    idx = rng.choice(y.shape[0], n_correct, replace=False)
    pred[idx] = y[idx]
    return pred


def _groups(n: int, n_speakers: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Speakers in contiguous blocks; even speakers female, odd male."""
    spk_id = np.arange(n) * n_speakers // n
    return np.where(spk_id % 2 == 0, "F", "M"), np.array([f"S{i:02d}" for i in spk_id])


def _width(iv: Interval) -> float:
    return iv.high - iv.low


# --------------------------------------------------------------------------------------------
# slow reference: the documented random streams replayed with scikit-learn metrics


def _sk_metrics(y: np.ndarray, p: np.ndarray, gender: np.ndarray) -> dict[str, float]:
    with warnings.catch_warnings():  # sklearn warns when y_pred has classes y_true lacks
        warnings.simplefilter("ignore")
        f, m = gender == "F", gender == "M"
        ua_f = balanced_accuracy_score(y[f], p[f]) if f.any() else math.nan
        ua_m = balanced_accuracy_score(y[m], p[m]) if m.any() else math.nan
        return {
            "wa": accuracy_score(y, p),
            "ua": balanced_accuracy_score(y, p),
            "macro_f1": f1_score(y, p, average="macro", zero_division=0),
            "ua_gap_f_minus_m": ua_f - ua_m,
        }


def _sk_mean(y: np.ndarray, preds: np.ndarray, gender: np.ndarray) -> dict[str, float]:
    per_run = [_sk_metrics(y, p, gender) for p in preds]
    return {k: float(np.mean([r[k] for r in per_run])) for k in METRICS}


def _unit_members(speaker: np.ndarray, unit: str) -> list[np.ndarray]:
    """Utterance indices of each resampling unit, in the module's documented unit order."""
    if unit == "utterance":
        return [np.array([i]) for i in range(speaker.shape[0])]
    return [np.flatnonzero(speaker == s) for s in np.unique(speaker)]


def _ref_interval(values: list[float], level: float) -> tuple[float, float]:
    v = np.asarray(values)
    finite = v[~np.isnan(v)]
    if finite.size == 0 or 1 - finite.size / v.size > MAX_NAN_SHARE:
        return math.nan, math.nan
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _slow_paired(y, pa, pb, gender, speaker, unit, n_resamples, n_permutations, level, seed):
    members = _unit_members(speaker, unit)
    s = len(members)
    est_a, est_b = _sk_mean(y, pa, gender), _sk_mean(y, pb, gender)
    delta = {k: est_a[k] - est_b[k] for k in METRICS}

    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {k: [] for k in METRICS}
    boot_a: dict[str, list[float]] = {k: [] for k in METRICS}
    for _ in range(n_resamples):
        idx = np.concatenate([members[u] for u in rng.integers(0, s, size=s)])
        ma = _sk_mean(y[idx], pa[:, idx], gender[idx])
        mb = _sk_mean(y[idx], pb[:, idx], gender[idx])
        for k in METRICS:
            boot[k].append(ma[k] - mb[k])
            boot_a[k].append(ma[k])

    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    exceed = {k: 0 for k in METRICS}
    for _ in range(n_permutations):
        swap_unit = rng.integers(0, 2, size=s, dtype=bool)
        swap = np.zeros(y.shape[0], dtype=bool)
        for u in np.flatnonzero(swap_unit):
            swap[members[u]] = True
        qa, qb = np.where(swap, pb, pa), np.where(swap, pa, pb)  # same swap for every run
        ma, mb = _sk_mean(y, qa, gender), _sk_mean(y, qb, gender)
        for k in METRICS:
            if abs(ma[k] - mb[k]) >= abs(delta[k]) - 1e-12:
                exceed[k] += 1

    paired, single = {}, {}
    for k in METRICS:
        lo, hi = _ref_interval(boot[k], level)
        paired[k] = (delta[k], lo, hi, (1 + exceed[k]) / (1 + n_permutations))
        single[k] = (est_a[k], *_ref_interval(boot_a[k], level))
    return paired, single


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


# --------------------------------------------------------------------------------------------
# point estimates


def test_point_estimates_match_sklearn():
    rng = np.random.default_rng(3)
    n, r = 400, 3
    y = _labels(rng, n)
    preds = np.stack([_predict(rng, y, c) for c in (250, 280, 300)])
    preds[1][preds[1] == 3] = 2  # one run never predicts class 3 (macro-F1 label set differs)
    gender = rng.choice(["F", "M", "U"], n)  # "U" counts only towards pooled metrics
    speaker = rng.choice([f"S{i}" for i in range(8)], n)
    ref = _sk_mean(y, preds, gender)
    ua_f = np.mean([balanced_accuracy_score(y[gender == "F"], p[gender == "F"]) for p in preds])
    ua_m = np.mean([balanced_accuracy_score(y[gender == "M"], p[gender == "M"]) for p in preds])
    for unit in ("utterance", "speaker"):
        res = bootstrap_intervals(y, preds, gender, speaker, K, unit=unit, n_resamples=50)
        assert set(res) == set(METRICS)
        for k in METRICS:
            assert res[k].estimate == pytest.approx(ref[k], abs=1e-12), (unit, k)
        assert res["ua_gap_f_minus_m"].estimate == pytest.approx(ua_f - ua_m, abs=1e-12)
    # A single run may be given 1-D.
    one = bootstrap_intervals(y, preds[0], gender, speaker, K, n_resamples=50)
    assert one["macro_f1"].estimate == pytest.approx(f1_score(y, preds[0], average="macro"), abs=1e-12)


def test_reference_class_missing_and_gap_undefined():
    rng = np.random.default_rng(4)
    n = 200
    y = _labels(rng, n, 3)  # class 3 of K=4 never in the reference
    p = _predict(rng, y, 120, 3)
    p[:10] = 3  # ...but predicted sometimes
    gender = np.full(n, "F")  # no male utterance: the gap is undefined
    speaker = np.array([f"S{i % 5}" for i in range(n)])
    res = bootstrap_intervals(y, p, gender, speaker, K, n_resamples=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert res["ua"].estimate == pytest.approx(balanced_accuracy_score(y, p), abs=1e-12)
    assert res["macro_f1"].estimate == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    gap = res["ua_gap_f_minus_m"]
    assert math.isnan(gap.estimate) and math.isnan(gap.low) and math.isnan(gap.high)
    assert gap.to_dict() == {"estimate": None, "low": None, "high": None}
    assert res["ua"].to_dict() == {"estimate": res["ua"].estimate, "low": res["ua"].low, "high": res["ua"].high}
    assert res["ua"].low < res["ua"].estimate < res["ua"].high
    # Class 3 neither in the reference nor predicted: it is outside macro-F1's label set.
    p3 = np.where(p == 3, 0, p)
    res = bootstrap_intervals(y, p3, gender, speaker, K, n_resamples=200)
    assert res["macro_f1"].estimate == pytest.approx(f1_score(y, p3, average="macro"), abs=1e-12)


# --------------------------------------------------------------------------------------------
# bootstrap intervals


def test_wa_interval_matches_normal_approximation():
    rng = np.random.default_rng(0)
    n, p = 2000, 0.7
    y = _labels(rng, n)
    pred = _predict(rng, y, int(p * n))
    gender, speaker = _groups(n)
    iv = bootstrap_intervals(y, pred, gender, speaker, K, n_resamples=4000, seed=1)["wa"]
    half = 1.959964 * math.sqrt(p * (1 - p) / n)  # 0.0201
    assert iv.estimate == pytest.approx(p)
    assert iv.low < p < iv.high
    # Monte-Carlo error of a 2.5 % quantile with 4000 resamples is ~0.0005 here.
    assert iv.low == pytest.approx(p - half, abs=0.002)
    assert iv.high == pytest.approx(p + half, abs=0.002)


def test_level_changes_width_like_normal_quantiles():
    rng = np.random.default_rng(0)
    n = 2000
    y = _labels(rng, n)
    pred = _predict(rng, y, 1400)
    gender, speaker = _groups(n)
    w95 = _width(bootstrap_intervals(y, pred, gender, speaker, K, n_resamples=4000, level=0.95)["wa"])
    w80 = _width(bootstrap_intervals(y, pred, gender, speaker, K, n_resamples=4000, level=0.80)["wa"])
    assert w80 / w95 == pytest.approx(1.281552 / 1.959964, abs=0.06)


def test_intervals_match_scipy_bootstrap_with_sklearn_statistics():
    rng = np.random.default_rng(5)
    n = 300
    y = _labels(rng, n)
    pred = _predict(rng, y, 200)
    pred[rng.random(n) < 0.15] = 0  # skew towards class 0 so UA, WA and F1 differ
    gender, speaker = _groups(n)
    n_resamples = 2000
    ours = bootstrap_intervals(y, pred, gender, speaker, K, n_resamples=n_resamples, seed=2)

    def statistic(yt, yp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.array([accuracy_score(yt, yp), balanced_accuracy_score(yt, yp),
                             f1_score(yt, yp, average="macro", zero_division=0)])

    ref = sps.bootstrap((y, pred), statistic, paired=True, vectorized=False, method="percentile",
                        n_resamples=n_resamples, confidence_level=0.95, rng=np.random.default_rng(7))
    for i, k in enumerate(("wa", "ua", "macro_f1")):
        # Independent streams: the endpoints' Monte-Carlo error is ~0.0015 each (SE ~0.027).
        assert ours[k].low == pytest.approx(ref.confidence_interval.low[i], abs=0.007), k
        assert ours[k].high == pytest.approx(ref.confidence_interval.high[i], abs=0.007), k


def test_width_shrinks_with_n():
    widths = {}
    for n in (500, 2000):
        rng = np.random.default_rng(n)
        y = _labels(rng, n)
        pred = _predict(rng, y, int(0.7 * n))
        gender, speaker = _groups(n)
        widths[n] = bootstrap_intervals(y, pred, gender, speaker, K, n_resamples=2000)
    for k in ("wa", "ua", "macro_f1"):
        ratio = _width(widths[2000][k]) / _width(widths[500][k])
        assert 0.35 < ratio < 0.65, (k, ratio)


def test_speaker_interval_wider_when_speakers_differ():
    rng = np.random.default_rng(6)
    n_spk, per = 10, 100
    n = n_spk * per
    y = _labels(rng, n)
    gender, speaker = _groups(n, n_spk)
    acc = np.linspace(0.3, 0.95, n_spk)  # strong speaker effect
    pred = np.concatenate([_predict(rng, y[s * per:(s + 1) * per], int(a * per)) for s, a in enumerate(acc)])
    utt = bootstrap_intervals(y, pred, gender, speaker, K, unit="utterance")
    spk = bootstrap_intervals(y, pred, gender, speaker, K, unit="speaker")
    for k in ("wa", "ua", "macro_f1"):
        assert spk[k].estimate == utt[k].estimate
        # Expected SEs: ~0.015 (utterances) vs ~0.065 (speakers).
        assert _width(spk[k]) > 2.5 * _width(utt[k]), k


def test_speaker_nan_rule():
    rng = np.random.default_rng(8)
    n = 400
    y = _labels(rng, n)
    pred = _predict(rng, y, 260)
    # 4 speakers, 2 F + 2 M: a resample lacks a gender with probability 2/16 > MAX_NAN_SHARE.
    gender, speaker = _groups(n, 4)
    res = bootstrap_intervals(y, pred, gender, speaker, K, unit="speaker", n_resamples=400)
    assert not math.isnan(res["ua_gap_f_minus_m"].estimate)
    assert math.isnan(res["ua_gap_f_minus_m"].low) and math.isnan(res["ua_gap_f_minus_m"].high)
    assert not math.isnan(res["ua"].low)
    # 12 speakers, 6 F + 6 M: that probability is 2/4096, so NaN resamples are just dropped.
    gender, speaker = _groups(n, 12)
    res = bootstrap_intervals(y, pred, gender, speaker, K, unit="speaker", n_resamples=400)
    gap = res["ua_gap_f_minus_m"]
    assert gap.low <= gap.high and not math.isnan(gap.low)


def test_seed_reproducibility_and_chunking(monkeypatch):
    rng = np.random.default_rng(9)
    n = 500
    y = _labels(rng, n)
    pred = np.stack([_predict(rng, y, 330), _predict(rng, y, 340)])
    gender, speaker = _groups(n)
    a = bootstrap_intervals(y, pred, gender, speaker, K, seed=11)
    b = bootstrap_intervals(y, pred, gender, speaker, K, seed=11)
    c = bootstrap_intervals(y, pred, gender, speaker, K, seed=12)
    assert a == b
    assert any((a[k].low, a[k].high) != (c[k].low, c[k].high) for k in METRICS)
    for k in METRICS:  # different seeds differ only by Monte-Carlo noise
        assert a[k].estimate == c[k].estimate
        assert a[k].low == pytest.approx(c[k].low, abs=0.01)
    # Results must not depend on how resamples are chunked (one draw per resample).
    monkeypatch.setattr(st, "_CHUNK_BYTES", 8 * n * 7)
    d = bootstrap_intervals(y, pred, gender, speaker, K, seed=11)
    for k in METRICS:
        assert d[k].low == pytest.approx(a[k].low, abs=1e-12)
        assert d[k].high == pytest.approx(a[k].high, abs=1e-12)


# --------------------------------------------------------------------------------------------
# paired comparison


@pytest.mark.parametrize("unit", ["utterance", "speaker"])
def test_paired_self_comparison_is_null(unit):
    rng = np.random.default_rng(10)
    n = 300
    y = _labels(rng, n)
    pred = np.stack([_predict(rng, y, 200), _predict(rng, y, 180)])
    gender, speaker = _groups(n)
    res = paired_comparison(y, pred, pred, gender, speaker, K, unit=unit, n_resamples=200, n_permutations=500)
    assert set(res) == set(METRICS)
    for k in METRICS:
        assert res[k] == PairedDifference(0.0, 0.0, 0.0, 1.0), k
    assert res["wa"].to_dict() == {"delta": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}


@pytest.mark.parametrize("unit", ["utterance", "speaker"])
def test_paired_clear_difference(unit):
    rng = np.random.default_rng(12)
    n = 1000
    y = _labels(rng, n)
    gender, speaker = _groups(n)
    # A beats B in every speaker block (by 5 to 45 points) so the speaker-level test sees a
    # consistent effect; with 10 speakers only 2 of the 1024 sign patterns reach |delta_obs|.
    acc_a = 80 + np.array([-10, 10, -5, 5, 0, -10, 10, -5, 5, 0])
    acc_b = 55 + np.array([10, -10, 5, -5, 0, 0, 5, -5, 10, -10])
    pa = np.concatenate([_predict(rng, y[i:i + 100], a) for i, a in zip(range(0, n, 100), acc_a)])
    pb = np.concatenate([_predict(rng, y[i:i + 100], b) for i, b in zip(range(0, n, 100), acc_b)])
    res = paired_comparison(y, pa, pb, gender, speaker, K, unit=unit)
    assert res["wa"].delta == pytest.approx(0.25)
    for k in ("wa", "ua", "macro_f1"):
        assert res[k].p_value < 0.01, k
        assert 0 < res[k].low < res[k].delta < res[k].high, k
    # Swapped roles: same size, opposite sign.
    rev = paired_comparison(y, pb, pa, gender, speaker, K, unit=unit)
    assert rev["wa"].delta == pytest.approx(-0.25)
    assert rev["wa"].high < 0


def test_paired_noise_only_matches_exact_sign_test():
    # Same accuracy up to noise: A and B disagree on 200 utterances, A right on 105 of them,
    # B on 95. Sign-flipping only matters on discordant utterances, so the exact
    # permutation p-value is the two-sided binomial sign test (McNemar exact), ~0.57.
    rng = np.random.default_rng(13)
    n = 1000
    y = _labels(rng, n)
    gender, speaker = _groups(n)
    wrong = (y + rng.integers(1, K, n)) % K
    order = rng.permutation(n)
    a_only, b_only, both = order[:105], order[105:200], order[200:900]
    pa, pb = wrong.copy(), wrong.copy()
    pa[a_only] = y[a_only]
    pb[b_only] = y[b_only]
    pa[both], pb[both] = y[both], y[both]
    res = paired_comparison(y, pa, pb, gender, speaker, K)
    exact = sps.binomtest(105, 200, 0.5).pvalue
    assert res["wa"].delta == pytest.approx(0.01)
    # Monte-Carlo SE of the p-value with 10000 permutations is ~0.005.
    assert res["wa"].p_value == pytest.approx(exact, abs=0.02)
    for k in ("wa", "ua", "macro_f1"):
        assert res[k].p_value > 0.05, k
        assert res[k].low < 0 < res[k].high, k


@pytest.mark.parametrize("unit", ["utterance", "speaker"])
def test_paired_matches_slow_reference_loop(unit):
    rng = np.random.default_rng(14)
    n, r = 48, 2
    y = _labels(rng, n, 3)
    pa = np.stack([_predict(rng, y, 30, 3), _predict(rng, y, 28, 3)])
    pb = np.stack([_predict(rng, y, 25, 3), _predict(rng, y, 33, 3)])
    pb[0][:4] = 2
    # 8 speakers (6 utterances each) alternating F/M; genders mixed in speaker S07.
    gender, speaker = _groups(n, 8)
    gender[-2:] = "F"
    kw = dict(n_resamples=100, n_permutations=100, level=0.9, seed=21)
    ours = paired_comparison(y, pa, pb, gender, speaker, 3, unit=unit, **kw)
    single = bootstrap_intervals(y, pa, gender, speaker, 3, unit=unit, n_resamples=100, level=0.9, seed=21)
    ref_paired, ref_single = _slow_paired(y, pa, pb, gender, speaker, unit, **kw)
    for k in METRICS:
        d, lo, hi, p = ref_paired[k]
        got = ours[k]
        assert got.delta == pytest.approx(d, abs=1e-12), k
        assert got.p_value == p, k  # same permutations, so exactly the same count
        assert _same(got.low, lo) and _same(got.high, hi), (k, got, lo, hi)
        est, lo, hi = ref_single[k]
        assert _same(single[k].estimate, est) and _same(single[k].low, lo) and _same(single[k].high, hi), k
    assert ours["wa"].p_value < 1.0 and not math.isnan(ours["wa"].low)  # a non-degenerate case


# --------------------------------------------------------------------------------------------
# input validation


def _valid():
    rng = np.random.default_rng(0)
    y = _labels(rng, 20)
    p = np.stack([_predict(rng, y, 12), _predict(rng, y, 14)])
    g, s = _groups(20, 4)
    return y, p, g, s


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(y_pred=a["y_pred"][:, :-1]), r"y_pred must have shape"),
        (lambda a: a.update(y_pred=a["y_pred"][None]), r"y_pred must have shape"),
        (lambda a: a.update(gender=a["gender"][:-1]), r"gender must have shape"),
        (lambda a: a.update(speaker=a["speaker"][:-1]), r"speaker must have shape"),
        (lambda a: a.update(y_true=np.where(a["y_true"] == 0, K, a["y_true"])), r"y_true has class ids outside"),
        (lambda a: a.update(y_pred=-a["y_pred"] - 1), r"y_pred has class ids outside"),
        (lambda a: a.update(y_true=a["y_true"] * 1.0), r"integer class ids"),
        (lambda a: a.update(y_true=np.array([], int), y_pred=np.zeros((1, 0), int), gender=np.array([]),
                            speaker=np.array([])), r"empty input"),
        (lambda a: a.update(unit="session"), r"unknown unit 'session'"),
        (lambda a: a.update(level=1.0), r"level must be"),
        (lambda a: a.update(level=0.0), r"level must be"),
        (lambda a: a.update(n_resamples=0), r"n_resamples must be"),
        (lambda a: a.update(n_classes=0), r"n_classes must be"),
        (lambda a: a.update(seed=-1), r"seed must be"),
    ],
)
def test_bad_input_bootstrap(change, match):
    y, p, g, s = _valid()
    args = dict(y_true=y, y_pred=p, gender=g, speaker=s, n_classes=K)
    change(args)
    kw = {k: args.pop(k) for k in ("unit", "level", "n_resamples", "seed") if k in args}
    with pytest.raises(ValueError, match=match) as err:
        bootstrap_intervals(args["y_true"], args["y_pred"], args["gender"], args["speaker"], args["n_classes"], **kw)
    assert "\n" not in str(err.value)


def test_bad_input_paired():
    y, p, g, s = _valid()
    with pytest.raises(ValueError, match=r"pred_a and pred_b must have the same shape"):
        paired_comparison(y, p, p[:1], g, s, K)
    with pytest.raises(ValueError, match=r"pred_b has class ids outside"):
        paired_comparison(y, p, p + K, g, s, K)
    with pytest.raises(ValueError, match=r"n_permutations must be"):
        paired_comparison(y, p, p, g, s, K, n_permutations=0)
    with pytest.raises(ValueError, match=r"unknown unit"):
        paired_comparison(y, p, p, g, s, K, unit="speakers")
