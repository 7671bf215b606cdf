"""The auxiliary-task registry: one :class:`Task` entry per task the model can learn beside emotion.

Everything task-specific is derived from here: which ``--aux`` settings exist
(:func:`parse_aux`), the default loss weights (``loss.weights`` in the config), the model's
heads and their sizes (:func:`head_sizes`), each batch's targets (:meth:`Task.targets`), the
loss term (:meth:`Task.loss`), whether a batch holds a usable target (:meth:`Task.present`)
and the training-statistics keys (``train_loss_<name>``, TensorBoard ``loss/train_<name>``).

Tasks:

- ``gender``, ``speaker``: classification (cross-entropy; a target of -1 is ignored: no
  gender recorded, or not one of the fold's training speakers).
- ``arousal``, ``valence``, ``dominance``: regression of the store's dimensional ratings,
  normalised to [0, 1] by the corpus' scale (:meth:`sertrain.data.SegmentLabels.from_reader`),
  with the loss ``1 - CCC`` over the batch's rated segments (NaN = not rated, masked out).

``vad`` is a group name: in ``--aux gender+speaker+vad`` it stands for the three dimensions.

Registry order is the order of the heads (parameter creation, hence the random initial
weights), the loss terms and the statistics, so it must not be reordered: ``gender`` and
``speaker`` come first, as they always did, which keeps the numbers of runs without
dimensions bit-identical to sertrain before the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

#: Task kinds: a softmax head trained with cross-entropy, or one output trained with 1 - CCC.
CLASSIFICATION, REGRESSION = "classification", "regression"

#: The emotional dimensions a store may rate (serprep's ``segments()`` columns of these names).
DIMENSIONS = ("arousal", "valence", "dominance")

#: Group names usable in ``--aux`` settings, expanded to their tasks.
GROUPS: dict[str, tuple[str, ...]] = {"vad": DIMENSIONS}


@dataclass(frozen=True)
class Task:
    """One auxiliary task.

    ``head`` names the count that sizes a classification head (``"genders"``: the store's
    gender vocabulary, ``"speakers"``: the fold's training speakers); a regression head has
    one output. ``legacy_head``: the head is built whether or not the task is active (gender
    and speaker heads always were, so older checkpoints keep their state-dict keys and a
    run's initial weights do not depend on ``--aux``); other heads exist only when active.
    """

    name: str
    kind: str
    default_weight: float
    description: str
    head: str = ""
    legacy_head: bool = False
    #: Per-segment targets of a batch: ``targets(dataset, segment_ids)`` (a host numpy array).
    target: Callable[[Any, np.ndarray], np.ndarray | None] | None = None

    @property
    def metric(self) -> str:
        """The training metric this task reports: accuracy for classes, CCC for a dimension."""
        return "accuracy" if self.kind == CLASSIFICATION else "ccc"

    def head_size(self, counts: Mapping[str, int]) -> int:
        """Outputs of this task's head given ``counts`` (``{"genders": 2, "speakers": 8}``); 0 = no head."""
        return int(counts.get(self.head, 0)) if self.kind == CLASSIFICATION else 1

    def targets(self, dataset: Any, idx: np.ndarray) -> np.ndarray | None:
        """Targets of segments ``idx`` of a :class:`sertrain.data.SegmentBatchDataset` (int64
        class ids with -1 = none; float32 with NaN = none), or None when the store has none
        for this task (a dimension it does not rate)."""
        assert self.target is not None
        return self.target(dataset, idx)

    def present(self, target: torch.Tensor) -> bool:
        """Whether ``target`` holds at least one usable value (read on the host for a CPU tensor)."""
        if self.kind == CLASSIFICATION:
            return bool((target.numpy() >= 0).any()) if target.device.type == "cpu" else bool((target >= 0).any())
        return bool(np.isfinite(target.numpy()).any()) if target.device.type == "cpu" \
            else bool(torch.isfinite(target).any())

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """This task's loss term on a batch (fp32): cross-entropy ignoring -1, or ``1 - CCC``
        over the finite targets (the caller leaves the term out when none is, see :meth:`present`)."""
        if self.kind == CLASSIFICATION:
            return F.cross_entropy(output.float(), target, ignore_index=-1)
        return ccc_loss(output.float().reshape(-1), target.float())


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - CCC(pred, target)`` over the entries whose target is finite (NaN = not rated).

    CCC = 2 cov / (var_p + var_t + (mean_p - mean_t)^2) with population (1/n) moments, the
    definition of :func:`sertrain.metrics.ccc`. Masking is done by weighting, not by
    indexing, so the shapes do not depend on the data (no host read of the mask). A small
    epsilon keeps a batch whose predictions and targets are all equal finite (loss 1 then).
    """
    mask = torch.isfinite(target)
    w = mask.to(pred.dtype)
    n = w.sum().clamp_min(1.0)
    t = torch.where(mask, target, torch.zeros_like(target))
    mp = (w * pred).sum() / n
    mt = (w * t).sum() / n
    dp, dt = (pred - mp) * w, (t - mt) * w
    cov = (dp * dt).sum() / n
    vp = (dp * dp).sum() / n
    vt = (dt * dt).sum() / n
    return 1.0 - 2.0 * cov / (vp + vt + (mp - mt) ** 2 + 1e-8)


def _gender(dataset: Any, idx: np.ndarray) -> np.ndarray:
    return dataset.labels.gender[idx]


def _speaker(dataset: Any, idx: np.ndarray) -> np.ndarray:
    # Fold-local index among the training speakers (-1: not one of them).
    return dataset.speaker_ids[dataset.labels.speaker[idx]]


def _dimension(name: str) -> Callable[[Any, np.ndarray], np.ndarray | None]:
    def target(dataset: Any, idx: np.ndarray) -> np.ndarray | None:
        values = dataset.labels.dimensions.get(name)
        return None if values is None else values[idx]

    return target


#: The registry, in head / loss-term order (see the module docstring: do not reorder).
TASKS: dict[str, Task] = {
    "gender": Task("gender", CLASSIFICATION, 0.3, "speaker gender (cross-entropy)", head="genders",
                   legacy_head=True, target=_gender),
    "speaker": Task("speaker", CLASSIFICATION, 0.1, "training-speaker identity (cross-entropy)", head="speakers",
                    legacy_head=True, target=_speaker),
    **{d: Task(d, REGRESSION, 0.1, f"{d} rating normalised to [0, 1] (1 - CCC)", target=_dimension(d))
       for d in DIMENSIONS},
}


def default_weights() -> dict[str, float]:
    """``{task: default loss weight}`` for every registered task (``loss.weights``' default)."""
    return {name: task.default_weight for name, task in TASKS.items()}


def aux_names() -> list[str]:
    """What an ``--aux`` setting may join with ``+``: the task names and the group names."""
    return [*TASKS, *GROUPS]


def parse_aux(text: str) -> tuple[str, ...]:
    """The tasks of an ``--aux`` setting in registry order: ``"none"`` -> (), ``"gender+vad"`` ->
    ``("gender", "arousal", "valence", "dominance")``. Unknown or repeated names are refused in one line."""
    text = str(text).strip()
    if text == "none":
        return ()
    parts = [p.strip() for p in text.split("+")]
    chosen: list[str] = []
    for part in parts:
        if part not in TASKS and part not in GROUPS:
            raise InputError(f"aux setting {text!r}: {part!r} is not a task ({', '.join(aux_names())}) nor none")
        for name in GROUPS.get(part, (part,)):
            if name in chosen:
                raise InputError(f"aux setting {text!r} names {name} twice")
            chosen.append(name)
    return tuple(name for name in TASKS if name in chosen)


def head_sizes(counts: Mapping[str, int], active: tuple[str, ...] | list[str]) -> dict[str, int]:
    """``{task: outputs}`` of the model's auxiliary heads, in registry order: the legacy heads
    always (when their count is > 0), the other tasks' heads when ``active``."""
    out = {}
    for name, task in TASKS.items():
        if task.legacy_head or name in active:
            size = task.head_size(counts)
            if size > 0:
                out[name] = size
    return out


def regression_tasks(active: tuple[str, ...] | list[str]) -> list[str]:
    """The regression tasks among ``active`` (in registry order)."""
    return [name for name in active if TASKS[name].kind == REGRESSION]
