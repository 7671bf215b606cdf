"""Fault injection, checkpoints: resume into another run, evaluate on other data, damaged files.

Every case runs the real ``sertrain`` command (a subprocess) and checks what a user meets:
the exit code, exactly one ``error: ...`` line naming the mismatch, no traceback, no input
(store, checkpoint) changed and nothing written (a refused resume leaves the run folder as it
was). The trained runs are shared by the module (one short fold-1 and fold-2 run, trained by
the CLI as in the issue's repro), and each test works on its own copy of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fault_helpers import assert_one_line_error, listing, run, tree_digest
from sertrain.checkpoint import payload_digest
from sertrain_fixtures import learnable_store, store_base
from store_fixtures import build

#: What the module's runs were trained with; the CLI gets the same values.
OPTIONS = {"--config": "cpu-small", "--epochs": "1", "--steps-per-epoch": "2", "--num-workers": "0",
           "--seed": "0", "--device": "cpu"}


def cli_options(**changes: str) -> list[str]:
    """OPTIONS as argv, with ``changes`` (``batch_size="16"`` -> ``--batch-size 16``) applied."""
    opts = dict(OPTIONS)
    opts.update({"--" + k.replace("_", "-"): v for k, v in changes.items()})
    return [x for kv in opts.items() for x in kv] + ["-q"]


def _train(store: Path, fold: int, out: Path) -> Path:
    """`sertrain train STORE --fold K --out OUT` with OPTIONS (a subprocess: one torch thread,
    so it does not compete with other processes for the CPUs as an in-process run would)."""
    ran = run("sertrain", "train", store, "--fold", fold, "--out", out, *cli_options())
    assert ran.returncode == 0, ran.stderr
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return learnable_store(store_base(tmp_path_factory), balance=True, augment="default")


@pytest.fixture(scope="module")
def rebuilt(store, tmp_path_factory) -> Path:
    """The same corpus built again (another --seed): same fingerprint, other content."""
    out = tmp_path_factory.mktemp("rebuilt") / "rebuilt.h5"
    build("iemocap", store.parent / "IEMOCAP_full_release", out, seed=1)
    return out


@pytest.fixture(scope="module")
def run1(store, tmp_path_factory) -> Path:
    return _train(store, 1, tmp_path_factory.mktemp("run1") / "run")


@pytest.fixture(scope="module")
def run2(store, tmp_path_factory) -> Path:
    return _train(store, 2, tmp_path_factory.mktemp("run2") / "run")


@pytest.fixture(scope="module")
def store_digest(store) -> dict[str, str]:
    return tree_digest(store)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def craft(src: Path, dst: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of checkpoint ``src`` with ``edit`` applied to its payload, checksum recomputed:
    a crafted file that is consistent with itself, so the field checks are what refuses it."""
    payload = torch.load(src, weights_only=True)
    edit(payload)
    if isinstance(payload, dict) and "content_sha256" in payload:
        payload["content_sha256"] = payload_digest(payload)
    torch.save(payload, dst)
    return dst


def assert_unchanged(paths_before: dict[Path, dict[str, str]]) -> None:
    for path, digest in paths_before.items():
        assert tree_digest(path) == digest, f"{path} changed"


# ---------------------------------------------------------------------------------------------
# Issue item 1: --resume continues only the same run
# ---------------------------------------------------------------------------------------------
def test_resume_into_another_fold_is_refused(store, store_digest, run1, tmp_path):
    """The repro: train fold 1, then `train --fold 2 --resume` into the same folder."""
    out = copy_run(run1, tmp_path / "run")
    before = tree_digest(out)
    ran = run("sertrain", "train", store, "--fold", "2", "--out", out, "--resume", *cli_options())
    assert_one_line_error(ran, f"{out / 'last.pt'} is loso fold 1; this run asks for fold 2", code=2)
    assert tree_digest(out) == before and tree_digest(store) == store_digest
    assert not (out / "last.pt.tmp").exists()


def test_resume_into_another_scheme_is_refused(store, store_digest, run1, tmp_path):
    out = copy_run(run1, tmp_path / "run")
    before = tree_digest(out)
    ran = run("sertrain", "train", store, "--fold", "1", "--out", out, "--resume",
              *cli_options(scheme="loso-speaker"))
    assert_one_line_error(ran, f"{out / 'last.pt'} is loso fold 1; this run asks for loso-speaker fold 1", code=2)
    assert tree_digest(out) == before and tree_digest(store) == store_digest


def test_resume_with_a_rebuilt_store_is_refused(store, rebuilt, run1, tmp_path):
    """Same corpus (fingerprint), other content: the folds' data are not the ones trained on."""
    out = copy_run(run1, tmp_path / "run")
    before, store_before = tree_digest(out), tree_digest(rebuilt)
    ran = run("sertrain", "train", rebuilt, "--fold", "1", "--out", out, "--resume", *cli_options())
    line = assert_one_line_error(ran, f"{rebuilt} is not the store this run was trained on (store content ",
                                 "resume with the same store", code=2)
    assert " vs " in line
    assert tree_digest(out) == before and tree_digest(rebuilt) == store_before


@pytest.mark.parametrize("change, key, old, new", [
    ({"aux": "none"}, "loss.aux", "'gender+speaker'", "'none'"),
    ({"w_gender": "0.5"}, "loss.weights.gender", "0.3", "0.5"),
    ({"batch_size": "16"}, "train.batch_size", "32", "16"),
    ({"seed": "1"}, "train.seed", "0", "1"),
    ({"steps_per_epoch": "3"}, "train.steps_per_epoch", "2", "3"),
    ({"set": "model.lstm_hidden=32"}, "model.lstm_hidden", "64", "32"),
    ({"config": "paper"}, "model.conv_channels", "[16, 32, 32]", "[128, 256, 256, 256, 256, 256]"),
], ids=["aux", "w_gender", "batch_size", "seed", "steps_per_epoch", "lstm_hidden", "config"])
def test_resume_with_another_config_value_is_refused(change, key, old, new, store, store_digest, run1, tmp_path):
    out = copy_run(run1, tmp_path / "run")
    before = tree_digest(out)
    ran = run("sertrain", "train", store, "--fold", "1", "--out", out, "--resume", *cli_options(**change))
    assert_one_line_error(ran, f"{out / 'last.pt'} was trained with {key} = {old}; this run asks for {new}",
                          "may change", code=2)
    assert tree_digest(out) == before and tree_digest(store) == store_digest


def test_resume_allows_epochs_lr_patience_workers(store, store_digest, run1, tmp_path):
    out = copy_run(run1, tmp_path / "run")
    ran = run("sertrain", "train", store, "--fold", "1", "--out", out, "--resume",
              *cli_options(epochs="2", lr="0.0005", patience="3", num_workers="0"))
    assert ran.returncode == 0, ran.stderr
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["fold"] == 1
    assert last["config"]["train"]["lr"] == 0.0005 and last["config"]["train"]["epochs"] == 2
    assert last["config"]["train"]["patience"] == 3
    assert len(json.loads((out / "history.json").read_text())) == 2
    assert tree_digest(store) == store_digest


def test_cv_resume_checks_each_fold_folder(store, store_digest, run1, tmp_path):
    """`cv --resume` goes through the same checks: fold_2/ holding a fold-1 run is refused."""
    out = tmp_path / "cv"
    copy_run(run1, out / "fold_2")
    before = tree_digest(out)
    ran = run("sertrain", "cv", store, "--out", out, "--folds", "2", "--resume", *cli_options())
    assert_one_line_error(ran, f"{out / 'fold_2' / 'last.pt'} is loso fold 1; this run asks for fold 2", code=2)
    assert tree_digest(out) == before and listing(out) == ["fold_2"]
    # An aux setting other than the run's is refused the same way.
    shutil.move(out / "fold_2", out / "fold_1")
    before = tree_digest(out)
    ran = run("sertrain", "cv", store, "--out", out, "--folds", "1", "--aux", "none", "--resume", *cli_options())
    assert_one_line_error(ran, f"{out / 'fold_1' / 'last.pt'} was trained with loss.aux = 'gender+speaker'",
                          code=2)
    assert tree_digest(out) == before and tree_digest(store) == store_digest


def test_best_checkpoint_of_another_run_is_not_tested(store, store_digest, run1, run2, tmp_path):
    """A finished run is re-tested on --resume: its best.pt must be this run's."""
    out = copy_run(run1, tmp_path / "run")
    shutil.copyfile(run2 / "best.pt", out / "best.pt")
    before = tree_digest(out)
    ran = run("sertrain", "train", store, "--fold", "1", "--out", out, "--resume", *cli_options())
    assert_one_line_error(ran, f"{out / 'best.pt'} is loso fold 2 but {out / 'last.pt'} is loso fold 1", code=2)
    assert tree_digest(out) == before and tree_digest(store) == store_digest


def test_resume_from_a_damaged_last_checkpoint(store, run1, tmp_path):
    out = copy_run(run1, tmp_path / "run")
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 3])
    before = tree_digest(out)
    ran = run("sertrain", "train", store, "--fold", "1", "--out", out, "--resume", *cli_options())
    assert_one_line_error(ran, f"{out / 'last.pt'}: ", "truncated", code=2)
    assert tree_digest(out) == before


# ---------------------------------------------------------------------------------------------
# Issue item 2: evaluate refuses a store the checkpoint does not fit
# ---------------------------------------------------------------------------------------------
def _segment_hop(p: dict) -> None:
    sc = json.loads(p["segment_config_json"])
    sc["hop"] = 100
    p["segment_config_json"] = json.dumps(sc, sort_keys=True)


def _feature_fmax(p: dict) -> None:
    fc = json.loads(p["feature_config_json"])
    fc["fmax"] = 7000.0
    p["feature_config_json"] = json.dumps(fc, sort_keys=True)


def _classes(p: dict) -> None:
    p["emotion_classes"] = ["ang", "hap", "neu", "fru"]


@pytest.mark.parametrize("edit, fragment", [
    (_segment_hop, "segment config mismatch: hop is 150 in the store but 100 in the checkpoint"),
    (_feature_fmax, "feature config mismatch: fmax is None in the store but 7000.0 in the checkpoint"),
    (_classes,
     "emotion classes ['ang', 'hap', 'neu', 'sad'] differ from the checkpoint's ['ang', 'hap', 'neu', 'fru']"),
], ids=["segment hop", "feature fmax", "emotion classes"])
def test_evaluate_refuses_a_store_the_checkpoint_does_not_fit(edit, fragment, store, store_digest, run1, tmp_path):
    ckpt = craft(run1 / "best.pt", tmp_path / "crafted.pt", edit)
    before = tree_digest(ckpt)
    ran = run("sertrain", "evaluate", ckpt, store, "--out", tmp_path / "ev")
    assert_one_line_error(ran, f"{store}: {fragment}", code=2)
    assert tree_digest(ckpt) == before and tree_digest(store) == store_digest
    assert not (tmp_path / "ev").exists()


def test_evaluate_on_a_rebuilt_store(rebuilt, run1, tmp_path):
    """Another store of the same corpus: evaluated with a note; the training speakers'
    folds stay refused (same corpus, so the same speakers)."""
    before = tree_digest(run1)
    ran = run("sertrain", "evaluate", run1 / "best.pt", rebuilt, "--fold", "1")
    assert ran.returncode == 0, ran.stderr
    assert "note: this store differs from the training store" in ran.stderr
    assert "loso fold 1 test" in ran.stdout
    ran = run("sertrain", "evaluate", run1 / "best.pt", rebuilt, "--fold", "2")
    assert_one_line_error(
        ran, "test speakers Ses02M of loso fold 2 were training speakers of this checkpoint (loso fold 1)", code=2
    )
    assert tree_digest(run1) == before


# ---------------------------------------------------------------------------------------------
# Issue item 3: damaged or crafted checkpoints
# ---------------------------------------------------------------------------------------------
def _drop(key: str) -> Callable[[dict], None]:
    return lambda p: p.pop(key)


def _norm_shape(p: dict) -> None:
    p["norm_mean"] = torch.zeros(3, 64)


def _norm_nan(p: dict) -> None:
    p["norm_std"] = torch.full_like(p["norm_std"], float("nan"))


def _bad_json(p: dict) -> None:
    p["feature_config_json"] = p["feature_config_json"][:-5]


def _state_mismatch(p: dict) -> None:
    p["config"]["model"]["lstm_hidden"] = 32


def _bad_config(p: dict) -> None:
    p["config"]["loss"]["aux"] = "emotion"


def _numpy(p: dict) -> None:
    p["norm_mean"] = p["norm_mean"].numpy()


def _version1(p: dict) -> None:
    p["format_version"] = 1
    p.pop("store_content_sha256", None)


CRAFTED = {
    "missing norm_mean": (_drop("norm_mean"), "invalid checkpoint: missing norm_mean"),
    "missing model_state": (_drop("model_state"), "invalid checkpoint: missing model_state"),
    "bad feature JSON": (_bad_json, "invalid checkpoint: feature_config_json is not valid JSON"),
    "norm_mean shape": (_norm_shape, "invalid checkpoint: norm_mean has shape [3, 64]"),
    "norm_std NaN": (_norm_nan, "invalid checkpoint: norm_std holds non-finite values"),
    "weights do not fit": (_state_mismatch, "invalid checkpoint: model_state does not fit the architecture"),
    "bad config value": (_bad_config, "invalid checkpoint: config: loss.aux must be one of"),
    "numpy inside": (_numpy, "holds objects other than tensors and plain values"),
    "format version 1": (_version1, "checkpoint format version 1"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_evaluate_refuses_crafted_checkpoints(name, store, store_digest, run1, tmp_path):
    edit, fragment = CRAFTED[name]
    ckpt = craft(run1 / "best.pt", tmp_path / "crafted.pt", edit)
    before = tree_digest(ckpt)
    ran = run("sertrain", "evaluate", ckpt, store, "--out", tmp_path / "ev")
    line = assert_one_line_error(ran, f"{ckpt}: {fragment}", code=2)
    assert "weights_only" not in line
    assert tree_digest(ckpt) == before and tree_digest(store) == store_digest
    assert not (tmp_path / "ev").exists()


def test_damaged_files(store, run1, tmp_path):
    data = (run1 / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "dir.pt").mkdir()
    cases = [("cut.pt", "damaged or truncated"), ("empty.pt", "empty file"), ("dir.pt", "is a directory")]
    for name, fragment in cases:
        ran = run("sertrain", "evaluate", tmp_path / name, store)
        assert_one_line_error(ran, f"{tmp_path / name}: {fragment}", code=2)
    assert listing(tmp_path) == ["cut.pt", "dir.pt", "empty.pt"] and listing(tmp_path / "dir.pt") == []


def test_predict_refuses_a_foreign_pickle(store, run1, tmp_path):
    ckpt = craft(run1 / "best.pt", tmp_path / "numpy.pt", _numpy)
    wav = next((store.parent / "IEMOCAP_full_release").rglob("*.wav"))
    ran = run("sertrain", "predict", ckpt, wav)
    assert_one_line_error(ran, f"{ckpt}: holds objects other than tensors and plain values",
                          "sertrain only reads its own checkpoints (refusing to unpickle it)", code=2)
