"""sertrain.checkpoint.load_checkpoint: every field is checked, every refusal is one line.

The payloads here are built in memory (no store, no training), so each damaged or crafted
variant costs milliseconds: a valid payload of the ``cpu-small`` architecture, then one field
removed, retyped, reshaped or made inconsistent with the others. The CLI view of the same
faults (exit codes, nothing changed on disk) is in ``tests/faults/test_fault_checkpoints.py``.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from serprep.config import FeatureConfig, SegmentConfig
from sertrain.checkpoint import FORMAT_VERSION, Checkpoint, capture_rng_state, load_checkpoint, payload_digest
from sertrain.config import apply_overrides, load_config
from sertrain.errors import InputError
from sertrain.model import InputSpec, build_model

TRAIN_SPEAKERS = [f"Ses0{s}{g}" for s in (2, 3, 4, 5) for g in "FM"]


def valid_payload(resume_state: bool = False) -> dict[str, Any]:
    """What ``train`` writes for a cpu-small model on a 40-mel, 300-frame store (fold 1)."""
    cfg = apply_overrides(load_config("cpu-small"), {"train.num_workers": 0})
    fc = FeatureConfig()
    spec = InputSpec(n_mels=fc.n_mels, frames=300, feature_config_json=fc.to_json())
    torch.manual_seed(0)
    model = build_model(cfg.model, spec, 4, 2, len(TRAIN_SPEAKERS))
    payload: dict[str, Any] = {
        "model_state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "config": cfg.to_dict(),
        "emotion_classes": ["ang", "hap", "neu", "sad"],
        "gender_classes": ["F", "M"],
        "train_speakers": list(TRAIN_SPEAKERS),
        "feature_config_json": fc.to_json(),
        "segment_config_json": json.dumps(SegmentConfig().to_dict(), sort_keys=True),
        "store_fingerprint": "f" * 64,
        "store_content_sha256": "c" * 64,
        "store_corpus": "iemocap",
        "scheme": "loso",
        "fold": 1,
        "norm_mean": torch.zeros(3, fc.n_mels),
        "norm_std": torch.ones(3, fc.n_mels),
        "epoch": 2,
        "best_epoch": 1,
        "best_metric": 0.5,
        "history": [{"epoch": 1, "val_ua": 0.5}, {"epoch": 2, "val_ua": 0.4}],
        "selected_epochs": [1],
        "selection_states": None,
        "optimizer_state": None,
        "scaler_state": None,
        "rng_state": None,
        "finished": False,
        "format": "sertrain-checkpoint",
        "format_version": FORMAT_VERSION,
    }
    if resume_state:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model(torch.randn(2, 3, 300, fc.n_mels), torch.tensor([300, 120]))["emotion"].sum().backward()
        opt.step()
        payload["optimizer_state"] = opt.state_dict()
        payload["scaler_state"] = {}
        payload["rng_state"] = capture_rng_state()
    return payload


def save(payload: Any, path: Path) -> Path:
    """Write ``payload`` as a file consistent with itself (checksum recomputed when it has the
    format marker), so that the field checks, not the checksum, are what is tested."""
    if isinstance(payload, dict) and payload.get("format") == "sertrain-checkpoint":
        payload = {**payload, "content_sha256": payload_digest(payload)}
    torch.save(payload, path)
    return path


def refusal(path: Path, *patterns: str) -> str:
    """load_checkpoint(path) raises one one-line InputError naming ``path`` and each pattern."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would print a second stderr line in the CLI
        with pytest.raises(InputError) as info:
            load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    assert "weights_only" not in msg and "Traceback" not in msg, msg
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"
    return msg


def test_valid_payload_loads_and_round_trips(tmp_path):
    for resume_state in (False, True):
        path = save(valid_payload(resume_state), tmp_path / f"ok{resume_state}.pt")
        ckpt = load_checkpoint(path)
        assert ckpt.fold == 1 and ckpt.store_content_sha256 == "c" * 64
        model = ckpt.build_model()
        assert model.n_speakers == len(TRAIN_SPEAKERS)
        # What save_checkpoint writes back is again plain tensors and primitives.
        from sertrain.checkpoint import save_checkpoint

        save_checkpoint(ckpt, tmp_path / "again.pt")
        again = torch.load(tmp_path / "again.pt", weights_only=True)
        assert again["format_version"] == FORMAT_VERSION
        assert load_checkpoint(tmp_path / "again.pt").train_speakers == TRAIN_SPEAKERS


# --------------------------------------------------------------------------------------------
# Files that are not checkpoints at all
# --------------------------------------------------------------------------------------------
def test_missing_empty_directory_text_truncated(tmp_path):
    refusal(tmp_path / "none.pt", "checkpoint not found")
    (tmp_path / "empty.pt").write_bytes(b"")
    refusal(tmp_path / "empty.pt", "empty file")
    (tmp_path / "dir.pt").mkdir()
    refusal(tmp_path / "dir.pt", "is a directory")
    (tmp_path / "text.pt").write_text("hello")
    refusal(tmp_path / "text.pt", "not a readable sertrain checkpoint")
    whole = save(valid_payload(), tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    refusal(tmp_path / "cut.pt", "truncated")


def test_foreign_objects_are_not_unpickled(tmp_path):
    p = valid_payload()
    p["norm_mean"] = p["norm_mean"].numpy()  # numpy arrays are objects torch will not allow
    refusal(save(p, tmp_path / "numpy.pt"),
            "holds objects other than tensors and plain values",
            r"sertrain only reads its own checkpoints \(refusing to unpickle it\)")
    p = valid_payload()
    p["store_corpus"] = Path("/data/IEMOCAP")  # a path object instead of its text
    refusal(save(p, tmp_path / "path.pt"), "holds objects other than tensors", "pathlib")


def test_not_a_sertrain_payload(tmp_path):
    refusal(save([1, 2, 3], tmp_path / "list.pt"), "not a sertrain checkpoint")
    refusal(save({"model": torch.zeros(1)}, tmp_path / "plain.pt"), "not a sertrain checkpoint")


def test_format_versions(tmp_path):
    p = valid_payload()
    p["format_version"] = 1
    del p["store_content_sha256"]
    refusal(save(p, tmp_path / "v1.pt"), "checkpoint format version 1", r"retrain, or use sertrain <= 0\.1")
    p = valid_payload()
    p["format_version"] = FORMAT_VERSION + 1
    refusal(save(p, tmp_path / "v_next.pt"), f"format version {FORMAT_VERSION + 1}", "newer", "upgrade")
    p["format_version"] = "2"
    refusal(save(p, tmp_path / "v_str.pt"), "format version '2'")


def test_format_2_reads_as_a_best_validation_ua_run(tmp_path):
    """sertrain 0.2.0 wrote format 2, without a selection rule: it selected by best validation
    UA, and that is what its checkpoints say when read."""
    p = valid_payload(resume_state=True)
    p["format_version"] = 2
    del p["selected_epochs"], p["selection_states"]
    del p["config"]["train"]["selection"]
    ckpt = load_checkpoint(save(p, tmp_path / "v2.pt"))
    assert ckpt.run_config().train.selection == "val_ua"
    assert ckpt.selected_epochs == [1] and ckpt.selection_states is None


def test_format_3_reads_its_old_loss_weights(tmp_path):
    """sertrain 0.5.0 wrote format 3 with loss.w_gender / loss.w_speaker: read as loss.weights
    (the other tasks at the registry's defaults; they could not be active), so the same run
    config, resume checks and model. Without both old keys it is refused as incomplete."""
    p = valid_payload(resume_state=True)
    p["format_version"] = 3
    weights = p["config"]["loss"].pop("weights")
    p["config"]["loss"].update(w_gender=0.25, w_speaker=0.5)
    ckpt = load_checkpoint(save(p, tmp_path / "v3.pt"))
    assert ckpt.run_config().loss.weights == {**weights, "gender": 0.25, "speaker": 0.5}
    assert ckpt.build_model() is not None
    del p["config"]["loss"]["w_speaker"]
    refusal(save(p, tmp_path / "v3_partial.pt"), "unknown key\\(s\\) loss.w_gender|lacks loss.weights")


def test_dimension_heads_are_part_of_the_checked_architecture(tmp_path):
    """A run with vad active has one output per dimension; its checkpoint rebuilds them, and a
    config that says otherwise does not fit its weights."""
    cfg = apply_overrides(load_config("cpu-small"), {"loss.aux": "gender+speaker+vad"})
    p = valid_payload()
    model = build_model(cfg.model, InputSpec(n_mels=FeatureConfig().n_mels, frames=300), 4, 2, len(TRAIN_SPEAKERS),
                        cfg.loss.active_tasks())
    p["model_state"] = {k: v.clone() for k, v in model.state_dict().items()}
    p["config"]["loss"]["aux"] = "gender+speaker+vad"
    ckpt = load_checkpoint(save(p, tmp_path / "vad.pt"))
    assert ckpt.build_model().arousal_head.out_features == 1
    p["config"]["loss"]["aux"] = "gender+speaker"
    refusal(save(p, tmp_path / "vad_mismatch.pt"), "model_state does not fit the architecture")


def test_selection_fields_are_checked(tmp_path):
    p = valid_payload()
    p["selected_epochs"] = [1, 3]
    refusal(save(p, tmp_path / "sel.pt"), "selected_epochs is", "expected distinct epochs in 1..2")
    p = valid_payload()
    p["selection_states"] = {1: {"nope": torch.zeros(1)}}
    refusal(save(p, tmp_path / "kept.pt"), r"selection_states\[1\] does not fit the architecture")
    p = valid_payload()
    p["selection_states"] = {1: {k: v.clone() for k, v in p["model_state"].items()}}
    assert list(load_checkpoint(save(p, tmp_path / "kept_ok.pt")).selection_states) == [1]


# --------------------------------------------------------------------------------------------
# One field damaged: (name, edit, patterns of the message)
# --------------------------------------------------------------------------------------------
def _set(key: str, value: Any) -> Callable[[dict], None]:
    def edit(p: dict) -> None:
        p[key] = value(p) if callable(value) else value

    return edit


def _delete(*keys: str) -> Callable[[dict], None]:
    def edit(p: dict) -> None:
        for k in keys:
            del p[k]

    return edit


def _config(section: str, key: str, value: Any) -> Callable[[dict], None]:
    def edit(p: dict) -> None:
        p["config"][section][key] = value

    return edit


def _state(fn: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(p: dict) -> None:
        fn(p["model_state"])

    return edit


def _feature(key: str, value: Any) -> Callable[[dict], None]:
    def edit(p: dict) -> None:
        fc = json.loads(p["feature_config_json"])
        fc[key] = value
        p["feature_config_json"] = json.dumps(fc)

    return edit


FIELD_FAULTS: dict[str, tuple[Callable[[dict], None], tuple[str, ...]]] = {
    "missing norm_mean": (_delete("norm_mean"), ("missing", "norm_mean")),
    "missing model_state and norm_std": (_delete("model_state", "norm_std"), ("missing", "model_state", "norm_std")),
    "unexpected field": (_set("pickled_model", 1), ("unexpected", "pickled_model")),
    "feature config bad JSON": (_set("feature_config_json", '{"n_mels": 40,'),
                                ("feature_config_json", "not valid JSON")),
    "segment config bad JSON": (_set("segment_config_json", "frames=300"), ("segment_config_json", "not valid JSON")),
    "segment config not an object": (_set("segment_config_json", "[300, 150]"), ("segment_config_json", "object")),
    "segment config unknown key": (_set("segment_config_json", '{"frames": 300, "hop": 150, "min_hop": 50, "x": 1}'),
                                   ("segment_config_json", "x")),
    "segment config missing hop": (_set("segment_config_json", '{"frames": 300, "min_hop": 50}'),
                                   ("segment_config_json", "hop")),
    "segment frames zero": (_set("segment_config_json", '{"frames": 0, "hop": 150, "min_hop": 50}'),
                            ("segment_config_json", "frames")),
    "feature n_mels a string": (_feature("n_mels", "40"), ("feature_config_json", "n_mels")),
    "feature config unknown key": (_feature("nmels", 40), ("feature_config_json", "nmels")),
    "feature json not a string": (_set("feature_config_json", {"n_mels": 40}), ("feature_config_json", "str")),
    "norm_mean wrong shape": (_set("norm_mean", torch.zeros(3, 64)), ("norm_mean", r"\[3, 64\]", r"\[3, 40\]")),
    "norm_std wrong dtype": (_set("norm_std", torch.ones(3, 40, dtype=torch.float64)),
                             ("norm_std", "float64", "float32")),
    "norm_mean not finite": (_set("norm_mean", torch.full((3, 40), float("nan"))), ("norm_mean", "non-finite")),
    "norm_std negative": (_set("norm_std", -torch.ones(3, 40)), ("norm_std", "negative")),
    "norm_mean a list": (_set("norm_mean", [[0.0] * 40] * 3), ("norm_mean", "tensor")),
    "model_state not a dict": (_set("model_state", [1, 2]), ("model_state",)),
    "model_state value not a tensor": (_state(lambda s: s.__setitem__("lstm.weight_hh_l0", 1.0)),
                                       ("model_state", "lstm.weight_hh_l0")),
    "model_state key missing": (_state(lambda s: s.pop("emotion_head.bias")),
                                ("model_state does not fit", "emotion_head.bias")),
    "model_state extra key": (_state(lambda s: s.__setitem__("extra.weight", torch.zeros(1))),
                              ("model_state does not fit", "extra.weight")),
    "model_state wrong shape": (_state(lambda s: s.__setitem__("emotion_head.weight", torch.zeros(5, 128))),
                                ("model_state does not fit", "emotion_head.weight", r"\[5, 128\]", r"\[4, 128\]")),
    "model_state not finite": (_state(lambda s: s["lstm.weight_hh_l0"].fill_(float("inf"))),
                               ("model_state", "lstm.weight_hh_l0", "non-finite")),
    "config sizes differ from weights": (_config("model", "lstm_hidden", 32), ("model_state does not fit",)),
    "more classes than the head": (_set("emotion_classes", ["ang", "hap", "neu", "sad", "fru"]),
                                   ("model_state does not fit", "emotion_head")),
    "config unknown key": (_config("model", "lstm_size", 3), ("config", "lstm_size")),
    "config bad aux": (_config("loss", "aux", "emotion"), ("config", "loss.aux")),
    "config wrong type": (_config("model", "lstm_hidden", "64"), ("config", "model.lstm_hidden", "int")),
    "config float for int": (_config("train", "batch_size", 32.5), ("config", "train.batch_size")),
    "config list of str": (_config("model", "conv_channels", ["16", "32", "32"]), ("config", "model.conv_channels")),
    "config section not a dict": (_set("config", lambda p: {**p["config"], "model": 5}), ("config", "model")),
    "config pooling too deep": (_config("model", "conv_pools", [[2, 4], [2, 4], [2, 4]]), ("config",)),
    "config missing key": (lambda p: p["config"]["train"].pop("aggregate"), ("config", "train.aggregate")),
    "config not a dict": (_set("config", "cpu-small"), ("config",)),
    "scheme differs from config": (_set("scheme", "loso-speaker"), ("scheme", "loso-speaker", "loso")),
    "fold zero": (_set("fold", 0), ("fold",)),
    "fold a string": (_set("fold", "1"), ("fold",)),
    "fold a bool": (_set("fold", True), ("fold",)),
    "classes not strings": (_set("emotion_classes", [0, 1, 2, 3]), ("emotion_classes",)),
    "classes repeated": (_set("emotion_classes", ["ang", "ang", "neu", "sad"]), ("emotion_classes", "ang")),
    "no training speakers": (_set("train_speakers", []), ("train_speakers",)),
    "content id empty": (_set("store_content_sha256", ""), ("store_content_sha256",)),
    "fingerprint not a string": (_set("store_fingerprint", 5), ("store_fingerprint",)),
    "best epoch after epoch": (_set("best_epoch", 3), ("best_epoch",)),
    "history shorter than epochs": (_set("history", [{"epoch": 1}]), ("history",)),
    "history entry without epoch": (_set("history", [{"epoch": 1}, {"val_ua": 0.3}]), ("history",)),
    "best_metric a string": (_set("best_metric", "0.5"), ("best_metric",)),
    "finished not a bool": (_set("finished", "yes"), ("finished",)),
    "rng state not a byte tensor": (_set("rng_state", {"torch": torch.zeros(3)}), ("rng_state",)),
    "optimizer state not a dict": (_set("optimizer_state", [1]), ("optimizer_state",)),
}


@pytest.mark.parametrize("name", list(FIELD_FAULTS))
def test_damaged_field_is_refused_in_one_line(name, tmp_path):
    edit, patterns = FIELD_FAULTS[name]
    p = valid_payload()
    edit(p)
    refusal(save(p, tmp_path / "bad.pt"), "invalid checkpoint", *patterns)


def test_optimizer_state_must_fit_the_model(tmp_path):
    p = valid_payload(resume_state=True)
    groups = p["optimizer_state"]["param_groups"]
    groups[0]["params"] = groups[0]["params"][:-1]
    refusal(save(p, tmp_path / "opt.pt"), "invalid checkpoint", "optimizer_state")


def test_build_model_refuses_weights_that_do_not_fit():
    """A Checkpoint made in code (not loaded) gets the same one-line refusal, no traceback."""
    p = valid_payload()
    known = set(Checkpoint.__dataclass_fields__)
    ckpt = Checkpoint(**{k: v for k, v in p.items() if k in known})
    ckpt.model_state = dict(ckpt.model_state)
    ckpt.model_state["emotion_head.weight"] = torch.zeros(5, 128)
    with pytest.raises(InputError, match="model_state does not fit") as info:
        ckpt.build_model()
    assert "\n" not in str(info.value)


def test_input_spec_is_read_from_the_checkpoint():
    p = valid_payload()
    known = set(Checkpoint.__dataclass_fields__)
    ckpt = Checkpoint(**{k: v for k, v in p.items() if k in known})
    assert ckpt.input_spec.n_mels == 40 and ckpt.input_spec.frames == 300
    assert np.isfinite(ckpt.norm_std.numpy()).all()


def test_resume_state_of_a_cuda_run_is_accepted(tmp_path):
    """What a CUDA run with fp16 autocast writes: a grad-scaler state and per-GPU RNG states
    (no GPU needed to check the layout)."""
    p = valid_payload(resume_state=True)
    p["scaler_state"] = torch.amp.GradScaler("cpu", enabled=True).state_dict()
    p["rng_state"] = {"torch": torch.get_rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)]}
    ckpt = load_checkpoint(save(p, tmp_path / "cuda.pt"))
    assert ckpt.scaler_state["scale"] == 65536.0 and len(ckpt.rng_state["cuda"]) == 1
    p["rng_state"]["cuda"] = [torch.zeros(16)]
    refusal(save(p, tmp_path / "bad_cuda.pt"), "invalid checkpoint", "rng_state")
    p = valid_payload(resume_state=True)
    p["scaler_state"] = {"scale": "big"}
    refusal(save(p, tmp_path / "bad_scaler.pt"), "invalid checkpoint", "scaler_state")


def test_input_spec_compares_the_segment_hop():
    from sertrain.model import check_input_spec

    fc = FeatureConfig().to_json()
    built_for = InputSpec(40, 300, feature_config_json=fc, hop=150)
    check_input_spec(built_for, InputSpec(40, 300, feature_config_json=fc, hop=150), "s.h5")
    check_input_spec(built_for, InputSpec(40, 300, feature_config_json=fc), "s.h5")  # hop unknown
    expected = r"^s\.h5: segment config mismatch: hop is 100 in the store but 150 in the checkpoint$"
    with pytest.raises(InputError, match=expected):
        check_input_spec(built_for, InputSpec(40, 300, feature_config_json=fc, hop=100), "s.h5")


def test_store_without_content_id_is_refused():
    from sertrain.checkpoint import store_content_id

    class OldReader:
        @property
        def content_sha256(self) -> str:
            raise KeyError("attrs_sha256")

    with pytest.raises(InputError, match="s.h5: the store records no content checksum"):
        store_content_id(OldReader(), "s.h5")


# ---------------------------------------------------------------------------------------------
# The checksum over the whole content
# ---------------------------------------------------------------------------------------------
def test_checksum_catches_what_the_field_checks_cannot(tmp_path):
    payload = valid_payload(resume_state=True)
    good = save(payload, tmp_path / "good.pt")
    assert load_checkpoint(good).fold == 1
    # A weight changed within its valid range, the shapes intact: only the checksum sees it.
    edited = {**payload, "content_sha256": payload_digest(payload)}
    name = next(iter(edited["model_state"]))
    edited["model_state"] = {**edited["model_state"], name: edited["model_state"][name] + 1e-3}
    torch.save(edited, tmp_path / "edited.pt")
    refusal(tmp_path / "edited.pt", "damaged or modified checkpoint", "does not match its checksum")
    unsigned = {k: v for k, v in payload.items()}
    torch.save(unsigned, tmp_path / "unsigned.pt")
    refusal(tmp_path / "unsigned.pt", "missing content_sha256")


def test_any_flipped_byte_is_refused_or_harmless(tmp_path):
    """Random single-byte flips anywhere in the file: refused in one line, or the content
    loaded is exactly the original (flips in zip bookkeeping that torch ignores)."""
    good = save(valid_payload(resume_state=True), tmp_path / "good.pt")
    data = good.read_bytes()
    original = payload_digest(torch.load(good, weights_only=True))
    rng = np.random.default_rng(0)
    refused = 0
    for offset in rng.integers(0, len(data), 150):
        flipped = bytearray(data)
        flipped[offset] ^= 0x5A
        path = tmp_path / "flipped.pt"
        path.write_bytes(bytes(flipped))
        try:
            loaded = load_checkpoint(path)
        except InputError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            refused += 1
            continue
        assert payload_digest(loaded.to_payload()) == original, f"offset {offset}: loaded other content"
    assert refused > 120


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    import errno

    from sertrain.checkpoint import save_checkpoint

    good = save(valid_payload(), tmp_path / "last.pt")
    before = good.read_bytes()
    ckpt = load_checkpoint(good)

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        save_checkpoint(ckpt, good)
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
