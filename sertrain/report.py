"""Plain-text tables: one run, a cross-validation over folds × seeds (with its summary,
pooled row and bootstrap intervals), the auxiliary-task ablation, and a paired comparison.

Every table says what its ± is: per fold, the sample std (ddof=1) over seeds; in the summary
row, the sample std over all runs (folds × seeds).
"""

from __future__ import annotations

from typing import Any, Sequence

from .results import genders_of, pct

#: (column title, key) of the metrics in the tables.
_METRICS = (("WA", "wa"), ("UA", "ua"), ("F1", "macro_f1"))
#: (row title, key) of the interval table.
_INTERVAL_ROWS = (("WA", "wa"), ("UA", "ua"), ("F1", "macro_f1"), ("UA F - M", "ua_gap_f_minus_m"))


def pct_pm(stat: dict[str, Any] | None) -> str:
    """``{"mean": .612, "std": .034}`` -> ``61.2 ± 3.4``; without a std just the mean."""
    if not stat or stat.get("mean") is None:
        return "-"
    return pct(stat["mean"]) if stat.get("std") is None else f"{pct(stat['mean'])} ± {pct(stat['std'])}"


def interval_text(iv: dict[str, Any] | None) -> str:
    """``[58.1, 64.0]``, or ``-`` when undefined."""
    if not iv or iv.get("low") is None or iv.get("high") is None:
        return "-"
    return f"[{pct(iv['low'])}, {pct(iv['high'])}]"


def run_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per run (``sertrain train``): each row has ``fold``, ``test_speakers``,
    ``best_epoch`` and ``test`` metrics."""
    genders = genders_of(rows)
    head = ["fold", "test speakers", "utts", *[c for c, _ in _METRICS], *[f"UA {g}" for g in genders], "best ep"]
    body = []
    for r in rows:
        m = r["test"]
        by = m.get("by_gender") or {}
        body.append([
            str(r["fold"]), ",".join(r.get("test_speakers", [])) or "-", str(m.get("n", 0)),
            *[pct(m.get(k)) for _, k in _METRICS], *[pct((by.get(g) or {}).get("ua")) for g in genders],
            "+".join(map(str, r.get("selected_epochs") or [r.get("best_epoch", "-")])),
        ])
    return render(head, body)


def cv_table(results: dict[str, Any], selected_title: str = "best ep", selected: dict[int, str] | None = None) -> str:
    """Per-fold rows (mean ± sample std over seeds), the summary row over all runs and the
    pooled row, then the sentence that says what the summary is. The last column is each
    fold's selected epochs, or ``selected[fold]`` under ``selected_title`` (the baseline's C)."""
    folds = results["per_fold"]
    summary = results["summary"]
    genders = sorted(k[3:] for k in summary if k.startswith("ua_") and isinstance(summary[k], dict))
    dims = _dimension_columns(summary)
    several = summary["n_seeds"] > 1
    head = ["fold", "test speakers", "utts", *(["seeds"] if several else []),
            *[c for c, _ in _METRICS], *[f"UA {g}" for g in genders], *[c for c, _ in dims], selected_title]
    body = []
    for f in folds:
        body.append([
            str(f["fold"]), ",".join(f["test_speakers"]) or "-", str(f["n"]), *([str(f["runs"])] if several else []),
            *[pct_pm(f.get(k)) for _, k in _METRICS], *[pct_pm(f.get(f"ua_{g}")) for g in genders],
            *[num_pm(f.get(k)) for _, k in dims],
            selected[f["fold"]] if selected is not None else ",".join(str(e) for e in f["best_epochs"]),
        ])
    pooled = summary["pooled"]
    body.append([
        "mean ± std", f"{summary['n_runs']} runs", str(pooled["n_utterances"]), *([""] if several else []),
        *[pct_pm(summary.get(k)) for _, k in _METRICS], *[pct_pm(summary.get(f"ua_{g}")) for g in genders],
        *[num_pm(summary.get(k)) for _, k in dims], "",
    ])
    body.append([
        "pooled", "all folds", str(pooled["n_utterances"]), *([""] if several else []),
        *[pct(pooled.get(k)) for _, k in _METRICS], *[pct(pooled.get(f"ua_{g}")) for g in genders],
        *["-" for _ in dims], "",
    ])
    notes = [
        results["summary_text"],
        ("per fold: mean ± sample std (ddof=1) over seeds; " if several else "")
        + "mean ± std: over all runs; pooled: every test utterance at once"
        + (", averaged over seeds" if several else ""),
    ]
    if dims:
        notes.append("CCC, r, RMSE: of each run's rated test utterances (prediction: mean over the utterance's "
                     "segments; ratings normalised to [0, 1] by the corpus' scale), mean ± sample std like UA")
    return render(head, body) + "\n" + "\n".join(notes)


def intervals_table(intervals: dict[str, Any], pooled: dict[str, Any] | None = None) -> str:
    """The bootstrap intervals of the pooled metrics, over utterances and over speakers."""
    level = round(100 * intervals["level"])
    head = ["pooled", "estimate", f"{level} % CI utterances", f"{level} % CI speakers ({intervals['n_speakers']})"]
    body = []
    for title, key in _INTERVAL_ROWS:
        u = intervals["utterance"].get(key) or {}
        s = intervals["speaker"].get(key) or {}
        body.append([title, pct(u.get("estimate")), interval_text(u), interval_text(s)])
    note = (f"percentile bootstrap, {intervals['n_resamples']} resamples (seed {intervals['seed']}) of test "
            "utterances, or of test speakers with all their utterances (utterances of one speaker are not "
            "independent: the speaker interval is the honest one)")
    return render(head, body) + "\n" + note


def _dimension_columns(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(column title, summary key) of the rated dimensions' metrics in ``summary`` (auxiliary
    vad runs; none otherwise): ``CCC arousal``, ``r arousal``, ``RMSE arousal``, ..."""
    from .results import DIMENSION_METRICS
    from .tasks import DIMENSIONS

    titles = {"ccc": "CCC", "r": "r", "rmse": "RMSE"}
    return [(f"{titles[m]} {d}", f"{m}_{d}") for d in DIMENSIONS for m in DIMENSION_METRICS
            if isinstance(summary.get(f"{m}_{d}"), dict)]


def num_pm(stats: dict[str, Any] | None) -> str:
    """``0.512 ± 0.031`` (mean ± std of a CCC, r or RMSE in normalised units), ``-`` when empty."""
    if not stats or stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:.3f}" + (f" ± {stats['std']:.3f}" if stats.get("std") is not None else "")


def comparison_table(settings: dict[str, dict[str, Any]], baseline: str | None = None,
                     name_title: str = "aux tasks") -> str:
    """One row per auxiliary-task setting: mean ± std over runs, and the paired difference in
    pooled UA to ``baseline`` with its 95 % bootstrap interval and permutation p-value.

    ``settings[name]`` is that setting's results (:func:`sertrain.results.cv_results`) plus
    ``delta_vs_baseline`` (None for the baseline itself).
    """
    all_genders = sorted({k[3:] for r in settings.values() for k in r["summary"]
                          if k.startswith("ua_") and isinstance(r["summary"][k], dict)})
    delta_head = f"Δ UA vs {baseline} [95 % CI]" if baseline else None
    # CCC of each rated dimension any setting trained (settings without it show "-").
    ccc_cols = [(c, k) for c, k in dict.fromkeys(col for r in settings.values()
                                                  for col in _dimension_columns(r["summary"])) if k.startswith("ccc_")]
    head = [name_title, "runs", "UA", "WA", "F1", *[f"UA {g}" for g in all_genders], *[c for c, _ in ccc_cols],
            *([delta_head, "p"] if delta_head else [])]
    body = []
    for name, res in settings.items():
        s = res["summary"]
        row = [name, str(s["n_runs"]), pct_pm(s["ua"]), pct_pm(s["wa"]), pct_pm(s["macro_f1"]),
               *[pct_pm(s.get(f"ua_{g}")) for g in all_genders], *[num_pm(s.get(k)) for _, k in ccc_cols]]
        if delta_head:
            d = (res.get("delta_vs_baseline") or {}).get("ua")
            row += ["-", "-"] if d is None else [f"{signed_pct(d['delta'])} {interval_text(d)}", p_text(d["p_value"])]
        body.append(row)
    return render(head, body)


def compare_table(result: dict[str, Any]) -> str:
    """``sertrain compare``: A, B and A - B with paired intervals and p-values per metric."""
    head = ["pooled", "A", "B", "A - B", "95 % CI utterances", "p", "95 % CI speakers", "p (speakers)"]
    body = []
    for title, key in _INTERVAL_ROWS:
        m = result["metrics"][key]
        u, s = m["utterance"], m["speaker"]
        body.append([title, pct(m["a"]), pct(m["b"]), signed_pct(u["delta"]), interval_text(u), p_text(u["p_value"]),
                     interval_text(s), p_text(s["p_value"])])
    return render(head, body)


def signed_pct(x: float | None) -> str:
    """``0.021`` -> ``+2.1``."""
    return "-" if x is None else f"{100 * x:+.1f}"


def p_text(p: float | None) -> str:
    """A p-value with two significant digits (``1`` when it is 1)."""
    if p is None:
        return "-"
    return "1" if p >= 1 else f"{p:.2g}"


def render(head: list[str], body: list[list[str]]) -> str:
    """Columns padded to their widest cell, a dashed rule under the head."""
    widths = [max(len(head[i]), *(len(row[i]) for row in body)) if body else len(head[i]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in body)])
