"""Run configuration: one TOML file with ``[model]``, ``[loss]``, ``[train]`` and ``[data]``.

Every number of the method (docs/method.md) is a value here, never a constant in code.
Two named presets ship in ``sertrain/configs/``:

- ``paper``: ACRNN-sized (first conv 5x3 with 128 maps, max-pool 2x4, five 5x3 convs with
  256 maps, 768-unit linear per time step, BLSTM 128 per direction, Adam lr 1e-5, batch 60).
  Default when training on CUDA.
- ``cpu-small``: the same architecture family with fewer maps and earlier pooling, sized so
  a training step on a batch of 32 takes a fraction of a second on 2 CPU threads. Default on
  CPU; used by the tests and the demo.

A config is loaded by name or path (:func:`load_config`), then command-line values are laid
over it with dotted keys (:func:`apply_overrides`, e.g. ``{"train.lr": 1e-3}``). The
resolved config is stored in every checkpoint as a plain dict (:meth:`Config.to_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import InputError
from .tasks import TASKS, aux_names, default_weights, parse_aux

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Values of ``train.compile``: off, or a torch.compile mode.
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")

#: Old spelling of a task's loss weight, ``loss.w_<task>`` (sertrain <= 0.5 configs, checkpoints
#: and protocol files): read as ``loss.weights.<task>`` (:func:`_migrate_loss`, the one place).
_OLD_WEIGHT_PREFIX = "w_"


@dataclass
class ModelConfig:
    """Layer sizes of :class:`sertrain.model.SERModel`.

    The CNN is a list of blocks, block ``i`` = conv ``conv_kernels[i]`` (time x freq) with
    ``conv_channels[i]`` maps, batch norm, LeakyReLU, then max-pool ``conv_pools[i]``
    (time x freq; ``[1, 1]`` = no pooling).
    """

    conv_channels: list[int] = field(default_factory=lambda: [128, 256, 256, 256, 256, 256])
    conv_kernels: list[list[int]] = field(default_factory=lambda: [[5, 3]] * 6)
    conv_pools: list[list[int]] = field(
        default_factory=lambda: [[2, 4], [1, 1], [1, 1], [1, 1], [1, 1], [1, 1]]
    )
    leaky_slope: float = 0.01
    #: Per-time-step projection of the flattened CNN output (ACRNN: 768).
    linear_dim: int = 768
    lstm_hidden: int = 128
    lstm_layers: int = 1
    #: Hidden size of the additive attention scorer.
    attention_dim: int = 128
    #: Size of the shared embedding that feeds the three heads.
    embedding_dim: int = 256
    dropout: float = 0.3


@dataclass
class LossConfig:
    """Multi-task loss ``CE_emotion + sum over active tasks of weights[task] * loss_task``.

    ``aux`` selects the active auxiliary tasks (:func:`sertrain.tasks.parse_aux`): ``none``
    (single-task baseline), or task names joined by ``+`` (``gender+speaker``, ``vad`` for
    arousal+valence+dominance). ``weights`` holds one weight per registered task
    (:data:`sertrain.tasks.TASKS`; missing ones take the registry's defaults); inactive tasks'
    weights are kept but unused. ``--aux`` on the command line sets ``aux``; the weights stay
    as configured.
    """

    aux: str = "gender+speaker"
    weights: dict[str, float] = field(default_factory=default_weights)
    label_smoothing: float = 0.0

    def active_tasks(self) -> tuple[str, ...]:
        """The auxiliary tasks ``aux`` switches on, in registry order."""
        return parse_aux(self.aux)

    def active_weights(self) -> dict[str, float]:
        """``{task: weight}`` of the active auxiliary tasks (a weight of 0 leaves the term out)."""
        return {name: float(self.weights[name]) for name in self.active_tasks()}


def _migrate_loss(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``[loss]`` as this version states it: old ``w_<task>`` keys moved into ``weights``
    (refused when both spellings give different values), missing task weights filled from
    the registry's defaults, unknown task names refused."""
    values = dict(values)
    weights = values.get("weights", {})
    if not isinstance(weights, dict):
        raise InputError(f"{source}: loss.weights must be a table of task = weight, got {weights!r}")
    weights = dict(weights)
    for key in [k for k in values if k.startswith(_OLD_WEIGHT_PREFIX)]:
        task = key[len(_OLD_WEIGHT_PREFIX):]
        if task not in TASKS:
            continue  # left in place: refused below as an unknown key
        value = values.pop(key)
        if task in weights and weights[task] != value:
            raise InputError(f"{source}: loss.{key} = {value!r} and loss.weights.{task} = {weights[task]!r} disagree")
        weights[task] = value
    unknown = sorted(set(weights) - set(TASKS))
    if unknown:
        raise InputError(f"{source}: loss.weights names unknown task(s) {unknown} (tasks: {', '.join(TASKS)})")
    # Numbers as floats (TOML writes 1 for 1.0); anything else is left for validate() to refuse.
    values["weights"] = {name: _as_float(weights.get(name, task.default_weight)) for name, task in TASKS.items()}
    return values


def _as_float(value: Any) -> Any:
    return float(value) if _is_number(value) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class TrainConfig:
    """Optimisation and protocol settings."""

    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-5
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    batch_size: int = 60
    eval_batch_size: int = 128
    epochs: int = 50
    #: Steps per epoch; 0 = one pass over the fold's balanced index.
    steps_per_epoch: int = 0
    #: Stop after this many epochs without a better validation UA (0 = never stop early).
    patience: int = 10
    grad_clip: float = 5.0
    seed: int = 0
    num_workers: int = 2
    #: Mixed precision on CUDA: auto (bf16 where supported, else fp16) | bf16 | fp16 | off.
    #: Always off on CPU.
    amp: str = "auto"
    #: Utterance decision from segment posteriors: mean (default) or max (ACRNN).
    aggregate: str = "mean"
    #: Model selection on the validation speakers (sertrain.selection.RULES): which epoch(s)
    #: make the tested model, and what early stopping waits for. The default moved least
    #: between seeds in benchmarks/bench_selection.py (README, "Model selection").
    selection: str = "top3_average"
    #: Where training batches come from: "none" = DataLoader over the store (workers read and
    #: normalise each batch); "device" = the fold's normalised segments read once into one tensor
    #: on the training device, batches gathered there (sertrain.cache; same values).
    cache: str = "none"
    #: Element type of a device cache: float32, or bfloat16 (half the memory; bf16 autocast only).
    cache_dtype: str = "float32"
    #: torch.compile the model's fixed-shape parts for training: off | default | reduce-overhead
    #: (CUDA graphs) | max-autotune. Rounding-level differences from eager; compiling takes time.
    compile: str = "off"


@dataclass
class DataConfig:
    """Which folds of the store to use."""

    scheme: str = "loso"


@dataclass
class Config:
    """The whole run configuration."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of primitives (safe for ``torch.load(weights_only=True)``)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"model.lstm_hidden": 64, ...}``: every value by its dotted key (the name left out),
        the keys ``--set`` and :func:`apply_overrides` take."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            if not isinstance(values, dict):
                continue
            for key, value in values.items():
                if isinstance(value, dict):  # loss.weights: one key per task
                    out.update({f"{section}.{key}.{name}": v for name, v in value.items()})
                else:
                    out[f"{section}.{key}"] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "Config":
        """Build from a nested dict, refusing unknown sections/keys (typos must not pass)."""
        sections = {"model": ModelConfig, "loss": LossConfig, "train": TrainConfig, "data": DataConfig}
        unknown = set(data) - set(sections) - {"name"}
        if unknown:
            raise InputError(f"{source}: unknown config section(s) {sorted(unknown)}")
        kwargs: dict[str, Any] = {"name": str(data.get("name", "custom"))}
        for key, klass in sections.items():
            values = dict(data.get(key, {}))
            if key == "loss":
                values = _migrate_loss(values, source)
            known = {f.name for f in dataclasses.fields(klass)}
            bad = set(values) - known
            if bad:
                raise InputError(f"{source}: unknown key(s) {sorted(bad)} in [{key}]")
            kwargs[key] = klass(**values)
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        """Check value ranges and consistency; one-line :class:`InputError` on failure."""
        m, t, lo = self.model, self.train, self.loss
        for section in ("model", "loss", "train", "data"):
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                if isinstance(value, float) and not math.isfinite(value):
                    # NaN passes every range check below (all comparisons are false).
                    raise InputError(f"{source}: {section}.{key} must be a finite number, got {value}")
        n = len(m.conv_channels)
        if n == 0 or len(m.conv_kernels) != n or len(m.conv_pools) != n:
            raise InputError(
                f"{source}: model.conv_channels, conv_kernels and conv_pools must have the same "
                f"non-zero length (got {n}, {len(m.conv_kernels)}, {len(m.conv_pools)})"
            )
        for name, pairs in (("conv_kernels", m.conv_kernels), ("conv_pools", m.conv_pools)):
            for p in pairs:
                if len(p) != 2 or min(p) < 1:
                    raise InputError(f"{source}: model.{name} entries must be [time, freq] >= 1, got {p}")
        for name in ("linear_dim", "lstm_hidden", "lstm_layers", "attention_dim", "embedding_dim"):
            if getattr(m, name) < 1:
                raise InputError(f"{source}: model.{name} must be >= 1")
        if not 0.0 <= m.dropout < 1.0:
            raise InputError(f"{source}: model.dropout must be in [0, 1)")
        try:
            parse_aux(lo.aux)
        except InputError as exc:
            raise InputError(f"{source}: loss.aux must be one of none, {', '.join(aux_names())} or several joined "
                             f"by + ({exc})") from None
        for name, weight in lo.weights.items():
            if not _is_number(weight) or not math.isfinite(weight) or weight < 0:
                raise InputError(f"{source}: loss.weights.{name} must be a finite number >= 0, got {weight!r}")
        if t.optimizer not in ("adam", "adamw", "sgd"):
            raise InputError(f"{source}: train.optimizer must be adam, adamw or sgd, got {t.optimizer!r}")
        if t.lr <= 0:
            raise InputError(f"{source}: train.lr must be > 0")
        if t.batch_size < 1 or t.eval_batch_size < 1:
            raise InputError(f"{source}: train.batch_size and eval_batch_size must be >= 1")
        if t.epochs < 1:
            raise InputError(f"{source}: train.epochs must be >= 1")
        if t.steps_per_epoch < 0 or t.patience < 0 or t.num_workers < 0:
            raise InputError(f"{source}: train.steps_per_epoch, patience and num_workers must be >= 0")
        if t.amp not in ("auto", "bf16", "fp16", "off"):
            raise InputError(f"{source}: train.amp must be auto, bf16, fp16 or off, got {t.amp!r}")
        if t.cache not in ("none", "device"):
            raise InputError(f"{source}: train.cache must be none or device, got {t.cache!r}")
        if t.cache_dtype not in ("float32", "bfloat16"):
            raise InputError(f"{source}: train.cache_dtype must be float32 or bfloat16, got {t.cache_dtype!r}")
        if t.compile not in COMPILE_MODES:
            raise InputError(f"{source}: train.compile must be one of {', '.join(COMPILE_MODES)}, got {t.compile!r}")
        if t.aggregate not in ("mean", "max"):
            raise InputError(f"{source}: train.aggregate must be mean or max, got {t.aggregate!r}")
        from .selection import RULES

        if t.selection not in RULES:
            raise InputError(f"{source}: train.selection must be one of {', '.join(RULES)}, got {t.selection!r}")


def preset_names() -> list[str]:
    """Names of the shipped configs (``sertrain/configs/*.toml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def default_config_name(device_type: str) -> str:
    """``paper`` on CUDA (where it trains in seconds per epoch), ``cpu-small`` elsewhere."""
    return "paper" if device_type == "cuda" else "cpu-small"


def load_config(name_or_path: str) -> Config:
    """Load a shipped preset by name (``paper``, ``cpu-small``) or a TOML file by path.

    Keys missing from the file take the dataclass defaults (the method's values).
    """
    path = Path(name_or_path)
    if name_or_path in preset_names():
        path = CONFIG_DIR / f"{name_or_path}.toml"
    elif not path.is_file():
        raise InputError(
            f"config {name_or_path!r} is neither a preset ({', '.join(preset_names())}) nor a file"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read config ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: invalid TOML ({exc})") from None
    data.setdefault("name", path.stem)
    return Config.from_dict(data, source=str(path))


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as a TOML value (``1e-3``, ``[16, 32]``, ``true``), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``cfg`` with dotted-key values laid over it (``{"train.lr": 1e-3}``).

    Values are coerced to the type of the current value (an int given for a float field
    becomes a float); unknown keys raise :class:`InputError` naming the key.
    """
    data = cfg.to_dict()
    for key, value in overrides.items():
        if value is None:
            continue
        parts = canonical_key(key).split(".")
        if len(parts) not in (2, 3) or parts[0] not in data or not isinstance(data[parts[0]], dict):
            raise InputError(f"unknown config key {key!r} (use section.key, e.g. train.lr)")
        section, name = parts[:2]
        if name not in data[section]:
            raise InputError(f"unknown config key {key!r}")
        current = data[section][name]
        if isinstance(current, dict):  # loss.weights: per-task keys, or a table merged in
            table = parse_value(value) if isinstance(value, str) and len(parts) == 2 else value
            if len(parts) == 3:
                table = {parts[2]: value}
            if not isinstance(table, dict):
                raise InputError(f"{key}: expected a table like {{gender = 0.3}}, got {value!r}")
            for sub, v in table.items():
                if sub not in current:
                    raise InputError(f"unknown config key {section}.{name}.{sub} (tasks: {', '.join(current)})")
                current[sub] = _coerce(f"{section}.{name}.{sub}", v, current[sub])
        elif len(parts) == 3:
            raise InputError(f"unknown config key {key!r}")
        else:
            data[section][name] = _coerce(key, value, current)
    return Config.from_dict(data, source="command line")


def canonical_key(key: str) -> str:
    """``loss.w_<task>`` (the old spelling, still used by protocol files) -> ``loss.weights.<task>``."""
    section, _, name = key.partition(".")
    if section == "loss" and name.startswith(_OLD_WEIGHT_PREFIX) and name[len(_OLD_WEIGHT_PREFIX):] in TASKS:
        return f"loss.weights.{name[len(_OLD_WEIGHT_PREFIX):]}"
    return key


def _coerce(key: str, value: Any, current: Any) -> Any:
    if isinstance(value, str) and not isinstance(current, str):
        value = parse_value(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise InputError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(current, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(current, str):
        return str(value)
    if isinstance(current, list) and isinstance(value, list):
        return value
    raise InputError(f"{key}: expected a value like {current!r}, got {value!r}")
