"""Cross-validation results over folds and seeds: per-fold statistics, the summary, pooled
metrics and bootstrap intervals (the content of a cv run's ``metrics.json``, format
:data:`CV_FORMAT`; docs/results.md describes every field).

Statistics, stated wherever they are printed:
- a *run* is one (fold, seed): the test metrics of its selected checkpoint;
- per fold: mean ± sample std (ddof=1) over its seeds (no std with one seed);
- summary: mean ± sample std (ddof=1) over all runs (folds × seeds);
- pooled: the metric over every test utterance of all folds at once, one value per seed,
  averaged over seeds (each utterance is tested exactly once per seed);
- intervals: 95 % percentile bootstrap of the pooled metrics, resampling test utterances,
  and separately test speakers (utterances of one speaker are not independent, so the
  speaker interval is the honest one on ~10 speakers); the seeds are averaged inside
  every resample (:mod:`sertrain.stats`).
"""

from __future__ import annotations

import json

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .errors import InputError
from .metrics import classification_metrics

#: Format tag of a cv run's metrics.json.
CV_FORMAT = "sertrain-cv/2"
#: Format tag of an ablation grid's comparison.json.
COMPARISON_FORMAT = "sertrain-comparison/2"
#: Format tag of ``sertrain compare``'s JSON.
COMPARE_FORMAT = "sertrain-compare/1"
#: Metrics summarised per fold and overall (keys of a run's test metrics).
SUMMARY_KEYS = ("wa", "ua", "macro_f1")
#: Defaults of the bootstrap: at least 1000 resamples, seeded.
N_RESAMPLES = 1000
CI_SEED = 0
CI_LEVEL = 0.95


def sample_mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    """``{"mean", "std", "n"}`` over the finite values; std is the sample std (ddof=1), None
    with fewer than two values."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else None, "n": int(arr.size)}


#: Per-dimension summary metrics: summary-key prefix -> key in ``test["dimensions"][dim]``.
DIMENSION_METRICS = {"ccc": "ccc", "r": "pearson_r", "rmse": "rmse"}


def run_value(run: dict[str, Any], key: str) -> float | None:
    """A run's test metric: ``wa``, ``ua``, ``macro_f1``, ``ua_<gender>``, or of a rated
    dimension ``ccc_<dim>``, ``r_<dim>``, ``rmse_<dim>``."""
    test = run["test"]
    if key.startswith("ua_"):
        return ((test.get("by_gender") or {}).get(key[3:]) or {}).get("ua")
    prefix, _, dim = key.partition("_")
    if prefix in DIMENSION_METRICS and dim:
        return ((test.get("dimensions") or {}).get(dim) or {}).get(DIMENSION_METRICS[prefix])
    return test.get(key)


def dimensions_of(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Rated dimensions present in the runs' test metrics (auxiliary vad), in registry order."""
    from .tasks import DIMENSIONS

    names = {d for r in runs for d in (r["test"].get("dimensions") or {})}
    return [d for d in DIMENSIONS if d in names]


def dimension_keys(runs: Sequence[dict[str, Any]]) -> list[str]:
    """``ccc_<dim>``, ``r_<dim>``, ``rmse_<dim>`` for each rated dimension of the runs (none without)."""
    return [f"{m}_{d}" for d in dimensions_of(runs) for m in DIMENSION_METRICS]


def genders_of(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Gender labels present in the runs' test metrics, sorted."""
    names: set[str] = set()
    for r in runs:
        names |= set((r["test"].get("by_gender") or {}).keys())
    return sorted(names)


def per_fold(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per fold: test speakers, utterances, runs, mean ± std over seeds per metric."""
    keys = [*SUMMARY_KEYS, *[f"ua_{g}" for g in genders_of(runs)], *dimension_keys(runs)]
    out = []
    for fold in sorted({r["fold"] for r in runs}):
        mine = sorted((r for r in runs if r["fold"] == fold), key=lambda r: r["seed"])
        entry: dict[str, Any] = {
            "fold": fold,
            "test_speakers": mine[0]["test_speakers"],
            "n": mine[0]["test"].get("n", 0),
            "runs": len(mine),
            "seeds": [r["seed"] for r in mine],
            "best_epochs": [r["best_epoch"] for r in mine],
        }
        for key in keys:
            entry[key] = sample_mean_std([run_value(r, key) for r in mine])
        out.append(entry)
    return out


@dataclass
class PooledPredictions:
    """Every test utterance once, with each seed's prediction: the input of pooled metrics,
    bootstrap intervals and paired comparisons."""

    keys: pd.DataFrame  # fold, utt_id, speaker, gender (one row per utterance, sorted)
    y_true: np.ndarray  # [n] class index
    y_pred: np.ndarray  # [seeds, n] class index
    seeds: list[int]
    classes: list[str]

    @classmethod
    def from_frame(cls, predictions: pd.DataFrame, classes: Sequence[str], where: str = "predictions") -> "PooledPredictions":
        """Pivot a predictions table (columns fold, seed, utt_id, speaker, gender, emotion,
        predicted) into utterances × seeds; every seed must have predicted every utterance."""
        classes = list(classes)
        index = {c: i for i, c in enumerate(classes)}
        need = {"fold", "seed", "utt_id", "speaker", "gender", "emotion", "predicted"}
        missing = sorted(need - set(predictions.columns))
        if missing:
            raise InputError(f"{where}: missing column(s) {', '.join(missing)}")
        frame = predictions.assign(utt_id=predictions["utt_id"].astype(str))
        unknown = sorted((set(frame["emotion"].astype(str)) | set(frame["predicted"].astype(str))) - set(classes))
        if unknown:
            raise InputError(f"{where}: class(es) {', '.join(unknown)} are not among {', '.join(classes)}")
        seeds = sorted(int(s) for s in frame["seed"].unique())
        base = (frame[frame["seed"] == seeds[0]][["fold", "utt_id", "speaker", "gender", "emotion"]]
                .sort_values(["fold", "utt_id"]).reset_index(drop=True))
        preds = []
        for seed in seeds:
            part = frame[frame["seed"] == seed].sort_values(["fold", "utt_id"]).reset_index(drop=True)
            if len(part) != len(base) or not (part["utt_id"].to_numpy() == base["utt_id"].to_numpy()).all() \
                    or not (part["fold"].to_numpy() == base["fold"].to_numpy()).all():
                raise InputError(f"{where}: seed {seed} did not predict the same test utterances as seed {seeds[0]}")
            if part.duplicated(["fold", "utt_id"]).any():
                raise InputError(f"{where}: an utterance is listed twice for seed {seed}")
            preds.append(part["predicted"].astype(str).map(index).to_numpy(np.int64))
        return cls(
            keys=base[["fold", "utt_id", "speaker", "gender"]].astype({"speaker": str, "gender": str}),
            y_true=base["emotion"].astype(str).map(index).to_numpy(np.int64),
            y_pred=np.stack(preds),
            seeds=seeds,
            classes=classes,
        )

    @property
    def n(self) -> int:
        return len(self.y_true)

    def metrics_per_seed(self) -> list[dict[str, Any]]:
        """:func:`classification_metrics` of all utterances at once, one dict per seed."""
        gender = self.keys["gender"].to_numpy()
        return [classification_metrics(self.y_true, p, self.classes, groups=gender) for p in self.y_pred]


def pooled_summary(pooled: PooledPredictions) -> dict[str, Any]:
    """Pooled WA/UA/F1 and UA per gender: each over all test utterances, mean over seeds."""
    per_seed = pooled.metrics_per_seed()
    out: dict[str, Any] = {"n_utterances": pooled.n}
    for key in SUMMARY_KEYS:
        out[key] = _mean_finite([m[key] for m in per_seed])
    for g in sorted({g for m in per_seed for g in (m.get("by_gender") or {})}):
        out[f"ua_{g}"] = _mean_finite([(m["by_gender"].get(g) or {}).get("ua") for m in per_seed])
    return out


def pooled_estimates(pooled: PooledPredictions) -> dict[str, float | None]:
    """Pooled WA, UA, macro-F1 and the female-minus-male UA gap, each the mean over seeds
    (the point estimates of :func:`intervals` and of a paired comparison)."""
    per_seed = pooled.metrics_per_seed()

    def gap(m: dict[str, Any]) -> float | None:
        by = m.get("by_gender") or {}
        f, male = (by.get("F") or {}).get("ua"), (by.get("M") or {}).get("ua")
        return None if f is None or male is None else f - male

    return {"wa": _mean_finite([m["wa"] for m in per_seed]), "ua": _mean_finite([m["ua"] for m in per_seed]),
            "macro_f1": _mean_finite([m["macro_f1"] for m in per_seed]),
            "ua_gap_f_minus_m": _mean_finite([gap(m) for m in per_seed])}


def intervals(pooled: PooledPredictions, n_resamples: int = N_RESAMPLES, seed: int = CI_SEED,
              level: float = CI_LEVEL) -> dict[str, Any]:
    """Bootstrap intervals of the pooled metrics, over utterances and over speakers."""
    from .stats import bootstrap_intervals

    gender = pooled.keys["gender"].to_numpy()
    speaker = pooled.keys["speaker"].to_numpy()
    out: dict[str, Any] = {
        "level": level,
        "n_resamples": n_resamples,
        "seed": seed,
        "method": "percentile bootstrap; runs averaged inside each resample",
        "n_speakers": int(len(set(speaker.tolist()))),
    }
    for unit in ("utterance", "speaker"):
        ci = bootstrap_intervals(pooled.y_true, pooled.y_pred, gender, speaker, len(pooled.classes), unit=unit,
                                 n_resamples=n_resamples, level=level, seed=seed)
        out[unit] = {k: v.to_dict() for k, v in ci.items()}
    return out


def summarize_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sample std over all runs for each summary metric, with the counts."""
    folds = sorted({r["fold"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    out: dict[str, Any] = {
        "n_runs": len(runs),
        "n_folds": len(folds),
        "n_seeds": len(seeds),
        "std": "sample std (ddof=1) over runs",
    }
    for key in [*SUMMARY_KEYS, *[f"ua_{g}" for g in genders_of(runs)], *dimension_keys(runs)]:
        out[key] = sample_mean_std([run_value(r, key) for r in runs])
    return out


def summary_text(summary: dict[str, Any], metric: str = "ua", label: str = "UA") -> str:
    """One sentence that says exactly what the summary number is."""
    s = summary[metric]
    pooled = summary.get("pooled", {}).get(metric)
    runs = f"{summary['n_folds']} folds × {summary['n_seeds']} seed{'s' if summary['n_seeds'] != 1 else ''}"
    spread = f" ± {pct(s['std'])}" if s["std"] is not None else ""
    what = "mean ± sample std (ddof=1)" if s["std"] is not None else "mean"
    text = f"{label} {pct(s['mean'])}{spread}: {what} over {runs} = {summary['n_runs']} runs"
    if pooled is not None:
        text += f"; pooled over {summary['pooled']['n_utterances']} test utterances: {pct(pooled)}"
    return text


def cv_results(runs: Sequence[dict[str, Any]], predictions: pd.DataFrame, classes: Sequence[str],
               n_resamples: int = N_RESAMPLES, ci_seed: int = CI_SEED) -> dict[str, Any]:
    """The statistical part of a cv metrics.json: per_fold, summary (with pooled), summary_text,
    intervals and the confusion matrix summed over runs."""
    pooled = PooledPredictions.from_frame(predictions, classes)
    summary = summarize_runs(runs)
    summary["pooled"] = pooled_summary(pooled)
    return {
        "per_fold": per_fold(runs),
        "summary": summary,
        "summary_text": summary_text(summary),
        "intervals": intervals(pooled, n_resamples, ci_seed),
        "confusion_total": np.sum([np.asarray(r["test"]["confusion"]) for r in runs], axis=0).tolist(),
    }


def pct(x: float | None) -> str:
    """``0.6473`` -> ``64.7``; missing -> ``-``."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _mean_finite(values: Sequence[float | None]) -> float | None:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else None


def read_metrics_json(metrics_path: Path, folder_is: str) -> Any:
    """The parsed ``metrics.json`` at ``metrics_path``; a one-line :class:`InputError` when it is
    missing (saying what its folder should be: ``folder_is``) or unreadable."""
    try:
        return json.loads(metrics_path.read_text())
    except FileNotFoundError:
        raise InputError(f"{metrics_path}: no such file (is {metrics_path.parent} {folder_is}?)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{metrics_path}: unreadable ({exc})") from None
