"""Device selection, mixed precision and reproducibility settings."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch

from .errors import InputError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an :class:`InputError`."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available (torch sees none)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"--device must be auto, cpu or cuda, got {name!r}")


@dataclass(frozen=True)
class Precision:
    """Autocast settings: ``dtype`` None means full fp32."""

    dtype: torch.dtype | None
    use_scaler: bool  # fp16 needs loss scaling; bf16 has fp32's exponent range and does not

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self, device: torch.device) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """Mixed precision only on CUDA (CPU autocast is slower for these convs and breaks the
    bit-for-bit determinism the CPU path promises). ``auto`` = bf16 where supported, else fp16."""
    if device.type != "cuda" or amp == "off":
        return Precision(None, False)
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "bf16":
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch; on CPU also request deterministic kernels so a fixed seed gives identical
    runs. On CUDA cuDNN autotuning is kept on for speed (runs are close, not bit-identical)."""
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN (to expose kernels that read
        # memory they did not write): 23 % of a cpu-small epoch's CPU time in a profile,
        # not arithmetic. No kernel here reads such memory (the same seed gives the same
        # weights with and without it; tests/test_sertrain_fast_path.py), so it is off.
        torch.utils.deterministic.fill_uninitialized_memory = False
    else:
        torch.backends.cudnn.benchmark = True
        # TF32 matmuls/convs: the fp32 parts of a run stay fast on Ampere/Hopper.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
