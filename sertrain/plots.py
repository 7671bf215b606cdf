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
    # Many runs: the loss legend goes beside the plot instead of over the curves.
    many = len(runs) > 2
    ax_loss.legend(fontsize=6 if many else 7, **({"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)} if many else {}))
    ax_ua.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)
