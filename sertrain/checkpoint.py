"""Checkpoints that ``torch.load(path, weights_only=True)`` can read, checked field by field.

Only tensors and primitive containers go in (dicts, lists, str, int, float, bool, None): the
run config as a plain dict, the store's feature/segment configs as canonical JSON strings,
label vocabularies as lists of str. A checkpoint is self-sufficient for ``evaluate`` and
``predict``: it carries the fold's normalisation statistics and the feature configuration
needed to compute features for new audio exactly as the store did.

A checkpoint also says which run it belongs to: the store's content id
(``store_content_sha256``, :attr:`serprep.store.StoreReader.content_sha256`) and corpus
fingerprint, the fold scheme and number, and the full config. ``--resume`` compares them with
the run it is asked to continue (see :mod:`sertrain.train`).

``last.pt`` additionally holds what ``--resume`` needs: optimizer and grad-scaler state,
epoch, best metric, history and the RNG states.

:func:`load_checkpoint` is the one reader (train, evaluate and predict all go through it).
It never unpickles anything but tensors and plain values, and checks the type, shape and
consistency of every field before anyone uses one, so a damaged or crafted file is refused
with one line naming the file and the field instead of a traceback deep in torch.

Every file carries ``content_sha256``, a SHA-256 over all its other fields (tensor bytes
included, :func:`payload_digest`), checked on load after the fields: torch's zip container
does not check its members, and without it a flipped byte in the weights loaded silently
(592 of 600 random single-byte flips of a checkpoint did).

Format versions: 1 (sertrain 0.1.0) lacked the store's content id; such a checkpoint cannot
be checked against the store it came from (and may come from a run resumed into another
fold, which version 1 did not notice), so it is refused rather than trusted. 2 (sertrain
0.2.0) had no model-selection rule: it is read as what it was, a run selected by best
validation UA (``train.selection = "val_ua"``, ``selected_epochs = [best_epoch]``, no
kept selection states). 3 (sertrain 0.5.0) had ``loss.w_gender`` and ``loss.w_speaker``: read
as ``loss.weights = {gender = w_gender, speaker = w_speaker}`` plus the registry's default
weights of the tasks it could not activate, so its resume checks and model are unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from serprep.config import FeatureConfig, SegmentConfig

from .config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig
from .errors import InputError
from .model import TRAINABLE_CHANNELS, InputSpec, SERModel, build_model
from .tasks import default_weights

FORMAT = "sertrain-checkpoint"
#: 2: adds ``store_content_sha256`` and ``content_sha256``; every field is validated on load.
#: 3: adds ``train.selection``, ``selected_epochs`` and ``selection_states``.
#: 4: ``loss.weights`` (one weight per task of :mod:`sertrain.tasks`) replaces ``loss.w_gender`` and
#: ``loss.w_speaker``.
FORMAT_VERSION = 4
#: The oldest format still read (with the upgrade rule in :func:`_upgrade`).
OLDEST_READ = 2

#: The run config's sections and the dataclass that defines each one's keys and types.
_CONFIG_SECTIONS: dict[str, type] = {
    "model": ModelConfig, "loss": LossConfig, "train": TrainConfig, "data": DataConfig,
}
#: Feature-config integers that must be positive for the features to exist at all.
_POSITIVE_FEATURE_INTS = ("sample_rate", "win_length", "hop_length", "n_fft", "n_mels", "delta_width")


@dataclass
class Checkpoint:
    """Everything a checkpoint file holds (see module docstring)."""

    model_state: dict[str, torch.Tensor]
    config: dict[str, Any]
    emotion_classes: list[str]
    gender_classes: list[str]
    train_speakers: list[str]
    feature_config_json: str
    segment_config_json: str
    store_fingerprint: str  # the source corpus (same for every store built from it)
    store_content_sha256: str  # this store's content (differs for every build)
    store_corpus: str
    scheme: str
    fold: int
    norm_mean: torch.Tensor  # float32 [3, n_mels]: TRAINABLE_CHANNELS (log-Mel) x mel bands
    norm_std: torch.Tensor
    epoch: int = 0  # epochs completed
    best_epoch: int = 0
    best_metric: float = float("-inf")  # the selection rule's score of the selected model
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Epochs whose weights the selected model (best.pt) holds: one, or several averaged.
    selected_epochs: list[int] = field(default_factory=list)
    # Resume state (only in last.pt; None in best.pt).
    #: Weights of the epochs the selection rule may still use ({epoch: state}), when it
    #: averages several epochs; None otherwise.
    selection_states: dict[int, dict[str, torch.Tensor]] | None = None
    optimizer_state: dict[str, Any] | None = None
    scaler_state: dict[str, Any] | None = None
    rng_state: dict[str, Any] | None = None
    finished: bool = False

    @property
    def input_spec(self) -> InputSpec:
        fc = json.loads(self.feature_config_json)
        sc = json.loads(self.segment_config_json)
        return InputSpec(
            n_mels=int(fc["n_mels"]), frames=int(sc["frames"]), channels=TRAINABLE_CHANNELS,
            feature_config_json=json.dumps(fc, sort_keys=True), hop=int(sc["hop"]),
        )

    @property
    def run_label(self) -> str:
        """``loso fold 1``: what a message calls this checkpoint's run."""
        return f"{self.scheme} fold {self.fold}"

    def run_config(self) -> Config:
        return Config.from_dict(self.config, source="checkpoint config")

    def build_model(self) -> SERModel:
        """A model with this checkpoint's architecture and weights (CPU, eval mode)."""
        model = build_model(
            self.run_config().model,
            self.input_spec,
            len(self.emotion_classes),
            len(self.gender_classes),
            len(self.train_speakers),
            self.run_config().loss.active_tasks(),
        )
        # load_checkpoint has compared every shape already; this covers a Checkpoint made in
        # code, whose mismatch would otherwise surface as torch's multi-line RuntimeError.
        problem = state_mismatch(self.model_state, model.state_dict())
        if problem:
            raise InputError(f"checkpoint: model_state does not fit the architecture in its config ({problem})")
        model.load_state_dict(self.model_state)
        model.eval()
        return model

    def to_payload(self) -> dict[str, Any]:
        """What :func:`save_checkpoint` writes: every field, the format stamp and the checksum."""
        payload = {k: v for k, v in self.__dict__.items()}
        payload["format"] = FORMAT
        payload["format_version"] = FORMAT_VERSION
        payload["content_sha256"] = payload_digest(payload)
        return payload


def payload_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint payload, ``content_sha256`` itself left out.

    Canonical: dict entries in the order of their keys' ``repr``, every value tagged with its
    path and type, tensors by dtype, shape and raw bytes, other values by ``repr`` (exact for
    floats, NaN and infinities included). Hashing a 7.4 M-parameter model with its Adam
    state (~90 MB) takes ~60 ms.
    """
    h = hashlib.sha256()
    _feed_digest(h, {k: v for k, v in payload.items() if k != "content_sha256"}, "")
    return h.hexdigest()


def _feed_digest(h: "hashlib._Hash", value: Any, path: str) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        h.update(f"T|{path}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(f"D|{path}|{len(value)}|".encode())
        for key in sorted(value, key=repr):
            _feed_digest(h, value[key], f"{path}/{key!r}")
    elif isinstance(value, (list, tuple)):
        h.update(f"L|{path}|{len(value)}|".encode())
        for i, item in enumerate(value):
            _feed_digest(h, item, f"{path}/{i}")
    else:
        h.update(f"V|{path}|{type(value).__name__}|{value!r}|".encode())


def store_content_id(reader: Any, store_name: str) -> str:
    """The store's content id (:attr:`serprep.store.StoreReader.content_sha256`).

    It tells a rebuilt store of the same corpus (same fingerprint, other segments, folds or
    statistics) from the one a run was trained on.
    """
    try:
        value = reader.content_sha256
    except (KeyError, AttributeError):
        value = None
    if not isinstance(value, str) or not value:
        raise InputError(f"{store_name}: the store records no content checksum; rebuild it with this serprep")
    return value


def capture_rng_state() -> dict[str, Any]:
    """Torch CPU (and CUDA) RNG states: dropout must continue, not restart, after a resume."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # different GPU count: dropout order differs, harmless
            pass


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> None:
    """Write atomically (temp file + rename): an interrupt or a full disk never leaves a torn
    ``last.pt``, and a failed write removes its temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(ckpt.to_payload(), tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint; any problem is a one-line :class:`InputError`.

    Nothing but tensors and plain values is unpickled (``weights_only=True``), and
    :func:`checkpoint_from_payload` checks every field before the checkpoint is returned.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if size == 0:
        raise InputError(f"{path}: empty file, not a sertrain checkpoint")
    try:
        with warnings.catch_warnings():
            # torch warns (on stderr) about pickle protocols it did not write; the CLI's
            # answer must stay one line, and the payload is checked below anyway.
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's text names the first class it refused and suggests weights_only=False,
        # i.e. running code from the file: never what a user of sertrain should do.
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        if found or "Unsupported global" in str(exc):
            what = f" ({found.group(1)})" if found else ""
            raise InputError(
                f"{path}: holds objects other than tensors and plain values{what}; sertrain only "
                "reads its own checkpoints (refusing to unpickle it)"
            ) from None
        raise InputError(_unreadable(path, head)) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    except Exception:  # torch raises RuntimeError, EOFError, KeyError... for non-checkpoints
        raise InputError(_unreadable(path, head)) from None
    return checkpoint_from_payload(payload, str(path))


def _unreadable(path: Path, head: bytes) -> str:
    if head == b"PK\x03\x04":  # torch.save writes a zip archive: this one is cut or corrupt
        return f"{path}: damaged or truncated checkpoint file (torch cannot read its zip archive)"
    return f"{path}: not a readable sertrain checkpoint (not a file torch wrote)"


def checkpoint_from_payload(payload: Any, where: str) -> Checkpoint:
    """Validate what ``torch.load`` returned and build the :class:`Checkpoint`.

    Checks, in this order (the first problem is reported): format marker and version; no
    field missing or unknown; the type of every plain field; the feature and segment configs
    (valid JSON, known keys, typed values); the run config (known keys, typed values, the
    ranges :meth:`Config.validate` enforces, scheme equal to the checkpoint's); the
    normalisation statistics (float32 ``[3, n_mels]``, finite, std >= 0); ``model_state``
    against the architecture that config and the class lists describe (names, shapes,
    dtypes, finite values); epochs and history; the resume state (optimizer, grad scaler,
    RNG) when present. ``where`` (the file name) starts every message.
    """
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{where}: not a sertrain checkpoint (no {FORMAT!r} format marker)")
    version = payload.get("format_version")
    if _is_int(version) and version == 1:
        raise InputError(
            f"{where}: checkpoint format version 1 is no longer read (it does not record the store "
            "content it was trained on, so it cannot be checked); retrain, or use sertrain <= 0.1"
        )
    if _is_int(version) and version > FORMAT_VERSION:
        raise InputError(
            f"{where}: checkpoint format version {version} is newer than this sertrain reads "
            f"({FORMAT_VERSION}); upgrade sertrain"
        )
    if not _is_int(version) or version < OLDEST_READ:
        raise InputError(
            f"{where}: checkpoint format version {version!r} is not supported (this sertrain reads "
            f"{OLDEST_READ}..{FORMAT_VERSION})"
        )

    def bad(message: str) -> InputError:
        return InputError(f"{where}: invalid checkpoint: {message}")

    fields = {f.name: f for f in dataclasses.fields(Checkpoint)}
    data = _upgrade({k: v for k, v in payload.items() if k not in ("format", "format_version", "content_sha256")},
                    version)
    if not isinstance(payload.get("content_sha256"), str):
        raise bad("missing content_sha256 (the checksum of its content)")
    missing = [k for k in fields if k not in data]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        raise bad(f"unexpected field(s) {', '.join(unknown)}")

    # Plain fields.
    for name in ("emotion_classes", "gender_classes", "train_speakers"):
        _check_names(data[name], name, bad)
    for name in ("store_fingerprint", "store_content_sha256", "store_corpus", "scheme"):
        if not isinstance(data[name], str) or not data[name]:
            raise bad(f"{name} is {_show(data[name])}; expected a non-empty string")
    for name, low in (("fold", 1), ("epoch", 0), ("best_epoch", 0)):
        if not _is_int(data[name]) or data[name] < low:
            raise bad(f"{name} is {_show(data[name])}; expected an integer >= {low}")
    if data["best_epoch"] > data["epoch"]:
        raise bad(f"best_epoch {data['best_epoch']} is after the last epoch {data['epoch']}")
    if not _is_number(data["best_metric"]):
        raise bad(f"best_metric is {_show(data['best_metric'])}; expected a number")
    if not isinstance(data["finished"], bool):
        raise bad(f"finished is {_show(data['finished'])}; expected true or false")

    # Feature and segment configuration (what the store computed; predict recomputes it).
    fc = _json_object(data["feature_config_json"], "feature_config_json", bad)
    _check_section(fc, FeatureConfig, "feature_config_json", "", bad)
    for key in _POSITIVE_FEATURE_INTS:
        if fc[key] < 1:
            raise bad(f"feature_config_json: {key} is {fc[key]}; expected >= 1")
    sc = _json_object(data["segment_config_json"], "segment_config_json", bad)
    _check_section(sc, SegmentConfig, "segment_config_json", "", bad)
    for key in ("frames", "hop", "min_hop"):
        if sc[key] < 1:
            raise bad(f"segment_config_json: {key} is {sc[key]}; expected >= 1")

    # Run configuration.
    cfg = _check_config(data["config"], where, bad)
    if data["scheme"] != cfg.data.scheme:
        raise bad(f"scheme {data['scheme']!r} differs from its config's data.scheme {cfg.data.scheme!r}")

    # Normalisation statistics: one value per channel and mel band. A checkpoint records no
    # feature kind: sertrain trains on log-Mel stores only (model.TRAINABLE_FEATURE_KIND).
    n_mels, c = int(fc["n_mels"]), TRAINABLE_CHANNELS
    for name in ("norm_mean", "norm_std"):
        t = data[name]
        if not isinstance(t, torch.Tensor):
            raise bad(f"{name} is {_show(t)}; expected a float32 tensor [{c}, {n_mels}]")
        if t.dtype != torch.float32:
            raise bad(f"{name} is {_dtype(t)}; expected float32")
        if list(t.shape) != [c, n_mels]:
            raise bad(
                f"{name} has shape {list(t.shape)}; expected [{c}, {n_mels}] "
                f"({c} channels x the {n_mels} mel bands of its feature config)"
            )
        if not bool(torch.isfinite(t).all()):
            raise bad(f"{name} holds non-finite values")
    if bool((data["norm_std"] < 0).any()):
        raise bad("norm_std holds negative values")

    # Weights against the architecture the config and class lists describe. The reference
    # model is built on the meta device: shapes only, no memory, no initialisation cost.
    state = data["model_state"]
    if not isinstance(state, dict) or not state:
        raise bad(f"model_state is {_show(state)}; expected a dict of tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise bad(f"model_state[{key}] is {_show(value)}; expected a tensor")
    spec = InputSpec(n_mels=n_mels, frames=int(sc["frames"]), feature_config_json=json.dumps(fc, sort_keys=True),
                     hop=int(sc["hop"]))
    try:
        with torch.device("meta"):
            reference = build_model(cfg.model, spec, len(data["emotion_classes"]), len(data["gender_classes"]),
                                    len(data["train_speakers"]), cfg.loss.active_tasks())
    except InputError as exc:
        raise bad(f"config: {exc}") from None
    except (RuntimeError, ValueError, TypeError) as exc:
        raise bad(f"config does not describe a model that can be built ({first_line(exc)})") from None
    problem = state_mismatch(state, reference.state_dict())
    if problem:
        raise bad(
            f"model_state does not fit the architecture in its config ({problem}; config {cfg.name!r}, "
            f"{len(data['emotion_classes'])} emotion classes, {len(data['gender_classes'])} genders, "
            f"{len(data['train_speakers'])} training speakers)"
        )
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise bad(f"model_state[{key}] holds non-finite values")

    # Epochs and history: one entry per completed epoch, in order.
    history = data["history"]
    if not isinstance(history, list) or not all(isinstance(h, dict) and _is_int(h.get("epoch")) for h in history):
        raise bad("history is not a list of per-epoch records with an integer 'epoch'")
    epochs = [h["epoch"] for h in history]
    if epochs != list(range(1, data["epoch"] + 1)):
        raise bad(f"history lists epochs {_short(epochs)} but the checkpoint is after epoch {data['epoch']}")

    # Selection: the epochs of the selected model, and the weights kept to select later.
    selected = data["selected_epochs"]
    if not isinstance(selected, list) or not all(_is_int(e) and 1 <= e <= data["epoch"] for e in selected) \
            or len(set(selected)) != len(selected):
        raise bad(f"selected_epochs is {_show(selected)}; expected distinct epochs in 1..{data['epoch']}")
    kept = data["selection_states"]
    if kept is not None:
        if not isinstance(kept, dict) or not all(_is_int(e) and 1 <= e <= data["epoch"] for e in kept):
            raise bad(f"selection_states is {_show(kept)}; expected {{epoch: state dict}} of epochs in 1..{data['epoch']}")
        for e, kept_state in kept.items():
            problem = state_mismatch(kept_state, reference.state_dict()) if isinstance(kept_state, dict) else "not a dict"
            if problem:
                raise bad(f"selection_states[{e}] does not fit the architecture in its config ({problem})")

    # Resume state (last.pt); None in best.pt.
    n_params = len(list(reference.parameters()))
    _check_optimizer_state(data["optimizer_state"], n_params, bad)
    scaler = data["scaler_state"]
    if scaler is not None and (
        not isinstance(scaler, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in scaler.items())
    ):
        raise bad(f"scaler_state is {_show(scaler)}; expected a dict of numbers (torch.amp.GradScaler state)")
    _check_rng_state(data["rng_state"], bad)

    # Last, the checksum over everything: the fields above are well-formed, but a flipped
    # byte inside a tensor (or an edit that kept the shapes) only shows here.
    if payload_digest(payload) != payload["content_sha256"]:
        raise InputError(f"{where}: damaged or modified checkpoint: its content does not match its checksum")
    return Checkpoint(**data)


def _upgrade(data: dict[str, Any], version: int) -> dict[str, Any]:
    """The fields of an older format as this format states them (the file is not changed;
    its checksum is checked over what it holds)."""
    if version >= 4:
        return data
    data = dict(data)
    config = data.get("config")
    if isinstance(config, dict) and isinstance(config.get("loss"), dict) and {"w_gender", "w_speaker"} <= set(
            config["loss"]):
        # Format <= 3 had loss.w_gender and loss.w_speaker; format 4 has loss.weights, one per
        # task of the registry. Those runs could only activate gender and speaker, so the
        # other tasks' weights (filled with the registry's defaults) change nothing. (Without
        # both old keys the config is left as it is, and refused as incomplete.)
        loss = {k: v for k, v in config["loss"].items() if k not in ("w_gender", "w_speaker")}
        loss["weights"] = {**default_weights(), **{k[2:]: v for k, v in config["loss"].items()
                                                   if k in ("w_gender", "w_speaker")}}
        config = data["config"] = {**config, "loss": loss}
    if version >= 3:
        return data
    # Format 2 had one selection rule: the epoch with the best validation UA.
    if isinstance(config, dict) and isinstance(config.get("train"), dict):
        config = {**config, "train": {**config["train"]}}
        config["train"].setdefault("selection", "val_ua")
        data["config"] = config
    if _is_int(data.get("best_epoch")):
        data.setdefault("selected_epochs", [data["best_epoch"]] if data["best_epoch"] >= 1 else [])
    data.setdefault("selection_states", None)
    return data


def state_mismatch(state: dict[str, Any], reference: dict[str, torch.Tensor]) -> str | None:
    """First difference between ``state`` and a model's ``state_dict()`` (names, shapes,
    dtypes), in words; None when ``load_state_dict`` would accept it exactly."""
    missing = [k for k in reference if k not in state]
    if missing:
        return f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    extra = [k for k in state if k not in reference]
    if extra:
        return f"unexpected {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
    for key, ref in reference.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            return f"{key} is {_show(value)}, not a tensor"
        if list(value.shape) != list(ref.shape):
            return f"{key} has shape {list(value.shape)}, the model needs {list(ref.shape)}"
        if value.dtype != ref.dtype:
            return f"{key} is {_dtype(value)}, the model needs {_dtype(ref)}"
    return None


# ---------------------------------------------------------------------------------------------
# Field checks (each raises ``bad(message)``)
# ---------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _show(v: Any) -> str:
    """A value for a message: short, with its type (``'64' (str)``)."""
    if isinstance(v, torch.Tensor):
        return f"a {_dtype(v)} tensor {list(v.shape)}"
    text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(v).__name__})"


def _short(values: list[Any]) -> str:
    return str(values) if len(values) <= 8 else f"[{values[0]}, ..., {values[-1]}] ({len(values)})"


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (at most 200 characters), for one-line errors."""
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]


def _check_names(v: Any, name: str, bad: Any) -> None:
    """A non-empty list of distinct strings (class names, speaker ids)."""
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise bad(f"{name} is {_show(v)}; expected a non-empty list of names")
    seen: set[str] = set()
    for x in v:
        if x in seen:
            raise bad(f"{name} lists {x!r} twice")
        seen.add(x)


def _json_object(text: Any, name: str, bad: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        raise bad(f"{name} is {_show(text)}; expected a JSON str")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"{name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise bad(f"{name} is not a JSON object")
    return value


def _type_ok(value: Any, type_text: str) -> bool:
    """Does ``value`` (from JSON or a config dict) have the declared dataclass field type?

    Field types are the annotation strings of the config dataclasses (``int``, ``float``,
    ``list[list[int]]``, ``float | None`` ...). A float field takes an int (TOML and JSON
    write ``0`` for ``0.0``); an int field never takes a float or a bool.
    """
    t = type_text.replace(" ", "")
    if t.endswith("|None"):
        return value is None or _type_ok(value, t[: -len("|None")])
    if t == "int":
        return _is_int(value)
    if t == "float":
        return _is_number(value) and math.isfinite(value)
    if t == "str":
        return isinstance(value, str)
    if t == "bool":
        return isinstance(value, bool)
    if t.startswith("dict[str,") and t.endswith("]"):
        return isinstance(value, dict) and all(isinstance(k, str) and _type_ok(v, t[9:-1]) for k, v in value.items())
    if t.startswith("list[") and t.endswith("]"):
        return isinstance(value, list) and all(_type_ok(x, t[5:-1]) for x in value)
    # A field type this checker does not know yet: leave it to the dataclass (not refused).
    return True


def _check_section(values: Any, klass: type, label: str, prefix: str, bad: Any) -> None:
    """Every key of dataclass ``klass`` present with its type, and no other key."""
    if not isinstance(values, dict):
        raise bad(f"{label}: section {prefix.rstrip('.')} is {_show(values)}; expected a table of values")
    declared = {f.name: f.type for f in dataclasses.fields(klass)}
    unknown = sorted(str(k) for k in values if k not in declared)
    if unknown:
        raise bad(f"{label}: unknown key(s) {', '.join(prefix + k for k in unknown)}")
    for key, type_text in declared.items():
        if key not in values:
            raise bad(f"{label}: lacks {prefix}{key}")
        if not _type_ok(values[key], str(type_text)):
            raise bad(f"{label}: {prefix}{key} is {_show(values[key])}; expected {type_text}")


def _check_config(data: Any, where: str, bad: Any) -> Config:
    """The run config: complete, typed, and within :meth:`Config.validate`'s ranges.

    Complete because a key filled in from today's defaults could describe another model or
    protocol than the one the weights were trained with. (So a key added to the config, or
    to serprep's FeatureConfig/SegmentConfig, needs a FORMAT_VERSION bump and a rule for the
    older files.)
    """
    if not isinstance(data, dict):
        raise bad(f"config is {_show(data)}; expected a dict")
    unknown = sorted(str(k) for k in data if k not in _CONFIG_SECTIONS and k != "name")
    if unknown:
        raise bad(f"config: unknown section(s) {', '.join(unknown)}")
    if not isinstance(data.get("name"), str):
        raise bad(f"config: name is {_show(data.get('name'))}; expected a string")
    for section, klass in _CONFIG_SECTIONS.items():
        if section not in data:
            raise bad(f"config: lacks section {section}")
        _check_section(data[section], klass, "config", f"{section}.", bad)
    try:
        return Config.from_dict(data, source=f"{where}: invalid checkpoint: config")
    except InputError:
        raise
    except (TypeError, ValueError) as exc:
        raise bad(f"config: {first_line(exc)}") from None


def _check_optimizer_state(opt: Any, n_params: int, bad: Any) -> None:
    """torch's ``Optimizer.state_dict()`` layout, covering each model parameter once."""
    if opt is None:
        return
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) or not isinstance(
        opt.get("param_groups"), list
    ):
        raise bad(f"optimizer_state is {_show(opt)}; expected an optimizer state dict")
    ids: list[Any] = []
    for group in opt["param_groups"]:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            raise bad("optimizer_state: a parameter group without a 'params' list")
        ids.extend(group["params"])
    if not all(_is_int(i) for i in ids) or sorted(ids) != list(range(n_params)):
        raise bad(f"optimizer_state covers {len(ids)} parameter(s) but the model has {n_params}")
    for key, value in opt["state"].items():
        if not _is_int(key) or not 0 <= key < n_params or not isinstance(value, dict):
            raise bad(f"optimizer_state: state entry {key!r} does not belong to a model parameter")


def _check_rng_state(rng: Any, bad: Any) -> None:
    """``capture_rng_state``'s layout: torch's CPU generator state and, optionally, CUDA's."""
    if rng is None:
        return
    expected = torch.get_rng_state().numel()

    def byte_state(t: Any, size: int | None) -> bool:
        return (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1
                and (size is None or t.numel() == size))

    if (not isinstance(rng, dict) or set(rng) - {"torch", "cuda"} or not byte_state(rng.get("torch"), expected)
            or ("cuda" in rng and not (isinstance(rng["cuda"], list)
                                       and all(byte_state(t, None) for t in rng["cuda"])))):
        raise bad(f"rng_state is not torch's random generator state (a uint8 tensor of {expected} bytes)")
