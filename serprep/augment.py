"""Offline waveform augmentation for balanced augmented sampling (method.md, step 2).

Minority-class training utterances get extra copies made by a chain of audiomentations
transforms. The chain is data, not code: a *preset* (``manifests/augment/<name>.toml`` or any
user ``.toml``/``.yaml`` file) lists the transforms in order with their parameter ranges and
application probability ``p``::

    description = "..."

    [[transform]]
    name = "AddGaussianSNR"
    p = 0.8
    min_snr_db = 10.0
    max_snr_db = 30.0

Public API
----------
``load_preset(name_or_path) -> dict``
    Read and validate a preset (a bundled name such as ``"default"`` or a file path).
``Augmenter(preset, sample_rate)``
    ``apply(samples, seed) -> (float32 audio, chain)`` and ``describe() -> dict``.
``copy_seed(base_seed, utt_id, copy) -> int``
    Stable per-copy seed, so a store rebuilt anywhere yields the same copies.
``SyntheticReverb``
    Room reverberation without pyroomacoustics or impulse-response files.

Every copy must be reproducible from what the store records (preset + seed), which is why
``apply`` gives the transforms generators seeded from the copy's seed (audiomentations draws
from ``random`` and ``numpy.random``; see :func:`_isolate_random_state`) and why the applied
chain (names and sampled parameters) is returned for storage alongside the copy.
"""

from __future__ import annotations

import contextlib
import copy as _copy
import hashlib
import inspect
import math
import random
import sys
import threading
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from audiomentations import (
    AddGaussianNoise,
    AddGaussianSNR,
    BandPassFilter,
    Gain,
    HighPassFilter,
    LowPassFilter,
    PitchShift,
    TimeStretch,
)
from audiomentations.core.transforms_interface import BaseWaveformTransform
from audiomentations.core.utils import calculate_rms
from numpy.typing import NDArray
from scipy.signal import fftconvolve

from serprep.errors import SerprepError
from serprep.packaged import manifests_dir

__all__ = [
    "PRESET_DIR",
    "AugmentPresetError",
    "Augmenter",
    "SyntheticReverb",
    "TRANSFORMS",
    "available_presets",
    "copy_seed",
    "load_preset",
    "validate_preset",
]

#: Bundled presets: package data beside the label manifests (``serprep/manifests/augment/``).
PRESET_DIR: Path = manifests_dir() / "augment"

_PRESET_SUFFIXES = (".toml", ".yaml", ".yml")
_TOP_LEVEL_KEYS = {"name", "description", "transform"}
# Arrays in ``transform.parameters`` larger than this are dropped from the recorded chain:
# the chain is stored per copy and must stay small (and nothing we use needs them).
_MAX_RECORDED_ARRAY = 16


class AugmentPresetError(SerprepError, ValueError):
    """A preset is missing, unreadable or invalid.

    A ``ValueError`` for library callers and a ``SerprepError`` so the CLI prints it as the
    usual one-line error. The message names the file and, where relevant, the entry.
    """


class SyntheticReverb(BaseWaveformTransform):
    """Short room reverberation by convolution with a synthetic impulse response.

    audiomentations' ``RoomSimulator`` needs pyroomacoustics and ``ApplyImpulseResponse``
    needs recorded IR files; neither is available to us, so the IR is generated: white
    Gaussian noise under an exponential envelope that decays by 60 dB after ``rt60`` seconds
    (the usual diffuse-tail model). The reverberant signal is rescaled to the dry signal's RMS
    and mixed as ``(1 - wet) * dry + wet * reverberant``, so ``wet`` alone sets how audible the
    room is, independent of the IR's energy.

    Output length equals input length (the tail past the end is cut) so that durations,
    frame counts and segment offsets of a copy match its source utterance.

    Sampled parameters: ``rt60`` (s), ``wet`` (0..1) and ``ir_seed``. The IR noise comes from
    ``numpy.random.default_rng(ir_seed)``, so the recorded parameters alone reproduce the IR;
    the IR itself is not recorded (it would be thousands of floats per copy).
    """

    supports_multichannel = False

    def __init__(
        self,
        min_rt60: float = 0.15,
        max_rt60: float = 0.5,
        min_wet: float = 0.1,
        max_wet: float = 0.4,
        p: float = 0.5,
    ):
        """
        :param min_rt60: Minimum reverberation time (seconds to decay by 60 dB), > 0.
        :param max_rt60: Maximum reverberation time in seconds, at most 5.
        :param min_wet: Minimum share of the reverberant signal in the mix, 0..1.
        :param max_wet: Maximum share of the reverberant signal in the mix, 0..1.
        :param p: The probability of applying this transform.
        """
        super().__init__(p)
        if not 0.0 < min_rt60 <= max_rt60 <= 5.0:
            raise ValueError("need 0 < min_rt60 <= max_rt60 <= 5 seconds")
        if not 0.0 <= min_wet <= max_wet <= 1.0:
            raise ValueError("need 0 <= min_wet <= max_wet <= 1")
        self.min_rt60 = min_rt60
        self.max_rt60 = max_rt60
        self.min_wet = min_wet
        self.max_wet = max_wet

    def randomize_parameters(self, samples: NDArray[np.float32], sample_rate: int) -> None:
        super().randomize_parameters(samples, sample_rate)
        if self.parameters["should_apply"]:
            # ``random`` like the library's own transforms: inside Augmenter.apply the copy's
            # seeded generator (_RANDOM), so these draws are fixed by its seed too.
            self.parameters["rt60"] = _RANDOM.uniform(self.min_rt60, self.max_rt60)
            self.parameters["wet"] = _RANDOM.uniform(self.min_wet, self.max_wet)
            self.parameters["ir_seed"] = _RANDOM.getrandbits(32)

    @staticmethod
    def impulse_response(rt60: float, sample_rate: int, ir_seed: int) -> NDArray[np.float32]:
        """The IR used for given parameters: decaying noise, unit energy, ``rt60`` long."""
        n = max(1, int(round(rt60 * sample_rate)))
        t = np.arange(n, dtype=np.float64) / sample_rate
        # 60 dB amplitude drop at t = rt60: 20*log10(exp(-a*rt60)) = -60 -> a = 3 ln(10) / rt60.
        envelope = np.exp(-3.0 * math.log(10.0) * t / rt60)
        ir = np.random.default_rng(ir_seed).standard_normal(n) * envelope
        ir /= np.sqrt(np.sum(ir**2))
        return ir.astype(np.float32)

    def apply(self, samples: NDArray[np.float32], sample_rate: int) -> NDArray[np.float32]:
        ir = self.impulse_response(self.parameters["rt60"], sample_rate, self.parameters["ir_seed"])
        dry = samples.astype(np.float64)
        reverberant = fftconvolve(dry, ir.astype(np.float64))[: len(dry)]
        dry_rms = float(np.sqrt(np.mean(dry**2)))
        rev_rms = float(np.sqrt(np.mean(reverberant**2)))
        if rev_rms > 0.0:
            reverberant *= dry_rms / rev_rms
        wet = self.parameters["wet"]
        return ((1.0 - wet) * dry + wet * reverberant).astype(np.float32)


#: Transforms a preset may name. A whitelist rather than "anything in audiomentations"
#: because every entry here is mono-capable, needs no external files, and draws its
#: randomness only from ``random``/``numpy.random`` (so Augmenter.apply's seeding makes it
#: reproducible).
TRANSFORMS: dict[str, type[BaseWaveformTransform]] = {
    cls.__name__: cls
    for cls in (
        AddGaussianSNR,
        AddGaussianNoise,
        Gain,
        TimeStretch,
        PitchShift,
        BandPassFilter,
        LowPassFilter,
        HighPassFilter,
        SyntheticReverb,
    )
}


# --------------------------------------------------------------------------- presets


def available_presets() -> list[str]:
    """Names of the bundled presets (files in :data:`PRESET_DIR`)."""
    if not PRESET_DIR.is_dir():
        return []
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _one_line(text: str) -> str:
    # Parser messages (YAML especially) span lines; user errors must be one line.
    return " ".join(str(text).split())


def preset_file(name_or_path: str) -> Path:
    """The file a preset name (``default``: the bundled ``default.toml``) or path stands for;
    :class:`AugmentPresetError` if there is none."""
    path = Path(name_or_path).expanduser()
    looks_like_path = (
        path.suffix.lower() in _PRESET_SUFFIXES or "/" in name_or_path or "\\" in name_or_path
    )
    if looks_like_path or path.is_file():
        if not path.is_file():
            raise AugmentPresetError(f"{path}: augmentation preset file not found")
        return path
    bundled = PRESET_DIR / f"{name_or_path}.toml"
    if not bundled.is_file():
        known = ", ".join(available_presets()) or "none"
        raise AugmentPresetError(
            f"{bundled}: unknown augmentation preset {name_or_path!r} (bundled: {known}; "
            "or pass a .toml/.yaml file path)"
        )
    return bundled


def _read(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml  # optional dependency: only YAML presets need it
        except ImportError:
            raise AugmentPresetError(
                f"{path}: YAML presets need PyYAML, which is not installed (use .toml)"
            ) from None
        try:
            with path.open("r", encoding="utf-8") as fh:
                return yaml.safe_load(fh)
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise AugmentPresetError(f"{path}: cannot read YAML preset: {_one_line(exc)}") from None
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AugmentPresetError(f"{path}: cannot read TOML preset: {_one_line(exc)}") from None


def load_preset(name_or_path: str) -> dict[str, Any]:
    """Load and validate an augmentation preset.

    ``name_or_path`` is a bundled preset name (``"default"``, ``"light"``: the ``.toml`` files
    in :data:`PRESET_DIR`) or a path to a ``.toml`` file (``.yaml``/``.yml`` when PyYAML is
    importable). Returns the normalised preset ``{"name", "description", "transform": [...]}``
    where each transform entry is ``{"name": ..., "p": ..., <constructor arguments>}``.
    ``name`` defaults to the file stem; no absolute path is kept, so the recorded preset (and
    anything fingerprinted from it) does not depend on where the file lived.

    Raises :class:`AugmentPresetError` (a ``ValueError``) naming the file and the entry.
    """
    path = preset_file(name_or_path)
    data = _read(path)
    if isinstance(data, Mapping) and "name" not in data:
        data = {"name": path.stem, **data}
    return validate_preset(data, source=str(path))


def validate_preset(data: Any, source: str = "<preset>") -> dict[str, Any]:
    """Check a preset mapping and return a normalised deep copy.

    Every transform is instantiated once so that the library's own argument checks run now,
    at load time, rather than in the middle of building a store. ``source`` is the file name
    (or another label) used in error messages.
    """
    if not isinstance(data, Mapping):
        raise AugmentPresetError(f"{source}: a preset must be a table/mapping at top level")
    unknown = sorted(set(data) - _TOP_LEVEL_KEYS)
    if unknown:
        raise AugmentPresetError(
            f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(sorted(_TOP_LEVEL_KEYS))}; transforms go in [[transform]])"
        )
    entries = data.get("transform")
    if not isinstance(entries, list) or not entries:
        raise AugmentPresetError(f"{source}: no [[transform]] entries")
    name = data.get("name", "")
    description = data.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise AugmentPresetError(f"{source}: 'name' and 'description' must be strings")
    out_entries = [_validate_entry(e, i, source) for i, e in enumerate(entries, start=1)]
    return {"name": name, "description": description, "transform": out_entries}


def _validate_entry(entry: Any, index: int, source: str) -> dict[str, Any]:
    where = f"{source}: transform #{index}"
    if not isinstance(entry, Mapping):
        raise AugmentPresetError(f"{where}: must be a table with 'name' and 'p'")
    tname = entry.get("name")
    if not isinstance(tname, str) or tname not in TRANSFORMS:
        raise AugmentPresetError(
            f"{where}: unknown transform name {tname!r} (known: {', '.join(sorted(TRANSFORMS))})"
        )
    where = f"{where} ({tname})"
    cls = TRANSFORMS[tname]
    signature = inspect.signature(cls.__init__)
    allowed = {k: v for k, v in signature.parameters.items() if k != "self"}
    args = {k: v for k, v in entry.items() if k != "name"}

    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise AugmentPresetError(
            f"{where}: unknown parameter(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    # ``p`` is required: library defaults differ per transform and a preset should say
    # explicitly how often each transform fires.
    if "p" not in args:
        raise AugmentPresetError(f"{where}: missing application probability 'p'")

    for key, value in list(args.items()):
        args[key] = _check_type(value, allowed[key].default, f"{where}: parameter {key}")
    p = args["p"]
    if not 0.0 <= p <= 1.0:
        raise AugmentPresetError(f"{where}: p must be within 0..1, got {p}")
    # Generic min/max ordering check (the library checks most pairs, but not all, and some
    # only with ``assert``, which ``python -O`` strips).
    for key in args:
        if key.startswith("min_") and f"max_{key[4:]}" in args:
            lo, hi = args[key], args[f"max_{key[4:]}"]
            if lo > hi:
                raise AugmentPresetError(f"{where}: {key} ({lo}) > max_{key[4:]} ({hi})")
    try:
        cls(**args)
    except (ValueError, AssertionError, TypeError) as exc:
        reason = _one_line(exc) or type(exc).__name__
        raise AugmentPresetError(f"{where}: invalid parameters: {reason}") from None
    # Fill in the library defaults the preset left out (e.g. the stretch ``method``), so the
    # recorded preset still reproduces the copies if a later library version changes them.
    full: dict[str, Any] = {"name": tname, "p": args.pop("p")}
    for key, param in allowed.items():
        if key == "p":
            continue
        if key in args:
            full[key] = args[key]
        elif param.default is not inspect.Parameter.empty:
            full[key] = param.default
    return full


def _check_type(value: Any, default: Any, where: str) -> Any:
    """Match a preset value to the type of the constructor's default (bool/int/float/str)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise AugmentPresetError(f"{where} must be true/false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AugmentPresetError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise AugmentPresetError(f"{where} must be finite, got {value!r}")
        if isinstance(default, int):
            # Integer arguments (filter roll-offs) go to random.randint, which rejects floats.
            if isinstance(value, float):
                if not value.is_integer():
                    raise AugmentPresetError(f"{where} must be an integer, got {value!r}")
                value = int(value)
        return value
    if isinstance(default, str) and not isinstance(value, str):
        raise AugmentPresetError(f"{where} must be a string, got {value!r}")
    return value


# --------------------------------------------------------------------------- seeds


def copy_seed(base_seed: int, utt_id: str, copy: int) -> int:
    """Seed for augmented ``copy`` (k >= 1) of utterance ``utt_id`` in a store seeded ``base_seed``.

    SHA-256 of the three values, first 8 bytes, top bit cleared: stable across processes,
    machines and Python versions (unlike the salted built-in ``hash``), independent of the
    order in which utterances are processed, and a 63-bit non-negative int (collisions are
    negligible at corpus scale, unlike a 32-bit seed).
    """
    key = f"{int(base_seed)}\x1f{utt_id}\x1f{int(copy)}".encode("utf-8")
    digest = hashlib.sha256(key).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


# --------------------------------------------------------------------------- augmenter


_DROP = object()  # sentinel: "leave this parameter out of the record"


def _jsonable(value: Any) -> Any:
    """Plain JSON types for the recorded chain; ``_DROP`` for things not worth recording."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None  # keep the record strict JSON
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, np.ndarray):
        if value.size > _MAX_RECORDED_ARRAY:
            return _DROP
        return [_jsonable(v) for v in value.ravel().tolist()]
    if isinstance(value, (list, tuple)):
        if len(value) > _MAX_RECORDED_ARRAY:
            return _DROP
        return [v for v in (_jsonable(v) for v in value) if v is not _DROP]
    if isinstance(value, Mapping):
        return {str(k): v for k, v in ((k, _jsonable(v)) for k, v in value.items()) if v is not _DROP}
    return _DROP

# The library records internal quantities (noise std, amplitude ratio); we add the preset's
# own units next to them, so a stored chain can be checked against the preset's ranges.
# Values are exact re-derivations from the recorded parameters and the transform's input.


def _derived(name: str, params: dict[str, Any], x_in: NDArray[np.float32]) -> dict[str, Any]:
    if name == "AddGaussianSNR":
        noise_std = params.get("noise_std")
        clean_rms = float(calculate_rms(x_in))  # the same RMS the library used to scale noise
        if noise_std and clean_rms > 0.0:
            return {"snr_db": 20.0 * math.log10(clean_rms / float(noise_std))}
    elif name == "Gain":
        ratio = params.get("amplitude_ratio")
        if ratio:
            return {"gain_db": 20.0 * math.log10(float(ratio))}
    return {}


# --------------------------------------------------------------------------- random state
# audiomentations draws from the process-global generators (``random.uniform``,
# ``np.random.normal``, ...). Seeding those per copy under a lock is not enough: other code
# in the process draws from them too, concurrently, and shifts the copy's draws. A Dask
# worker does, for one (``dask.sizeof`` samples every result's items with ``random.sample``
# on the worker's event loop while the next block is augmented), which made a store built
# on a cluster differ from a local one. So the transforms' modules get stand-ins for
# ``random`` and ``numpy.random`` that, inside :meth:`Augmenter.apply`, draw from the
# calling thread's own generators, seeded exactly as the global ones used to be
# (``random.Random(seed)`` and ``RandomState`` give the same streams as ``random.seed`` and
# ``np.random.seed``): the same copies as before, in any thread, whatever else runs.


class _ThreadGenerators(threading.local):
    py: random.Random | None = None
    np: np.random.RandomState | None = None


_GENERATORS = _ThreadGenerators()


class _RandomModule:
    """``random`` for the transforms: the thread's seeded generator inside ``apply``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_GENERATORS.py or random, name)


class _NumpyRandomModule:
    """``numpy.random`` for the transforms: the thread's seeded ``RandomState`` inside ``apply``
    (names a ``RandomState`` lacks, such as ``default_rng``, come from ``numpy.random``)."""

    def __getattr__(self, name: str) -> Any:
        state = _GENERATORS.np
        if state is not None:
            try:
                return getattr(state, name)
            except AttributeError:
                pass
        return getattr(np.random, name)


class _NumpyModule:
    """``numpy`` for the transforms, but with ``.random`` the stand-in above."""

    random = _NumpyRandomModule()

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


_RANDOM = _RandomModule()
_NUMPY = _NumpyModule()


def _isolate_random_state(transforms: Mapping[str, type]) -> None:
    """Give the modules defining ``transforms`` (and their audiomentations base classes) the
    stand-ins for ``random`` and ``numpy``; refuse a module that holds a global generator's
    function directly (``from random import uniform``), which no stand-in could redirect."""
    globals_ = (random._inst, np.random.mtrand._rand)  # the generators behind the module functions
    modules = {sys.modules[c.__module__] for cls in transforms.values() for c in cls.__mro__
               if c.__module__.split(".")[0] == "audiomentations"}
    for module in modules:
        for name, value in list(vars(module).items()):
            if value is random:
                setattr(module, name, _RANDOM)
            elif value is np:
                setattr(module, name, _NUMPY)
            elif any(getattr(value, "__self__", None) is g for g in globals_):
                raise RuntimeError(f"{module.__name__}.{name} draws from a process-global generator that "
                                   "serprep cannot seed per copy; this audiomentations version is not supported")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """The calling thread's transforms draw from generators seeded with ``seed`` (< 2**64)."""
    # The legacy NumPy seed takes 32-bit words; both halves, so that 63-bit copy seeds do not
    # collide modulo 2**32.
    _GENERATORS.py = random.Random(seed)
    _GENERATORS.np = np.random.RandomState(np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32))
    try:
        yield
    finally:
        _GENERATORS.py = _GENERATORS.np = None


_isolate_random_state(TRANSFORMS)


class Augmenter:
    """A seeded, recorded augmentation chain built from a preset.

    >>> aug = Augmenter(load_preset("default"), sample_rate=16000)
    >>> y, chain = aug.apply(x, seed=copy_seed(store_seed, utt_id, 1))

    ``apply`` is a pure function of ``(samples, seed)`` and the preset: the transforms draw
    from generators seeded with ``seed`` for this call and this thread only, so results do
    not depend on call order, earlier calls, the process, or other threads drawing from the
    global ``random``/``numpy.random`` meanwhile (whose states ``apply`` leaves alone).
    """

    def __init__(self, preset: Mapping[str, Any] | str, sample_rate: int):
        """
        :param preset: A preset dict (as from :func:`load_preset` or a store record; it is
            re-validated) or a preset name/path, which is loaded with :func:`load_preset`.
        :param sample_rate: Sample rate in Hz of the audio passed to :meth:`apply`.
        """
        if isinstance(preset, str):
            self._preset = load_preset(preset)
        else:
            label = preset.get("name", "") if isinstance(preset, Mapping) else ""
            self._preset = validate_preset(preset, source=f"preset {label!r}")
        if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        self.sample_rate = int(sample_rate)
        self._transforms: list[tuple[str, BaseWaveformTransform]] = [
            (e["name"], TRANSFORMS[e["name"]](**{k: v for k, v in e.items() if k != "name"}))
            for e in self._preset["transform"]
        ]

    def describe(self) -> dict[str, Any]:
        """The normalised preset (name, description, transform list), for the store record."""
        return _copy.deepcopy(self._preset)

    def apply(self, samples: NDArray[Any], seed: int) -> tuple[NDArray[np.float32], list[dict]]:
        """Augment one mono waveform.

        :param samples: 1-D finite audio (any float dtype; converted to float32, not modified).
        :param seed: Non-negative int below 2**64, e.g. from :func:`copy_seed`.
        :returns: ``(audio, chain)``: float32 1-D finite audio with peak <= 1 (its length
            changes only with time-stretching), and one ``{"name", "params"}`` dict per
            transform actually applied, in order, with JSON-serialisable sampled parameters.
            If the result peaked above 1 it is scaled down to peak 1 and a final
            ``{"name": "PeakNormalize", "params": {"gain": g}}`` entry records that.
        """
        x = np.array(samples, dtype=np.float32, copy=True)  # float32: the library warns on f64
        if x.ndim != 1:
            raise ValueError(f"apply expects mono 1-D audio, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("apply got non-finite samples (NaN or inf)")
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be within 0..2**64-1, got {seed}")

        chain: list[dict[str, Any]] = []
        with _seeded(seed):
            for name, transform in self._transforms:
                # Fresh parameter dict: no keys left over from an earlier call, and frozen
                # parameters (never used here) cannot leak across copies.
                transform.parameters = {"should_apply": None}
                x_in = x
                x = transform(x_in, self.sample_rate)
                if transform.parameters.get("should_apply") and len(x_in) > 0:
                    raw = {k: v for k, v in transform.parameters.items() if k != "should_apply"}
                    params = _jsonable(raw)
                    params.update(_derived(name, raw, x_in))
                    chain.append({"name": name, "params": params})
                x = np.asarray(x, dtype=np.float32)

        # Defensive: none of the whitelisted transforms should produce NaN/inf from finite
        # input, but one bad copy must not poison the normalisation statistics of a fold.
        if not np.all(np.isfinite(x)):
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak > 1.0:
            gain = 1.0 / peak
            x = np.clip(x.astype(np.float64) * gain, -1.0, 1.0).astype(np.float32)
            chain.append({"name": "PeakNormalize", "params": {"gain": gain}})
        return np.ascontiguousarray(x, dtype=np.float32), chain

    def __repr__(self) -> str:
        names = ", ".join(n for n, _ in self._transforms)
        return f"Augmenter({self._preset['name']!r}, sample_rate={self.sample_rate}, [{names}])"
