"""Data-parallel training of one fold over several processes (``torchrun``), and its helpers.

``torchrun --nproc-per-node N -m sertrain train|cv ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set. The CLI then joins them in one process group
(:func:`init_from_env`: ``gloo`` on CPU, ``nccl`` on CUDA with ``cuda:LOCAL_RANK`` per
process) and :func:`sertrain.train.train_fold` trains each fold with
``DistributedDataParallel``. What makes N processes train exactly the one-process run
(same global batch, up to float reassociation):

- **Batches** (:class:`ShardedBatchSampler`): every rank draws the same global balanced
  permutation (seeded by seed and epoch, :class:`sertrain.data.BalancedBatchSampler`), and
  rank r takes the r-th contiguous slice of each sorted global batch, so the union of the
  ranks' batches at step t is the one-process batch at step t. The per-rank batch is
  ``batch_size / world_size``; a batch size the world size does not divide is refused.
- **Loss** (:meth:`DistributedRun.multitask_loss`): each term is a sum over the rank's
  segments divided by the number of labelled segments of the *global* batch (one small
  all-reduce of label counts per step), times the world size that DDP's gradient averaging
  divides by again. The gradient is then that of the one-process mean, also when the ranks
  hold different numbers of labelled segments (a last short batch, unknown speakers), and a
  term is left out exactly when the global batch has no label for it.
- **Batch norm**: per-rank statistics would differ from the full batch's, so batch norm is
  synchronised. On CUDA that is torch's :class:`torch.nn.SyncBatchNorm`. It refuses CPU
  tensors ("SyncBatchNorm expected input tensor to be on GPU", torch 2.13, checked in
  tests/test_sertrain_ddp.py), so on CPU :class:`DistributedBatchNorm2d` computes the global
  batch mean and (biased) variance from each rank's ``var_mean`` with two all-reduces whose
  backward is an all-reduce too, and updates the running statistics as ``BatchNorm2d`` does.
  State-dict keys stay those of ``BatchNorm2d``: checkpoints are the one-process ones.
- **Dropout**: each rank draws its own masks (reseeded per seed, epoch and rank at each
  epoch, so ``--resume`` replays them); they cannot equal the one-process masks, so the
  equivalence holds exactly only with dropout 0 (the tests set ``model.dropout=0``).
- **Evaluation and files**: rank 0 alone evaluates validation and test, writes every file
  and logs; the other ranks wait and receive rank 0's epoch record (so model selection and
  early stopping decide identically everywhere) and the final :class:`FoldResult`.
  ``--resume`` checks run on rank 0, which broadcasts the checkpoint it read.

Collectives of these helpers run on a separate ``gloo`` group (CPU tensors, also under
NCCL), so their order never interleaves with DDP's own gradient all-reduces.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from .errors import InputError, SertrainError

#: torchrun's variables (torch.distributed.run sets all of them in every worker).
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """RANK, WORLD_SIZE and LOCAL_RANK set, with more than one process."""
    if not all(v in os.environ for v in ENV_VARS):
        return False
    try:
        return int(os.environ["WORLD_SIZE"]) > 1
    except ValueError:
        return False


def init_from_env(device: torch.device) -> bool:
    """Join the torchrun process group when launched by torchrun with WORLD_SIZE > 1
    (``nccl`` for CUDA, each rank on ``cuda:LOCAL_RANK``; ``gloo`` for CPU). Returns whether
    a group was started (the caller then calls :func:`shutdown`)."""
    import torch.distributed as dist

    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise InputError("torchrun: this torch build has no torch.distributed")
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise InputError(
                f"torchrun: local rank {local_rank} has no GPU (this node has {torch.cuda.device_count()}); "
                "use --nproc-per-node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    return True


def shutdown() -> None:
    """Leave the process group (and forget the helpers built on it)."""
    import torch.distributed as dist

    global _CURRENT
    _CURRENT = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_CURRENT: "DistributedRun | None" = None


def current() -> "DistributedRun | None":
    """The :class:`DistributedRun` of the initialised process group, or None when this
    process trains alone (no group, or a group of one). Every rank must call it at the same
    point the first time (it creates the helpers' gloo group, a collective)."""
    import torch.distributed as dist

    global _CURRENT
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    if _CURRENT is None or _CURRENT.default_group is not dist.group.WORLD:
        _CURRENT = DistributedRun()
    return _CURRENT


class DistributedRun:
    """Rank, devices and the collectives one data-parallel fold needs (see module docstring)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.default_group = dist.group.WORLD
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.backend = str(dist.get_backend())
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.is_main = self.rank == 0
        # CPU collectives of our own (label counts, batch-norm statistics on CPU, epoch sums,
        # objects): never interleaved with DDP's gradient buckets on the default group.
        self.group = dist.new_group(backend="gloo")

    # -- devices and the model --------------------------------------------------------------
    def device_for(self, device: torch.device) -> torch.device:
        """``cuda`` -> this rank's GPU ``cuda:LOCAL_RANK``; CPU stays CPU."""
        if device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise InputError(
                f"--batch-size {batch_size} is not divisible by the {self.world} processes: each process takes "
                f"batch_size / world_size segments of every global batch (use a multiple of {self.world})"
            )

    def sync_batchnorm(self, model: nn.Module) -> nn.Module:
        """Batch norm over the global batch: torch's SyncBatchNorm on CUDA, ours on CPU."""
        if next(model.parameters()).device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return convert_distributed_batchnorm(model, self.group)

    def wrap(self, model: nn.Module, find_unused_parameters: bool) -> nn.Module:
        """``DistributedDataParallel`` around ``model`` (which keeps its own state-dict keys)."""
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)

    def shard(self, sampler: Any) -> "ShardedBatchSampler":
        return ShardedBatchSampler(sampler, self.rank, self.world)

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Per-rank random stream (dropout) for this epoch, a function of (seed, epoch, rank):
        ranks draw different masks and a resumed run draws the same ones again."""
        torch.manual_seed((seed * 1_000_003 + epoch * 1_009 + (self.rank + 1) * 7_919_111) % (2**63))

    # -- loss and epoch statistics ----------------------------------------------------------
    def multitask_loss(
        self,
        out: dict[str, torch.Tensor],
        batch: dict[str, torch.Tensor],
        weights: Mapping[str, float],
        label_smoothing: float = 0.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:func:`sertrain.train.multitask_loss` of the global batch, split over ranks.

        Returns (the tensor to back-propagate: this rank's share times the world size, which
        DDP's averaging divides by; parts: this rank's share of each per-step mean as detached
        0-dim tensors on the device, which summed over ranks are the one-process values, see
        :meth:`reduce_epoch`). The labels are read on the host (CPU batches): no device value
        is waited for."""
        import torch.distributed as dist

        device = out["emotion"].device
        from .tasks import TASKS

        terms = [("emotion", 1.0, label_smoothing)]
        for name, task in TASKS.items():  # registry order, as in one process
            weight = weights.get(name, 0.0)
            if weight > 0 and name in out:
                if task.kind != "classification":  # CCC is not a sum over segments (train refuses first)
                    raise InputError(f"torchrun: the {name} loss (1 - CCC) is not split over processes")
                terms.append((name, weight, 0.0))
        counts = torch.stack([(batch[name] >= 0).sum().cpu() for name, _, _ in terms]).to(torch.float64)
        dist.all_reduce(counts, group=self.group)
        loss: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for (name, weight, smoothing), n in zip(terms, counts.tolist()):
            if name != "emotion" and n == 0:  # no label in the whole global batch: left out
                continue
            ce = F.cross_entropy(out[name].float(), batch[name].to(device), ignore_index=-1,
                                 label_smoothing=smoothing, reduction="sum") / n
            parts[name] = ce.detach()
            loss = weight * ce if loss is None else loss + weight * ce
        assert loss is not None
        parts["total"] = loss.detach()
        return loss * self.world, parts

    def reduce_epoch(self, sums: dict[str, float], correct: int, seen: int,
                     elapsed: float) -> tuple[dict[str, float], int, int, float]:
        """Sum the ranks' per-step loss shares, correct and seen counts; the slowest rank's time."""
        import torch.distributed as dist

        keys = sorted(sums)
        t = torch.tensor([float(sums[k]) for k in keys] + [float(correct), float(seen)], dtype=torch.float64)
        dist.all_reduce(t, group=self.group)
        e = torch.tensor([float(elapsed)], dtype=torch.float64)
        dist.all_reduce(e, op=dist.ReduceOp.MAX, group=self.group)
        values = t.tolist()
        return dict(zip(keys, values[:-2])), int(round(values[-2])), int(round(values[-1])), float(e.item())

    # -- rank 0 decides, the others follow ---------------------------------------------------
    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def from_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only; every rank returns its result, or raises its exception."""
        payload = None
        if self.is_main:
            try:
                payload = ("ok", fn())
            except Exception as exc:
                self.broadcast(("error", _transportable(exc)))
                raise
        kind, value = self.broadcast(payload)
        if kind == "error":
            raise value
        return value


def _transportable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a :class:`SertrainError` saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return SertrainError(f"rank 0 failed: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------
class ShardedBatchSampler(Sampler[list[int]]):
    """Rank ``rank``'s contiguous share of each global batch of ``sampler``.

    ``sampler`` (a :class:`sertrain.data.BalancedBatchSampler` with the *global* batch size)
    yields the same sorted global batches on every rank; this rank takes the ``rank``-th of
    ``world`` contiguous slices (``numpy.array_split``: a last short batch is split as evenly
    as possible), so the ranks' shares concatenated in rank order are the one-process batch.
    A last short batch of fewer than ``world`` segments, which would leave a rank without
    data, is dropped (the one-process run keeps one of at least 2 segments).
    """

    def __init__(self, sampler: Any, rank: int, world: int):
        self.sampler = sampler
        self.rank = int(rank)
        self.world = int(world)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _drops_last(self) -> bool:
        s = self.sampler
        if getattr(s, "steps_per_epoch", 0):
            return False
        rest = len(s.index) % s.batch_size
        return 2 <= rest < self.world

    def __len__(self) -> int:
        return len(self.sampler) - int(self._drops_last())

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler:
            if len(batch) < self.world:
                continue
            yield np.array_split(np.asarray(batch, dtype=np.int64), self.world)[self.rank].tolist()


# --------------------------------------------------------------------------------------------
# Batch norm over all ranks, on CPU
# --------------------------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum over ranks of the incoming gradients (each
    rank's loss depends on every rank's input through the shared statistics)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ctx.group = group
        out = tensor.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        import torch.distributed as dist

        g = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(g, group=ctx.group)
        return g, None


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the batch of all ranks.

    For CPU process groups, where :class:`torch.nn.SyncBatchNorm` refuses to run. Each rank
    computes its ``var_mean`` over (N, H, W); the global mean and biased variance follow from
    two all-reduces (the second sums ``n_r * (var_r + (mean_r - mean)^2)``, the parallel
    variance formula, numerically stable), differentiably. Running statistics are updated as
    ``BatchNorm2d`` does (unbiased variance, ``momentum``). Outside training, or without a
    process group of more than one rank, it is ``BatchNorm2d``.
    """

    process_group: Any = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch's name)
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1):
            return super().forward(input)
        self._check_input_dim(input)
        c = input.shape[1]
        n = input.numel() // c
        var_r, mean_r = torch.var_mean(input, dim=(0, 2, 3), correction=0)
        first = _AllReduceSum.apply(torch.cat([mean_r * n, mean_r.new_full((1,), float(n))]), self.process_group)
        total = first[c].detach()
        mean = first[:c] / total
        var = _AllReduceSum.apply(n * (var_r + (mean_r - mean) ** 2), self.process_group) / total
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (total / (total - 1)), alpha=m)
        shape = (1, c, 1, 1)
        y = (input - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_distributed_batchnorm(module: nn.Module, group: Any = None) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``module`` by a :class:`DistributedBatchNorm2d` that
    holds the same parameters and buffers (same tensors: an optimizer built before still
    updates them). Returns the module (a new one if ``module`` itself is a BatchNorm2d)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, DistributedBatchNorm2d):
        new = DistributedBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.process_group = group
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_distributed_batchnorm(child, group)
        if converted is not child:
            module.add_module(name, converted)
    return module
