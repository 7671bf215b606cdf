"""Model selection: which epoch(s) of a training run make the model that is tested.

A training run leaves one history entry per epoch (``sertrain.train``): ``epoch`` (1-based),
``val_ua``, ``val_wa``, ``val_f1`` and ``val_loss`` (utterance-level validation metrics; None
when the fold has no validation speakers), plus training statistics. A *selection rule*
reads only the ``val_*`` keys of that history and names the epochs whose weights form the
selected model: one epoch, or several whose weights are averaged
(:func:`average_state_dicts`). Test data never enter a rule.

Why several rules: with ~10 speakers the validation split holds ~25 utterances, so
validation UA jumps by tens of points between neighbouring epochs and "the epoch with the
best validation UA" is partly chance. Smoothing the curve, using the (less quantised)
validation loss, or averaging the weights of several good epochs are the usual remedies;
``benchmarks/bench_selection.py`` measures which one moves least between seeds.

Two guarantees every rule in :data:`RULES` gives, so a training loop can use any of them
without keeping every epoch's weights:

- the score of an epoch (or of a window ending at it) depends only on that epoch and the
  epochs before it, so a selection made after epoch ``e`` never needs a later epoch to be
  re-scored;
- the selection after epoch ``e + 1`` uses only the epochs of the selection after epoch
  ``e`` (:func:`kept_epochs`) and epoch ``e + 1`` itself. Keeping the weights of the current
  selection (at most a handful of state dicts) is therefore always enough.

Early stopping (:func:`should_stop`) counts epochs since the newest epoch of the current
selection. For ``val_ua`` that is exactly ``sertrain.train``'s rule: stop before epoch ``e``
when ``e - 1 - best_epoch >= patience``.

Entries whose ``val_ua`` is None or not finite are skipped (no validation that epoch). A
missing or non-finite ``val_loss`` counts as +inf: it never wins a tie, and it is the worst
value for the ``val_loss`` rule.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

History = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Selection:
    """The outcome of a rule on a history.

    ``epochs``: the epochs whose weights form the selected model, ascending (one epoch, or
    several to average). ``score``: the rule's own score of this selection (higher is
    better; e.g. the validation UA, or minus the validation loss).
    """

    epochs: tuple[int, ...]
    score: float

    @property
    def newest(self) -> int:
        """The latest epoch the selection uses (early stopping counts from here)."""
        return max(self.epochs)


@dataclass(frozen=True)
class _Validated:
    """One history entry that has validation metrics, with the values a rule ranks by."""

    epoch: int
    ua: float
    loss: float  # +inf when missing or not finite


def _finite_or(value: Any, default: float) -> float:
    """``float(value)`` if it is a finite number, else ``default`` (None, NaN, inf)."""
    if value is None:
        return default
    try:
        x = float(value)
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


def _validated(history: History) -> list[_Validated]:
    """The entries of ``history`` with a finite ``val_ua``, in epoch order.

    Epochs must increase strictly: a rule's tie-break ("the earlier epoch") and early
    stopping ("epochs since the selection") both rely on the history being in training
    order, so a shuffled or duplicated history is refused rather than silently misread.
    """
    out: list[_Validated] = []
    last = None
    for entry in history:
        epoch = int(entry["epoch"])
        if last is not None and epoch <= last:
            raise ValueError(f"history epochs must increase strictly, got {epoch} after {last}")
        last = epoch
        ua = _finite_or(entry.get("val_ua"), math.nan)
        if math.isnan(ua):
            continue
        out.append(_Validated(epoch, ua, _finite_or(entry.get("val_loss"), math.inf)))
    return out


def _by_ua(v: _Validated) -> tuple[float, float, int]:
    """Sort key, best first: higher UA, then lower loss, then the earlier epoch."""
    return (-v.ua, v.loss, v.epoch)


class SelectionRule(ABC):
    """A model selection rule: ``select(history)`` -> :class:`Selection` or None.

    ``name`` is the key in :data:`RULES` (and what a ``--select`` option would take);
    ``description`` is one line for help texts and reports.
    """

    name: str
    description: str

    @abstractmethod
    def select(self, history: History) -> Selection | None:
        """The selection on ``history`` (only its ``val_*`` keys are read), or None when no
        entry has validation metrics."""


class BestValUA(SelectionRule):
    """The epoch with the best validation UA (``sertrain.train``'s rule until now)."""

    name = "val_ua"
    description = "best validation UA; ties go to the lower val_loss, then the earlier epoch"

    def select(self, history: History) -> Selection | None:
        valid = _validated(history)
        if not valid:
            return None
        best = min(valid, key=_by_ua)
        return Selection((best.epoch,), best.ua)


class LowestValLoss(SelectionRule):
    """The epoch with the lowest validation emotion loss (segment-level cross-entropy).

    The loss is an average over every validation segment's posterior, so it moves in small
    steps where UA, a count of ~25 utterance decisions, moves in steps of several points.
    """

    name = "val_loss"
    description = "lowest validation loss; ties go to the higher val_ua, then the earlier epoch"

    def select(self, history: History) -> Selection | None:
        valid = _validated(history)
        if not valid:
            return None
        best = min(valid, key=lambda v: (v.loss, -v.ua, v.epoch))
        return Selection((best.epoch,), -best.loss)


@dataclass(frozen=True)
class SmoothedValUA(SelectionRule):
    """The epoch ending the best trailing window of validation UA.

    Each validated epoch is scored by the mean validation UA of itself and the ``window - 1``
    validated epochs before it (fewer at the start of training). The window trails, never
    centres, so an epoch's score is final as soon as the epoch is validated: a centred window
    would need later epochs, and every epoch's weights would have to be kept until then.
    """

    window: int = 3

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"val_ua_smooth{self.window}"

    @property
    def description(self) -> str:  # type: ignore[override]
        return (f"best mean validation UA over the last {self.window} epochs (fewer at the start); selects the "
                "window's last epoch; ties go to its lower val_loss, then the earlier epoch")

    def select(self, history: History) -> Selection | None:
        valid = _validated(history)
        if not valid:
            return None
        best: tuple[tuple[float, float, int], float] | None = None
        for i, v in enumerate(valid):
            # fsum is correctly rounded, hence independent of the order of the window's values:
            # two windows holding the same UAs tie exactly, and the tie-break decides.
            window = valid[max(0, i - self.window + 1): i + 1]
            mean = math.fsum(w.ua for w in window) / len(window)
            key = (-mean, v.loss, v.epoch)
            if best is None or key < best[0]:
                best = (key, mean)
        assert best is not None
        return Selection((best[0][2],), best[1])


@dataclass(frozen=True)
class TopKAverage(SelectionRule):
    """Average the weights of the ``k`` epochs with the best validation UA.

    Ranking as :class:`BestValUA` (UA, then lower loss, then earlier epoch); fewer epochs
    while fewer have been validated. The score is the mean validation UA of those epochs,
    not the averaged model's (that would need another validation pass). Batch-norm running
    statistics are averaged like every other floating tensor: an approximation of the
    statistics the averaged weights would produce, close when the averaged epochs are
    near each other in training.
    """

    k: int = 3

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"top{self.k}_average"

    @property
    def description(self) -> str:  # type: ignore[override]
        return (f"average the weights of the {self.k} epochs with the best validation UA (ties by lower "
                "val_loss, then earlier epoch); fewer while fewer exist")

    def select(self, history: History) -> Selection | None:
        valid = _validated(history)
        if not valid:
            return None
        top = sorted(valid, key=_by_ua)[: self.k]
        return Selection(tuple(sorted(v.epoch for v in top)), math.fsum(v.ua for v in top) / len(top))


#: The selection rules by name.
RULES: dict[str, SelectionRule] = {
    rule.name: rule for rule in (BestValUA(), LowestValLoss(), SmoothedValUA(3), TopKAverage(3))
}


def get_rule(name: str) -> SelectionRule:
    """The rule called ``name``; a ValueError naming the valid rules otherwise."""
    try:
        return RULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown selection rule {name!r} (valid: {', '.join(sorted(RULES))})") from None


def select(rule: str, history: History) -> Selection | None:
    """``RULES[rule].select(history)``: None when no entry of ``history`` has validation."""
    return get_rule(rule).select(history)


def should_stop(rule: str, history: History, patience: int) -> bool:
    """Whether early stopping ends training after the last epoch of ``history``.

    True when ``patience > 0`` and the last epoch minus the newest epoch of the current
    selection is at least ``patience``. Without validation there is nothing to wait for and
    training never stops early (as in ``sertrain.train``). For ``val_ua`` this is exactly
    ``sertrain.train``'s "``patience`` epochs without a better validation UA"; for
    ``top3_average`` an epoch that enters the top 3 resets the count.
    """
    rule_obj = get_rule(rule)  # an unknown name is an error even when patience is 0
    if patience <= 0 or not history:
        return False
    sel = rule_obj.select(history)
    if sel is None:
        return False
    return int(history[-1]["epoch"]) - sel.newest >= patience


def kept_epochs(rule: str, history: History) -> set[int]:
    """Epochs whose weights a training loop must keep to produce any later selection.

    These are the epochs of the current selection (the module docstring says why nothing
    else can come back); empty when no epoch has been validated, where a loop keeps the last
    epoch as ``sertrain.train`` does for folds without validation speakers.
    """
    sel = select(rule, history)
    return set(sel.epochs) if sel is not None else set()


def average_state_dicts(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several state dicts of one architecture.

    Floating tensors are summed in float64 (the sum of a few float32 tensors would otherwise
    round in float32) and cast back to their dtype. Non-floating tensors (batch norm's
    ``num_batches_tracked`` counters, any integer or bool buffer) cannot be averaged
    meaningfully and are taken from the newest state, which is the last of ``states``
    (callers pass states in epoch order). Results are new tensors on the device of the
    newest state; the inputs are not modified. Refuses (ValueError) an empty sequence, and
    states whose keys, shapes or dtypes differ (those are not the same architecture).
    """
    if not states:
        raise ValueError("average_state_dicts needs at least one state dict")
    first, newest = states[0], states[-1]
    keys = list(first.keys())
    for i, state in enumerate(states[1:], start=1):
        if set(state.keys()) != set(keys):
            missing = sorted(set(keys) - set(state.keys()))
            extra = sorted(set(state.keys()) - set(keys))
            raise ValueError(
                f"state {i} has other keys than state 0 (missing {missing[:3]}, extra {extra[:3]})"
            )
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        tensors = [state[key] for state in states]
        ref = tensors[0]
        for i, t in enumerate(tensors[1:], start=1):
            if t.shape != ref.shape or t.dtype != ref.dtype:
                raise ValueError(
                    f"{key}: state {i} holds {tuple(t.shape)} {t.dtype}, state 0 {tuple(ref.shape)} {ref.dtype}"
                )
        target = newest[key]
        if ref.dtype.is_floating_point:
            acc = torch.zeros(ref.shape, dtype=torch.float64)
            for t in tensors:
                acc += t.detach().to("cpu", torch.float64)
            out[key] = (acc / len(tensors)).to(device=target.device, dtype=ref.dtype)
        else:
            out[key] = target.detach().clone()
    return out


def selection_state(selection: Selection, states: Mapping[int, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The weights of ``selection`` from per-epoch ``states`` (``{epoch: state_dict}``).

    One epoch gives a copy of its state; several give their average, in epoch order (so
    the integer buffers come from the newest). A KeyError names an epoch not in ``states``
    (a loop that dropped weights :func:`kept_epochs` said to keep).
    """
    missing = [e for e in selection.epochs if e not in states]
    if missing:
        raise KeyError(f"no weights kept for epoch(s) {missing} of the selection {list(selection.epochs)}")
    ordered = [states[e] for e in sorted(selection.epochs)]
    if len(ordered) == 1:
        return {k: v.detach().clone() for k, v in ordered[0].items()}
    return average_state_dicts(ordered)
