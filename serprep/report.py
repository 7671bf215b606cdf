"""``serprep report``: a look at a store's data (PNG plots + a markdown summary)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .info import store_summary
from .errors import StoreError
from .store import StoreReader

CHANNELS = ("static", "delta", "delta-delta")


def _save(fig, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def write_report(store: str | Path, out_dir: str | Path, scheme: str | None = None) -> list[Path]:
    """Write ``class_counts.png``, ``spectrograms.png`` and ``summary.md`` into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    r = StoreReader(store)
    summary = store_summary(store)
    classes = r.vocab("emotion")
    written: list[Path] = []

    # 1. Training segments per class and fold, before/after balancing, stacked by gender.
    schemes = r.fold_schemes()
    if scheme is not None and scheme not in schemes:
        raise StoreError(f"{store}: no fold scheme {scheme!r}; store has {', '.join(schemes) or 'no folds'}")
    scheme = scheme or ("loso" if "loso" in schemes else (schemes[0] if schemes else None))
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the store and options are known to be good
    if scheme:
        folds = summary["folds"][scheme]
        cols = min(3, len(folds))
        rows = int(np.ceil(len(folds) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
        x = np.arange(len(classes))
        width = 0.38
        colours = {"F": ("#d95f02", "#fdb863"), "M": ("#1b9e77", "#8fd3bd")}
        for ax, fold in zip(axes.flat, folds):
            counts = fold["counts"]
            for shift, stage, alpha in ((-width / 2, "before", 1.0), (width / 2, "after", 0.55)):
                bottom = np.zeros(len(classes))
                for g in ("F", "M"):
                    vals = np.array([counts[f"{stage}_by_gender"][g].get(c, 0) for c in classes], dtype=float)
                    ax.bar(x + shift, vals, width, bottom=bottom, color=colours[g][0], alpha=alpha,
                           edgecolor="black", linewidth=0.4, label=f"{stage} {g}")
                    bottom += vals
            ax.set_xticks(x, classes)
            ax.set_title(f"fold {fold['fold']}: test {'+'.join(fold['test_speakers'])}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        for ax in list(axes.flat)[len(folds):]:
            ax.axis("off")
        top = max(max(sum(f["counts"][s].values()) and max(f["counts"][s].values()) for s in ("before", "after")) for f in folds)
        axes[0, 0].set_ylim(0, top * 1.12 + 1)
        axes[0, 0].set_ylabel("training segments")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
        fig.suptitle(f"{r.corpus}: training segments per class, before (solid) and after (light) balancing; F/M stacked", fontsize=10)
        fig.tight_layout(rect=(0, 0.06, 1, 0.95))
        written.append(_save(fig, out_dir / "class_counts.png", dpi=110))

    # 2. One example triple-channel segment per class (the longest original).
    segs = r.segments()
    originals = segs[(segs["copy"] == 0) & ~segs["dense"]]
    fig, axes = plt.subplots(len(classes), 3, figsize=(11, 2.1 * len(classes)), squeeze=False)
    for row, (k, name) in enumerate(enumerate(classes)):
        pool = originals[originals["emotion"] == k]
        if pool.empty:
            for ax in axes[row]:
                ax.axis("off")
            continue
        seg_id = int(pool["valid"].idxmax())
        x, valid = r.read_segments([seg_id])
        for ch in range(3):
            ax = axes[row, ch]
            data = x[0, ch, : valid[0]].T
            lim = np.percentile(np.abs(data), 99) if ch else None
            ax.imshow(data, origin="lower", aspect="auto", cmap="magma" if ch == 0 else "coolwarm",
                      vmin=None if ch == 0 else -lim, vmax=lim)
            ax.set_title(f"{name}: {CHANNELS[ch]}", fontsize=9)
            ax.set_ylabel("mel band" if ch == 0 else "")
            ax.set_xlabel("frame (10 ms)" if row == len(classes) - 1 else "")
    fig.suptitle(f"{r.corpus}: example log-Mel segment per class (static, delta, delta-delta)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    written.append(_save(fig, out_dir / "spectrograms.png", dpi=100))

    # 3. Markdown summary.
    u = summary["utterances"]
    lines = [
        f"# Store report: {summary['file']}",
        "",
        f"- corpus: {summary['corpus']}, {u['extracted']} utterances extracted of {u['selected']} selected "
        f"({u['total']} in corpus), {u['hours']:.2f} h, {u['speakers']} speakers",
        "- classes: " + ", ".join(f"{c} {n}" for c, n in u["by_class"].items()),
        f"- augmentation: {summary['build'].get('augment') or 'none'}, balance {'on' if summary['build'].get('balance') else 'off'}",
        f"- failed files: {u['failed']}",
        "",
    ]
    if scheme:
        lines += [f"## Training segments per class, fold scheme `{scheme}` (before -> after balancing)", "",
                  "| fold | test | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
        for fold in summary["folds"][scheme]:
            c = fold["counts"]
            lines.append(f"| {fold['fold']} | {'+'.join(fold['test_speakers'])} | "
                         + " | ".join(f"{c['before'].get(k, 0)} -> {c['after'].get(k, 0)}" for k in classes) + " |")
        lines.append("")
    lines += ["![class counts](class_counts.png)", "", "![spectrograms](spectrograms.png)", ""]
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    written.append(path)
    return written
