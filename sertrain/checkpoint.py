"""Checkpoints that ``torch.load(path, weights_only=True)`` can read.

Only tensors and primitive containers go in (dicts, lists, str, int, float, bool, None): the
run config as a plain dict, the store's feature/segment configs as canonical JSON strings,
label vocabularies as lists of str. A checkpoint is self-sufficient for ``evaluate`` and
``predict``: it carries the fold's normalisation statistics and the feature configuration
needed to compute features for new audio exactly as the store did.

``last.pt`` additionally holds what ``--resume`` needs: optimizer and grad-scaler state,
epoch, best metric, history and the RNG states.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .errors import InputError
from .model import InputSpec, SERModel, build_model

FORMAT = "sertrain-checkpoint"
FORMAT_VERSION = 1


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
    store_fingerprint: str
    store_corpus: str
    scheme: str
    fold: int
    norm_mean: torch.Tensor  # float32 [3, n_mels]
    norm_std: torch.Tensor
    epoch: int = 0  # epochs completed
    best_epoch: int = 0
    best_metric: float = float("-inf")  # validation UA of best_epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    # Resume state (only in last.pt; None in best.pt).
    optimizer_state: dict[str, Any] | None = None
    scaler_state: dict[str, Any] | None = None
    rng_state: dict[str, Any] | None = None
    finished: bool = False

    @property
    def input_spec(self) -> InputSpec:
        fc = json.loads(self.feature_config_json)
        sc = json.loads(self.segment_config_json)
        return InputSpec(
            n_mels=int(fc["n_mels"]), frames=int(sc["frames"]), channels=3,
            feature_config_json=json.dumps(fc, sort_keys=True),
        )

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
        )
        model.load_state_dict(self.model_state)
        model.eval()
        return model

    def to_payload(self) -> dict[str, Any]:
        payload = {k: v for k, v in self.__dict__.items()}
        payload["format"] = FORMAT
        payload["format_version"] = FORMAT_VERSION
        return payload


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
    """Write atomically (temp file + rename): an interrupt never leaves a torn ``last.pt``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt.to_payload(), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint with ``weights_only=True``; one-line :class:`InputError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, foreign objects...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{path}: not a readable sertrain checkpoint ({first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not a sertrain checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: checkpoint format version {payload.get('format_version')} is not supported "
            f"(this sertrain reads {FORMAT_VERSION})"
        )
    known = set(Checkpoint.__dataclass_fields__)
    return Checkpoint(**{k: v for k, v in payload.items() if k in known})
