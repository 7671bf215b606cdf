"""One self-contained HTML report of a cross-validation run (``sertrain report RUN_DIR``).

The file loads nothing: no network, no external CSS, JavaScript or fonts; figures are
matplotlib PNGs inlined as ``data:`` URIs and the styling is one small inline ``<style>``.
It reads and prints as plain HTML (headings, a table of contents, tables with right-aligned
numbers); a tiny inline script only records whether every figure decoded
(``<body data-images-ok>``), which the tests check in a real browser.

Inputs (a folder written by ``sertrain cv``, format ``sertrain-cv/2``):

- ``metrics.json``: the whole result (protocol, store, config, runs, per fold, summary,
  bootstrap intervals, summed confusion);
- ``predictions.csv``: per-utterance predictions, for recall per class and gender pooled over
  runs (optional: without it that table is replaced by a note);
- ``table.txt`` (shown as printed), ``fold_<k>[/seed_<s>]/history.json`` (learning curves
  when ``metrics.json`` holds none), ``compare*.json`` (``sertrain compare``, optional).

An ablation grid folder (``comparison.json``, format ``sertrain-comparison/2``, and one cv run
folder per setting) gives the comparison table first, then one compact section per setting.

Percentages are shown as in the text tables: one decimal, ``mean ± std``, ``-`` when missing.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import os
import re
import tempfile
from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from . import __version__
from .errors import InputError

CV_FORMAT = "sertrain-cv/2"
COMPARISON_FORMAT = "sertrain-comparison/2"
COMPARE_FORMAT = "sertrain-compare/1"

#: (key, label) of the headline metrics, in the order of the text tables.
_METRICS = (("wa", "WA"), ("ua", "UA"), ("macro_f1", "F1"))
#: Label of the bootstrap-interval metrics (the gap is in percentage points, signed).
_CI_LABELS = {"wa": "WA", "ua": "UA", "macro_f1": "F1", "ua_gap_f_minus_m": "UA gap F − M (points)"}


class _Html(str):
    """Text that is already HTML (a table cell holding markup); plain ``str`` is escaped."""


# --------------------------------------------------------------------------- public API


def write_html_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the HTML report of the cv run (or ablation grid) in ``run_dir``; return its path.

    ``out`` defaults to ``run_dir/report.html``. The file is written whole or not at all
    (temporary file, then renamed), so an interrupted report never leaves half a page.

    Raises :class:`InputError` (one line naming the file) when ``run_dir`` is not a cv run
    folder: no ``metrics.json``/``comparison.json``, unreadable JSON, another format.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    page = render_html_report(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the report from a shared results folder
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def render_html_report(run_dir: Path) -> str:
    """The report of ``run_dir`` as one HTML string (see :func:`write_html_report`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    written = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if (run_dir / "comparison.json").is_file():
        return _render_grid(run_dir, written)
    run = _load_run(run_dir)
    title = run.metrics.get("title") or str(run_dir)
    toc = [("protocol", "Protocol"), ("provenance", "Provenance"), ("results", "Results"),
           ("confusion", "Confusion matrices"), ("gender", "Per-gender recall"),
           ("curves", "Learning curves")]
    if run.compares:
        toc.append(("comparisons", "Comparisons"))
    body = [
        _header(title, written, run_dir, run.metrics.get("protocol"), len(run.metrics.get("deviations") or [])),
        _toc(toc + [("notes", "Notes")]),
        *_run_sections(run, level=2, prefix=""),
        _notes(),
    ]
    return _page(title, body)


# --------------------------------------------------------------------------- loading


class _Run:
    """One cv run folder: its metrics.json, predictions (or None) and compare*.json files."""

    def __init__(self, path: Path, metrics: dict[str, Any], predictions: Any, compares: list[tuple[str, dict]]):
        self.path = path
        self.metrics = metrics
        self.predictions = predictions
        self.compares = compares


def _read_json(path: Path, what: str) -> Any:
    """Parsed JSON of ``path``; a missing or unreadable file is one InputError line naming it."""
    if not path.is_file():
        raise InputError(f"{path}: not found ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not readable JSON ({exc.msg}, line {exc.lineno})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(f"{path}: not readable ({exc})") from None


def _load_run(run_dir: Path) -> _Run:
    """Load and check one cv run folder (format sertrain-cv/2)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise InputError(f"{path}: not found: {run_dir} is not a sertrain cv run folder "
                         "(written by `sertrain cv --out`)")
    metrics = _read_json(path, "metrics.json of a cv run")
    fmt = metrics.get("format") if isinstance(metrics, dict) else None
    if fmt != CV_FORMAT:
        # A single `sertrain train` folder also has a metrics.json, without this format.
        raise InputError(f"{path}: not a sertrain cv run folder (format {fmt!r}, expected {CV_FORMAT!r})")
    if not isinstance(metrics.get("runs"), list) or not isinstance(metrics.get("classes"), list):
        raise InputError(f"{path}: not a complete sertrain cv result (no 'runs' or 'classes' list)")
    return _Run(run_dir, metrics, _load_predictions(run_dir / "predictions.csv"), _load_compares(run_dir))


def _load_predictions(path: Path) -> Any:
    """predictions.csv as a DataFrame, or None when the file is absent (the report says so)."""
    if not path.is_file():
        return None
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # pandas' ParserError is a ValueError
        raise InputError(f"{path}: not a readable CSV ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None
    missing = [c for c in ("gender", "emotion", "predicted") if c not in df.columns]
    if missing:
        raise InputError(f"{path}: not a sertrain predictions file (no column {', '.join(missing)})")
    return df


def _load_compares(run_dir: Path) -> list[tuple[str, dict]]:
    """(file name, content) of every compare*.json of ``run_dir`` (``sertrain compare --out``)."""
    found = []
    for path in sorted(run_dir.glob("compare*.json")):
        data = _read_json(path, "a sertrain compare result")
        fmt = data.get("format") if isinstance(data, dict) else None
        if fmt != COMPARE_FORMAT:
            raise InputError(f"{path}: not a sertrain compare result (format {fmt!r}, expected {COMPARE_FORMAT!r})")
        found.append((path.name, data))
    return found


# --------------------------------------------------------------------------- grid


def _render_grid(run_dir: Path, written: str) -> str:
    """Ablation grid: comparison table, then one compact section per setting."""
    path = run_dir / "comparison.json"
    comparison = _read_json(path, "comparison of an ablation grid")
    fmt = comparison.get("format") if isinstance(comparison, dict) else None
    if fmt != COMPARISON_FORMAT:
        raise InputError(f"{path}: not a sertrain ablation comparison (format {fmt!r}, expected {COMPARISON_FORMAT!r})")
    settings = comparison.get("settings") or {}
    if not isinstance(settings, dict) or not settings:
        raise InputError(f"{path}: lists no settings")
    runs = {name: _load_run(run_dir / name) for name in settings}
    first = next(iter(runs.values())).metrics
    config = (first.get("config") or {}).get("name", "")
    title = " / ".join(x for x in (config, first.get("scheme") or "",
                                  "aux ablation: " + ", ".join(settings)) if x)
    top_compares = _load_compares(run_dir)
    ids = {name: "setting-" + _slug(name) for name in settings}
    toc = [("comparison", "Comparison of the settings")]
    toc += [(ids[name], f"Setting {name}") for name in settings]
    if top_compares:
        toc.append(("comparisons", "Comparisons"))
    # The settings differ in their auxiliary tasks only; any of them may deviate from the protocol.
    n_dev = max(len(r.metrics.get("deviations") or []) for r in runs.values())
    body = [_header(title, written, run_dir, first.get("protocol"), n_dev, grid=True),
            _toc(toc + [("notes", "Notes")])]
    body.append(_section("comparison", "Comparison of the settings", 2, _grid_table(comparison, runs)))
    for name, run in runs.items():
        inner = _run_sections(run, level=3, prefix=ids[name] + "-")
        body.append(_section(ids[name], f"Setting {name}", 2, [
            _p(f"Run folder {run.path}; {run.metrics.get('title') or ''}".rstrip("; ")), *inner]))
    if top_compares:
        body.append(_section("comparisons", "Comparisons", 2, [_compare_block(n, d, 3) for n, d in top_compares]))
    body.append(_notes())
    return _page(title, body)


def _grid_table(comparison: dict, runs: Mapping[str, _Run]) -> list[str]:
    """Setting | runs | UA | WA | F1 | UA per gender | UA Δ vs baseline (CI, p)."""
    baseline = comparison.get("baseline")
    settings = comparison["settings"]
    genders = _genders(next(iter(runs.values())).metrics)
    summaries = {name: (entry or {}).get("summary") or runs[name].metrics.get("summary") or {}
                 for name, entry in settings.items()}
    deltas = {name: (entry or {}).get("delta_vs_baseline") or {} for name, entry in settings.items()}
    # UA first: the headline metric of the comparison, as in the printed table.
    keys = [k for k in ("ua", "wa", "macro_f1", "ua_gap_f_minus_m") if any(k in d for d in deltas.values())]
    direction = _grid_direction(summaries, deltas, baseline)
    head = ["setting", "runs", "UA", "WA", "F1", *[f"UA {g}" for g in genders]]
    rows = []
    for name in settings:
        s = summaries[name]
        rows.append([
            name + (" (baseline)" if name == baseline else ""), _int(s.get("n_runs")),
            *[_pm(s.get(k)) for k in ("ua", "wa", "macro_f1")],
            *[_pm(s.get(f"ua_{g}")) for g in genders],
        ])
    out = [_table(head, rows, numeric=[False] + [True] * (len(head) - 1), cls="grid",
                  caption="Test metrics (%) of each setting: mean ± sample std over runs.")]
    delta_rows = [[name, *[_delta_cell(deltas[name].get(k)) for k in keys]] for name in settings if name != baseline]
    if keys and delta_rows:
        out.append(_table(["setting", *[f"Δ {_CI_LABELS[k].replace(' (points)', '')}" for k in keys]], delta_rows,
                          numeric=[False] + [True] * len(keys), cls="grid-delta",
                          caption=f"Difference to the baseline {baseline!r}{direction} of the pooled metrics, in "
                                  "percentage points: paired bootstrap interval and permutation p-value "
                                  "(computed by sertrain cv)."))
    if comparison.get("table"):
        out.append(_details("The comparison as printed", _Html(f"<pre>{escape(str(comparison['table']))}</pre>")))
    return out


# --------------------------------------------------------------------------- page parts


def _run_sections(run: _Run, level: int, prefix: str) -> list[str]:
    """The sections of one cv run: protocol, provenance, results, confusion, gender, curves,
    comparisons. ``level`` is the heading level (2 alone, 3 inside a grid's setting)."""
    m = run.metrics
    sections = [
        _section(prefix + "protocol", "Protocol", level, _protocol(m)),
        _section(prefix + "provenance", "Provenance", level, _provenance(m, collapsed=level > 2)),
        _section(prefix + "results", "Results", level, _results(run)),
        _section(prefix + "confusion", "Confusion matrices", level, _confusion(m)),
        _section(prefix + "gender", "Per-gender recall", level, _gender(run)),
        _section(prefix + "curves", "Learning curves", level, _curves(run)),
    ]
    if run.compares:
        sections.append(_section(prefix + "comparisons", "Comparisons", level,
                                 [_compare_block(name, data, level + 1) for name, data in run.compares]))
    return sections


def _header(title: str, written: str, run_dir: Path, protocol: dict | None, n_deviations: int,
            grid: bool = False) -> str:
    """Title, when and from what the report was written, the protocol, and (first thing a
    reader sees) a warning when the run deviates from that protocol."""
    kind = "ablation grid" if grid else "cross-validation run"
    proto = _protocol_name(protocol)
    warning = ""
    if protocol and n_deviations:
        warning = (f"<p class=\"warning\"><strong>Not the protocol's numbers:</strong> this run deviates from "
                   f"{escape(proto)} in {_count(n_deviations, 'setting')} "
                   + ("(see each setting's Protocol section)." if grid else "(see <a href=\"#protocol\">Protocol</a>).")
                   + "</p>")
    return (f"<header><h1>{escape(title)}</h1>"
            f"<p class=\"meta\">{escape(kind.capitalize())} report written {escape(written)} by sertrain "
            f"{escape(__version__)} from <code>{escape(str(run_dir.resolve()))}</code>. "
            f"Protocol: {escape(proto)}.</p>{warning}</header>")


def _protocol_name(protocol: dict | None) -> str:
    if not protocol:
        return "no named protocol"
    sha = str(protocol.get("sha256") or "")
    return f"{protocol.get('name', '?')} {protocol.get('version', '')}".strip() + (f" ({sha[:12]})" if sha else "")


def _protocol(m: dict) -> list[str]:
    protocol = m.get("protocol")
    out: list[str] = []
    if not protocol:
        out.append(_p("No named protocol: the run follows its own config (below), not a published "
                      "protocol's choices."))
        return out
    sha = str(protocol.get("sha256") or "")
    out.append(_kv_table([
        ("name", protocol.get("name")), ("version", protocol.get("version")),
        ("sha256", _Html(_short(sha)) if sha else None),
        ("title", protocol.get("title")), ("reference", protocol.get("reference")),
    ]))
    deviations = m.get("deviations") or []
    if deviations:
        out.append(
            "<div class=\"warning\" role=\"alert\"><strong>Deviates from the protocol.</strong> "
            f"{len(deviations)} setting{'s' if len(deviations) != 1 else ''} differ from "
            f"{escape(_protocol_name(protocol))}: the numbers below are <em>not</em> the protocol's "
            "and should not be reported as such.</div>")
        out.append(_table(["key", "protocol", "this run"],
                          [[str(d.get("key")), _value(d.get("protocol")), _value(d.get("run"))] for d in deviations],
                          numeric=[False, False, False], caption="Deviations from the protocol", cls="deviations"))
    else:
        out.append(_p("No deviation from the protocol."))
    unconfirmed = protocol.get("unconfirmed") or []
    if unconfirmed:
        out.append(_p("Choices the publication does not pin down (the protocol fills them in; other "
                      "reimplementations may differ):"))
        out.append("<ul class=\"keys\">" + "".join(f"<li><code>{escape(str(k))}</code></li>" for k in unconfirmed)
                   + "</ul>")
    return out


def _provenance(m: dict, collapsed: bool) -> list[str]:
    store = m.get("store") or {}
    build = store.get("build") or {}
    versions = m.get("versions") or {}
    rows: list[tuple[str, Any]] = [
        ("store", store.get("path")), ("corpus", store.get("corpus")),
        ("fingerprint", _Html(_short(str(store["fingerprint"]))) if store.get("fingerprint") else None),
        ("content sha256", _Html(_short(str(store["content_sha256"]))) if store.get("content_sha256") else None),
        ("created", store.get("created")),
        ("store built with", _versions(store.get("versions"))),
        ("run with", _versions(versions)),
        ("scheme", m.get("scheme")), ("aux tasks", m.get("aux")),
        ("folds", ", ".join(map(str, m.get("folds") or [])) or None),
        ("seeds", ", ".join(map(str, m.get("seeds") or [])) or None),
        ("classes", ", ".join(m.get("classes") or []) or None),
    ]
    # The build options that decide what the model saw are shown; the derived details
    # (hops, copy rates, notes per fold) are one click away. None there means "not used".
    first = ("classes", "subset", "augment", "balance", "seed")
    build_rows = [(k, "none" if build[k] is None else build[k]) for k in first if k in build]
    build_rest = _flatten({k: v for k, v in build.items() if k not in first})
    config = m.get("config") or {}
    parts = [
        _kv_table(rows),
        _h(4 if collapsed else 3, "Store build options"), _kv_table(build_rows) if build_rows else _p("-"),
        _details("Other build details", _kv_grid(build_rest)) if build_rest else "",
        _details("Feature config", _kv_grid(_flatten(store.get("feature_config") or {})), open_=not collapsed),
        _details("Segment config", _kv_grid(_flatten(store.get("segment_config") or {})), open_=not collapsed),
        _details(f"Model config ({config.get('name', '?')})", _kv_grid(_flatten(config.get("model") or {}))),
        _details("Loss, training and data config",
                 _kv_grid(_flatten({k: config.get(k) for k in ("loss", "train", "data") if config.get(k)}))),
    ]
    if collapsed:
        return [_details("Store, versions and config", _Html("".join(parts)))]
    return parts


def _results(run: _Run) -> list[str]:
    m = run.metrics
    genders = _genders(m)
    out = []
    if m.get("summary_text"):
        out.append(f"<p class=\"summary\">{escape(str(m['summary_text']))}</p>")
    head = ["fold", "test speakers", "utts", "runs", *[lbl for _, lbl in _METRICS],
            *[f"UA {g}" for g in genders], "best epochs"]
    rows: list[list[Any]] = []
    for f in m.get("per_fold") or []:
        rows.append([
            _int(f.get("fold")), ", ".join(f.get("test_speakers") or []) or "-", _int(f.get("n")), _int(f.get("runs")),
            *[_pm(f.get(k)) for k, _ in _METRICS], *[_pm(f.get(f"ua_{g}")) for g in genders],
            ", ".join(map(str, f.get("best_epochs") or [])) or "-",
        ])
    s = m.get("summary") or {}
    pooled = s.get("pooled") or {}
    foot = [
        ["mean ± std", f"{_count(s.get('n_folds'), 'fold')} × {_count(s.get('n_seeds'), 'seed')}",
         _int(sum(int(f.get("n") or 0) for f in m.get("per_fold") or [])), _int(s.get("n_runs")),
         *[_pm(s.get(k)) for k, _ in _METRICS], *[_pm(s.get(f"ua_{g}")) for g in genders], ""],
        ["pooled", "all test utterances", _int(pooled.get("n_utterances")), _int(s.get("n_runs")),
         *[_pct(pooled.get(k)) for k, _ in _METRICS], *[_pct(pooled.get(f"ua_{g}")) for g in genders], ""],
    ]
    # The fold is an identifier, not a quantity: left-aligned like its label in the summary rows.
    numeric = [False, False, True, True] + [True] * (len(_METRICS) + len(genders)) + [False]
    out.append(_table(head, rows, numeric, foot=foot, cls="folds",
                      caption="Test metrics (%) of the best-validation checkpoint per fold: mean ± sample std "
                              "over seeds (one value with one seed). "
                              f"Summary row: {s.get('std') or 'std over runs'}; pooled: the metrics over all test "
                              "utterances at once (the pooled result in metrics.json)."))
    out.extend(_intervals(m.get("intervals")))
    table_txt = run.path / "table.txt"
    if table_txt.is_file():
        printed = escape(table_txt.read_text(errors="replace"))
        out.append(_details("table.txt as printed", _Html(f"<pre>{printed}</pre>")))
    return out


def _intervals(iv: dict | None) -> list[str]:
    if not iv:
        return [_p("No bootstrap intervals recorded for this run.")]
    level = iv.get("level")
    pc = f"{100 * level:.0f} %" if isinstance(level, (int, float)) else "?"
    utt, spk = iv.get("utterance") or {}, iv.get("speaker") or {}
    rows = []
    for key in [k for k in _CI_LABELS if k in utt or k in spk] + [k for k in utt if k not in _CI_LABELS]:
        points = key.startswith("ua_gap")  # a difference: signed percentage points
        e = utt.get(key) or spk.get(key) or {}
        rows.append([_CI_LABELS.get(key, key), _pct(e.get("estimate"), signed=points),
                     _interval(utt.get(key), signed=points), _interval(spk.get(key), signed=points)])
    n_spk = iv.get("n_speakers")
    return [
        _h(4, f"{pc} bootstrap confidence intervals"),
        _table(["metric", "estimate", "over utterances [low, high]", "over speakers [low, high]"], rows,
               numeric=[False, True, True, True], cls="ci",
               caption=f"{pc} intervals, {iv.get('method') or 'percentile bootstrap'}; "
                       f"{_int(iv.get('n_resamples'))} resamples, seed {_int(iv.get('seed'))}."),
        _p(f"Over utterances resamples the test utterances as if each were independent; over speakers "
           f"resamples the {_int(n_spk)} test speakers with all their utterances. Utterances of one speaker "
           "are not independent (same voice, same sessions), so the speaker interval is the honest one, "
           "and the wider."),
    ]


def _confusion(m: dict) -> list[str]:
    from .plots import confusion_png

    cm = m.get("confusion_total")
    classes = list(m.get("classes") or [])
    if not cm or not classes:
        return [_p("No confusion matrix recorded.")]
    n_runs = (m.get("summary") or {}).get("n_runs")
    row_sums = [sum(r) for r in cm]
    counts = [[c, *[str(v) for v in r], str(sum(r))] for c, r in zip(classes, cm)]
    counts_foot = [["total", *[str(sum(r[j] for r in cm)) for j in range(len(classes))], str(sum(row_sums))]]
    norm = [[c, *[_pct(v / t if t else None) for v in r]] for c, r, t in zip(classes, cm, row_sums)]
    head = ["reference \\ predicted", *classes]
    return [
        _p(f"Summed over folds and seeds ({_int(n_runs)} runs): rows are the reference classes, columns the "
           "predictions; row-normalised cells are the recall of the row's class (diagonal) and where its "
           "errors go."),
        "<div class=\"figs\">"
        + _img(confusion_png(cm, classes, normalise=False, title="counts"), "Confusion matrix, counts")
        + _img(confusion_png(cm, classes, normalise=True, title="row-normalised (%)"),
               "Confusion matrix, row-normalised (%)")
        + "</div>",
        "<div class=\"side\">"
        + _table([*head, "total"], counts, numeric=[False] + [True] * (len(classes) + 1), foot=counts_foot,
                 caption="Counts", cls="cm", diagonal=True, row_headers=True)
        + _table(head, norm, numeric=[False] + [True] * len(classes), caption="Row-normalised (%)", cls="cm",
                 diagonal=True, row_headers=True)
        + "</div>",
    ]


def _gender(run: _Run) -> list[str]:
    m = run.metrics
    genders = _genders(m)
    s = m.get("summary") or {}
    pooled = s.get("pooled") or {}
    ua_line = "; ".join(
        f"UA {g}: {_pm(s.get(f'ua_{g}'))} (mean ± std over runs), {_pct(pooled.get(f'ua_{g}'))} pooled"
        for g in genders)
    out = [_p(ua_line + ".") if genders else _p("No gender recorded for the test utterances.")]
    df = run.predictions
    if df is None:
        out.append(_p(f"{run.path / 'predictions.csv'} not found: recall per class and gender is not available."))
        return out
    classes = list(m.get("classes") or [])
    genders = genders or sorted(map(str, df["gender"].dropna().unique()))
    # Pooled over runs: every (fold, seed, utterance) prediction counts once, so a class's
    # recall is its correct predictions over its predictions in all runs together.
    hit = (df["emotion"].astype(str) == df["predicted"].astype(str))
    gender_col = df["gender"].astype(str)
    emotion_col = df["emotion"].astype(str)

    def recall(sel: Any) -> tuple[float | None, int]:
        n = int(sel.sum())
        return (float(hit[sel].sum()) / n if n else None), n

    rows, ua = [], {g: [] for g in [*genders, "all"]}
    for c in classes:
        row: list[Any] = [c]
        for g in [*genders, "all"]:
            sel = (emotion_col == c) & ((gender_col == g) if g != "all" else True)
            r, n = recall(sel)
            row += [_pct(r), str(n)]
            if r is not None:
                ua[g].append(r)
        rows.append(row)
    foot = [["UA (mean recall)", *[x for g in [*genders, "all"]
                                   for x in (_pct(sum(ua[g]) / len(ua[g]) if ua[g] else None), "")]]]
    head = ["class"]
    for g in [*genders, "all"]:
        head += [f"recall {g}", f"n {g}"]
    out.append(_table(head, rows, numeric=[False] + [True] * (len(head) - 1), foot=foot, cls="gender", row_headers=True,
                      caption=f"Recall (%) per class and gender, pooled over runs: the {len(df)} rows of "
                              "predictions.csv (each test utterance once per seed); n = predictions of the "
                              "class for that gender."))
    return out


def _curves(run: _Run) -> list[str]:
    from .plots import seed_curves_png

    m = run.metrics
    by_fold: dict[Any, list[dict]] = {}
    for r in m.get("runs") or []:
        by_fold.setdefault(r.get("fold"), []).append(r)
    if not by_fold:
        return [_p("No runs recorded.")]
    figs = []
    for fold, fold_runs in by_fold.items():
        histories: dict[str, list[dict]] = {}
        best: dict[str, list[int]] = {}
        for r in fold_runs:
            label = f"seed {r.get('seed')}"
            histories[label] = r.get("history") or _history_file(run.path, r)
            best[label] = list(r.get("selected_epochs") or ([r["best_epoch"]] if r.get("best_epoch") else []))
        speakers = ", ".join(fold_runs[0].get("test_speakers") or [])
        title = f"fold {fold}" + (f" (test {speakers})" if speakers else "")
        if not any(histories.values()):
            figs.append(_p(f"{title}: no training history recorded."))
            continue
        figs.append(_img(seed_curves_png(histories, best, title=title), f"Learning curves, {title}"))
    return [_p("Training loss (solid) and validation emotion loss (dashed), validation UA (%) per epoch; "
               "one colour per seed, the selected epoch circled."), *figs]


def _history_file(run_dir: Path, r: dict) -> list[dict]:
    """A run's history.json when metrics.json holds none (empty when neither has it)."""
    path = run_dir / str(r.get("dir") or "") / "history.json"
    if r.get("dir") and path.is_file():
        data = _read_json(path, "training history")
        return data if isinstance(data, list) else []
    return []


def _compare_block(name: str, data: dict, level: int) -> str:
    """One ``sertrain compare`` result: metric | A | B | Δ over utterances | Δ over speakers."""
    a, b = data.get("a") or {}, data.get("b") or {}
    metrics = data.get("metrics") or {}
    direction = _delta_direction(metrics)
    rows = []
    for key, entry in metrics.items():
        points = key.startswith("ua_gap")
        rows.append([_CI_LABELS.get(key, key), _pct(entry.get("a"), signed=points), _pct(entry.get("b"), signed=points),
                     _delta_cell(entry.get("utterance")), _delta_cell(entry.get("speaker"))])
    level_pc = f"{100 * data['level']:.0f} %" if isinstance(data.get("level"), (int, float)) else "?"
    return _section(
        "compare-" + _slug(name), f"{a.get('title') or a.get('path')} vs {b.get('title') or b.get('path')}", level, [
            _kv_table([("A", f"{a.get('path')}" + (f" ({a['title']})" if a.get("title") else "")),
                       ("B", f"{b.get('path')}" + (f" ({b['title']})" if b.get("title") else "")),
                       ("file", name), ("test utterances", _int(data.get("n_utterances"))),
                       ("seeds", ", ".join(map(str, data.get("seeds") or [])) or None)]),
            _table(["metric", "A", "B", f"Δ {direction} over utterances", f"Δ {direction} over speakers"], rows,
                   numeric=[False, True, True, True, True], cls="compare",
                   caption=f"Paired comparison on the same test utterances (%; Δ in percentage points): "
                           f"{level_pc} bootstrap interval ({_int(data.get('n_resamples'))} resamples) and "
                           f"permutation p-value ({_int(data.get('n_permutations'))} permutations)."),
        ])


def _grid_direction(summaries: Mapping[str, Mapping], deltas: Mapping[str, Mapping], baseline: Any) -> str:
    """" (setting − baseline)" or " (baseline − setting)", read off the pooled UA the summaries
    record; "" when they do not say."""
    base = ((summaries.get(baseline) or {}).get("pooled") or {}).get("ua")
    for name, d in deltas.items():
        mine = ((summaries.get(name) or {}).get("pooled") or {}).get("ua")
        delta = (d.get("ua") or {}).get("delta")
        if name == baseline or not (_finite(base) and _finite(mine) and _finite(delta)) or base == mine:
            continue
        if math.isclose(delta, mine - base, abs_tol=1e-6):
            return " (setting − baseline)"
        if math.isclose(delta, base - mine, abs_tol=1e-6):
            return " (baseline − setting)"
    return ""


def _delta_direction(metrics: Mapping[str, Any]) -> str:
    """"(A − B)", what ``sertrain compare`` records, unless the recorded numbers say the delta
    is B − A (then "(B − A)"): the header must not claim a direction the file contradicts."""
    for entry in metrics.values():
        try:
            a, b, d = float(entry["a"]), float(entry["b"]), float(entry["utterance"]["delta"])
        except (KeyError, TypeError, ValueError):
            continue
        if a != b and math.isclose(d, b - a, abs_tol=1e-6) and not math.isclose(d, a - b, abs_tol=1e-6):
            return "(B − A)"
    return "(A − B)"


def _notes() -> str:
    return ("<footer id=\"notes\"><h2>Notes</h2><dl class=\"notes\">"
            "<dt>WA</dt><dd>weighted accuracy: correct test utterances over all test utterances.</dd>"
            "<dt>UA</dt><dd>unweighted accuracy: the mean of the per-class recalls, so every class counts the "
            "same however many utterances it has.</dd>"
            "<dt>F1</dt><dd>macro-F1: the unweighted mean of the per-class F1 scores.</dd>"
            "<dt>UA F / UA M</dt><dd>UA over the female / male test speakers' utterances only.</dd>"
            "</dl><p>Percentages with one decimal; ± is the sample standard deviation (ddof = 1); "
            "- means not available.</p></footer>")


# --------------------------------------------------------------------------- HTML helpers

_STYLE = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1b1f24; margin: 0 auto; padding: 1.5rem 2rem 3rem; max-width: 70rem; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 .6rem; padding-bottom: .2rem; border-bottom: 2px solid #d0d7de; }
h3 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; }
h4 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
section section h3 { border-bottom: 1px solid #e5e7eb; }
.meta { color: #57606a; margin: 0; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .85em; }
pre { background: #f6f8fa; padding: .6rem .8rem; overflow-x: auto; border-radius: 4px; }
nav.toc { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .4rem 1.2rem;
          margin: 1rem 0; display: inline-block; }
nav.toc h2 { font-size: 1rem; border: 0; margin: .4rem 0; }
nav.toc ol { margin: 0 0 .4rem; padding-left: 1.3rem; }
a { color: #0a58ca; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
caption { caption-side: top; text-align: left; color: #57606a; font-size: .85rem; padding-bottom: .3rem;
          max-width: 60rem; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #e5e7eb; vertical-align: top; text-align: left; }
thead th { border-bottom: 2px solid #8c959f; background: #f6f8fa; }
tfoot td, tfoot th { border-top: 2px solid #8c959f; font-weight: 600; }
tbody th { font-weight: 600; }
.wide { overflow-x: auto; max-width: 100%; }
.sub { display: block; font-size: .8em; color: #57606a; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { font-weight: 600; color: #424a53; white-space: nowrap; }
table.cm td.diag { background: #ddf4ff; font-weight: 600; }
.warning { background: #fff8c5; border: 1px solid #d4a72c; border-left: 5px solid #bf8700; padding: .6rem .9rem;
           margin: .8rem 0; border-radius: 4px; }
.summary { font-size: 1.05rem; background: #f6f8fa; border-left: 4px solid #0969da; padding: .5rem .8rem; }
.figs, .side { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
img { max-width: 100%; height: auto; display: block; margin: .4rem 0; }
details { margin: .4rem 0; }
summary { cursor: pointer; color: #0a58ca; }
ul.keys { display: flex; flex-wrap: wrap; gap: .3rem .5rem; list-style: none; padding: 0; margin: .2rem 0 1rem; }
ul.keys code { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 4px; padding: .05rem .35rem; }
dl.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(16rem, 1fr)); gap: .1rem 1.5rem;
          margin: .3rem 0 .8rem; font-size: .9rem; }
dl.grid div { display: flex; gap: .6rem; border-bottom: 1px solid #eef0f2; padding: .1rem 0; }
dl.grid dt { font-weight: 600; color: #424a53; }
dl.grid dd { margin: 0; margin-left: auto; text-align: right; overflow-wrap: anywhere; }
dl.notes dt { font-weight: 600; float: left; clear: left; width: 7rem; }
dl.notes dd { margin-left: 7.5rem; }
footer { margin-top: 2.5rem; font-size: .9rem; color: #424a53; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  nav.toc { display: block; }
  h2, h3, h4 { break-after: avoid; }
  table, img, .warning { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""

# Only for checking the page in a browser (the tests do): records whether every figure decoded.
# The report reads the same without it.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.imageCount = String(imgs.length);
  document.body.dataset.imagesOk = String(imgs.every(function (i) { return i.complete && i.naturalWidth > 0; }));
});
"""


def _page(title: str, body: Iterable[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<meta name=\"generator\" content=\"sertrain {escape(__version__)}\">\n"
            f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + f"\n<script>{_SCRIPT}</script>\n</body>\n</html>\n")


def _toc(items: Sequence[tuple[str, str]]) -> str:
    links = "".join(f"<li><a href=\"#{escape(i)}\">{escape(t)}</a></li>" for i, t in items)
    return f"<nav class=\"toc\" aria-label=\"Contents\"><h2>Contents</h2><ol>{links}</ol></nav>"


def _section(ident: str, title: str, level: int, parts: Iterable[str]) -> str:
    return f"<section id=\"{escape(ident)}\">{_h(level, title)}\n" + "\n".join(parts) + "\n</section>"


def _h(level: int, text: str) -> str:
    return f"<h{level}>{escape(text)}</h{level}>"


def _p(text: str) -> str:
    return f"<p>{escape(text)}</p>"


def _details(summary: str, content_html: str, open_: bool = False) -> str:
    """A collapsible block; ``content_html`` is markup (escape text before passing it)."""
    return f"<details{' open' if open_ else ''}><summary>{escape(summary)}</summary>{content_html}</details>"


def _img(png: bytes, alt: str) -> str:
    width, height = _png_size(png)
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure style=\"margin:0\"><img src=\"data:image/png;base64,{data}\" alt=\"{escape(alt)}\" "
            f"width=\"{width}\" height=\"{height}\"></figure>")


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR), so the page does not reflow while loading."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _cell(value: Any, tag: str, num: bool, extra: str = "") -> str:
    text = value if isinstance(value, _Html) else escape("" if value is None else str(value))
    cls = " ".join(c for c in ("num" if num else "", extra) if c)
    return f"<{tag}{_class_attr(cls)}>{text}</{tag}>"


def _class_attr(cls: str) -> str:
    return f' class="{escape(cls)}"' if cls else ""


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool], *,
           foot: Sequence[Sequence[Any]] = (), caption: str | None = None, cls: str = "",
           diagonal: bool = False, row_headers: bool = False) -> str:
    """A table; ``numeric`` columns are right-aligned with tabular digits. ``row_headers``
    makes each body row's first cell a row header; ``diagonal`` marks cell (i, i + 1) of body
    row i (a confusion matrix with its row label first)."""
    out = [f"<table{_class_attr(cls)}>"]
    if caption:
        out.append(f"<caption>{escape(caption)}</caption>")
    out.append("<thead><tr>" + "".join(_cell(h, "th", n) for h, n in zip(head, numeric)) + "</tr></thead><tbody>")
    for i, row in enumerate(rows):
        cells = []
        for j, (v, n) in enumerate(zip(row, numeric)):
            tag = "th" if j == 0 and row_headers else "td"
            cells.append(_cell(v, tag, n, "diag" if diagonal and j == i + 1 else ""))
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody>")
    if foot:
        # A summary row's first cell is its label ("mean ± std", "total"): a left-aligned row header.
        out.append("<tfoot>" + "".join(
            "<tr>" + "".join(_cell(v, "th" if j == 0 else "td", n and j > 0)
                             for j, (v, n) in enumerate(zip(r, numeric)))
            + "</tr>" for r in foot) + "</tfoot>")
    out.append("</table>")
    # Wide tables scroll sideways on a narrow screen instead of running off the page.
    return f"<div class=\"wide\">{''.join(out)}</div>"


def _kv_table(items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th scope=\"row\">{escape(str(k))}</th>"
                   f"<td>{v if isinstance(v, _Html) else escape(_value(v))}</td></tr>" for k, v in items)
    return f"<table class=\"kv\"><tbody>{rows}</tbody></table>"


def _kv_grid(items: Iterable[tuple[str, Any]]) -> str:
    """Many short key/value pairs (a config) in columns, so they take a few lines, not a page."""
    cells = "".join(f"<div><dt>{escape(str(k))}</dt><dd>{escape(_value(v))}</dd></div>" for k, v in items)
    return f"<dl class=\"grid\">{cells}</dl>"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted key, value) rows."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _versions(v: Mapping[str, Any] | None) -> str | None:
    return ", ".join(f"{k} {val}" for k, val in v.items()) if v else None


def _short(full: str, n: int = 12) -> str:
    """The first ``n`` characters of a hash, the whole of it in the tooltip (title attribute)."""
    return f"<code title=\"{escape(full)}\">{escape(full[:n])}{'…' if len(full) > n else ''}</code>"


def _value(v: Any) -> str:
    """A config value as text: strings bare, lists comma-separated, others as JSON."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) if not isinstance(x, (list, tuple)) else json.dumps(x) for x in v) or "[]"
    return json.dumps(v)


def _genders(m: Mapping[str, Any]) -> list[str]:
    return [str(g) for g in m.get("genders") or []]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


# --------------------------------------------------------------------------- number formats
# The same formats as the printed tables (sertrain.report): a fraction in [0, 1] as a
# percentage with one decimal, "mean ± std", "-" when missing. Kept here rather than imported
# so the HTML does not change when the text tables' layout does.


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pct(x: Any, signed: bool = False, digits: int = 1) -> str:
    """``0.6473`` -> ``64.7`` (``+64.7`` when ``signed``); missing or NaN -> ``-``."""
    if not _finite(x):
        return "-"
    return f"{100 * x:+.{digits}f}" if signed else f"{100 * x:.{digits}f}"


def _pm(stat: Any) -> str:
    """``{"mean": .6473, "std": .0812}`` -> ``64.7 ± 8.1``; without a std (one run) -> ``64.7``."""
    if not isinstance(stat, Mapping) or not _finite(stat.get("mean")):
        return "-"
    std = stat.get("std")
    return f"{_pct(stat['mean'])} ± {_pct(std)}" if _finite(std) else _pct(stat["mean"])


def _interval(e: Any, signed: bool = False) -> str:
    if not isinstance(e, Mapping) or not (_finite(e.get("low")) and _finite(e.get("high"))):
        return "-"
    return f"[{_pct(e['low'], signed)}, {_pct(e['high'], signed)}]"


def _p_value(p: Any) -> str:
    if not _finite(p):
        return "-"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _delta_cell(e: Any) -> str:
    """``{"delta", "low", "high", "p_value"}`` -> ``+1.2`` over ``[-0.5, +3.0] p = 0.210``
    (percentage points; the interval and p-value on a second, smaller line keep the table narrow)."""
    if not isinstance(e, Mapping) or not _finite(e.get("delta")):
        return "-"
    spread = _interval(e, signed=True)
    spread = "no interval," if spread == "-" else spread
    return _Html(f"{escape(_pct(e['delta'], signed=True))}<span class=\"sub\">"
                 f"{escape(spread)} {escape(_p_value(e.get('p_value')))}</span>")


def _count(x: Any, word: str) -> str:
    """``2, "fold"`` -> ``2 folds``; ``1`` -> ``1 fold``."""
    return f"{_int(x)} {word}{'' if x == 1 else 's'}"


def _int(x: Any) -> str:
    return str(int(x)) if _finite(x) else "-"
