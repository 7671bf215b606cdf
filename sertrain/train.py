"""Training one fold (:func:`train_fold`); cross-validation over folds × seeds is :mod:`sertrain.cv`.

Protocol (docs/method.md): train on the fold's balanced index, let the selection rule
``train.selection`` (:mod:`sertrain.selection`) pick the model from the utterance-level
validation metrics of each epoch (default: the average of the weights of the 3 epochs with
the best validation UA; early stopping after ``patience`` epochs without a change of the
selection), report test metrics of that model.

Files of a fold run (``out_dir``): ``best.pt`` (the selected model), ``last.pt`` (resume
state, rewritten every epoch), ``config.json``, ``history.json``, ``metrics.json`` (test
metrics plus validation of the selected model), ``predictions.csv``, ``confusion.png``,
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
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import distributed
from .checkpoint import (
    Checkpoint,
    capture_rng_state,
    first_line,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    store_content_id,
)
from .cache import DeviceCache, evaluation_batches, fold_cache, size_text
from .config import Config, apply_overrides
from .data import (
    BalancedBatchSampler,
    SegmentBatchDataset,
    SegmentLabels,
    host_to_device,
    make_loader,
    open_store,
    resolve_fold,
    speaker_map,
)
from .errors import InputError, SertrainError
from .evaluate import clean_json, evaluate_loader, write_reports
from .model import InputSpec, SERModel, build_model, check_input_spec, count_parameters
from .runtime import Precision, resolve_device, resolve_precision, seed_everything
from .selection import Selection, get_rule, select, selection_state, should_stop
from .tasks import DIMENSIONS, TASKS, regression_tasks

Logger = Callable[[str], None]
#: Called after each epoch with (epoch, model, history entry); see :func:`train_fold`.
EpochHook = Callable[[int, torch.nn.Module, dict[str, Any]], None]

#: Config keys ``--resume`` may change. They decide how long training goes on, how patient
#: early stopping is, the step size (an explicit ``--lr`` on resume has always won, e.g. to
#: lower it after a divergence) and how data are read, none of which makes the model already
#: trained something else. Every other key defines the model, the objective, the batches or
#: the protocol: continuing with another value would give a model trained under neither
#: config, so it is refused.
RESUME_ADJUSTABLE = ("train.epochs", "train.patience", "train.lr", "train.num_workers", "train.eval_batch_size",
                     "train.cache", "train.cache_dtype", "train.compile")


def _quiet(_: str) -> None:
    pass


@dataclass
class FoldResult:
    """Outcome of one fold: test metrics of the best checkpoint and the run's history
    (``test`` is None for a run trained with ``test=False``, which its caller tests)."""

    scheme: str
    fold: int
    out_dir: Path
    test: dict[str, Any] | None
    validation: dict[str, Any] | None
    best_epoch: int
    epochs_run: int
    test_speakers: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    predictions: pd.DataFrame | None = None
    seed: int = 0
    #: Epochs whose weights the selected model holds (several for an averaging rule).
    selected_epochs: list[int] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """JSON-ready summary (what cv's metrics.json lists per run)."""
        return {
            "fold": self.fold,
            "seed": self.seed,
            "scheme": self.scheme,
            "test_speakers": self.test_speakers,
            "best_epoch": self.best_epoch,
            "selected_epochs": self.selected_epochs or [self.best_epoch],
            "epochs_run": self.epochs_run,
            "test": self.test,
            "validation": self.validation,
        }


def multitask_loss(
    out: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    weights: Mapping[str, float],
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``CE_emotion + sum over tasks of weights[task] * loss_task`` (fp32 outputs).

    ``weights``: ``{task: weight}`` of the active auxiliary tasks (``cfg.loss.active_weights()``;
    the terms follow :data:`sertrain.tasks.TASKS`' order). Labels of -1 are ignored (no emotion
    class; not a training speaker), and so are NaN regression targets. A term whose weight is
    0, whose head the model lacks, or whose batch holds no usable target, is left out rather
    than added as 0 * NaN. The parts are read back as floats (a synchronisation on a GPU);
    the training loop uses :func:`multitask_loss_terms`, which keeps them on the device.
    """
    device = out["emotion"].device
    labels = {key: batch[key] for key in ("emotion", *TASKS) if key in batch}
    loss, parts = multitask_loss_terms(out, {k: v.to(device) for k, v in labels.items()},
                                       _label_presence(labels), weights, label_smoothing)
    return loss, {key: float(value) for key, value in parts.items()}


def _label_presence(labels: dict[str, torch.Tensor]) -> dict[str, bool]:
    """Whether each label tensor holds a usable label (a class >= 0; a finite rating); read on
    the host when the labels are CPU tensors (as batches deliver them), so no device value is
    waited for."""
    return {key: TASKS[key].present(value) if key in TASKS else
            bool((value.numpy() >= 0).any()) if value.device.type == "cpu" else bool((value >= 0).any())
            for key, value in labels.items()}


def multitask_loss_terms(
    out: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    present: dict[str, bool],
    weights: Mapping[str, float],
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`multitask_loss` without reading anything back: ``labels`` are on the outputs'
    device, ``present`` says (from the host) which targets the batch holds, and the parts
    are detached 0-dim tensors on the device. Same operations in the same order, so the same
    values as :func:`multitask_loss`."""
    loss = F.cross_entropy(out["emotion"].float(), labels["emotion"], ignore_index=-1,
                           label_smoothing=label_smoothing)
    parts = {"emotion": loss.detach()}
    for name, task in TASKS.items():  # registry order: gender, speaker, then the dimensions
        weight = weights.get(name, 0.0)
        if weight > 0 and name in out and present.get(name):
            term = task.loss(out[name], labels[name])
            loss = loss + weight * term
            parts[name] = term.detach()
    parts["total"] = loss.detach()
    return loss, parts


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """The configured optimiser. On CUDA its fused implementation (one kernel for all
    parameters, step counts on the device: no host work or synchronisation per step; the same
    update up to rounding); elsewhere torch's default implementation."""
    t = cfg.train
    params = list(model.parameters())
    fused = {"fused": True} if params and params[0].device.type == "cuda" else {}
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, **fused)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, **fused)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, **fused)


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
    epoch_hook: EpochHook | None = None,
    tensorboard: str | Path | None = None,
    provenance: dict[str, Any] | None = None,
    test: bool = True,
    label: str | None = None,
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

    ``test=False`` trains and selects the model but leaves the test to the caller
    (:mod:`sertrain.cross` tests one model on other stores): no test pass, ``metrics.json``
    without test metrics, no ``predictions.csv``, ``FoldResult.test`` None. ``label`` names
    the run in log lines (default ``fold <k>``).
    """
    log = log or _quiet
    out = Path(out_dir)
    ddp = distributed.current()  # torchrun: rank 0 reads out_dir (and alone writes it)
    if ddp is None:
        resumed, cfg = _start_state(out, fold, cfg, resume, overrides)
    else:
        resumed, cfg = ddp.from_main(lambda: _start_state(out, fold, cfg, resume, overrides))

    handle = _StoreHandle(store)
    try:
        return _train_fold(handle, fold, cfg, out, resolve_device(device), resumed, log, epoch_hook,
                           Path(tensorboard) if tensorboard else None, provenance or {}, test, label)
    finally:
        handle.close()


def _start_state(out: Path, fold: int, cfg: Config, resume: bool,
                 overrides: dict[str, Any] | None) -> tuple[Checkpoint | None, Config]:
    """(checkpoint to resume from or None, config to run): a resume's checks, or the refusal
    to overwrite an existing run (see :func:`train_fold`)."""
    last_path = out / "last.pt"
    if resume and last_path.exists():
        resumed = load_checkpoint(last_path)
        cfg = _resume_config(resumed, last_path, fold, overrides or {})
        if (out / "best.pt").exists():  # refuse before anything is written, not after training
            _check_best(load_checkpoint(out / "best.pt"), out / "best.pt", last_path,
                        resumed.scheme, resumed.fold, resumed.store_content_sha256, cfg)
        return resumed, cfg
    if last_path.exists():
        raise InputError(f"{out} already holds a run (last.pt): pass --resume to continue it, or another --out")
    return None, cfg


def _config_difference(a: Config, b: Config) -> tuple[str, Any, Any, int] | None:
    """(first key outside RESUME_ADJUSTABLE whose value differs, a's value, b's value, number
    of such keys), or None when the two configs describe the same run."""
    fa, fb = a.flat(), b.flat()
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
    epoch_hook: EpochHook | None = None,
    tensorboard: Path | None = None,
    provenance: dict[str, Any] | None = None,
    run_test: bool = True,
    run_label: str | None = None,
) -> FoldResult:
    reader, name = handle.reader, handle.name
    t = cfg.train
    # Data parallel (torchrun): every rank trains, rank 0 alone evaluates, writes and logs.
    ddp = distributed.current()
    main = ddp is None or ddp.is_main
    if ddp is not None:
        ddp.check_batch(t.batch_size)
        device, log = ddp.device_for(device), (log if main else _quiet)
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
    weights = cfg.loss.active_weights()
    check_task_targets(cfg, labels, name)
    if ddp is not None and regression_tasks(cfg.loss.active_tasks()):
        raise InputError(f"torchrun: the 1 - CCC loss of {'+'.join(regression_tasks(cfg.loss.active_tasks()))} "
                         "is not split over processes yet; train those tasks in one process")
    precision = resolve_precision(t.amp, device)

    seed_everything(t.seed, device)
    model = build_model(cfg.model, spec, len(emotion_classes), len(gender_classes), len(train_speakers),
                        cfg.loss.active_tasks()).to(device)
    if ddp is not None:
        model = ddp.sync_batchnorm(model)  # statistics of the global batch (same state-dict keys)
    if t.compile != "off":
        model.enable_compile(t.compile)  # training forward only; weights and checkpoints unchanged
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)

    start_epoch, best_epoch, best_ua, history = 0, 0, float("-inf"), []
    # The selected epochs, and the weights of those the rule may still use (sertrain.selection:
    # keeping the current selection's weights is always enough). Only an averaging rule needs
    # them after a resume; a single-epoch selection is already in best.pt.
    selected: tuple[int, ...] = ()
    kept: dict[int, dict[str, torch.Tensor]] = {}
    averaging = getattr(get_rule(t.selection), "k", 1) > 1
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
        selected = tuple(resumed.selected_epochs)
        kept = dict(resumed.selection_states or {})
        restore_rng_state(resumed.rng_state)

    def checkpoint(epoch: int, finished: bool, with_resume_state: bool,
                   state: dict[str, torch.Tensor] | None = None) -> Checkpoint:
        return Checkpoint(
            model_state=state if state is not None else _state_cpu(model),
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
            selected_epochs=list(selected),
            selection_states=dict(kept) if with_resume_state and averaging else None,
            optimizer_state=optimizer.state_dict() if with_resume_state else None,
            scaler_state=scaler.state_dict() if with_resume_state else None,
            rng_state=capture_rng_state() if with_resume_state else None,
            finished=finished,
        )

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    pin = device.type == "cuda"
    sampler = BalancedBatchSampler(fold.balanced_index, t.batch_size, t.seed, t.steps_per_epoch)
    train_model: torch.nn.Module = model
    if ddp is not None:  # this rank's share of each global batch; DDP averages the gradients
        sampler = ddp.shard(sampler)
        train_model = ddp.wrap(model, _unused_heads(dataset, fold.balanced_index, weights, model))
    # A finished run is only re-tested, unless more epochs were asked for and early
    # stopping had not ended it (then training simply continues).
    has_val = len(fold.validation_segments) > 0
    would_stop = has_val and should_stop(t.selection, history, t.patience)
    finished = resumed is not None and resumed.finished and (start_epoch >= t.epochs or would_stop)
    label = run_label or f"fold {k}"
    cache: DeviceCache | None = None  # train.cache = "device": the fold's features on the device
    if not finished:
        log(
            f"{label}: train {len(fold.train_utts)} utts ({len(fold.balanced_index)} balanced segments), "
            f"validation {len(fold.validation_utts)}"
            + (f", test {len(fold.test_utts)} utts [{', '.join(map(str, fold.test_speakers))}]" if run_test
               else " utts") + f"; {cfg.name} model "
            f"{count_parameters(model) / 1e6:.2f} M params on {device} ({precision.name})"
            + (f"; resuming after epoch {start_epoch}" if resumed is not None else "")
        )
        if not has_val:
            log(f"{label}: no validation utterances in this fold: keeping the last epoch, no early stopping")
        if t.cache == "device":
            cache = _build_cache(dataset, fold, device, t.cache_dtype, precision, run_test and main, label, log)
        train_loader = cache.batches(sampler) if cache is not None else make_loader(dataset, sampler, t.num_workers, pin)
        val_loader = (
            evaluation_batches(dataset, cache, fold.validation_segments, t.eval_batch_size, t.num_workers)
            if has_val and main else None
        )
        board = _board(tensorboard) if main else None
        epoch = start_epoch
        for epoch in range(start_epoch + 1, t.epochs + 1):
            if has_val and should_stop(t.selection, history, t.patience):
                log(f"{label}: early stop: selection ({t.selection}) unchanged for {t.patience} epochs")
                break
            t0 = time.perf_counter()
            if ddp is not None:
                ddp.seed_epoch(t.seed, epoch)
            stats = _train_epoch(train_model, train_loader, sampler, epoch, optimizer, scaler, precision, device,
                                 weights, cfg, ddp)
            entry: dict[str, Any] = {"epoch": epoch, **stats, "lr": optimizer.param_groups[0]["lr"]}
            if val_loader is not None:
                ev = evaluate_loader(model, val_loader, manifest, emotion_classes, device, t.aggregate, precision)
                entry.update(val_loss=ev.metrics["segment_loss"], val_ua=ev.metrics["ua"], val_wa=ev.metrics["wa"],
                             val_f1=ev.metrics["macro_f1"])
                # Rated dimensions with a head (auxiliary vad): their validation CCC per epoch.
                entry.update({f"val_ccc_{d}": m["ccc"] for d, m in (ev.metrics.get("dimensions") or {}).items()})
            else:
                entry.update(val_loss=None, val_ua=None, val_wa=None, val_f1=None)
            entry["seconds"] = time.perf_counter() - t0
            history.append(clean_json(entry))
            if ddp is not None:  # rank 0's validation: every rank selects and stops alike
                history[-1] = ddp.broadcast(history[-1])
            sel = select(t.selection, history) if has_val else None
            if sel is None:  # no validation: the last epoch is the model
                sel, kept = Selection((epoch,), float("nan")), {}
            else:
                kept[epoch] = _state_cpu(model)
                kept = {e: kept[e] for e in sel.epochs if e in kept}
            improved = sel.epochs != selected
            if epoch_hook is not None:
                epoch_hook(epoch, model, history[-1])
            if board is not None:
                _log_epoch(board, history[-1])
            if improved:
                selected, best_epoch, best_ua = sel.epochs, sel.newest, sel.score
                if main:
                    state = selection_state(sel, kept) if kept else None
                    save_checkpoint(checkpoint(epoch, False, False, state), out / "best.pt")
            if main:
                save_checkpoint(checkpoint(epoch, False, True), out / "last.pt")
            log(
                f"{label} epoch {epoch}/{t.epochs}: loss {stats['train_loss']:.4f} "
                f"(emotion {stats['train_loss_emotion']:.4f}) train acc {100 * stats['train_acc']:.1f}%"
                + (f", val UA {100 * entry['val_ua']:.1f}% (selected: {_epochs_text(selected)})"
                   if val_loader is not None else "")
                + f" [{entry['seconds']:.1f}s, {stats['segments_per_s']:.0f} seg/s]"
            )
        if board is not None:
            board.close()
        del train_loader, val_loader  # stop persistent workers before the test pass
        if main:
            save_checkpoint(checkpoint(history[-1]["epoch"] if history else epoch, True, True), out / "last.pt")
            (out / "history.json").write_text(json.dumps(clean_json(history), indent=2) + "\n")
    if ddp is not None and not main:
        return ddp.from_main(lambda: None)  # rank 0 tests and writes; its FoldResult (or error)

    # Test the best checkpoint (the protocol's model), not the last epoch; only if it is
    # this run's (a best.pt copied in from another fold would give a fold's test speakers
    # to a model that trained on them).
    best = load_checkpoint(out / "best.pt", map_location="cpu")
    _check_best(best, out / "best.pt", out / "last.pt", cfg.data.scheme, k, content, cfg)
    model.load_state_dict(best.model_state)
    test_ev = evaluate_loader(
        model, evaluation_batches(dataset, cache, fold.test_segments, t.eval_batch_size, t.num_workers),
        manifest, emotion_classes, device, t.aggregate, precision,
    ) if run_test else None
    validation = None
    if has_val and len(best.selected_epochs) > 1:
        # Averaged weights were never validated during training: score them once here.
        val_ev = evaluate_loader(
            model, evaluation_batches(dataset, cache, fold.validation_segments, t.eval_batch_size, t.num_workers),
            manifest, emotion_classes, device, t.aggregate, precision,
        )
        validation = {k: val_ev.metrics[k] for k in ("ua", "wa", "macro_f1")}
    elif has_val:
        val_best = next((h for h in history if h["epoch"] == best.epoch), None)
        if val_best:
            validation = {"ua": val_best.get("val_ua"), "wa": val_best.get("val_wa"), "macro_f1": val_best.get("val_f1")}
    metrics = {
        "scheme": cfg.data.scheme,
        "fold": k,
        "seed": t.seed,
        "protocol": (provenance or {}).get("protocol"),
        "deviations": (provenance or {}).get("deviations") or [],
        "config": cfg.name,
        "aux": cfg.loss.aux,
        "store_fingerprint": str(reader.fingerprint),
        "store_content_sha256": content,
        "test_speakers": [str(s) for s in fold.test_speakers],
        "best_epoch": best.epoch,
        "selection": t.selection,
        "selected_epochs": best.selected_epochs,
        "epochs_run": len(history),
        "validation": validation,
        "test": test_ev.metrics if test_ev is not None else None,
    }
    if test_ev is not None:
        write_reports(out, metrics, test_ev.predictions, history, test_ev.metrics["confusion"], emotion_classes,
                      title=f"{cfg.name} {cfg.data.scheme} {label}")
        log(
            f"{label}: test (best epoch {best.epoch}) UA {100 * test_ev.metrics['ua']:.1f}% "
            f"WA {100 * test_ev.metrics['wa']:.1f}% F1 {100 * test_ev.metrics['macro_f1']:.1f}%"
        )
    else:  # the caller tests the selected model (best.pt) itself
        (out / "metrics.json").write_text(json.dumps(clean_json(metrics), indent=2) + "\n")
        if history:
            from .plots import plot_curves

            plot_curves(history, out / "curves.png", title=f"{cfg.name} {cfg.data.scheme} {label}")
    result = FoldResult(
        scheme=cfg.data.scheme,
        fold=k,
        out_dir=out,
        test=clean_json(test_ev.metrics) if test_ev is not None else None,
        validation=clean_json(validation),
        best_epoch=best.epoch,
        epochs_run=len(history),
        test_speakers=[str(s) for s in fold.test_speakers],
        history=history,
        predictions=test_ev.predictions if test_ev is not None else None,
        seed=t.seed,
        selected_epochs=list(best.selected_epochs),
    )
    return ddp.from_main(lambda: result) if ddp is not None else result


#: history key -> TensorBoard tag (``train_loss_<task>`` -> ``loss/train_<task>`` for every task).
_BOARD_TAGS = {
    "train_loss": "loss/train_total", "train_loss_emotion": "loss/train_emotion",
    **{f"train_loss_{name}": f"loss/train_{name}" for name in TASKS},
    **{f"val_ccc_{name}": f"validation/ccc_{name}" for name in DIMENSIONS},
    "val_loss": "loss/validation_emotion", "val_ua": "validation/ua", "val_wa": "validation/wa",
    "val_f1": "validation/macro_f1", "train_acc": "train/accuracy", "lr": "train/lr",
    "segments_per_s": "train/segments_per_s",
}


def _epochs_text(epochs: Sequence[int]) -> str:
    """``epoch 4`` or ``epochs 3+5+7 averaged``."""
    if len(epochs) == 1:
        return f"epoch {epochs[0]}"
    return "epochs " + "+".join(map(str, epochs)) + " averaged"


def _board(folder: Path | None) -> Any:
    """A TensorBoard writer for ``folder`` (None: no logging)."""
    if folder is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # the tensorboard package is a dependency; say so if it is missing
        raise InputError(f"--tensorboard needs the tensorboard package ({first_line(exc)})") from None
    return SummaryWriter(log_dir=str(folder))


def _log_epoch(board: Any, entry: dict[str, Any]) -> None:
    """One epoch's losses and metrics as scalars at step = epoch."""
    for key, tag in _BOARD_TAGS.items():
        value = entry.get(key)
        if value is not None:
            board.add_scalar(tag, float(value), global_step=int(entry["epoch"]))
    board.flush()


def _build_cache(dataset: SegmentBatchDataset, fold: Any, device: torch.device, dtype_name: str,
                 precision: Precision, with_test: bool, label: str, log: Logger) -> DeviceCache:
    """The fold's :class:`sertrain.cache.DeviceCache` (refused in one line if it does not fit)."""
    t0 = time.perf_counter()
    cache = fold_cache(dataset, fold, device, dtype_name, precision.dtype, test=with_test)
    log(f"{label}: device cache: {len(cache)} segments, {size_text(cache.nbytes)} {dtype_name} on {device} "
        f"({time.perf_counter() - t0:.1f}s)")
    return cache


def check_task_targets(cfg: Config, labels: SegmentLabels, store_name: str) -> None:
    """Refuse, in one line naming the store, active regression tasks the store has no ratings for
    (``vad`` needs at least one dimension; a dimension named alone needs that one)."""
    wanted = regression_tasks(cfg.loss.active_tasks())
    if not wanted:
        return
    if not labels.dimensions:
        raise InputError(f"{store_name}: --aux {cfg.loss.aux} asks for {'+'.join(wanted)} but the store has no "
                         f"dimensional ratings ({', '.join(DIMENSIONS)})")
    missing = [d for d in wanted if d not in labels.dimensions]
    if missing and tuple(wanted) != DIMENSIONS:  # vad: whichever dimensions the store rates
        raise InputError(f"{store_name}: --aux {cfg.loss.aux} asks for {'+'.join(missing)} but the store rates "
                         f"only {', '.join(labels.dimensions)}")


def _unused_heads(dataset: SegmentBatchDataset, index: np.ndarray, weights: Mapping[str, float],
                  model: SERModel) -> bool:
    """Whether a step can leave an output head without gradient (DDP must then look for
    unused parameters): a head whose loss is switched off, or training segments without one
    of its targets (a global batch may hold none of them)."""
    idx = np.asarray(index, dtype=np.int64)
    for name in getattr(model, "task_heads", {}):
        if weights.get(name, 0.0) <= 0:
            return True
        target = TASKS[name].targets(dataset, idx)
        if target is None or bool((target < 0).any() if TASKS[name].kind == "classification"
                                  else (~np.isfinite(target)).any()):
            return True
    return False


def _train_epoch(
    model: SERModel,
    loader: Any,
    sampler: BalancedBatchSampler,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    device: torch.device,
    weights: Mapping[str, float],
    cfg: Config,
    ddp: distributed.DistributedRun | None = None,
) -> dict[str, float]:
    """One pass over the sampler's batches; returns mean losses, accuracy and throughput
    (under ``ddp``: of the global batches, summed over ranks)."""
    sampler.set_epoch(epoch)  # (seed, epoch) fixes the batch order: resumable, reproducible
    model.train()
    # Nothing is read back from the device per step (README, "Training speed"): the loss
    # parts stay on the device until the epoch ends, correct answers are counted there, label
    # checks and packing lengths come from the host's copy of the batch. Non-finite losses
    # are looked for every `check_every` steps (every step on the CPU, where a read is free)
    # and at the end, and refused naming the first such step.
    check_every = NONFINITE_CHECK_STEPS.get(device.type, NONFINITE_CHECK_STEPS["default"])
    steps: list[dict[str, Any]] = []
    checked = 0
    correct: torch.Tensor | int = 0
    seen = 0
    t0 = time.perf_counter()
    for batch in loader:
        x = batch["x"].to(device, non_blocking=True)  # already there from a device cache
        moved = _labels_to_device(batch, device)
        with precision.autocast(device):
            out = model(x, moved["valid"], valid_host=batch["valid"])
        if ddp is not None:
            loss, parts = ddp.multitask_loss(out, batch, weights, cfg.loss.label_smoothing)
        else:
            host = {key: batch[key] for key in ("emotion", *TASKS) if key in batch}
            loss, parts = multitask_loss_terms(out, moved, _label_presence(host), weights,
                                               cfg.loss.label_smoothing)
        steps.append(parts)
        if len(steps) - checked >= check_every:
            _refuse_nonfinite(steps, checked, epoch)
            checked = len(steps)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip > 0:
            scaler.unscale_(optimizer)
            # Returns the norm as a tensor (never read here: no synchronisation).
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        correct = correct + (out["emotion"].argmax(1) == moved["emotion"]).sum()
        seen += int(np.count_nonzero(batch["emotion"].numpy() >= 0))
    _refuse_nonfinite(steps, checked, epoch)
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for parts in _parts_on_host(steps):  # one transfer for the whole epoch
        for key, v in parts.items():
            sums[key] += v
            counts[key] += 1
    correct = int(correct)
    elapsed = time.perf_counter() - t0
    if ddp is not None:  # each rank holds its share of every step's means: add them up
        sums, correct, seen, elapsed = ddp.reduce_epoch(sums, correct, seen, elapsed)
    mean = {key: sums[key] / counts[key] for key in sums}
    return {
        "train_loss": mean.get("total", float("nan")),
        "train_loss_emotion": mean.get("emotion", float("nan")),
        # One key per active task (and gender, speaker always, as before); None: the term was never in the loss.
        **{f"train_loss_{name}": mean.get(name) for name, task in TASKS.items() if task.legacy_head or name in weights},
        "train_acc": correct / seen if seen else float("nan"),
        "segments_per_s": seen / elapsed if elapsed > 0 else float("nan"),
    }


#: Steps between two checks for a non-finite training loss, by device type. Each check reads
#: the losses since the last one back from the device (a synchronisation); on the CPU that is
#: free, so every step is checked before its update, as before.
NONFINITE_CHECK_STEPS = {"cpu": 1, "default": 50}


def _labels_to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``valid`` and the label tensors of a host batch on ``device``: on CUDA one pinned,
    non-blocking copy of the integer ones stacked (the host goes on queueing work), and one
    more of the float regression targets when the batch has any."""
    keys = [key for key in ("valid", "emotion", *TASKS) if key in batch and not batch[key].is_floating_point()]
    moved = dict(zip(keys, host_to_device([batch[key] for key in keys], device)))
    floats = [key for key in TASKS if key in batch and batch[key].is_floating_point()]
    if floats and device.type == "cpu":
        moved.update({key: batch[key] for key in floats})
    elif floats:
        stacked = torch.stack([batch[key] for key in floats])
        stacked = stacked.pin_memory() if device.type == "cuda" else stacked
        moved.update(zip(floats, stacked.to(device, non_blocking=True).unbind(0)))
    return moved


def _refuse_nonfinite(steps: list[dict[str, Any]], start: int, epoch: int) -> None:
    """Raise :class:`SertrainError` naming the first step from ``start`` on whose total loss is
    not finite (one read of those steps' losses)."""
    totals = [parts["total"] for parts in steps[start:]]
    if not totals:
        return
    if isinstance(totals[0], torch.Tensor):
        stacked = torch.stack(totals)
        if bool(torch.isfinite(stacked).all()):
            return
        totals = stacked.tolist()
    for i, value in enumerate(totals):
        if not math.isfinite(value):
            raise SertrainError(
                f"training diverged at epoch {epoch}, step {start + i + 1} (loss {value}); lower --lr"
            )


def _parts_on_host(steps: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Every step's loss parts as floats, read from the device in one transfer."""
    tensors = [v for parts in steps for v in parts.values() if isinstance(v, torch.Tensor)]
    values = iter(torch.stack(tensors).tolist() if tensors else [])
    return [{key: next(values) if isinstance(v, torch.Tensor) else float(v) for key, v in parts.items()}
            for parts in steps]
