"""Data-parallel training (sertrain.distributed) against the one-process run, on real gloo
process groups of 2 CPU processes.

- the sharded sampler: the ranks' shares of each step are the one-process batch;
- two DDP steps with a float64 model equal the one-process steps: loss, every gradient,
  batch-norm running statistics and the weights after them, also with uneven shards, a loss
  term one rank has no label for, and unused heads. float64 because in float32 CPU batch
  norm alone rounds conv-weight gradients by up to ~1 % of their size on this model
  (measured against float64), which would hide a wrong formula; the losses still take
  float32 logits (as sertrain's loss does), hence tolerances of 1e-6..1e-5, not 1e-12;
- each rank's dropout stream is its own and replays on resume;
- ``torchrun --nproc-per-node 2 -m sertrain train`` (cpu-small, dropout 0: per-rank dropout
  masks cannot equal the one-process ones) against ``sertrain train``: per-step losses,
  final weights, validation and test metrics; only rank 0 prints and writes; ``--resume``
  under torchrun (with dropout) replays the uninterrupted run exactly;
- ``torchrun ... -m sertrain cv`` writes the cv summary once; an indivisible batch size is
  refused in one line.

Every process runs one torch thread (the machine has 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sertrain.checkpoint import load_checkpoint
from sertrain.distributed import ShardedBatchSampler
from sertrain.data import BalancedBatchSampler
from sertrain_fixtures import learnable_store, store_base

REPO = Path(__file__).resolve().parents[1]
#: cpu-small, one thread, no loader workers, 1 optimiser step per epoch ...
BASE = ["--fold", "1", "--device", "cpu", "--config", "cpu-small", "--threads", "1", "--num-workers", "0",
        "--steps-per-epoch", "1"]
#: ... and without dropout (each rank draws its own dropout masks: they cannot equal the
#: one-process run's).
RUN = [*BASE, "--set", "model.dropout=0"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e["OMP_NUM_THREADS"] = "1"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def sertrain(*args: object, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """``sertrain args`` in one process, or under ``torchrun --standalone --nproc-per-node``."""
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    argv = [sys.executable, *launcher, "-m", "sertrain", *[str(a) for a in args]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env(), cwd=REPO)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return learnable_store(store_base(tmp_path_factory), balance=True, augment="default")


# --------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------
#: (index size, global batch (divisible by every world size), steps per epoch): last batch
#: complete; of 2 (dropped from 3 ranks on); of 27 (uneven shares); re-permuting steps.
@pytest.mark.parametrize("n, batch, steps", [(168, 24, 0), (170, 24, 0), (171, 36, 0), (100, 12, 9)])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_of_every_step_are_the_one_process_batch(n, batch, steps, world):
    index = np.arange(1000, 1000 + n)
    one = BalancedBatchSampler(index, batch, seed=3, steps_per_epoch=steps)
    shards = [ShardedBatchSampler(BalancedBatchSampler(index, batch, seed=3, steps_per_epoch=steps), r, world)
              for r in range(world)]
    for epoch in (1, 2):
        one.set_epoch(epoch)
        for s in shards:
            s.set_epoch(epoch)
        expected = [b for b in one if len(b) >= world]  # a last batch smaller than the world is dropped
        per_rank = [list(s) for s in shards]
        assert all(len(p) == len(expected) == len(s) for p, s in zip(per_rank, shards))
        for t, batch_t in enumerate(expected):
            parts = [p[t] for p in per_rank]
            assert sum(parts, []) == batch_t  # rank order concatenated = the one-process batch
            assert max(map(len, parts)) - min(map(len, parts)) <= 1 and min(map(len, parts)) >= 1
            if len(batch_t) == batch:
                assert all(len(p) == batch // world for p in parts)
    # Another epoch is another permutation, the same on every rank.
    shards[0].set_epoch(1)
    first = list(shards[0])
    shards[0].set_epoch(2)
    assert list(shards[0]) != first


# --------------------------------------------------------------------------------------------
# One step in float64 on a real gloo group
# --------------------------------------------------------------------------------------------
def _model(dtype=torch.float64):
    from sertrain.config import apply_overrides, load_config
    from sertrain.model import InputSpec, build_model

    cfg = apply_overrides(load_config("cpu-small"), {"model.dropout": 0.0})
    torch.manual_seed(0)
    return build_model(cfg.model, InputSpec(n_mels=40, frames=300), 4, 2, 6).to(dtype)


def _batch(case: str) -> dict[str, torch.Tensor]:
    """11 segments (shards of 6 and 5), with label gaps that only global counts get right."""
    g = torch.Generator().manual_seed(1)
    n = 11
    batch = {
        "x": torch.randn(n, 3, 300, 40, generator=g, dtype=torch.float64),
        "valid": torch.randint(40, 301, (n,), generator=g),
        "emotion": torch.randint(0, 4, (n,), generator=g),
        "gender": torch.randint(0, 2, (n,), generator=g),
        "speaker": torch.randint(0, 6, (n,), generator=g),
    }
    if case == "gaps":
        batch["gender"][2] = -1
        batch["speaker"][[0, 3]] = -1
        batch["speaker"][6:] = -1  # rank 1 holds no speaker label; rank 0 has 4 of its 6
    elif case == "no_speaker":
        batch["speaker"][:] = -1  # the speaker term is left out, as in one process
    return batch


#: case -> active task weights (cfg.loss.active_weights())
CASES = {"gaps": {"gender": 0.3, "speaker": 0.1}, "no_speaker": {"gender": 0.3, "speaker": 0.1}, "aux_none": {}}


def _steps(model, forward_model, batch, weights, loss_fn, steps=2):
    """Two optimiser steps on ``batch``: per step (loss parts, grads), then the final state.
    SGD with momentum: its update is linear in the gradient, so equal gradients give equal
    weights to the same tolerance (Adam moves a parameter whose gradient is ~0 by ~lr in the
    direction of its rounding; the torchrun tests below run Adam)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    record = []
    for _ in range(steps):
        model.train()
        out = forward_model(batch["x"], batch["valid"])
        loss, parts = loss_fn(out, batch, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        record.append((parts, {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}))
        opt.step()
    return record, {k: v.clone() for k, v in model.state_dict().items()}


def _ddp_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from sertrain import distributed

    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    ddp = distributed.current()
    results = {}
    try:
        bn = torch.nn.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(2)))
        bn(torch.randn(4, 2, 3, 3))
        results["torch_syncbn_cpu"] = "ran"
    except ValueError as exc:
        results["torch_syncbn_cpu"] = str(exc)
    draws = []
    for _ in range(2):  # dropout stream of (seed 0, epoch 3) on this rank, twice
        ddp.seed_epoch(0, 3)
        draws.append(torch.rand(4))
    gathered = [torch.zeros(4) for _ in range(world)]
    dist.all_gather(gathered, draws[0])
    results["draws"] = {"repeat": draws, "ranks": gathered}
    try:
        ddp.check_batch(31)
    except Exception as exc:  # noqa: BLE001 (the message is what is checked)
        results["indivisible"] = str(exc)
    for case, weights in CASES.items():
        batch = _batch(case)
        shard = {k: torch.tensor_split(v, world)[rank] for k, v in batch.items()}  # 6 and 5 segments
        model = ddp.sync_batchnorm(_model())
        # As sertrain.train decides (_unused_heads): label gaps or a head outside the loss.
        wrapped = ddp.wrap(model, find_unused_parameters=True)
        record, state = _steps(model, wrapped, shard, weights, ddp.multitask_loss)
        # Each rank's parts are its share of the global per-step means: sum them.
        totals = []
        for parts, _ in record:
            t = torch.tensor([float(parts.get(k, 0.0)) for k in ("total", "emotion", "gender", "speaker")],
                             dtype=torch.float64)
            dist.all_reduce(t)
            totals.append(t.tolist())
        results[case] = {"totals": totals, "grads": [g for _, g in record], "state": state,
                         "keys": [sorted(p) for p, _ in record]}
    if rank == 0:
        torch.save(results, out)
    distributed.shutdown()


@pytest.fixture(scope="module")
def ddp_steps(tmp_path_factory):
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp_step")
    out = tmp / "rank0.pt"
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp / 'rendezvous'}", str(out)), nprocs=2)
    return torch.load(out, weights_only=False)


def test_torch_syncbatchnorm_refuses_cpu_so_ours_is_needed(ddp_steps):
    """Why sertrain has its own DistributedBatchNorm2d: torch's SyncBatchNorm runs on GPUs only."""
    assert "expected input tensor to be on GPU" in ddp_steps["torch_syncbn_cpu"]


def test_each_rank_draws_its_own_replayable_dropout_stream(ddp_steps):
    """Per (seed, epoch, rank): ranks draw different masks (identical seeds would give every
    rank the same masks), and the same ones again after a resume."""
    draws = ddp_steps["draws"]
    assert torch.equal(draws["repeat"][0], draws["repeat"][1])
    assert not torch.equal(draws["ranks"][0], draws["ranks"][1])


def test_indivisible_batch_is_refused(ddp_steps):
    assert "--batch-size 31 is not divisible by the 2 processes" in ddp_steps["indivisible"]


@pytest.mark.parametrize("case", list(CASES))
def test_one_ddp_step_equals_the_one_process_step_in_float64(ddp_steps, case):
    from sertrain.train import multitask_loss

    model = _model()
    record, state = _steps(model, model, _batch(case), CASES[case], multitask_loss)
    ours = ddp_steps[case]
    for step, ((parts, grads), totals, keys) in enumerate(zip(record, ours["totals"], ours["keys"])):
        assert keys == sorted(parts), (step, keys)  # the same loss terms, decided globally
        expected = [parts.get(k, 0.0) for k in ("total", "emotion", "gender", "speaker")]
        np.testing.assert_allclose(totals, expected, rtol=1e-6, err_msg=f"losses, step {step}")
        for name, g in grads.items():
            theirs = ours["grads"][step][name]
            if g is None:  # a head outside the loss gets no gradient, in both runs
                assert theirs is None, (step, name)
                continue
            scale = float(g.abs().max()) or 1.0
            assert float((theirs - g).abs().max()) <= 1e-5 * scale, (step, name)
    for key, value in state.items():  # weights after two Adam steps, BN running statistics
        torch.testing.assert_close(ours["state"][key], value, rtol=1e-7, atol=1e-9, msg=key)
    bn_keys = [k for k in state if k.endswith("running_var")]
    assert bn_keys and all(not torch.equal(state[k], torch.ones_like(state[k])) for k in bn_keys)


# --------------------------------------------------------------------------------------------
# torchrun -m sertrain
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_and_two(store, tmp_path_factory):
    """The same 4 optimiser steps (4 epochs of 1 step, batch 32) in 1 and in 2 processes."""
    tmp = tmp_path_factory.mktemp("torchrun")
    one = sertrain("train", store, "--out", tmp / "one", *RUN, "--epochs", "4")
    assert one.returncode == 0, one.stderr
    two = sertrain("train", store, "--out", tmp / "two", *RUN, "--epochs", "4", nproc=2)
    assert two.returncode == 0, two.stderr
    return tmp, one, two


def test_torchrun_train_equals_one_process(one_and_two):
    tmp, one, two = one_and_two
    h1 = json.loads((tmp / "one" / "history.json").read_text())
    h2 = json.loads((tmp / "two" / "history.json").read_text())
    assert [h["epoch"] for h in h2] == [1, 2, 3, 4]
    # Step 1 runs the same weights on the same 32 segments: only rounding differs (float32
    # batch norm over the whole batch in one process, over two shares and one all-reduce here).
    assert h2[0]["train_loss"] == pytest.approx(h1[0]["train_loss"], rel=1e-5)
    for a, b in zip(h1, h2):  # losses and accuracy of every step (one step per epoch)
        for key in ("train_loss", "train_loss_emotion", "train_loss_gender", "train_loss_speaker", "val_loss"):
            # Adam turns gradient rounding of ~1e-5 into steps of ~lr on parameters whose
            # gradient is near 0: by step 4 the losses differ by ~1e-4 (relative).
            assert b[key] == pytest.approx(a[key], rel=1e-3), (a["epoch"], key)
        assert b["train_acc"] == a["train_acc"] and b["val_ua"] == a["val_ua"], a["epoch"]
    w1 = load_checkpoint(tmp / "one" / "last.pt").model_state
    w2 = load_checkpoint(tmp / "two" / "last.pt").model_state
    assert w1.keys() == w2.keys()  # a DDP checkpoint is a plain one (no "module." prefix, BatchNorm2d keys)
    # Adam moves each weight by <= ~lr per step, so two runs of 4 steps differ by < 8 lr
    # anywhere; most weights agree far closer. (The one-process run with 2 threads instead of
    # 1 differs from itself as much: max 3.6e-3, median 1.2e-5 here.)
    diff = torch.cat([(w2[k] - w1[k]).abs().flatten() for k in w1 if w1[k].is_floating_point()])
    assert float(diff.max()) < 8 * 1e-3 and float(diff.median()) < 1e-4, (float(diff.max()), float(diff.median()))
    m1 = json.loads((tmp / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp / "two" / "metrics.json").read_text())
    assert m2["selected_epochs"] == m1["selected_epochs"]
    for key in ("ua", "wa", "macro_f1", "confusion"):
        assert m2["test"][key] == m1["test"][key], key
    p1, p2 = (pd.read_csv(tmp / run / "predictions.csv") for run in ("one", "two"))
    probs = [c for c in p1.columns if c.startswith("p_")]
    assert (p1["utt_id"] == p2["utt_id"]).all() and len(probs) == 4
    np.testing.assert_allclose(p2[probs].to_numpy(), p1[probs].to_numpy(), atol=1e-4)


def test_torchrun_only_rank_zero_prints_and_writes(one_and_two):
    tmp, one, two = one_and_two
    assert two.stdout.count("wrote ") == 1 and two.stdout.count("fold 1 epoch 4/4") == 1
    assert one.stdout.count("\n") == two.stdout.count("\n")
    assert "error" not in two.stderr.lower() and "Traceback" not in two.stderr
    names = sorted(p.name for p in (tmp / "two").iterdir())
    assert names == sorted(p.name for p in (tmp / "one").iterdir())
    assert not [p for p in (tmp / "two").iterdir() if ".tmp" in p.name]


def test_torchrun_resume_replays_the_uninterrupted_run(store, tmp_path):
    """With dropout (cpu-small's 0.2): each rank's masks depend on (seed, epoch, rank) only,
    so a resumed run draws the masks the uninterrupted run drew, on every rank."""
    straight = sertrain("train", store, "--out", tmp_path / "straight", *BASE, "--epochs", "3", "-q", nproc=2)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "resumed"
    first = sertrain("train", store, "--out", out, *BASE, "--epochs", "1", "-q", nproc=2)
    assert first.returncode == 0, first.stderr
    again = sertrain("train", store, "--out", out, *BASE, "--epochs", "3", "--resume", "-q", nproc=2)
    assert again.returncode == 0, again.stderr
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "segments_per_s")} for e in h]  # noqa: E731
    assert strip(json.loads((out / "history.json").read_text())) == strip(
        json.loads((tmp_path / "straight" / "history.json").read_text()))
    a = load_checkpoint(out / "last.pt").model_state
    b = load_checkpoint(tmp_path / "straight" / "last.pt").model_state
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_cv_and_a_refused_batch_size(store, tmp_path):
    ran = sertrain("cv", store, "--out", tmp_path / "cv", "--folds", "1", "--epochs", "1", "--steps-per-epoch", "2",
                   "--device", "cpu", "--config", "cpu-small", "--threads", "1", "--num-workers", "0", nproc=2)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.count("test metrics of the selected checkpoint") == 1
    metrics = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert [r["fold"] for r in metrics["runs"]] == [1] and metrics["runs"][0]["epochs_run"] == 1
    assert (tmp_path / "cv" / "report.html").is_file() and (tmp_path / "cv" / "fold_1" / "best.pt").is_file()
    bad = sertrain("train", store, "--out", tmp_path / "bad", *RUN, "--epochs", "1", "--batch-size", "31", nproc=2)
    assert bad.returncode != 0
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: --batch-size 31 is not divisible by the 2 processes: each process takes "
                      "batch_size / world_size segments of every global batch (use a multiple of 2)"]
    assert not (tmp_path / "bad").exists()
