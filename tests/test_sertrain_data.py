"""sertrain.data on a real serprep store: one read per batch, normalisation, samplers, workers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from serprep.store import StoreReader
from sertrain.data import (
    BalancedBatchSampler,
    SegmentBatchDataset,
    SegmentLabels,
    SequentialBatchSampler,
    make_loader,
    normalize,
    resolve_fold,
    speaker_map,
)
from sertrain.errors import InputError
from sertrain_fixtures import learnable_store, no_folds_store, store_base


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return learnable_store(store_base(tmp_path_factory), balance=True, augment="default")


@pytest.fixture(scope="module")
def parts(store):
    reader = StoreReader(store)
    fold = reader.fold("loso", 1)
    labels = SegmentLabels.from_reader(reader)
    ds = SegmentBatchDataset(reader, labels, fold.norm_mean, fold.norm_std,
                             speaker_map(reader.vocab("speaker"), fold.train_speakers))
    yield reader, fold, labels, ds
    reader.close()


class CountingReader:
    """Wraps a StoreReader and counts read_segments calls."""

    def __init__(self, reader):
        self.reader, self.calls = reader, []

    def read_segments(self, idx):
        self.calls.append(list(idx))
        return self.reader.read_segments(idx)


def test_one_read_per_batch_in_sorted_blocks(parts):
    reader, fold, labels, ds = parts
    counting = CountingReader(reader)
    ds2 = SegmentBatchDataset(counting, labels, fold.norm_mean, fold.norm_std, ds.speaker_ids)
    sampler = BalancedBatchSampler(fold.balanced_index, 16, seed=0)
    batches = list(make_loader(ds2, sampler, num_workers=0))
    assert len(counting.calls) == len(batches) == len(sampler)
    for call, batch in zip(counting.calls, batches):
        assert call == sorted(call)
        assert batch["segment"].tolist() == call
        assert batch["x"].shape == (len(call), 3, 300, 40)


def test_normalisation_on_valid_frames_padding_stays_zero(parts):
    reader, fold, labels, ds = parts
    # Short segments (the corpus has many < 3 s utterances) exercise the padding.
    idx = np.sort(np.asarray(fold.test_segments))[:12]
    batch = ds[idx.tolist()]
    raw, valid = reader.read_segments(idx)
    assert batch["valid"].tolist() == valid.tolist() and (valid < 300).any()
    mean, std = fold.norm_mean, fold.norm_std
    for i, v in enumerate(valid):
        expected = (raw[i][:, :v] - mean[:, None, :]) / std[:, None, :]
        np.testing.assert_allclose(batch["x"][i, :, :v].numpy(), expected, rtol=1e-5, atol=1e-5)
        assert torch.count_nonzero(batch["x"][i, :, v:]) == 0
    assert batch["emotion"].tolist() == labels.emotion[idx].tolist()
    assert (batch["utt"].numpy() == labels.utt[idx]).all()


def test_normalize_function_masks_padding():
    x = torch.ones(2, 3, 10, 4) * 5
    out = normalize(x, torch.tensor([10, 4]), torch.full((3, 4), 1.0), torch.full((3, 4), 2.0))
    assert torch.all(out[0] == 2.0) and torch.all(out[1, :, :4] == 2.0) and torch.all(out[1, :, 4:] == 0)
    # A constant bin (std 0) must not produce inf.
    out = normalize(x, torch.tensor([10, 10]), torch.zeros(3, 4), torch.zeros(3, 4))
    assert torch.isfinite(out).all()


def test_training_speakers_only_in_speaker_targets(parts):
    reader, fold, labels, ds = parts
    vocab = reader.vocab("speaker")
    m = speaker_map(vocab, fold.train_speakers)
    assert sorted(m[m >= 0].tolist()) == list(range(len(fold.train_speakers)))
    for s in list(fold.test_speakers) + list(fold.validation_speakers):
        assert m[vocab.index(s)] == -1
    batch = ds[np.sort(fold.test_segments)[:5].tolist()]
    assert (batch["speaker"] == -1).all()
    train_batch = ds[np.sort(fold.balanced_index)[:5].tolist()]
    assert (train_batch["speaker"] >= 0).all()


def test_unknown_pseudo_speakers_are_never_speaker_targets():
    # MSP-Podcast's `unknown:<partition>` stands for many people: no speaker-task class.
    vocab = ["spk1", "unknown:Train", "spk2", "spk3"]
    m = speaker_map(vocab, ["spk1", "spk2", "unknown:Train"])
    assert m.tolist() == [0, -1, 1, -1]


def test_balanced_sampler_is_seeded_per_epoch_and_covers_the_index(parts):
    _, fold, labels, _ = parts
    index = np.asarray(fold.balanced_index)
    s = BalancedBatchSampler(index, 32, seed=3)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(1)
    assert list(s) == e1  # same (seed, epoch): same batches (what --resume relies on)
    s.set_epoch(2)
    assert list(s) != e1
    assert Counter(i for b in e1 for i in b) == Counter(index.tolist())
    assert all(b == sorted(b) for b in e1)
    # Balanced: each emotion class equally represented over an epoch.
    counts = np.bincount(labels.emotion[[i for b in e1 for i in b]], minlength=4)
    assert counts.min() == counts.max()
    fixed = BalancedBatchSampler(index, 32, seed=3, steps_per_epoch=7)
    fixed.set_epoch(0)
    assert len(list(fixed)) == 7 and all(len(b) == 32 for b in fixed)
    other_seed = BalancedBatchSampler(index, 32, seed=4)
    other_seed.set_epoch(1)
    assert list(other_seed) != e1


def test_sequential_sampler_blocks():
    s = SequentialBatchSampler(np.array([9, 1, 5, 3, 7]), 2)
    assert list(s) == [[1, 3], [5, 7], [9]] and len(s) == 3


def test_workers_open_their_own_handle_and_match_single_process(store):
    reader = StoreReader(store)
    fold = reader.fold("loso", 1)
    reader.read_segments([0])  # parent holds an open handle before the fork
    labels = SegmentLabels.from_reader(reader)
    ds = SegmentBatchDataset(reader, labels, fold.norm_mean, fold.norm_std,
                             speaker_map(reader.vocab("speaker"), fold.train_speakers))
    sampler = SequentialBatchSampler(np.arange(reader.n_segments), 16)
    single = [b["x"] for b in make_loader(ds, sampler, 0)]
    multi = [b["x"] for b in make_loader(ds, sampler, 2)]
    assert len(single) == len(multi)
    for a, b in zip(single, multi):
        assert torch.equal(a, b)
    reader.close()


def test_fold_errors_are_one_line(parts, tmp_path_factory):
    reader = parts[0]
    with pytest.raises(InputError, match=r"fold 9 does not exist in scheme 'loso' \(folds 1..5\)"):
        resolve_fold(reader, "loso", 9, "feats.h5")
    with pytest.raises(InputError, match="no fold scheme 'kfold'"):
        resolve_fold(reader, "kfold", 1, "feats.h5")
    empty = StoreReader(no_folds_store(store_base(tmp_path_factory)))
    with pytest.raises(InputError, match="store has no folds"):
        resolve_fold(empty, "loso", 1, "nofolds.h5")
