"""Plain-text tables: per-fold results with mean ± std, and the auxiliary-task comparison."""

from __future__ import annotations

from typing import Any, Sequence

from .metrics import mean_std

#: (column title, getter on a fold's test metrics) of the per-fold table.
_COLUMNS = (
    ("WA", lambda m: m.get("wa")),
    ("UA", lambda m: m.get("ua")),
    ("F1", lambda m: m.get("macro_f1")),
)


def pct(x: float | None) -> str:
    """``0.6473`` -> ``64.7``; missing -> ``-``."""
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def pct_pm(mean: float, std: float) -> str:
    return "-" if mean != mean else f"{100 * mean:.1f} ± {100 * std:.1f}"


def gender_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    names: set[str] = set()
    for r in rows:
        names |= set((r["test"].get("by_gender") or {}).keys())
    return sorted(names)


def fold_table(rows: Sequence[dict[str, Any]], summary: bool = True) -> str:
    """Per-fold table; each row: ``fold``, ``test_speakers``, ``best_epoch``, ``test`` (metrics).

    ``summary`` appends the mean ± std row over folds."""
    genders = gender_names(rows)
    head = ["fold", "test speakers", "utts", *[c for c, _ in _COLUMNS], *[f"UA {g}" for g in genders], "best ep"]
    body = []
    for r in rows:
        m = r["test"]
        by = m.get("by_gender") or {}
        body.append(
            [
                str(r["fold"]),
                ",".join(r.get("test_speakers", [])) or "-",
                str(m.get("n", 0)),
                *[pct(get(m)) for _, get in _COLUMNS],
                *[pct((by.get(g) or {}).get("ua")) for g in genders],
                str(r.get("best_epoch", "-")),
            ]
        )
    if not summary:
        return _render(head, body)
    stats = summarize(rows)
    body.append(
        [
            "mean ± std",
            "",
            str(sum(r["test"].get("n", 0) for r in rows)),
            *[pct_pm(*stats[k]) for k in ("wa", "ua", "macro_f1")],
            *[pct_pm(*stats[f"ua_{g}"]) for g in genders],
            "",
        ]
    )
    return _render(head, body)


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Mean and std over folds of WA, UA, macro-F1 and UA per gender (``ua_<gender>``)."""
    out: dict[str, tuple[float, float]] = {}
    for key in ("wa", "ua", "macro_f1"):
        out[key] = mean_std([r["test"].get(key) for r in rows])
    for g in gender_names(rows):
        out[f"ua_{g}"] = mean_std([((r["test"].get("by_gender") or {}).get(g) or {}).get("ua") for r in rows])
    return out


def comparison_table(settings: dict[str, Sequence[dict[str, Any]]]) -> str:
    """One row per auxiliary-task setting: UA / WA / F1 mean ± std and UA by gender."""
    all_rows = [r for rows in settings.values() for r in rows]
    genders = gender_names(all_rows)
    head = ["aux tasks", "folds", "UA", "WA", "F1", *[f"UA {g}" for g in genders]]
    body = []
    for name, rows in settings.items():
        s = summarize(rows)
        body.append(
            [
                name,
                str(len(rows)),
                pct_pm(*s["ua"]),
                pct_pm(*s["wa"]),
                pct_pm(*s["macro_f1"]),
                *[pct_pm(*s.get(f"ua_{g}", (float("nan"), float("nan")))) for g in genders],
            ]
        )
    return _render(head, body)


def _render(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(head[i]), *(len(row[i]) for row in body)) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in body)])
