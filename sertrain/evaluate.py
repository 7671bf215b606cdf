"""Utterance-level evaluation: segment posteriors -> per-utterance decision -> metrics.

An utterance's decision aggregates the softmax posteriors of its (original, non-dense)
segments by their mean (default) or their element-wise max (ACRNN), then takes the argmax.
Reports: ``metrics.json``, per-utterance ``predictions.csv``, ``confusion.png`` and
``curves.png`` (training curves), written by :func:`write_reports`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from .data import SegmentBatchDataset, SequentialBatchSampler, host_to_device, make_loader
from .errors import SertrainError
from .metrics import classification_metrics, regression_metrics
from .runtime import Precision
from .tasks import DIMENSIONS


@dataclass
class SegmentOutputs:
    """Model outputs for a set of segments, in segment-id order."""

    segments: np.ndarray  # int64 segment ids
    utts: np.ndarray  # int64 utterance index of each segment
    posteriors: np.ndarray  # float32 [N, n_emotions], softmax
    emotion: np.ndarray  # int64 reference class per segment (-1 = none)
    loss: float  # mean emotion cross-entropy over labelled segments (NaN if none)
    #: Per dimension the model has a head for and the batches rate: (prediction, target) float32
    #: per segment (targets normalised to [0, 1], NaN = not rated). Empty without such tasks.
    dimensions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@torch.no_grad()
def segment_outputs(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: Precision = Precision(None, False),
) -> SegmentOutputs:
    """Run ``model`` in eval mode over every batch of ``loader``.

    Nothing is read back from the device per batch (which labels are scored and the packing
    lengths come from the batch's host tensors); posteriors and loss sums are collected on
    the device and copied once at the end, with the values a per-batch read gives.
    """
    was_training = model.training
    model.eval()
    segs, utts, posts, emos, loss_sums = [], [], [], [], []
    dims: dict[str, tuple[list[torch.Tensor], list[np.ndarray]]] = {}
    loss_n = 0
    for batch in loader:
        x = batch["x"].to(device, non_blocking=True)  # already there from a device cache
        valid, y = host_to_device([batch["valid"], batch["emotion"]], device)
        with precision.autocast(device):
            out = model(x, valid, valid_host=batch["valid"])
        logits = out["emotion"].float()
        labelled = batch["emotion"].numpy() >= 0
        if labelled.any():
            if not labelled.all():
                (rows,) = host_to_device([torch.from_numpy(np.flatnonzero(labelled))], device)
                logits_l, y_l = logits.index_select(0, rows), y.index_select(0, rows)
            else:
                logits_l, y_l = logits, y
            loss_sums.append(torch.nn.functional.cross_entropy(logits_l, y_l, reduction="sum"))
            loss_n += int(labelled.sum())
        posts.append(torch.softmax(logits, dim=1))
        segs.append(batch["segment"].numpy())
        utts.append(batch["utt"].numpy())
        emos.append(batch["emotion"].numpy())
        for name in DIMENSIONS:  # a rated dimension with a head: its predictions, kept on the device
            if name in out and name in batch:
                preds, targets = dims.setdefault(name, ([], []))
                preds.append(out[name].float().reshape(-1))
                targets.append(batch[name].numpy())
    model.train(was_training)
    n_cls = getattr(model, "n_emotions", 0)
    loss_sum = 0.0
    for value in (torch.stack(loss_sums).tolist() if loss_sums else []):  # in batch order, as summed before
        loss_sum += value
    cat = lambda parts, dtype, shape=(0,): np.concatenate(parts) if parts else np.zeros(shape, dtype)  # noqa: E731
    return SegmentOutputs(
        segments=cat(segs, np.int64),
        utts=cat(utts, np.int64),
        posteriors=torch.cat(posts).cpu().numpy() if posts else np.zeros((0, n_cls), np.float32),
        emotion=cat(emos, np.int64),
        loss=loss_sum / loss_n if loss_n else float("nan"),
        dimensions={name: (torch.cat(p).cpu().numpy(), np.concatenate(t)) for name, (p, t) in dims.items()},
    )


def aggregate(utts: np.ndarray, posteriors: np.ndarray, how: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group segment posteriors by utterance: (utterance ids sorted, [U, C] scores, segment counts).

    ``mean`` averages the posteriors; ``max`` takes each class's largest posterior (ACRNN).
    """
    if how not in ("mean", "max"):
        raise ValueError(f"aggregate must be mean or max, got {how!r}")
    uniq, inverse, counts = np.unique(utts, return_inverse=True, return_counts=True)
    scores = np.zeros((len(uniq), posteriors.shape[1]), dtype=np.float64)
    if how == "mean":
        np.add.at(scores, inverse, posteriors)
        scores /= counts[:, None]
    else:
        scores[:] = -np.inf
        np.maximum.at(scores, inverse, posteriors)
    return uniq, scores, counts


@dataclass
class Evaluation:
    """Utterance-level result of one split."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    segment_loss: float


def evaluation_loader(
    dataset: SegmentBatchDataset, segment_ids: np.ndarray, batch_size: int = 128, num_workers: int = 0
) -> DataLoader:
    """Loader over the scored segments of a split (those with an emotion label), in order."""
    return make_loader(dataset, SequentialBatchSampler(scored_segments(dataset, segment_ids), batch_size), num_workers)


def scored_segments(dataset: SegmentBatchDataset, segment_ids: np.ndarray) -> np.ndarray:
    """The segments of ``segment_ids`` that are scored: those with an emotion label (not -1)."""
    ids = np.asarray(segment_ids, dtype=np.int64)
    return ids[dataset.labels.emotion[ids] >= 0]


def evaluate_loader(
    model: torch.nn.Module,
    loader: DataLoader,
    manifest: pd.DataFrame,
    emotion_classes: Sequence[str],
    device: torch.device,
    aggregate_how: str = "mean",
    precision: Precision = Precision(None, False),
) -> Evaluation:
    """Evaluate ``model`` at utterance level on the segments ``loader`` yields.

    Gender comes from the manifest, so UA/recall by gender use the corpus's own labels.
    """
    out = segment_outputs(model, loader, device, precision)
    utt, scores, counts = aggregate(out.utts, out.posteriors, aggregate_how)
    # Reference label of an utterance = that of its segments (identical by construction).
    first = np.unique(out.utts, return_index=True)[1]
    y_true = out.emotion[first]
    y_pred = scores.argmax(axis=1) if len(utt) else np.zeros(0, np.int64)
    rows = manifest.iloc[utt]
    genders = rows["gender"].astype(str).to_numpy()
    metrics = classification_metrics(y_true, y_pred, list(emotion_classes), groups=genders)
    metrics["aggregate"] = aggregate_how
    metrics["segment_loss"] = _finite_or_none(out.loss)
    pred = pd.DataFrame(
        {
            "utt": utt,
            "utt_id": rows["utt_id"].astype(str).to_numpy(),
            "speaker": rows["speaker"].astype(str).to_numpy(),
            "gender": genders,
            "emotion": [emotion_classes[i] for i in y_true],
            "predicted": [emotion_classes[i] for i in y_pred],
            "correct": y_true == y_pred,
            "n_segments": counts,
        }
    )
    for c, name in enumerate(emotion_classes):
        pred[f"p_{name}"] = scores[:, c]
    if out.dimensions:
        metrics["dimensions"] = {}
        for name, (seg_pred, seg_true) in out.dimensions.items():
            # An utterance's prediction: the mean over its segments; its rating: its segments' (identical).
            _, mean_pred, _ = aggregate(out.utts, seg_pred[:, None].astype(np.float64), "mean")
            truth = seg_true[first].astype(np.float64)
            try:
                metrics["dimensions"][name] = regression_metrics(truth, mean_pred[:, 0])
            except ValueError as exc:
                raise SertrainError(f"{name}: {exc} (the model diverged)") from None
            pred[name], pred[f"pred_{name}"] = truth, mean_pred[:, 0]
    return Evaluation(metrics, pred, out.loss)


def evaluate_segments(
    model: torch.nn.Module,
    dataset: SegmentBatchDataset,
    segment_ids: np.ndarray,
    manifest: pd.DataFrame,
    emotion_classes: Sequence[str],
    device: torch.device,
    aggregate_how: str = "mean",
    batch_size: int = 128,
    num_workers: int = 0,
    precision: Precision = Precision(None, False),
) -> Evaluation:
    """:func:`evaluate_loader` over ``segment_ids`` (one split of a fold); segments whose
    emotion is outside the chosen classes (-1) are not scored."""
    loader = evaluation_loader(dataset, segment_ids, batch_size, num_workers)
    return evaluate_loader(model, loader, manifest, emotion_classes, device, aggregate_how, precision)


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def write_reports(
    out_dir: str | Path,
    metrics: dict[str, Any],
    predictions: pd.DataFrame,
    history: list[dict[str, Any]] | dict[str, list[dict[str, Any]]] | None,
    confusion: Sequence[Sequence[int]] | np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    title: str = "",
) -> None:
    """Write metrics.json, predictions.csv, and confusion.png / curves.png when a confusion
    matrix (with its class names) / a training history is given."""
    from .plots import plot_confusion, plot_curves

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(clean_json(metrics), indent=2) + "\n")
    predictions.to_csv(out / "predictions.csv", index=False, float_format="%.6f")
    if confusion is not None and classes is not None:
        plot_confusion(np.asarray(confusion), list(classes), out / "confusion.png", title=title)
    if history:
        plot_curves(history, out / "curves.png", title=title)


def clean_json(o: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, NaN/inf to None (strict JSON)."""
    if isinstance(o, dict):
        return {str(k): clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean_json(v) for v in o]
    if isinstance(o, np.ndarray):
        return clean_json(o.tolist())
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o


def evaluate_checkpoint(
    checkpoint: str | Path,
    store: str | Path,
    fold: int | None = None,
    *,
    scheme: str | None = None,
    split: str = "test",
    aggregate_how: str | None = None,
    device: str = "auto",
    num_workers: int = 0,
    batch_size: int | None = None,
    verify_features: bool = False,
) -> tuple[Evaluation, dict[str, Any]]:
    """Evaluate a saved checkpoint on one split of a store's fold.

    Defaults come from the checkpoint (its scheme, fold and aggregation). Features are
    normalised with the checkpoint's own fold statistics. Refused with a one-line
    :class:`InputError`: a checkpoint that :func:`load_checkpoint` finds damaged or
    inconsistent; a store whose feature config (n_mels, every feature parameter) or segment
    config (window frames, hop) the model was not built for; an emotion class list that
    differs; and, on the same corpus (fingerprint), a split whose speakers the checkpoint was
    trained on. Another store (another build, or another corpus) is allowed:
    ``info["same_store"]`` (same content id) and ``info["same_corpus"]`` say which. Returns
    the evaluation and a dict describing what was run.
    """
    from .checkpoint import load_checkpoint, store_content_id
    from .data import SegmentBatchDataset, SegmentLabels, open_store, resolve_fold, speaker_map
    from .errors import InputError
    from .model import InputSpec, check_input_spec
    from .runtime import resolve_device, resolve_precision

    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.run_config()
    reader = open_store(store, verify_features=verify_features)
    try:
        name = str(store)
        check_input_spec(ckpt.input_spec, InputSpec.from_reader(reader), name)
        classes = list(reader.vocab("emotion"))
        if classes != list(ckpt.emotion_classes):
            raise InputError(
                f"{name}: emotion classes {classes} differ from the checkpoint's {list(ckpt.emotion_classes)}"
            )
        scheme = scheme or ckpt.scheme
        k = int(fold if fold is not None else ckpt.fold)
        f = resolve_fold(reader, scheme, k, name)
        # Speakers are a property of the corpus: a rebuilt store of the same corpus holds the
        # same speakers, so the training-speaker check goes by fingerprint, not content.
        same_corpus = reader.fingerprint == ckpt.store_fingerprint
        same_store = store_content_id(reader, name) == ckpt.store_content_sha256
        if split not in ("test", "validation"):
            raise InputError(f"--split must be test or validation, got {split!r}")
        part_speakers = [str(s) for s in (f.test_speakers if split == "test" else f.validation_speakers)]
        seen = sorted(set(part_speakers) & set(ckpt.train_speakers))
        if same_corpus and seen:
            raise InputError(
                f"{name}: {split} speakers {', '.join(seen)} of {scheme} fold {k} were training speakers of "
                f"this checkpoint ({ckpt.scheme} fold {ckpt.fold}); the result would not be speaker independent"
            )
        if same_corpus and split == "test":
            # The checkpoint's validation speakers chose its epoch (early stopping): scoring them
            # as a test split is model selection on the test set, and inflates the result.
            chosen_on = _validation_speakers_of(reader, ckpt.scheme, ckpt.fold)
            picked = sorted(set(part_speakers) & chosen_on)
            if picked:
                raise InputError(
                    f"{name}: test speakers {', '.join(picked)} of {scheme} fold {k} were the validation speakers "
                    f"that chose this checkpoint's epoch ({ckpt.scheme} fold {ckpt.fold}); a test on them would "
                    "not be independent of model selection (use --split validation to score them as such)"
                )
        dev = resolve_device(device)
        model = ckpt.build_model().to(dev)
        dataset = SegmentBatchDataset(
            reader, SegmentLabels.from_reader(reader), ckpt.norm_mean.numpy(), ckpt.norm_std.numpy(),
            speaker_map(list(reader.vocab("speaker")), ckpt.train_speakers),
        )
        segs = f.test_segments if split == "test" else f.validation_segments
        how = aggregate_how or cfg.train.aggregate
        loader = evaluation_loader(dataset, segs, batch_size or cfg.train.eval_batch_size, num_workers)
        ev = evaluate_loader(model, loader, reader.manifest(), classes, dev, how,
                             resolve_precision(cfg.train.amp, dev))
        info = {
            "checkpoint": str(checkpoint),
            "store": name,
            "same_store": same_store,
            "same_corpus": same_corpus,
            "scheme": scheme,
            "fold": k,
            "split": split,
            "speakers": part_speakers,
            "aggregate": how,
            "checkpoint_fold": ckpt.fold,
            "checkpoint_epoch": ckpt.epoch,
        }
        return ev, info
    finally:
        reader.close()


def _validation_speakers_of(reader: Any, scheme: str, fold: int) -> set[str]:
    """The validation speakers of ``scheme`` fold ``fold`` in ``reader`` (empty if it has no such fold)."""
    if scheme not in reader.fold_schemes() or fold not in reader.fold_ids(scheme):
        return set()
    return {str(s) for s in reader.fold(scheme, fold).validation_speakers}
