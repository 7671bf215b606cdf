"""Training: one fold (:func:`train_fold`) and cross-validation (:func:`run_cv`).

Protocol (docs/method.md): train on the fold's balanced index, pick the epoch with the
best utterance-level validation UA (early stopping after ``patience`` epochs without
improvement), report test metrics of that best checkpoint.

Files of a fold run (``out_dir``): ``best.pt`` (best validation UA), ``last.pt`` (resume
state, rewritten every epoch), ``config.json``, ``history.json``, ``metrics.json`` (test
metrics plus validation of the best epoch), ``predictions.csv``, ``confusion.png``,
``curves.png``.

Resume (``--resume``) continues exactly the run that ``out_dir/last.pt`` holds, or refuses
with one line naming what differs: the fold or scheme, the store (its content id: a rebuilt
store of the same corpus has other segments, folds and statistics), or a config value. Only
the keys in :data:`RESUME_ADJUSTABLE` may change on resume; every other config value given
explicitly (``--aux``, loss weights, model sizes, batch size, seed, steps per epoch, an
explicit ``--config`` ...) must equal the run's. Before a run's ``best.pt`` is tested it is
checked to be this run's (same fold, scheme, store and config).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .checkpoint import (
    Checkpoint,
    capture_rng_state,
    first_line,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    store_content_id,
)
from .config import Config, apply_overrides
from .data import (
    BalancedBatchSampler,
    SegmentBatchDataset,
    SegmentLabels,
    fold_ids,
    make_loader,
    open_store,
    resolve_fold,
    speaker_map,
)
from .errors import InputError, SertrainError
from .evaluate import clean_json, evaluate_loader, evaluation_loader, write_reports
from .model import InputSpec, SERModel, build_model, check_input_spec, count_parameters
from .report import comparison_table, fold_table, summarize
from .runtime import Precision, resolve_device, resolve_precision, seed_everything

Logger = Callable[[str], None]

#: Config keys ``--resume`` may change. They decide how long training goes on, how patient
#: early stopping is, the step size (an explicit ``--lr`` on resume has always won, e.g. to
#: lower it after a divergence) and how data are read, none of which makes the model already
#: trained something else. Every other key defines the model, the objective, the batches or
#: the protocol: continuing with another value would give a model trained under neither
#: config, so it is refused.
RESUME_ADJUSTABLE = ("train.epochs", "train.patience", "train.lr", "train.num_workers", "train.eval_batch_size")


def _quiet(_: str) -> None:
    pass


@dataclass
class FoldResult:
    """Outcome of one fold: test metrics of the best checkpoint and the run's history."""

    scheme: str
    fold: int
    out_dir: Path
    test: dict[str, Any]
    validation: dict[str, Any] | None
    best_epoch: int
    epochs_run: int
    test_speakers: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    predictions: pd.DataFrame | None = None

    def row(self) -> dict[str, Any]:
        """JSON-ready summary (what cv's metrics.json lists per fold)."""
        return {
            "fold": self.fold,
            "scheme": self.scheme,
            "test_speakers": self.test_speakers,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "test": self.test,
            "validation": self.validation,
        }


def multitask_loss(
    out: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    w_gender: float,
    w_speaker: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``CE_emotion + w_gender * CE_gender + w_speaker * CE_speaker`` (fp32 logits).

    Labels of -1 are ignored (no emotion class; not a training speaker). A term whose weight
    is 0, or whose batch holds no usable label, is left out rather than added as 0 * NaN.
    """
    device = out["emotion"].device
    emotion = batch["emotion"].to(device)
    loss = F.cross_entropy(out["emotion"].float(), emotion, ignore_index=-1, label_smoothing=label_smoothing)
    parts = {"emotion": float(loss.detach())}
    if w_gender > 0:
        g = batch["gender"].to(device)
        if (g >= 0).any():
            lg = F.cross_entropy(out["gender"].float(), g, ignore_index=-1)
            loss = loss + w_gender * lg
            parts["gender"] = float(lg.detach())
    if w_speaker > 0 and "speaker" in out:
        s = batch["speaker"].to(device)
        if (s >= 0).any():
            ls = F.cross_entropy(out["speaker"].float(), s, ignore_index=-1)
            loss = loss + w_speaker * ls
            parts["speaker"] = float(ls.detach())
    parts["total"] = float(loss.detach())
    return loss, parts


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def _state_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class _StoreHandle:
    """A reader we opened (closed when done) or one the caller passed in (left open)."""

    def __init__(self, store: Any):
        if isinstance(store, (str, Path)):
            self.reader, self.owned, self.name = open_store(store), True, str(store)
        else:
            self.reader, self.owned = store, False
            self.name = str(getattr(store, "path", "store"))

    def close(self) -> None:
        if self.owned:
            self.reader.close()


def train_fold(
    store: str | Path | Any,
    fold: int,
    cfg: Config,
    out_dir: str | Path,
    *,
    device: str = "auto",
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    log: Logger | None = None,
) -> FoldResult:
    """Train and test one fold of ``cfg.data.scheme``; see the module docstring for outputs.

    ``store`` is a path or an open :class:`serprep.store.StoreReader`. With ``resume`` and an
    existing ``out_dir/last.pt``, the run continues from it with the checkpoint's own config
    plus ``overrides`` (the values given explicitly on the command line, e.g. more epochs);
    a finished run is only re-tested. ``cfg`` is then not used: what the caller asks for is
    ``fold`` and ``overrides``, and a resume is refused (one-line :class:`InputError`, before
    anything is written) when ``fold``, ``overrides["data.scheme"]``, the store's content id,
    or any override outside :data:`RESUME_ADJUSTABLE` differs from the run's, or when
    ``out_dir/best.pt`` is not this run's. Without ``resume`` an existing run is refused, so
    a typo cannot overwrite results.
    """
    log = log or _quiet
    out = Path(out_dir)
    last_path = out / "last.pt"
    resumed: Checkpoint | None = None
    if resume and last_path.exists():
        resumed = load_checkpoint(last_path)
        cfg = _resume_config(resumed, last_path, fold, overrides or {})
        if (out / "best.pt").exists():  # refuse before anything is written, not after training
            _check_best(load_checkpoint(out / "best.pt"), out / "best.pt", last_path,
                        resumed.scheme, resumed.fold, resumed.store_content_sha256, cfg)
    elif last_path.exists():
        raise InputError(f"{out} already holds a run (last.pt): pass --resume to continue it, or another --out")

    handle = _StoreHandle(store)
    try:
        return _train_fold(handle, fold, cfg, out, resolve_device(device), resumed, log)
    finally:
        handle.close()


def _flat(cfg: Config) -> dict[str, Any]:
    """``{"model.lstm_hidden": 64, ...}``: a config's values by dotted key (name left out)."""
    return {f"{section}.{key}": value for section, values in cfg.to_dict().items() if isinstance(values, dict)
            for key, value in values.items()}


def _config_difference(a: Config, b: Config) -> tuple[str, Any, Any, int] | None:
    """(first key outside RESUME_ADJUSTABLE whose value differs, a's value, b's value, number
    of such keys), or None when the two configs describe the same run."""
    fa, fb = _flat(a), _flat(b)
    keys = [k for k in fa if k not in RESUME_ADJUSTABLE and fa[k] != fb.get(k)]
    return (keys[0], fa[keys[0]], fb.get(keys[0]), len(keys)) if keys else None


def _resume_config(resumed: Checkpoint, last_path: Path, k: int, overrides: dict[str, Any]) -> Config:
    """The config a resume runs with: ``last_path``'s own, with the explicit ``overrides``
    that :data:`RESUME_ADJUSTABLE` allows. Another fold or scheme, or any other override
    that differs from the run's value, is refused in one line naming it."""
    scheme = str(overrides.get("data.scheme") or resumed.scheme)
    if resumed.fold != k or scheme != resumed.scheme:
        asked = f"fold {k}" if scheme == resumed.scheme else f"{scheme} fold {k}"
        raise InputError(
            f"{last_path} is {resumed.run_label}; this run asks for {asked} (use another --out for a new run)"
        )
    base = resumed.run_config()
    cfg = apply_overrides(base, overrides)
    diff = _config_difference(base, cfg)
    if diff:
        key, old, new, n = diff
        more = f", and {n - 1} more key(s) differ" if n > 1 else ""
        raise InputError(
            f"{last_path} was trained with {key} = {old!r}; this run asks for {new!r}{more} (a resume keeps the "
            f"run's config: only {', '.join(RESUME_ADJUSTABLE)} may change; use another --out for a new run)"
        )
    return cfg


def _check_best(best: Checkpoint, best_path: Path, last_path: Path, scheme: str, k: int, content: str,
                cfg: Config) -> None:
    """Refuse to test a ``best.pt`` that is not this run's (copied in, or left by another run)."""
    def refuse(what: str) -> InputError:
        return InputError(f"{what}: it is not this run's best checkpoint (train again with another --out)")

    if (best.scheme, best.fold) != (scheme, k):
        raise refuse(f"{best_path} is {best.run_label} but {last_path} is {scheme} fold {k}")
    if best.store_content_sha256 != content:
        raise refuse(
            f"{best_path} was trained on another store (content {best.store_content_sha256[:16]}) than "
            f"{last_path} ({content[:16]})"
        )
    diff = _config_difference(best.run_config(), cfg)
    if diff:
        key, theirs, ours, _ = diff
        raise refuse(f"{best_path} was trained with {key} = {theirs!r} but {last_path} with {ours!r}")


def _check_resumed_store(resumed: Checkpoint, last_path: Path, reader: Any, name: str, content: str,
                         spec: InputSpec, fold: Any) -> None:
    """The store of a resume must be the very store ``last.pt`` was trained on."""
    if resumed.store_content_sha256 != content:
        raise InputError(
            f"{name} is not the store this run was trained on (store content {content[:16]} vs "
            f"{resumed.store_content_sha256[:16]} in {last_path}); resume with the same store"
        )
    # Same content makes the rest equal; these guard a last.pt whose fields disagree with
    # the content id it claims (a crafted file), before its tensors meet this store's data.
    check_input_spec(resumed.input_spec, spec, name)
    for what, ours, theirs in (
        ("emotion classes", list(reader.vocab("emotion")), resumed.emotion_classes),
        ("gender classes", list(reader.vocab("gender")), resumed.gender_classes),
        (f"training speakers of {resumed.run_label}", [str(s) for s in fold.train_speakers], resumed.train_speakers),
    ):
        if ours != theirs:
            raise InputError(f"{name}: {what} {ours} differ from {last_path}'s {theirs}")


def _train_fold(
    handle: _StoreHandle,
    k: int,
    cfg: Config,
    out: Path,
    device: torch.device,
    resumed: Checkpoint | None,
    log: Logger,
) -> FoldResult:
    reader, name = handle.reader, handle.name
    t = cfg.train
    spec = InputSpec.from_reader(reader)
    content = store_content_id(reader, name)
    fold = resolve_fold(reader, cfg.data.scheme, k, name)
    if resumed is not None:
        _check_resumed_store(resumed, out / "last.pt", reader, name, content, spec, fold)
    emotion_classes = list(reader.vocab("emotion"))
    gender_classes = list(reader.vocab("gender"))
    train_speakers = [str(s) for s in fold.train_speakers]
    labels = SegmentLabels.from_reader(reader)
    manifest = reader.manifest()
    dataset = SegmentBatchDataset(
        reader, labels, fold.norm_mean, fold.norm_std, speaker_map(list(reader.vocab("speaker")), train_speakers)
    )
    w_gender, w_speaker = cfg.loss.effective_weights()
    precision = resolve_precision(t.amp, device)

    seed_everything(t.seed, device)
    model = build_model(cfg.model, spec, len(emotion_classes), len(gender_classes), len(train_speakers)).to(device)
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)

    start_epoch, best_epoch, best_ua, best_loss, history = 0, 0, float("-inf"), float("inf"), []
    if resumed is not None:
        model.load_state_dict(resumed.model_state)  # shapes checked by load_checkpoint
        try:
            if resumed.optimizer_state is not None:
                optimizer.load_state_dict(resumed.optimizer_state)
                for group in optimizer.param_groups:  # an explicit --lr on resume wins
                    group["lr"] = t.lr
            if resumed.scaler_state:
                scaler.load_state_dict(resumed.scaler_state)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise InputError(
                f"{out / 'last.pt'}: invalid checkpoint: its optimizer state does not fit this run's "
                f"{t.optimizer} optimizer ({first_line(exc)})"
            ) from None
        start_epoch, best_epoch, best_ua = resumed.epoch, resumed.best_epoch, resumed.best_metric
        history = list(resumed.history)
        best_loss = next((h.get("val_loss") for h in history if h["epoch"] == best_epoch), None)
        best_loss = float("inf") if best_loss is None else best_loss
        restore_rng_state(resumed.rng_state)

    def checkpoint(epoch: int, finished: bool, with_resume_state: bool) -> Checkpoint:
        return Checkpoint(
            model_state=_state_cpu(model),
            config=cfg.to_dict(),
            emotion_classes=emotion_classes,
            gender_classes=gender_classes,
            train_speakers=train_speakers,
            feature_config_json=spec.feature_config_json,
            segment_config_json=json.dumps(reader.segment_config.to_dict(), sort_keys=True),
            store_fingerprint=str(reader.fingerprint),
            store_content_sha256=content,
            store_corpus=str(reader.corpus),
            scheme=cfg.data.scheme,
            fold=k,
            norm_mean=torch.as_tensor(np.asarray(fold.norm_mean, dtype=np.float32)).clone(),
            norm_std=torch.as_tensor(np.asarray(fold.norm_std, dtype=np.float32)).clone(),
            epoch=epoch,
            best_epoch=best_epoch,
            best_metric=best_ua,
            history=history,
            optimizer_state=optimizer.state_dict() if with_resume_state else None,
            scaler_state=scaler.state_dict() if with_resume_state else None,
            rng_state=capture_rng_state() if with_resume_state else None,
            finished=finished,
        )

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    pin = device.type == "cuda"
    sampler = BalancedBatchSampler(fold.balanced_index, t.batch_size, t.seed, t.steps_per_epoch)
    # A finished run is only re-tested, unless more epochs were asked for and early
    # stopping had not ended it (then training simply continues).
    would_stop = bool(t.patience) and len(fold.validation_segments) > 0 and start_epoch - best_epoch >= t.patience
    finished = resumed is not None and resumed.finished and (start_epoch >= t.epochs or would_stop)
    has_val = len(fold.validation_segments) > 0
    label = f"fold {k}"
    if not finished:
        log(
            f"{label}: train {len(fold.train_utts)} utts ({len(fold.balanced_index)} balanced segments), "
            f"validation {len(fold.validation_utts)}, test {len(fold.test_utts)} utts "
            f"[{', '.join(map(str, fold.test_speakers))}]; {cfg.name} model "
            f"{count_parameters(model) / 1e6:.2f} M params on {device} ({precision.name})"
            + (f"; resuming after epoch {start_epoch}" if resumed is not None else "")
        )
        if not has_val:
            log(f"{label}: no validation utterances in this fold: keeping the last epoch, no early stopping")
        train_loader = make_loader(dataset, sampler, t.num_workers, pin)
        val_loader = (
            evaluation_loader(dataset, fold.validation_segments, t.eval_batch_size, t.num_workers) if has_val else None
        )
        epoch = start_epoch
        for epoch in range(start_epoch + 1, t.epochs + 1):
            if t.patience and has_val and epoch - 1 - best_epoch >= t.patience:
                log(f"{label}: early stop: no better validation UA for {t.patience} epochs")
                break
            t0 = time.perf_counter()
            stats = _train_epoch(model, train_loader, sampler, epoch, optimizer, scaler, precision, device,
                                 w_gender, w_speaker, cfg)
            entry: dict[str, Any] = {"epoch": epoch, **stats, "lr": optimizer.param_groups[0]["lr"]}
            if val_loader is not None:
                ev = evaluate_loader(model, val_loader, manifest, emotion_classes, device, t.aggregate, precision)
                entry.update(val_loss=ev.metrics["segment_loss"], val_ua=ev.metrics["ua"], val_wa=ev.metrics["wa"],
                             val_f1=ev.metrics["macro_f1"])
                # Ties in UA (common on a small validation split) go to the lower loss.
                improved = (
                    best_epoch == 0
                    or ev.metrics["ua"] > best_ua
                    or (ev.metrics["ua"] == best_ua and ev.segment_loss < best_loss)
                )
            else:
                entry.update(val_loss=None, val_ua=None, val_wa=None, val_f1=None)
                improved = True
            entry["seconds"] = time.perf_counter() - t0
            history.append(clean_json(entry))
            if improved:
                best_epoch = epoch
                best_ua = ev.metrics["ua"] if val_loader is not None else float("nan")
                best_loss = ev.segment_loss if val_loader is not None else float("nan")
                save_checkpoint(checkpoint(epoch, False, False), out / "best.pt")
            save_checkpoint(checkpoint(epoch, False, True), out / "last.pt")
            log(
                f"{label} epoch {epoch}/{t.epochs}: loss {stats['train_loss']:.4f} "
                f"(emotion {stats['train_loss_emotion']:.4f}) train acc {100 * stats['train_acc']:.1f}%"
                + (f", val UA {100 * entry['val_ua']:.1f}% (best {100 * best_ua:.1f}% @ {best_epoch})"
                   if val_loader is not None else "")
                + f" [{entry['seconds']:.1f}s, {stats['segments_per_s']:.0f} seg/s]"
            )
        del train_loader, val_loader  # stop persistent workers before the test pass
        save_checkpoint(checkpoint(history[-1]["epoch"] if history else epoch, True, True), out / "last.pt")
        (out / "history.json").write_text(json.dumps(clean_json(history), indent=2) + "\n")

    # Test the best checkpoint (the protocol's model), not the last epoch; only if it is
    # this run's (a best.pt copied in from another fold would give a fold's test speakers
    # to a model that trained on them).
    best = load_checkpoint(out / "best.pt", map_location="cpu")
    _check_best(best, out / "best.pt", out / "last.pt", cfg.data.scheme, k, content, cfg)
    model.load_state_dict(best.model_state)
    test_ev = evaluate_loader(
        model, evaluation_loader(dataset, fold.test_segments, t.eval_batch_size, t.num_workers),
        manifest, emotion_classes, device, t.aggregate, precision,
    )
    val_best = next((h for h in history if h["epoch"] == best.epoch), None)
    validation = (
        {"ua": val_best.get("val_ua"), "wa": val_best.get("val_wa"), "macro_f1": val_best.get("val_f1")}
        if val_best and has_val else None
    )
    metrics = {
        "scheme": cfg.data.scheme,
        "fold": k,
        "config": cfg.name,
        "aux": cfg.loss.aux,
        "store_fingerprint": str(reader.fingerprint),
        "store_content_sha256": content,
        "test_speakers": [str(s) for s in fold.test_speakers],
        "best_epoch": best.epoch,
        "epochs_run": len(history),
        "validation": validation,
        "test": test_ev.metrics,
    }
    write_reports(out, metrics, test_ev.predictions, history, test_ev.metrics["confusion"], emotion_classes,
                  title=f"{cfg.name} {cfg.data.scheme} {label}")
    log(
        f"{label}: test (best epoch {best.epoch}) UA {100 * test_ev.metrics['ua']:.1f}% "
        f"WA {100 * test_ev.metrics['wa']:.1f}% F1 {100 * test_ev.metrics['macro_f1']:.1f}%"
    )
    return FoldResult(
        scheme=cfg.data.scheme,
        fold=k,
        out_dir=out,
        test=clean_json(test_ev.metrics),
        validation=clean_json(validation),
        best_epoch=best.epoch,
        epochs_run=len(history),
        test_speakers=[str(s) for s in fold.test_speakers],
        history=history,
        predictions=test_ev.predictions,
    )


def _train_epoch(
    model: SERModel,
    loader: Any,
    sampler: BalancedBatchSampler,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    device: torch.device,
    w_gender: float,
    w_speaker: float,
    cfg: Config,
) -> dict[str, float]:
    """One pass over the sampler's batches; returns mean losses, accuracy and throughput."""
    sampler.set_epoch(epoch)  # (seed, epoch) fixes the batch order: resumable, reproducible
    model.train()
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    correct = seen = 0
    t0 = time.perf_counter()
    for batch in loader:
        x = batch["x"].to(device, non_blocking=True)
        with precision.autocast(device):
            out = model(x, batch["valid"].to(device, non_blocking=True))
        loss, parts = multitask_loss(out, batch, w_gender, w_speaker, cfg.loss.label_smoothing)
        if not math.isfinite(parts["total"]):
            raise SertrainError(f"training diverged at epoch {epoch} (loss {parts['total']}); lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        for key, v in parts.items():
            sums[key] += v
            counts[key] += 1
        y = batch["emotion"].to(device)
        correct += int((out["emotion"].argmax(1) == y).sum())
        seen += int((y >= 0).sum())
    elapsed = time.perf_counter() - t0
    mean = {key: sums[key] / counts[key] for key in sums}
    return {
        "train_loss": mean.get("total", float("nan")),
        "train_loss_emotion": mean.get("emotion", float("nan")),
        "train_loss_gender": mean.get("gender"),
        "train_loss_speaker": mean.get("speaker"),
        "train_acc": correct / seen if seen else float("nan"),
        "segments_per_s": seen / elapsed if elapsed > 0 else float("nan"),
    }


@dataclass
class CVResult:
    """Results per auxiliary-task setting (``settings[aux] = [FoldResult, ...]``)."""

    settings: dict[str, list[FoldResult]]
    tables: dict[str, str]
    comparison: str | None


def run_cv(
    store: str | Path | Any,
    cfg: Config,
    out_dir: str | Path,
    *,
    folds: Sequence[int] | None = None,
    aux_settings: Sequence[str] | None = None,
    device: str = "auto",
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    log: Logger | None = None,
    report: Logger | None = None,
) -> CVResult:
    """All folds (or ``folds``) for each auxiliary-task setting, with summary reports.

    ``log`` receives progress lines, ``report`` the result tables (default: ``log``).

    One setting writes ``out_dir/fold_<k>/`` and summary files in ``out_dir``; several
    settings (the ablation grid) write ``out_dir/<setting>/...`` each, plus
    ``out_dir/comparison.{md,json}``. Summary files: ``metrics.json`` (per fold + mean/std),
    ``predictions.csv`` (all folds, with a ``fold`` column), ``confusion.png`` (summed over
    folds), ``curves.png`` (one line per fold), ``table.txt``.
    """
    log = log or _quiet
    report = report or log  # tables go here (printed even when progress is silenced)
    out = Path(out_dir)
    settings = list(aux_settings) if aux_settings else [cfg.loss.aux]
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
        results: dict[str, list[FoldResult]] = {}
        tables: dict[str, str] = {}
        for aux in settings:
            aux_cfg = apply_overrides(cfg, {"loss.aux": aux})
            # The setting and scheme are what this cv asks of every fold (its folds and tables
            # follow them), so a resume checks them even when they were not typed explicitly.
            aux_over = {**(overrides or {}), "loss.aux": aux, "data.scheme": cfg.data.scheme}
            sub = out if len(settings) == 1 else out / aux
            runs = []
            for k in chosen:
                if len(settings) > 1:
                    log(f"[aux {aux}]")
                runs.append(
                    train_fold(handle.reader, k, aux_cfg, sub / f"fold_{k}", device=device,
                               resume=resume, overrides=aux_over, log=log)
                )
            results[aux] = runs
            tables[aux] = _write_cv_summary(sub, aux_cfg, runs)
            report(f"\n{aux_cfg.name} / {cfg.data.scheme} / aux {aux}: test metrics of the best-validation checkpoint (%)")
            report(tables[aux] + "\n")
        comparison = None
        if len(settings) > 1:
            comparison = comparison_table({a: [r.row() for r in rs] for a, rs in results.items()})
            out.mkdir(parents=True, exist_ok=True)
            (out / "comparison.md").write_text(
                f"# Auxiliary-task ablation ({cfg.name}, {cfg.data.scheme}, folds {chosen})\n\n```\n{comparison}\n```\n"
            )
            (out / "comparison.json").write_text(json.dumps(clean_json({
                a: {"folds": [r.row() for r in rs], "summary": summarize([r.row() for r in rs])}
                for a, rs in results.items()
            }), indent=2) + "\n")
            report("auxiliary-task comparison (test, mean ± std over folds, %)")
            report(comparison)
        return CVResult(results, tables, comparison)
    finally:
        handle.close()


def _write_cv_summary(out: Path, cfg: Config, runs: list[FoldResult]) -> str:
    rows = [r.row() for r in runs]
    table = fold_table(rows)
    summary = {k: {"mean": m, "std": s} for k, (m, s) in summarize(rows).items()}
    classes = runs[0].test["classes"]
    total_cm = np.sum([np.asarray(r.test["confusion"]) for r in runs], axis=0)
    metrics = {
        "config": cfg.name,
        "scheme": cfg.data.scheme,
        "aux": cfg.loss.aux,
        "std": "population (ddof=0) over folds",
        "summary": summary,
        "folds": rows,
        "confusion_total": total_cm.tolist(),
        "classes": classes,
    }
    preds = pd.concat(
        [r.predictions.assign(fold=r.fold) for r in runs if r.predictions is not None], ignore_index=True
    )
    preds = preds[["fold", *[c for c in preds.columns if c != "fold"]]]
    write_reports(
        out, metrics, preds, {f"fold {r.fold}": r.history for r in runs}, total_cm, classes,
        title=(f"{cfg.name} {cfg.data.scheme} aux={cfg.loss.aux}: all folds "
               "(confusion summed over folds, curves one line per fold)"),
    )
    (out / "table.txt").write_text(table + "\n")
    return table
