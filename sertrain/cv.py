"""Cross-validation (:func:`run_cv`): every fold × seed of a store for each auxiliary-task
setting, then the statistics over runs (:mod:`sertrain.results`), the tables
(:mod:`sertrain.report`), the ablation comparison (:mod:`sertrain.compare`) and the HTML
report (:mod:`sertrain.html_report`). docs/results.md describes every file written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from . import distributed
from .checkpoint import store_content_id
from .config import Config, apply_overrides
from .data import SegmentLabels, fold_ids
from .errors import InputError
from .evaluate import clean_json, write_reports
from .report import comparison_table, cv_table, intervals_table
from .results import COMPARISON_FORMAT, CV_FORMAT, N_RESAMPLES, cv_results
from .parallel import RunSpec, run_parallel
from .tasks import parse_aux, regression_tasks
from .train import FoldResult, Logger, _StoreHandle, _quiet, check_task_targets, train_fold


@dataclass
class CVResult:
    """Results per auxiliary-task setting (``settings[aux] = [FoldResult, ...]``, one per
    fold × seed) with each setting's statistics (:func:`sertrain.results.cv_results`)."""

    settings: dict[str, list[FoldResult]]
    results: dict[str, dict[str, Any]]
    tables: dict[str, str]
    comparison: str | None


def run_dir(base: Path, fold: int, seed: int, several_seeds: bool) -> Path:
    """Folder of one run: ``fold_<k>/`` with one seed, ``fold_<k>/seed_<s>/`` with several."""
    return base / f"fold_{fold}" / f"seed_{seed}" if several_seeds else base / f"fold_{fold}"


def run_cv(
    store: str | Path | Any,
    cfg: Config,
    out_dir: str | Path,
    *,
    folds: Sequence[int] | None = None,
    aux_settings: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    provenance: dict[str, Any] | None = None,
    device: str = "auto",
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    log: Logger | None = None,
    report: Logger | None = None,
    tensorboard: str | Path | None = None,
    n_resamples: int = N_RESAMPLES,
    html: bool = True,
    slots: Sequence[str] | None = None,
    worker_threads: int | None = None,
) -> CVResult:
    """Every fold (or ``folds``) × seed for each auxiliary-task setting, with summary reports.

    ``seeds`` (default: ``cfg.train.seed`` alone) sets ``train.seed`` of each run: every fold
    is trained once per seed. ``provenance`` (protocol record, deviations from it) is written
    into every metrics.json. ``log`` receives progress lines, ``report`` the result tables
    (default: ``log``). ``tensorboard`` is a folder for per-epoch scalars, one sub-folder per
    run.

    One setting writes one folder per run (:func:`run_dir`) and summary files in ``out_dir``;
    several settings (the ablation grid) write ``out_dir/<setting>/...`` each, plus
    ``out_dir/comparison.{md,json}`` with the paired difference of each setting to ``none``
    (or to the first setting). Summary files: ``metrics.json`` (format
    :data:`sertrain.results.CV_FORMAT`: every run, per fold, summary, pooled, intervals),
    ``predictions.csv`` (every run, with ``fold`` and ``seed`` columns), ``confusion.png``
    (summed over runs), ``curves.png``, ``table.txt`` and ``report.html``.

    ``slots`` (``["cpu"] * K`` or ``["cuda:0", "cuda:1"]``) trains the runs side by side, one
    worker process per slot with ``worker_threads`` torch threads each
    (:func:`sertrain.parallel.run_parallel`); the results are those of the sequential cv.
    Under torchrun (:mod:`sertrain.distributed`) every rank trains each run together and
    rank 0 alone writes the summaries and prints.
    """
    ddp = distributed.current()
    main = ddp is None or ddp.is_main
    log = log if log and main else _quiet
    report = (report or log) if main else _quiet  # tables go here (printed even when progress is silenced)
    out = Path(out_dir)
    settings = list(aux_settings) if aux_settings else [cfg.loss.aux]
    seed_list = [int(s) for s in (seeds if seeds else [cfg.train.seed])]
    if len(set(seed_list)) != len(seed_list):
        raise InputError(f"seeds must differ, got {seed_list}")
    several = len(seed_list) > 1
    handle = _StoreHandle(store)
    try:
        available = fold_ids(handle.reader, cfg.data.scheme, handle.name)
        chosen = list(folds) if folds else available
        for k in chosen:
            if k not in available:
                raise InputError(
                    f"{handle.name}: fold {k} does not exist in scheme {cfg.data.scheme!r} "
                    f"(folds {min(available)}..{max(available)})"
                )
        # Every setting's tasks against the store's targets before the first run trains (an
        # --aux grid would otherwise train its first settings before refusing a later one).
        if any(regression_tasks(parse_aux(aux)) for aux in settings):
            labels = SegmentLabels.from_reader(handle.reader)
            for aux in settings:
                check_task_targets(apply_overrides(cfg, {"loss.aux": aux}), labels, handle.name)
        context = {**(provenance or {}), "store": store_provenance(handle.reader, handle.name)}
        results: dict[str, list[FoldResult]] = {}
        stats: dict[str, dict[str, Any]] = {}
        tables: dict[str, str] = {}
        plan: dict[str, list[RunSpec]] = {}
        for aux in settings:
            aux_cfg = apply_overrides(cfg, {"loss.aux": aux})
            sub = out if len(settings) == 1 else out / aux
            mine = _setting_provenance(provenance, aux)
            plan[aux] = []
            for k in chosen:
                for seed in seed_list:
                    run_cfg = apply_overrides(aux_cfg, {"train.seed": seed})
                    # The setting, scheme and seed are what this cv asks of every run, so a
                    # resume checks them even when they were not typed explicitly.
                    run_over = {**(overrides or {}), "loss.aux": aux, "data.scheme": cfg.data.scheme, "train.seed": seed}
                    where = run_dir(sub, k, seed, several)
                    tb = Path(tensorboard) / where.relative_to(out) if tensorboard else None
                    plan[aux].append(RunSpec(str(where.relative_to(out)), k, run_cfg, where, resume, run_over, tb,
                                             mine))
        side_by_side: dict[str, list[FoldResult]] | None = None
        if slots:
            if ddp is not None:
                raise InputError("--parallel/--devices run independent runs side by side; under torchrun every "
                                 "process trains the same run: use one or the other")
            flat = run_parallel(Path(getattr(handle.reader, "path", handle.name)),
                                [spec for aux in settings for spec in plan[aux]], slots, worker_threads, log)
            side_by_side = {aux: [flat.pop(0) for _ in plan[aux]] for aux in settings}
        for aux in settings:
            aux_cfg = apply_overrides(cfg, {"loss.aux": aux})
            sub = out if len(settings) == 1 else out / aux
            mine = _setting_provenance(provenance, aux)
            if side_by_side is not None:
                runs = side_by_side[aux]
            else:
                runs = []
                for spec in plan[aux]:
                    if len(settings) > 1 or several:
                        log(f"[{spec.label}]")
                    runs.append(train_fold(handle.reader, spec.fold, spec.cfg, spec.out_dir, device=device,
                                           resume=resume, overrides=spec.overrides, log=log,
                                           tensorboard=spec.tensorboard, provenance=mine))
            results[aux] = runs
            if not main:  # under torchrun rank 0 alone summarises
                continue
            stats[aux] = _write_cv_summary(sub, aux_cfg, runs, out, {**context, **(mine or {})}, n_resamples)
            tables[aux] = stats[aux]["table"]
            report(f"\n{stats[aux]['title']}: test metrics of the selected checkpoint (%)")
            report(tables[aux] + "\n")
            report(intervals_table(stats[aux]["intervals"]) + "\n")
            if html and len(settings) == 1:
                _html_report(sub, log)
        comparison = None
        if not main:
            return CVResult(results, stats, tables, comparison)
        if len(settings) > 1:
            comparison = _write_comparison(out, cfg, chosen, results, stats, context, n_resamples)
            report(f"auxiliary-task comparison (test, %; mean ± sample std over runs; Δ: paired bootstrap of "
                   f"pooled UA, {n_resamples} resamples of test utterances; p: paired permutation test)")
            report(comparison)
            if html:
                _html_report(out, log)
        return CVResult(results, stats, tables, comparison)
    finally:
        handle.close()


def _setting_provenance(provenance: dict[str, Any] | None, aux: str) -> dict[str, Any] | None:
    """The provenance of one setting of an ``--aux`` grid: its own ``loss.aux`` deviation (or
    none, when it is the protocol's), not the grid's list."""
    if not provenance or not provenance.get("protocol"):
        return provenance
    devs = [d for d in provenance.get("deviations") or [] if d["key"] != "loss.aux"]
    grid = next((d for d in provenance.get("deviations") or [] if d["key"] == "loss.aux"), None)
    if grid is not None and grid["protocol"] != aux:
        devs.append({**grid, "run": aux})
    return {**provenance, "deviations": devs}


def store_provenance(reader: Any, name: str) -> dict[str, Any]:
    """What a result needs to say about its store: path, corpus, identity, versions, configs."""
    attrs = reader.attrs

    def parsed(key: str) -> Any:
        try:
            return json.loads(attrs.get(key, "null"))
        except (TypeError, ValueError):
            return attrs.get(key)

    return {
        "path": name,
        "corpus": str(reader.corpus),
        "fingerprint": str(reader.fingerprint),
        "content_sha256": store_content_id(reader, name),
        "created": attrs.get("created"),
        "versions": parsed("versions"),
        "build": reader.build,
        "feature_config": parsed("feature_config"),
        "segment_config": parsed("segment_config"),
    }


def software_versions() -> dict[str, str]:
    """sertrain, torch, numpy and Python versions of this run."""
    import platform

    from . import __version__

    return {"sertrain": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _write_cv_summary(out: Path, cfg: Config, runs: list[FoldResult], root: Path, context: dict[str, Any],
                      n_resamples: int) -> dict[str, Any]:
    """metrics.json, predictions.csv, table.txt and plots of one setting; returns the metrics."""
    rows = [{**r.row(), "dir": str(r.out_dir.relative_to(out)), "history": r.history} for r in runs]
    classes = runs[0].test["classes"]
    preds = pd.concat(
        [r.predictions.assign(fold=r.fold, seed=r.seed) for r in runs if r.predictions is not None], ignore_index=True
    )
    preds = preds[["fold", "seed", *[c for c in preds.columns if c not in ("fold", "seed")]]]
    stats = cv_results(rows, preds, classes, n_resamples=n_resamples)
    title = f"{cfg.name} / {cfg.data.scheme} / aux {cfg.loss.aux}"
    protocol = context.get("protocol")
    if protocol:
        n_dev = len(context.get("deviations") or [])
        title = f"protocol {protocol['name']} {protocol['version']}" + (
            f" with {n_dev} deviation(s)" if n_dev else "") + f": {title}"
    metrics = {
        "format": CV_FORMAT,
        "title": title,
        "protocol": protocol,
        "deviations": context.get("deviations") or [],
        "store": context["store"],
        "versions": software_versions(),
        "config": cfg.to_dict(),
        "scheme": cfg.data.scheme,
        "aux": cfg.loss.aux,
        "seeds": sorted({r.seed for r in runs}),
        "folds": sorted({r.fold for r in runs}),
        "classes": classes,
        "genders": sorted(set(preds["gender"].astype(str))),
        "runs": rows,
        **stats,
    }
    table = cv_table(metrics)
    write_reports(
        out, metrics, preds, {f"fold {r.fold}" + (f" seed {r.seed}" if metrics["seeds"][1:] else ""): r.history
                              for r in runs},
        np.asarray(stats["confusion_total"]), classes,
        title=f"{title}: all runs (confusion summed over folds and seeds, curves one line per run)",
    )
    (out / "table.txt").write_text(table + "\n\n" + intervals_table(stats["intervals"]) + "\n")
    return {**metrics, "table": table}


def _write_comparison(out: Path, cfg: Config, chosen: list[int], results: dict[str, list[FoldResult]],
                      stats: dict[str, dict[str, Any]], context: dict[str, Any], n_resamples: int) -> str:
    """comparison.{md,json} of an ablation grid: each setting against ``none`` (or the first)."""
    from .compare import paired_difference

    baseline = "none" if "none" in results else next(iter(results))
    entries: dict[str, dict[str, Any]] = {}
    for aux in results:
        delta = None
        if aux != baseline:
            delta = paired_difference(out / aux, out / baseline, n_resamples=n_resamples)["metrics"]
            delta = {k: v["utterance"] for k, v in delta.items()}
        entries[aux] = {"summary": stats[aux]["summary"], "summary_text": stats[aux]["summary_text"],
                        "delta_vs_baseline": delta}
    table = comparison_table(entries, baseline)
    (out / "comparison.md").write_text(
        f"# Auxiliary-task ablation ({cfg.name}, {cfg.data.scheme}, folds {chosen})\n\n```\n{table}\n```\n\n"
        f"UA, WA, F1: mean ± sample std (ddof=1) over runs (folds × seeds). Δ UA: pooled UA of the setting "
        f"minus that of {baseline} on the same test utterances, 95 % paired bootstrap interval ({n_resamples} "
        "resamples of test utterances); p: paired permutation test.\n"
    )
    (out / "comparison.json").write_text(json.dumps(clean_json({
        "format": COMPARISON_FORMAT,
        "baseline": baseline,
        "protocol": context.get("protocol"),
        "deviations": context.get("deviations") or [],
        "store": context["store"],
        "settings": entries,
        "table": table,
    }), indent=2) + "\n")
    return table


def _html_report(run_dir_: Path, log: Logger) -> None:
    """report.html of a finished cv (see :mod:`sertrain.html_report`)."""
    from .html_report import write_html_report

    path = write_html_report(run_dir_)
    log(f"report: {path}")
