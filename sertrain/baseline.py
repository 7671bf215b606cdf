"""The classical baseline (``sertrain baseline``): a linear classifier on the eGeMAPS
functionals of a store (``serprep build --functionals egemaps``), on the folds ``sertrain cv``
uses, reported in the same table and ``metrics.json`` format.

Per fold (:func:`baseline_fold`):

- the functionals of the fold's training, validation and test utterances (the fold's
  utterance lists; only utterances with an emotion class of the store);
- standardised with the mean and std of the **training speakers' utterances only**
  (:func:`standardiser`; a constant feature gets std 1);
- a linear SVM (``LinearSVC``) or logistic regression, class weights balanced (UA is the
  metric), fitted on the training utterances for each C of the grid; the C with the best
  UA on the **validation speakers** is kept (ties: the smaller C, the stronger
  regularisation), and that model, fitted on the training utterances, is tested on the
  test speakers.

Deterministic: one "seed" (0) per fold, so a cv run with one seed 0 on the same store and
folds compares with it pairwise (``sertrain compare``, ``sertrain cv --baseline``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .errors import InputError
from .metrics import classification_metrics
from .results import read_metrics_json

#: The C values tried on the validation speakers: 1e-4 .. 1e1.
C_GRID: tuple[float, ...] = tuple(float(10.0**k) for k in range(-4, 2))
#: ``--model`` choices.
MODELS = ("svm", "logreg")
#: The functionals set the baseline reads.
FUNCTIONALS = "egemaps"


@dataclass
class FoldData:
    """One fold's standardised functionals and class ids, per split (utterance rows)."""

    utt: dict[str, np.ndarray]  # split -> manifest rows
    x: dict[str, np.ndarray]  # split -> [n, n_features], standardised with the training statistics
    y: dict[str, np.ndarray]  # split -> class ids
    mean: np.ndarray
    std: np.ndarray


@dataclass
class BaselineFold:
    """The outcome of one fold: the chosen C, the validation UA of every C, test metrics and
    per-utterance predictions."""

    fold: int
    c: float
    validation_ua: dict[float, float]
    validation: dict[str, Any]
    test: dict[str, Any]
    predictions: pd.DataFrame
    test_speakers: list[str]


def standardiser(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per feature of the training rows (std 1 where a feature is constant)."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)


def make_classifier(model: str, c: float) -> Any:
    """An unfitted scikit-learn classifier: ``svm`` (LinearSVC) or ``logreg``, classes balanced."""
    if model == "svm":
        from sklearn.svm import LinearSVC

        return LinearSVC(C=c, class_weight="balanced", max_iter=20000, random_state=0)
    if model == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    raise InputError(f"--model {model!r}: choose {' or '.join(MODELS)}")


def fit(model: str, c: float, x: np.ndarray, y: np.ndarray) -> Any:
    """The classifier fitted on ``x``, ``y`` (convergence warnings silenced: the iteration
    limits are generous, and a C that does not converge is simply a worse C on validation)."""
    from sklearn.exceptions import ConvergenceWarning

    clf = make_classifier(model, c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def choose_c(model: str, data: FoldData, classes: Sequence[str],
             grid: Sequence[float] = C_GRID) -> tuple[float, dict[float, float], Any]:
    """``(C, validation UA per C, the model fitted on train with that C)``: the best UA on the
    validation speakers, ties to the smaller C."""
    scores: dict[float, float] = {}
    best: tuple[float, float, Any] | None = None
    for c in sorted(grid):
        clf = fit(model, c, data.x["train"], data.y["train"])
        ua = classification_metrics(data.y["validation"], clf.predict(data.x["validation"]), classes)["ua"]
        scores[c] = ua
        if best is None or ua > best[1]:
            best = (c, ua, clf)
    assert best is not None
    return best[0], scores, best[2]


def fold_data(functionals: Any, manifest: pd.DataFrame, fold: Any, classes: Sequence[str], where: str) -> FoldData:
    """The fold's functionals per split, standardised with its training speakers' statistics."""
    utt_ids, values = np.asarray(functionals.utt), np.asarray(functionals.values, dtype=np.float64)
    row_of = {int(u): k for k, u in enumerate(utt_ids)}
    class_id = {c: k for k, c in enumerate(classes)}
    emotion = manifest["emotion"].astype(str).to_numpy()
    utt, x, y = {}, {}, {}
    for split in ("train", "validation", "test"):
        rows = np.asarray(getattr(fold, f"{split}_utts"), dtype=np.int64)
        rows = rows[np.isin(emotion[rows], list(classes))]
        if not len(rows):
            raise InputError(f"{where}: fold {fold.scheme}/{fold.fold} has no {split} utterance"
                             + (" (the baseline chooses C on the validation speakers)" if split == "validation" else ""))
        missing = [int(i) for i in rows if int(i) not in row_of]
        if missing:
            raise InputError(f"{where}: utterance {manifest['utt_id'].iloc[missing[0]]} of fold {fold.fold} has no "
                             f"{FUNCTIONALS} functionals")
        utt[split] = rows
        x[split] = values[[row_of[int(i)] for i in rows]]
        y[split] = np.array([class_id[e] for e in emotion[rows]], dtype=np.int64)
    mean, std = standardiser(x["train"])
    x = {split: (v - mean) / std for split, v in x.items()}
    return FoldData(utt, x, y, mean, std)


def baseline_fold(reader: Any, functionals: Any, manifest: pd.DataFrame, scheme: str, k: int,
                  classes: Sequence[str], model: str, grid: Sequence[float], where: str) -> BaselineFold:
    """Standardise, choose C on validation, test: one fold (module docstring)."""
    fold = reader.fold(scheme, k)
    data = fold_data(functionals, manifest, fold, classes, where)
    c, scores, clf = choose_c(model, data, classes, grid)
    genders = {split: manifest["gender"].astype(str).to_numpy()[data.utt[split]] for split in ("validation", "test")}
    validation = classification_metrics(data.y["validation"], clf.predict(data.x["validation"]), classes,
                                        groups=genders["validation"])
    y_pred = clf.predict(data.x["test"])
    test = classification_metrics(data.y["test"], y_pred, classes, groups=genders["test"])
    rows = manifest.iloc[data.utt["test"]]
    predictions = pd.DataFrame({
        "utt": data.utt["test"], "utt_id": rows["utt_id"].astype(str).to_numpy(),
        "speaker": rows["speaker"].astype(str).to_numpy(), "gender": genders["test"],
        "emotion": [classes[i] for i in data.y["test"]], "predicted": [classes[i] for i in y_pred],
        "correct": data.y["test"] == y_pred,
    })
    return BaselineFold(k, c, scores, validation, test, predictions, list(fold.test_speakers))


def c_text(c: float) -> str:
    """``0.01`` -> ``1e-02``."""
    return f"{c:.0e}"


def run_baseline(store: str | Path, out_dir: str | Path, *, scheme: str = "loso", folds: Sequence[int] | None = None,
                 model: str = "svm", grid: Sequence[float] = C_GRID, n_resamples: int | None = None,
                 report: Callable[[str], None] = print) -> dict[str, Any]:
    """Every fold (or ``folds``) of ``scheme``; writes metrics.json (format
    :data:`sertrain.results.CV_FORMAT`, with a ``baseline`` section), predictions.csv,
    confusion.png and table.txt to ``out_dir``, prints the table; returns the metrics."""
    from .cv import software_versions, store_provenance
    from .data import fold_ids, open_store
    from .evaluate import write_reports
    from .report import cv_table, intervals_table
    from .results import CV_FORMAT, N_RESAMPLES, cv_results

    make_classifier(model, 1.0)  # a bad --model ends here
    if not grid or any(c <= 0 for c in grid):
        raise InputError(f"--c-grid needs positive values, got {list(grid)}")
    reader = open_store(store)
    where = str(store)
    try:
        if FUNCTIONALS not in reader.functional_sets():  # a usable store, asked for what it lacks: exit 2
            raise InputError(f"{where}: store has no {FUNCTIONALS!r} functionals (build it with serprep build ... "
                             f"--functionals {FUNCTIONALS})")
        functionals = reader.functionals(FUNCTIONALS)
        available = fold_ids(reader, scheme, where)
        chosen = list(folds) if folds else available
        for k in chosen:
            if k not in available:
                raise InputError(f"{where}: fold {k} does not exist in scheme {scheme!r} "
                                 f"(folds {min(available)}..{max(available)})")
        classes = reader.vocab("emotion")
        manifest = reader.manifest()
        results = [baseline_fold(reader, functionals, manifest, scheme, k, classes, model, grid, where) for k in chosen]
        provenance = store_provenance(reader, where)
    finally:
        reader.close()
    rows = [{"fold": r.fold, "seed": 0, "scheme": scheme, "test_speakers": r.test_speakers, "best_epoch": None,
             "selected_epochs": [], "test": r.test, "validation": r.validation, "C": r.c,
             "validation_ua_by_C": {c_text(c): ua for c, ua in r.validation_ua.items()}} for r in results]
    preds = pd.concat([r.predictions.assign(fold=r.fold, seed=0) for r in results], ignore_index=True)
    preds = preds[["fold", "seed", *[c for c in preds.columns if c not in ("fold", "seed")]]]
    stats = cv_results(rows, preds, classes, n_resamples=n_resamples or N_RESAMPLES)
    title = f"eGeMAPS baseline ({model_name(model)}) / {scheme}"
    metrics = {
        "format": CV_FORMAT, "title": title, "protocol": None, "deviations": [], "store": provenance,
        "versions": software_versions(), "config": {"baseline": model, "functionals": FUNCTIONALS},
        "scheme": scheme, "aux": None, "seeds": [0], "folds": chosen, "classes": classes,
        "genders": sorted(set(preds["gender"].astype(str))), "runs": rows,
        "baseline": {"model": model_name(model), "functionals": FUNCTIONALS, "c_grid": [float(c) for c in grid],
                     "standardisation": "mean and std of the training speakers' utterances",
                     "c_selection": "best UA on the validation speakers (ties: smaller C)",
                     "class_weight": "balanced", "chosen_c": {str(r.fold): r.c for r in results}},
        **stats,
    }
    table = cv_table(metrics, selected_title="C", selected={r.fold: c_text(r.c) for r in results})
    out = Path(out_dir)
    write_reports(out, metrics, preds, None, np.asarray(stats["confusion_total"]), classes,
                  title=f"{title}: all folds (confusion summed)")
    (out / "table.txt").write_text(table + "\n\n" + intervals_table(stats["intervals"]) + "\n")
    report(f"\n{title}: test metrics, C chosen on the validation speakers (%)")
    report(table + "\n")
    report(intervals_table(stats["intervals"]) + "\n")
    return metrics


def model_name(model: str) -> str:
    """``svm`` -> ``linear SVM``; ``logreg`` -> ``logistic regression``."""
    return {"svm": "linear SVM", "logreg": "logistic regression"}.get(model, model)


def load_baseline(path: str | Path) -> dict[str, Any]:
    """A ``sertrain baseline`` folder's metrics.json (one-line error if it is not one)."""
    metrics_path = Path(path) / "metrics.json"
    metrics = read_metrics_json(metrics_path, "a `sertrain baseline` folder")
    if not isinstance(metrics, dict) or "baseline" not in metrics:
        raise InputError(f"{metrics_path}: not a `sertrain baseline` result")
    return metrics


def check_baseline_for(metrics: dict[str, Any], path: str | Path, content_sha256: str, scheme: str) -> None:
    """Refuse (one line) a baseline result of another store or fold scheme than a cv's."""
    store = (metrics.get("store") or {}).get("content_sha256")
    if store != content_sha256:
        raise InputError(f"{path}: a baseline of another store (content {str(store)[:16]} vs {content_sha256[:16]}); "
                         "run `sertrain baseline` on this store")
    if metrics.get("scheme") != scheme:
        raise InputError(f"{path}: a baseline of fold scheme {metrics.get('scheme')!r}, this cv uses {scheme!r}")


def baseline_comparison(cv_dirs: dict[str, Path], cv_stats: dict[str, dict[str, Any]], baseline_dir: Path,
                        n_resamples: int) -> str:
    """The cv settings' rows and the baseline's row in one table (mean ± std over runs), with
    each setting's paired Δ UA to the baseline where the runs compare (same folds, seeds and
    test utterances: :func:`sertrain.compare.check_comparable`), else a note saying why not."""
    from .compare import paired_difference
    from .report import comparison_table

    base = load_baseline(baseline_dir)
    name = f"eGeMAPS {base['baseline']['model']}"
    entries: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for setting, stats in cv_stats.items():
        try:
            delta = paired_difference(cv_dirs[setting], baseline_dir, n_resamples=n_resamples)["metrics"]
            delta = {k: v["utterance"] for k, v in delta.items()}
        except InputError as exc:
            delta = None
            notes.append(f"no paired Δ for {setting}: {exc}")
        entries[f"model, aux {setting}"] = {"summary": stats["summary"], "delta_vs_baseline": delta}
    entries[name] = {"summary": base["summary"], "delta_vs_baseline": None}
    table = comparison_table(entries, name, name_title="model")
    return "\n".join([table, f"baseline: {baseline_dir} (C per fold chosen on the validation speakers); Δ UA: pooled "
                      f"UA of the model minus the baseline's on the same test utterances, 95 % paired bootstrap "
                      f"({n_resamples} resamples); p: paired permutation test", *notes])
