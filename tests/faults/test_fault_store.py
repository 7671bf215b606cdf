"""Fault injection, store integrity (issue items 1, 3, 4 and 11's store cases).

A store that changed after it was written, or while it is being read, must never produce a
number: `serprep verify`, `serprep info` and every sertrain command that opens it refuse it
with one line naming the store and what changed.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from fault_helpers import assert_one_line_error, cli_env, command, run, tree_digest
from serprep.errors import StoreError
from serprep.store import StoreReader, verify
from sertrain_fixtures import learnable_store, store_base
from store_fixtures import build

FAST = ("--epochs", "1", "--steps-per-epoch", "2", "--num-workers", "0", "--seed", "0")


@pytest.fixture(scope="module")
def small_store(iemocap_root, tmp_path_factory) -> Path:
    root, _ = iemocap_root
    out = tmp_path_factory.mktemp("fault_store") / "feats.h5"
    build("iemocap", root, out)
    return out


@pytest.fixture(scope="module")
def train_store(tmp_path_factory) -> Path:
    return learnable_store(store_base(tmp_path_factory), balance=True, augment="default")


def flip_byte(path: Path, offset: int, mask: int) -> bytes:
    """XOR one byte of ``path`` with ``mask``; returns the original byte."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        original = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([original[0] ^ mask]))
    return original


def put_byte(path: Path, offset: int, value: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(value)


def _copy(src: Path, tmp_path: Path, name: str = "edited.h5") -> Path:
    dst = tmp_path / name
    shutil.copyfile(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# Item 1: a store replaced while it is read
# ---------------------------------------------------------------------------------------------
def test_reader_notices_a_replaced_store(small_store, iemocap_root, tmp_path):
    path = _copy(small_store, tmp_path, "s.h5")
    reader = StoreReader(path)
    x_before, _ = reader.read_segments([0, 1])
    worker_copy = pickle.loads(pickle.dumps(reader))  # what a DataLoader worker receives
    # Rebuilt with another segment hop: same corpus, other indices.
    build("iemocap", iemocap_root[0], tmp_path / "other.h5", segments=reader.segment_config.__class__(hop=100))
    os.replace(tmp_path / "other.h5", path)
    for r in (reader, worker_copy):
        with pytest.raises(StoreError, match="changed since it was opened") as info:
            r.read_segments([0, 1])
        assert str(path) in str(info.value)
    with pytest.raises(StoreError, match="changed since it was opened"):
        reader.fold("loso", 1)
    with pytest.raises(StoreError, match="changed since it was opened"):
        reader.manifest()
    assert x_before.shape[0] == 2


def test_train_stops_when_the_store_is_replaced_mid_run(train_store, tmp_path):
    """The repro: `serprep build --overwrite` of the store while `sertrain train` reads it."""
    store = _copy(train_store, tmp_path, "s.h5")
    other = tmp_path / "other.h5"
    shutil.copyfile(train_store, other)
    with h5py.File(other, "r+") as f:  # a different file at the same path (any change will do)
        f.attrs["created"] = "2000-01-01T00:00:00+00:00"
    out = tmp_path / "run"
    argv = command("sertrain", "train", store, "--fold", "1", "--out", out, "--epochs", "3",
                   "--steps-per-epoch", "3", "--num-workers", "1", "--patience", "0")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    lines = []
    for line in p.stdout:  # replace the store as soon as the first epoch is done
        lines.append(line)
        if "epoch 1/3" in line:
            os.replace(other, store)
            break
    stdout_rest, stderr = p.communicate(timeout=300)
    errors = [l for l in stderr.splitlines() if l.startswith("error: ")]
    assert p.returncode == 1, stderr
    assert len(errors) == 1 and str(store) in errors[0] and "changed since it was opened" in errors[0], stderr
    assert "Traceback" not in stderr
    assert not (out / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------
# Item 3: sertrain checks what it reads
# ---------------------------------------------------------------------------------------------
def _swap_vocab(f):
    v = f["vocab/emotion"][()]
    f["vocab/emotion"][...] = v[::-1]


def _edit_segment_labels(f):
    e = f["segments/emotion"][()]
    f["segments/emotion"][...] = (e + 1) % 4


def _edit_norm_mean(f):
    f["folds/loso/1/norm_mean"][0, 0] += 1.0


def _edit_feature_config(f):
    f.attrs["feature_config"] = f.attrs["feature_config"].replace('"preemphasis": 0.97', '"preemphasis": 0.5')


def _delete_balanced_index(f):
    del f["folds/loso/1/balanced_index"]


def _delete_segment_emotion(f):
    del f["segments/emotion"]


def _edit_test_speakers(f):
    f["folds/loso/1"].attrs["test_speakers"] = '["Ses02F", "Ses02M"]'


def _edit_fold_counts(f):
    counts = f["folds/loso/1"].attrs["counts"]
    f["folds/loso/1"].attrs["counts"] = counts.replace('"test": {"ang": ', '"test": {"ang": 1')


EDITS = {
    "vocab swapped": (_swap_vocab, "/vocab/emotion"),
    "segment labels edited": (_edit_segment_labels, "/segments/emotion"),
    "norm_mean edited": (_edit_norm_mean, "/folds/loso/1/norm_mean"),
    "feature_config changed": (_edit_feature_config, "attributes"),
    "balanced_index deleted": (_delete_balanced_index, "/folds/loso/1/balanced_index"),
    "segments/emotion deleted": (_delete_segment_emotion, "/segments/emotion"),
    # Item 4: fold attributes are covered too.
    "fold test_speakers edited": (_edit_test_speakers, "/folds/loso/1"),
    "fold counts edited": (_edit_fold_counts, "/folds/loso/1"),
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_opening_an_edited_store_is_refused(small_store, tmp_path, edit):
    change, where = EDITS[edit]
    path = _copy(small_store, tmp_path)
    with h5py.File(path, "r+") as f:
        change(f)
    with pytest.raises(StoreError) as info:
        StoreReader(path)
    message = str(info.value)
    assert str(path) in message and where in message and "\n" not in message
    problems = verify(path)
    assert problems and any(where in p for p in problems), problems


@pytest.mark.parametrize("edit", ["vocab swapped", "fold test_speakers edited", "balanced_index deleted",
                                  "segments/emotion deleted"])
def test_sertrain_train_refuses_an_edited_store(train_store, tmp_path, edit):
    change, where = EDITS[edit]
    path = _copy(train_store, tmp_path)
    with h5py.File(path, "r+") as f:
        change(f)
    before = tree_digest(path)
    ran = run("sertrain", "train", path, "--fold", "1", "--out", tmp_path / "run", *FAST)
    assert_one_line_error(ran, str(path), where, code=1)
    assert tree_digest(path) == before
    assert not (tmp_path / "run").exists()


def test_flipped_feature_bytes_need_verify(small_store, tmp_path):
    """/features is too large to hash on every open: `serprep verify` and `sertrain --verify`
    catch a flipped feature byte."""
    path = _copy(small_store, tmp_path)
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(3).byte_offset + 1001
    flip_byte(path, offset, 0x10)
    assert any("/features" in p for p in verify(path))
    with pytest.raises(StoreError, match="/features"):
        StoreReader(path, verify_features=True)
    ran = run("serprep", "verify", path)
    assert ran.returncode == 1 and "/features checksum mismatch" in ran.stderr


def test_sertrain_verify_option_catches_feature_damage(train_store, tmp_path):
    path = _copy(train_store, tmp_path)
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset + 4
    flip_byte(path, offset, 0x01)
    ran = run("sertrain", "train", path, "--fold", "1", "--out", tmp_path / "run", *FAST, "--verify")
    assert_one_line_error(ran, str(path), "/features", code=1)
    assert not (tmp_path / "run").exists()


def test_every_time_check_names_the_first_problem_only_once(small_store, tmp_path):
    path = _copy(small_store, tmp_path)
    with h5py.File(path, "r+") as f:
        _swap_vocab(f)
        _edit_norm_mean(f)
    ran = run("sertrain", "train", path, "--fold", "1", "--out", tmp_path / "run", *FAST)
    line = assert_one_line_error(ran, str(path), code=1)
    assert "2 problems" in line and "serprep verify" in line
    line = assert_one_line_error(run("serprep", "verify", path), str(path), code=1)
    assert "2 problems" in line and "/vocab/emotion checksum mismatch" in line and "/folds/loso/1/norm_mean" in line


# ---------------------------------------------------------------------------------------------
# Item 11 (store part): damaged metadata is one line, never a traceback
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("from_end", [100, 2000, 5000])
def test_verify_and_info_on_damaged_metadata_say_one_line(small_store, tmp_path, from_end):
    path = _copy(small_store, tmp_path)
    size = path.stat().st_size
    flip_byte(path, size - from_end, 0xFF)
    ran = run("serprep", "verify", path)
    if ran.returncode == 0:  # the flip hit unused bytes: then the store must read identically
        assert _content(path) == _content(small_store)
        return
    assert_one_line_error(ran, str(path), "damaged or modified store", code=1)
    assert_one_line_error(run("serprep", "info", path), str(path), code=1)


# ---------------------------------------------------------------------------------------------
# Proof: any byte flip is caught or harmless
# ---------------------------------------------------------------------------------------------
def _content(path: Path) -> dict:
    """Every dataset's values and every object's attributes (what any result can depend on)."""
    out: dict = {}
    with h5py.File(path, "r") as f:
        out["/"] = {k: _plain(v) for k, v in f.attrs.items()}

        def visit(name, obj):
            out[name + "@attrs"] = {k: _plain(v) for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                data = obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) else obj[()]
                out[name] = (str(obj.dtype), np.asarray(data).tobytes() if np.asarray(data).dtype.kind != "O"
                             else tuple(np.asarray(data).tolist()))

        f.visititems(visit)
    return out


def _plain(v):
    if isinstance(v, np.ndarray):
        return v.tobytes()
    return v.decode() if isinstance(v, bytes) else v


def _flip_offsets(path: Path, n_random: int = 220) -> list[int]:
    """Offsets over the whole file: every metadata-heavy region densely, the features sparsely."""
    size = path.stat().st_size
    with h5py.File(path, "r") as f:
        ds = f["features"]
        chunks = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    feature_bytes = [(c.byte_offset, c.byte_offset + c.size) for c in chunks]
    in_features = lambda o: any(a <= o < b for a, b in feature_bytes)  # noqa: E731
    rng = np.random.default_rng(0)
    candidates = rng.integers(0, size, 20 * n_random)
    meta = [int(o) for o in candidates if not in_features(o)][: n_random]
    feat = [int(o) for o in candidates if in_features(o)][:30]
    head = list(range(0, 2048, 37))  # superblock and root object header
    tail = list(range(max(0, size - 8192), size, 53))  # metadata flushed last
    return sorted(set(meta + feat + head + tail))


def test_any_flipped_byte_is_caught_or_harmless(small_store, tmp_path):
    path = _copy(small_store, tmp_path)
    original = _content(small_store)
    offsets = _flip_offsets(path)
    caught = harmless = 0
    for offset in offsets:
        b = flip_byte(path, offset, 0x5A)
        try:
            problems = verify(path)
            try:
                StoreReader(path, verify_features=True)
                opened = True
            except StoreError:
                opened = False
            if problems:
                assert not opened, f"offset {offset}: verify found {problems} but the reader opened it"
                caught += 1
            else:
                assert opened, f"offset {offset}: the reader refused a store that verifies"
                try:
                    same = _content(path) == original
                except Exception as exc:  # unreadable although nothing was reported
                    raise AssertionError(f"offset {offset}: verify OK but the store is unreadable: {exc}")
                assert same, f"offset {offset}: flipped byte changed the content but verify passed"
                harmless += 1
        finally:
            put_byte(path, offset, b)
    assert caught > 100 and caught + harmless == len(offsets), (caught, harmless)


def test_cheap_open_catches_every_flip_outside_the_feature_frames(small_store, tmp_path):
    """Without --verify, a flip that changes anything but /features' frames is still refused."""
    path = _copy(small_store, tmp_path)
    original = _content(small_store)
    without_features = {k: v for k, v in original.items() if k != "features"}
    with h5py.File(path, "r") as f:
        ds = f["features"]
        spans = [(c.byte_offset, c.byte_offset + c.size)
                 for c in (ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks()))]
    offsets = [o for o in _flip_offsets(path) if not any(a <= o < b for a, b in spans)]
    for offset in offsets:
        b = flip_byte(path, offset, 0xA5)
        try:
            try:
                StoreReader(path)
                opened = True
            except StoreError:
                opened = False
            if opened:
                content = _content(path)
                assert {k: v for k, v in content.items() if k != "features"} == without_features, offset
        finally:
            put_byte(path, offset, b)

