"""Report figures (matplotlib with the non-interactive Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> None:
    """Confusion matrix as row-normalised colours (recall) annotated with counts."""
    cm = np.asarray(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(classes), 1.0 + 0.9 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    if title:
        import textwrap

        # Wrapped: a run title is longer than a small matrix is wide.
        ax.set_title("\n".join(textwrap.wrap(title, 38)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(
    history: list[dict[str, Any]] | dict[str, list[dict[str, Any]]], path: str | Path, title: str = ""
) -> None:
    """Losses (train emotion CE and multi-task total, validation emotion CE) and validation UA
    per epoch; a dict of histories (e.g. one per fold) draws one colour per run."""
    runs = history if isinstance(history, dict) else {"": history}
    fig, (ax_loss, ax_ua) = plt.subplots(1, 2, figsize=(12 if len(runs) > 2 else 10, 3.8))
    for label, hist in runs.items():
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        # Emotion CE on both splits is the comparable pair; the multi-task total is drawn thin.
        line, = ax_loss.plot(ep, [_nan(h.get("train_loss_emotion")) for h in hist],
                             label=f"{label} train emotion CE".strip())
        ax_loss.plot(ep, [_nan(h.get("train_loss")) for h in hist], ":", color=line.get_color(), linewidth=1,
                     label=f"{label} train total".strip())
        if any(h.get("val_loss") is not None for h in hist):
            ax_loss.plot(ep, [_nan(h.get("val_loss")) for h in hist], "--", color=line.get_color(),
                         label=f"{label} val emotion CE".strip())
        ax_ua.plot(ep, [100 * _nan(h.get("val_ua")) for h in hist], label=label or "val UA")
    for ax in (ax_loss, ax_ua):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax_loss.set_ylabel("loss")
    ax_ua.set_ylabel("validation UA (%)")  # as in every table
    # Many runs: the loss legend goes beside the plot instead of over the curves; past a
    # dozen runs (folds x seeds) a legend would be taller than the figure, so the line
    # styles are explained once and the runs are left unnamed (the report draws each fold).
    many = len(runs) > 2
    if len(runs) > 12:
        ax_loss.set_title("solid: train emotion CE, dotted: train total, dashed: validation emotion CE", fontsize=7)
        ax_ua.set_title(f"validation UA, one line per run ({len(runs)} runs)", fontsize=7)
    else:
        ax_loss.legend(fontsize=6 if many else 7,
                       **({"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)} if many else {}))
        ax_ua.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


# --- Figures for the HTML report (sertrain.html_report): PNG bytes to inline as data URIs. ---


def _png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, closed afterwards (a report draws dozens of figures)."""
    import io

    buf = io.BytesIO()
    # No "Software"/date metadata: the same run gives byte-identical images.
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def confusion_png(cm: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str], normalise: bool,
                  title: str = "") -> bytes:
    """One confusion matrix as PNG bytes: counts (``normalise=False``, colour scaled to the
    largest cell) or row-normalised recall in % (``normalise=True``, colour 0-100 %)."""
    cm = np.asarray(cm, dtype=np.int64)
    n = len(classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    values = rows if normalise else cm / max(int(cm.max()), 1)
    side = 1.4 + 0.5 * n  # ~330 px for 4 classes: the exact numbers are in the tables beside it
    fig, ax = plt.subplots(figsize=(side + 0.3, side))
    ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), classes, rotation=45 if max(map(len, classes), default=0) > 3 else 0,
                  ha="right" if max(map(len, classes), default=0) > 3 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for i in range(n):
        for j in range(n):
            text = f"{100 * rows[i, j]:.0f}" if normalise else str(cm[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if values[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png_bytes(fig)


def seed_curves_png(histories: dict[str, Sequence[dict[str, Any]]], best_epochs: dict[str, Sequence[int]] | None = None,
                    title: str = "") -> bytes:
    """Learning curves of one fold as PNG bytes: training loss (solid) and validation emotion
    loss (dashed) on the left, validation UA (%) on the right, one colour per run (seed);
    the selected (best-validation) epochs are circled on the UA line.

    Every point has a marker, so a run of a single epoch still shows up. The legend sits
    below the plots: inside them it would hide curves that span the whole range.
    """
    from matplotlib.lines import Line2D

    fig, (ax_loss, ax_ua) = plt.subplots(1, 2, figsize=(8.0, 3.0))
    handles = []
    for label, hist in histories.items():
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        line, = ax_loss.plot(ep, [_nan(h.get("train_loss")) for h in hist], marker="o", markersize=3)
        colour = line.get_color()
        handles.append(Line2D([], [], color=colour, marker="o", markersize=3, label=label))
        if any(h.get("val_loss") is not None for h in hist):
            ax_loss.plot(ep, [_nan(h.get("val_loss")) for h in hist], "--", marker="o", markersize=3, color=colour)
        ua = [100 * _nan(h.get("val_ua")) for h in hist]
        ax_ua.plot(ep, ua, marker="o", markersize=3, color=colour)
        for best in (best_epochs or {}).get(label, ()):
            if best in ep:
                ax_ua.plot([best], [ua[ep.index(best)]], "o", markersize=9, markerfacecolor="none",
                           markeredgecolor=colour)
    for ax in (ax_loss, ax_ua):
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    ax_loss.set_ylabel("loss", fontsize=8)
    ax_ua.set_ylabel("validation UA (%)", fontsize=8)
    handles += [Line2D([], [], color="0.3", label="train loss"),
                Line2D([], [], color="0.3", linestyle="--", label="validation loss"),
                Line2D([], [], color="0.3", marker="o", markersize=8, markerfacecolor="none", linestyle="",
                       label="selected epoch")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _png_bytes(fig)
