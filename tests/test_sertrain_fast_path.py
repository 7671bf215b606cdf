"""The training fast path (README, "Training speed"): no per-step reads from the device, the
device cache (``train.cache = "device"``), ``train.compile``, the non-finite loss check and
the FLOP count of bench_train.

Every change to the step must leave a CPU run's numbers exactly as they were: the reference
here is the training loop as it was before (per-step ``float()`` of each loss part, accuracy
counted per step, the check ``math.isfinite(float(loss))``), kept verbatim below.
"""

from __future__ import annotations

import math
import os
import shutil
import traceback
from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import sertrain.cache as cache_mod
import sertrain.train as train_mod
from sertrain.cache import fold_cache
from sertrain.checkpoint import load_checkpoint
from sertrain.config import load_config
from sertrain.data import BalancedBatchSampler, SegmentBatchDataset, SegmentLabels, make_loader, speaker_map
from sertrain.errors import InputError, SertrainError
from sertrain.model import InputSpec, build_model, forward_macs, training_flops
from sertrain.runtime import resolve_precision, seed_everything
from sertrain.train import _labels_to_device, _train_epoch, make_optimizer, train_fold
from sertrain_fixtures import learnable_store, small_cfg, store_base

STATS = ("train_loss", "train_loss_emotion", "train_loss_gender", "train_loss_speaker", "train_acc")
HISTORY = STATS + ("val_loss", "val_ua", "val_wa", "val_f1", "lr", "epoch")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return learnable_store(store_base(tmp_path_factory), balance=True, augment="default")


@pytest.fixture(scope="module")
def fold_data(store):
    from serprep.store import StoreReader

    reader = StoreReader(store)
    fold = reader.fold("loso", 1)
    train_speakers = [str(s) for s in fold.train_speakers]
    dataset = SegmentBatchDataset(reader, SegmentLabels.from_reader(reader), fold.norm_mean, fold.norm_std,
                                  speaker_map(list(reader.vocab("speaker")), train_speakers))
    yield reader, fold, dataset, InputSpec.from_reader(reader), len(train_speakers)
    reader.close()


# ------------------------------------------------------------------------------------------
# The training loop before the fast path, verbatim (sertrain 0.4): the reference.
# ------------------------------------------------------------------------------------------
def reference_loss(out, batch, w_gender, w_speaker, label_smoothing=0.0):
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


def reference_epoch(model, loader, sampler, epoch, optimizer, scaler, precision, device, w_gender, w_speaker, cfg):
    sampler.set_epoch(epoch)
    model.train()
    sums = defaultdict(float)
    counts = defaultdict(int)
    correct = seen = 0
    for batch in loader:
        x = batch["x"].to(device, non_blocking=True)
        with precision.autocast(device):
            out = model(x, batch["valid"].to(device, non_blocking=True))
        loss, parts = reference_loss(out, batch, w_gender, w_speaker, cfg.loss.label_smoothing)
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
    mean = {key: sums[key] / counts[key] for key in sums}
    return {"train_loss": mean.get("total", float("nan")), "train_loss_emotion": mean.get("emotion", float("nan")),
            "train_loss_gender": mean.get("gender"), "train_loss_speaker": mean.get("speaker"),
            "train_acc": correct / seen if seen else float("nan")}


def setup_run(fold_data, cfg, steps):
    """A fresh model, optimizer and loader for fold 1 (same seed: same start every time)."""
    reader, fold, dataset, spec, n_speakers = fold_data
    device = torch.device("cpu")
    seed_everything(cfg.train.seed, device)
    model = build_model(cfg.model, spec, len(reader.vocab("emotion")), len(reader.vocab("gender")), n_speakers)
    optimizer = make_optimizer(model, cfg)
    sampler = BalancedBatchSampler(fold.balanced_index, cfg.train.batch_size, cfg.train.seed, steps)
    return model, optimizer, sampler, make_loader(dataset, sampler, 0)


def run_epochs(epoch_fn, fold_data, cfg, epochs=2, steps=4, loader_fn=None, nan_fill=False):
    model, optimizer, sampler, loader = setup_run(fold_data, cfg, steps)
    # sertrain 0.4 left deterministic mode's NaN fill of new tensors on (seed_everything now
    # turns it off): the reference runs with it.
    torch.utils.deterministic.fill_uninitialized_memory = nan_fill
    if loader_fn is not None:
        loader = loader_fn(sampler)
    device = torch.device("cpu")
    precision = resolve_precision("off", device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    weights = cfg.loss.active_weights()
    # The reference loop takes the two weights it knew; sertrain's loop the registry's dict.
    loss_args = ((weights.get("gender", 0.0), weights.get("speaker", 0.0)) if epoch_fn is reference_epoch
                 else (weights,))
    stats = [epoch_fn(model, loader, sampler, e, optimizer, scaler, precision, device, *loss_args, cfg)
             for e in range(1, epochs + 1)]
    return stats, model, optimizer


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ------------------------------------------------------------------------------------------
# Identical numbers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("aux", ["gender+speaker", "none"])
def test_fast_epoch_equals_the_reference_loop(fold_data, aux, monkeypatch):
    """Same losses, accuracy, weights, batch-norm statistics and optimizer state as the loop
    that read every value back at every step (with the NaN fill of new tensors on, as then)."""
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", False)  # restored after
    cfg = small_cfg(**{"loss.aux": aux})
    ref, ref_model, ref_opt = run_epochs(reference_epoch, fold_data, cfg, nan_fill=True)
    new, new_model, new_opt = run_epochs(_train_epoch, fold_data, cfg)
    for r, n in zip(ref, new):
        assert {k: r[k] for k in STATS} == {k: n[k] for k in STATS}
        assert n["segments_per_s"] > 0
    assert_same_state(ref_model, new_model)
    for (pa, sa), (pb, sb) in zip(ref_opt.state.items(), new_opt.state.items()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_packing_lengths_are_the_device_lengths():
    """The BLSTM's packing lengths computed on the host equal the lengths the blocks compute,
    for both presets' poolings and every kind of valid count (0, 1, odd, full, too long)."""
    spec = InputSpec(n_mels=40, frames=300)
    valid = torch.tensor([0, 1, 2, 3, 4, 5, 7, 99, 150, 151, 299, 300, 301, 1000])
    for name in ("cpu-small", "paper"):
        model = build_model(load_config(name).model, spec, 4, 2, 3)
        expect, size = valid.clamp(1, 300), 300
        for block in model.blocks:
            pool = block.pool_size[0]
            size //= pool
            expect = torch.div(expect + pool - 1, pool, rounding_mode="floor").clamp(1, size)
        assert torch.equal(model.packing_lengths(valid, 300), expect), name
    small = build_model(load_config("cpu-small").model, spec, 4, 2, 3).eval()
    x = torch.randn(len(valid), 3, 300, 40)
    assert torch.equal(small(x, valid)["lengths"], small.packing_lengths(valid, 300))


def test_blstm_equals_torch_packing():
    """SERModel.blstm (order computed on the host) gives exactly what torch's
    pack_padded_sequence(enforce_sorted=False) -> LSTM -> pad_packed_sequence gives, outputs
    and gradients."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    model = build_model(load_config("cpu-small").model, InputSpec(40, 300), 4, 2, 3)
    lengths = torch.tensor([40, 75, 3, 75, 1, 60, 60])
    h = torch.randn(len(lengths), 75, model.lstm.input_size, requires_grad=True)
    ours = model.blstm(h, lengths)
    g_ours = torch.autograd.grad(ours.square().sum(), [h, *model.lstm.parameters()])
    packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
    theirs, _ = pad_packed_sequence(model.lstm(packed)[0], batch_first=True, total_length=75)
    g_theirs = torch.autograd.grad(theirs.square().sum(), [h, *model.lstm.parameters()])
    assert torch.equal(ours, theirs)
    assert all(torch.equal(a, b) for a, b in zip(g_ours, g_theirs))


def test_forward_with_host_lengths_never_copies_lengths_back(monkeypatch):
    """Given the valid counts on the host, the forward pass packs with them instead of copying
    the device lengths back (``lengths.cpu()``, a synchronisation on a GPU): with ``.cpu()``
    made to fail, the forward pass still runs and gives the same outputs."""
    torch.manual_seed(0)
    model = build_model(load_config("cpu-small").model, InputSpec(40, 300), 4, 2, 3).eval()
    x, valid = torch.randn(3, 3, 300, 40), torch.tensor([300, 120, 9])
    expected = model(x, valid)

    def no_cpu(self, *args, **kwargs):
        raise AssertionError("a tensor was copied to the host with .cpu()")

    monkeypatch.setattr(torch.Tensor, "cpu", no_cpu)
    got = model(x, valid.clone(), valid_host=valid)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


class HostReads(TorchDispatchMode):
    """Counts reads of tensor values into Python (``.item()``, ``float()``, ``int()``,
    ``bool()``: aten._local_scalar_dense, a synchronisation on a GPU) made by sertrain's code."""

    SKIP = ("torch/_tensor.py", "torch/_compile.py", "torch/utils/_python_dispatch.py", "torch/_dynamo", "<")

    def __init__(self):
        super().__init__()
        self.sites = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            frames = [f for f in traceback.extract_stack()[:-1] if not any(s in f.filename for s in self.SKIP)]
            caller = frames[-1]
            if f"{os.sep}sertrain{os.sep}" in caller.filename:
                self.sites[f"{os.path.basename(caller.filename)}:{caller.lineno}"] += 1
        return func(*args, **(kwargs or {}))


def test_training_reads_nothing_back_per_step(fold_data, monkeypatch):
    """With the non-finite check every K steps (K = 50 on CUDA; here beyond the epoch), the
    number of value reads in an epoch does not grow with its steps: the loss parts, the
    accuracy and the label checks are read once per epoch, not per step (before: 8 per step)."""
    monkeypatch.setitem(train_mod.NONFINITE_CHECK_STEPS, "cpu", 10_000)
    cfg = small_cfg()
    reads = {}
    for steps in (2, 6):
        model, optimizer, sampler, loader = setup_run(fold_data, cfg, steps)
        with HostReads() as mode:
            _train_epoch(model, loader, sampler, 1, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                         resolve_precision("off", torch.device("cpu")), torch.device("cpu"),
                         cfg.loss.active_weights(), cfg)
        reads[steps] = dict(mode.sites)
    assert reads[2] == reads[6], reads
    assert sum(reads[6].values()) <= 3, reads
    # The counter does see per-step reads where sertrain makes them: multitask_loss (kept for
    # other callers) reads its 4 parts back at each call.
    out = {"emotion": torch.randn(4, 4), "gender": torch.randn(4, 2), "speaker": torch.randn(4, 3)}
    batch = {"emotion": torch.tensor([0, 1, 2, 3]), "gender": torch.tensor([0, 1, 0, 1]),
             "speaker": torch.tensor([0, 1, 2, -1])}
    with HostReads() as mode:
        for _ in range(3):
            train_mod.multitask_loss(out, batch, {"gender": 0.3, "speaker": 0.1})
    assert sum(mode.sites.values()) == 12, mode.sites


def test_labels_to_device_moves_all_labels_in_one_piece():
    batch = {"valid": torch.tensor([300, 12]), "emotion": torch.tensor([1, -1]), "gender": torch.tensor([0, 1]),
             "speaker": torch.tensor([-1, 4]), "x": torch.zeros(2, 3, 4, 5)}
    same = _labels_to_device(batch, torch.device("cpu"))
    assert all(same[k] is batch[k] for k in ("valid", "emotion", "gender", "speaker")) and "x" not in same
    moved = _labels_to_device(batch, torch.device("meta"))  # any non-CPU device takes the stacked copy
    assert set(moved) == {"valid", "emotion", "gender", "speaker"}
    assert all(v.device.type == "meta" and v.shape == (2,) and v.dtype == torch.int64 for v in moved.values())


# ------------------------------------------------------------------------------------------
# Non-finite losses are still errors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("check_every", [1, 4])
def test_nonfinite_loss_is_refused_naming_its_step(fold_data, monkeypatch, check_every):
    """A NaN loss at step 3 stops the epoch with an error naming epoch and step, whether each
    step is checked (CPU) or every 4 steps (as on CUDA, there every 50); checked each step,
    the NaN never reaches the weights."""
    monkeypatch.setitem(train_mod.NONFINITE_CHECK_STEPS, "cpu", check_every)
    cfg = small_cfg()
    model, optimizer, sampler, loader = setup_run(fold_data, cfg, 6)
    calls = {"n": 0}

    def poison(module, inputs, out):
        calls["n"] += 1
        if calls["n"] == 3:
            out["emotion"] = out["emotion"] * float("nan")
        return out

    model.register_forward_hook(poison)
    with pytest.raises(SertrainError, match=r"^training diverged at epoch 1, step 3 \(loss nan\); lower --lr$"):
        _train_epoch(model, loader, sampler, 1, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                     resolve_precision("off", torch.device("cpu")), torch.device("cpu"),
                     {"gender": 0.3, "speaker": 0.1}, cfg)
    assert calls["n"] == (3 if check_every == 1 else 4)
    if check_every == 1:
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_divergent_run_is_refused(store, tmp_path):
    """A step size that blows the weights up ends the run with one line, before any epoch is saved."""
    with pytest.raises(SertrainError, match=r"^training diverged at epoch 1, step \d+ \(loss (nan|inf)\); lower --lr$"):
        train_fold(store, 1, small_cfg(**{"train.lr": 1e30, "train.epochs": 1, "train.steps_per_epoch": 6}),
                   tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "last.pt").exists()


# ------------------------------------------------------------------------------------------
# --cache device
# ------------------------------------------------------------------------------------------
def test_cache_batches_equal_loader_batches(fold_data):
    reader, fold, dataset, spec, _ = fold_data
    cache = fold_cache(dataset, fold, torch.device("cpu"), "float32", None)
    assert cache.x.dtype == torch.float32 and cache.nbytes == cache.x.numel() * 4
    sampler = BalancedBatchSampler(fold.balanced_index, 32, 0, 3)
    sampler.set_epoch(1)
    n = 0
    for ids in sampler:
        a, b = dataset[ids], cache.batch(ids)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
        n += 1
    assert n == 3
    with pytest.raises(KeyError):
        cache.rows([int(reader.n_segments) + 5])


def test_cache_device_run_equals_loader_run_and_resumes(store, tmp_path):
    """train.cache = device gives the loader path's run exactly (history, selection, test
    metrics, weights); a run resumed with the other setting continues it exactly."""
    over = {"train.epochs": 2, "train.steps_per_epoch": 3}
    logs = []
    a = train_fold(store, 2, small_cfg(**over), tmp_path / "none", device="cpu")
    b = train_fold(store, 2, small_cfg(**over, **{"train.cache": "device"}), tmp_path / "device", device="cpu",
                   log=logs.append)
    assert any("device cache:" in line and "MiB float32 on cpu" in line for line in logs), logs
    assert [{k: h[k] for k in HISTORY} for h in a.history] == [{k: h[k] for k in HISTORY} for h in b.history]
    assert a.test == b.test and a.selected_epochs == b.selected_epochs
    sa = load_checkpoint(tmp_path / "none" / "best.pt").model_state
    sb = load_checkpoint(tmp_path / "device" / "best.pt").model_state
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Interrupted after one epoch without the cache, resumed with it (an adjustable key).
    train_fold(store, 2, small_cfg(**{**over, "train.epochs": 1}), tmp_path / "mixed", device="cpu")
    c = train_fold(store, 2, small_cfg(**over), tmp_path / "mixed", device="cpu", resume=True,
                   overrides={"train.epochs": 2, "train.cache": "device"})
    assert [h["train_loss"] for h in c.history] == [h["train_loss"] for h in a.history]
    assert c.test == a.test


def test_cache_that_does_not_fit_is_refused(store, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "free_memory", lambda device: 2**20)
    with pytest.raises(InputError) as err:
        train_fold(store, 1, small_cfg(**{"train.cache": "device", "train.epochs": 1}), tmp_path / "run", device="cpu")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("--cache device: the fold's features need ") and "MiB but cpu has 1.0 MiB available memory" in msg
    assert msg.endswith("use --cache none")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_bfloat16_cache_only_under_bf16_autocast(store, tmp_path, fold_data):
    with pytest.raises(InputError, match="cache_dtype = bfloat16 needs bf16 autocast"):
        train_fold(store, 1, small_cfg(**{"train.cache": "device", "train.cache_dtype": "bfloat16", "train.epochs": 1}),
                   tmp_path / "run", device="cpu")
    # The reason it is allowed there: under bf16 autocast the model sees the same values
    # whether its input was rounded to bf16 in the cache or by autocast at the first conv.
    reader, fold, dataset, spec, n_speakers = fold_data
    cache = fold_cache(dataset, fold, torch.device("cpu"), "bfloat16", torch.bfloat16, test=False)
    assert cache.x.dtype == torch.bfloat16
    torch.manual_seed(0)
    model = build_model(load_config("cpu-small").model, spec, 4, 2, n_speakers).eval()
    ids = np.asarray(fold.balanced_index)[:16]
    fp32, bf16 = dataset[ids], cache.batch(ids)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = model(fp32["x"], fp32["valid"])
        b = model(bf16["x"], bf16["valid"])
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_cache_config_values_are_checked():
    for key, bad in (("train.cache", "gpu"), ("train.cache_dtype", "float16"), ("train.compile", "fast")):
        with pytest.raises(InputError, match=key.replace(".", r"\.")):
            small_cfg(**{key: bad})


# ------------------------------------------------------------------------------------------
# train.compile
# ------------------------------------------------------------------------------------------
def _have_compiler() -> bool:
    return any(shutil.which(c) for c in ("cc", "gcc", "clang", "g++"))


def test_compiled_training_matches_eager(store, tmp_path):
    """train.compile = default trains the same model as eager up to rounding. Dropout 0: the
    compiled code draws its dropout masks from another random stream. SGD: Adam divides each
    gradient by its own running size, so a rounding difference in a gradient near 0 can move a
    weight by a whole step (measured: 2e-3 after 3 steps at lr 1e-3), where SGD keeps the
    difference at the rounding level (5e-5)."""
    if not _have_compiler():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("torch.compile needs a C compiler on the CPU (inductor); CI must have one")
        pytest.skip("no C compiler: torch.compile cannot build CPU kernels here")
    over = {"train.epochs": 1, "train.steps_per_epoch": 3, "model.dropout": 0.0, "train.optimizer": "sgd",
            "train.lr": 0.01}
    eager = train_fold(store, 2, small_cfg(**over), tmp_path / "eager", device="cpu")
    compiled = train_fold(store, 2, small_cfg(**over, **{"train.compile": "default"}), tmp_path / "compiled",
                          device="cpu")
    for key in STATS + ("val_loss",):
        assert compiled.history[0][key] == pytest.approx(eager.history[0][key], rel=1e-5, abs=1e-6), key
    a = load_checkpoint(tmp_path / "eager" / "last.pt").model_state
    b = load_checkpoint(tmp_path / "compiled" / "last.pt").model_state
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4, msg=key)


# ------------------------------------------------------------------------------------------
# FLOP count (benchmarks/bench_train.py's fraction of the arithmetic limit)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cpu-small", "paper"])
def test_training_flops_positive_and_stable(name):
    cfg, spec = load_config(name).model, InputSpec(n_mels=40, frames=300)
    a, b = training_flops(cfg, spec), training_flops(cfg, spec)
    assert a == b > 0
    # Forward + backward of the convolutions and matrix products: between 2x and 3x the
    # forward's 2 FLOPs per multiply-add (the first conv needs no input gradient).
    forward = 2 * forward_macs(cfg, spec)
    assert 2.0 * forward < a < 3.1 * forward, a / forward
    assert training_flops(cfg, spec, batch=1) == pytest.approx(a, rel=1e-6)


def test_cli_cache_and_compile_options(store, tmp_path):
    """``sertrain train --cache device`` trains from the device cache and records it in the
    run's config; a value outside the choices is refused in one line."""
    import json

    from click.testing import CliRunner

    from sertrain.cli import main

    args = ["train", str(store), "--fold", "1", "--out", str(tmp_path / "run"), "--device", "cpu", "--config",
            "cpu-small", "--epochs", "1", "--steps-per-epoch", "2", "--num-workers", "0", "--threads", "1"]
    result = CliRunner().invoke(main, args + ["--cache", "device"])
    assert result.exit_code == 0, result.output
    assert "device cache:" in result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["cache"] == "device"
    bad = CliRunner().invoke(main, args[:4] + [str(tmp_path / "bad")] + args[5:] + ["--compile", "fast"])
    assert bad.exit_code == 2 and "--compile" in bad.output
