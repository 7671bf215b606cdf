"""Paired comparison of two cross-validation runs (``sertrain compare A B``).

Two runs compare only when they tested the same thing: the same store (content id), fold
scheme, folds, protocol, classes, seeds and test utterances; anything else is refused with
one line naming the difference. The difference A - B of each pooled metric gets a paired
bootstrap interval (the same resample for both) and a paired permutation p-value, over test
utterances and, separately, over test speakers (:mod:`sertrain.stats`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import InputError
from .results import (COMPARE_FORMAT, CV_FORMAT, N_RESAMPLES, PooledPredictions, pooled_estimates,
                      read_metrics_json)

#: Permutations of the paired test (p-values down to ~1e-4).
N_PERMUTATIONS = 10000


@dataclass
class CVRun:
    """A finished cv run folder: its metrics.json and pooled predictions."""

    path: Path
    metrics: dict[str, Any]
    pooled: PooledPredictions


def load_run(path: str | Path) -> CVRun:
    """Read a cv run folder (``metrics.json`` of format :data:`CV_FORMAT` and ``predictions.csv``)."""
    folder = Path(path)
    metrics_path = folder / "metrics.json"
    if not folder.is_dir():
        raise InputError(f"{folder}: no such run folder")
    if (folder / "comparison.json").exists() and not metrics_path.exists():
        raise InputError(f"{folder} is an ablation grid: compare one setting's folder, e.g. {folder}/none")
    metrics = read_metrics_json(metrics_path, "a finished `sertrain cv` run")
    if not isinstance(metrics, dict) or metrics.get("format") != CV_FORMAT:
        found = metrics.get("format") if isinstance(metrics, dict) else None
        raise InputError(f"{metrics_path}: not a cv result of format {CV_FORMAT} (found {found!r}); "
                         "a single `sertrain train` run or an older sertrain's result cannot be compared")
    try:
        predictions = pd.read_csv(folder / "predictions.csv")
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder / 'predictions.csv'}: unreadable ({exc})") from None
    pooled = PooledPredictions.from_frame(predictions, metrics["classes"], where=str(folder / "predictions.csv"))
    return CVRun(folder, metrics, pooled)


def check_comparable(a: CVRun, b: CVRun) -> None:
    """Refuse, in one line, two runs that did not test the same utterances the same way."""
    ma, mb = a.metrics, b.metrics

    def differs(what: str, va: Any, vb: Any) -> InputError:
        return InputError(f"{a.path} and {b.path} differ in {what} ({va} vs {vb}): a paired comparison needs "
                          "the same store, folds, protocol, seeds and test utterances")

    store_a, store_b = ma["store"]["content_sha256"], mb["store"]["content_sha256"]
    if store_a != store_b:
        raise differs("store", f"content {store_a[:16]}", f"content {store_b[:16]}")
    for what, key in (("fold scheme", "scheme"), ("folds", "folds"), ("classes", "classes"), ("seeds", "seeds")):
        if ma[key] != mb[key]:
            raise differs(what, ma[key], mb[key])
    pa, pb = _protocol_id(ma.get("protocol")), _protocol_id(mb.get("protocol"))
    if pa != pb:
        raise differs("protocol", pa, pb)
    ka, kb = a.pooled.keys, b.pooled.keys
    if len(ka) != len(kb) or not (ka["utt_id"].to_numpy() == kb["utt_id"].to_numpy()).all() \
            or not (ka["fold"].to_numpy() == kb["fold"].to_numpy()).all():
        raise differs("test utterances", f"{len(ka)} utterances", f"{len(kb)} utterances")
    if not (a.pooled.y_true == b.pooled.y_true).all():
        raise differs("reference labels", "A's", "B's")


def paired_difference(path_a: str | Path, path_b: str | Path, *, n_resamples: int = N_RESAMPLES,
                      n_permutations: int = N_PERMUTATIONS, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """A - B for each pooled metric with paired intervals and p-values (format :data:`COMPARE_FORMAT`)."""
    from .stats import paired_comparison

    a, b = load_run(path_a), load_run(path_b)
    check_comparable(a, b)
    gender = a.pooled.keys["gender"].to_numpy()
    speaker = a.pooled.keys["speaker"].to_numpy()
    per_unit = {
        unit: paired_comparison(a.pooled.y_true, a.pooled.y_pred, b.pooled.y_pred, gender, speaker,
                                len(a.pooled.classes), unit=unit, n_resamples=n_resamples,
                                n_permutations=n_permutations, level=level, seed=seed)
        for unit in ("utterance", "speaker")
    }
    estimates = {"a": pooled_estimates(a.pooled), "b": pooled_estimates(b.pooled)}
    metrics = {
        key: {"a": estimates["a"][key], "b": estimates["b"][key],
              **{unit: per_unit[unit][key].to_dict() for unit in per_unit}}
        for key in per_unit["utterance"]
    }
    return {
        "format": COMPARE_FORMAT,
        "a": {"path": str(a.path), "title": a.metrics.get("title")},
        "b": {"path": str(b.path), "title": b.metrics.get("title")},
        "store": a.metrics["store"]["content_sha256"],
        "protocol": a.metrics.get("protocol"),
        "scheme": a.metrics["scheme"],
        "folds": a.metrics["folds"],
        "seeds": a.metrics["seeds"],
        "n_utterances": a.pooled.n,
        "n_speakers": int(len(set(speaker.tolist()))),
        "n_resamples": n_resamples,
        "n_permutations": n_permutations,
        "seed": seed,
        "level": level,
        "metrics": metrics,
    }


def _protocol_id(record: dict[str, Any] | None) -> str:
    if not record:
        return "none"
    return f"{record.get('name')} {record.get('version')} ({str(record.get('sha256', ''))[:12]})"
