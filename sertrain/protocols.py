"""Running a named protocol (``sertrain cv --protocol NAME``): its config, seeds and store
check, and the record of every way a run deviates from it.

The protocol files themselves (``serprep/protocols/*.toml``) are read by
:mod:`serprep.protocol`, which both packages share. A run under a protocol uses the
protocol's config preset, its ``[run.set]`` values and fold scheme, and its seeds; anything
given on the command line on top is allowed but recorded as a *deviation* (key, protocol
value, run value) in every result file and in the table title, so a number is never
presented as the protocol's when it is not.
"""

from __future__ import annotations

from typing import Any, Sequence

from .config import Config, apply_overrides, canonical_key, load_config

#: Keys that change how a run reads data or how fast it goes, not its numbers (train.compile:
#: rounding and dropout draws, as any GPU run's kernel choice does; README, "Training speed").
NOT_DEVIATIONS = ("train.num_workers", "train.eval_batch_size", "train.cache", "train.cache_dtype", "train.compile")


def protocol_overrides(protocol: Any) -> dict[str, Any]:
    """The config values a protocol fixes: its ``[run.set]`` and its fold scheme."""
    return {**protocol.run_set, "data.scheme": protocol.scheme}


def protocol_config(protocol: Any) -> Config:
    """The config exactly as the protocol states it."""
    return apply_overrides(load_config(protocol.config), protocol_overrides(protocol))


def run_config(protocol: Any, config_name: str | None, overrides: dict[str, Any]) -> Config:
    """The config of a run under ``protocol``: ``config_name`` (default: the protocol's preset),
    then the protocol's values, then the explicit command-line ``overrides``."""
    base = load_config(config_name or protocol.config)
    return apply_overrides(base, {**protocol_overrides(protocol), **overrides})


def deviations(protocol: Any, cfg: Config, seeds: Sequence[int], aux_settings: Sequence[str] | None = None,
               folds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Every way a run differs from ``protocol``: another config preset, config keys, the
    seeds, an auxiliary-task grid, a subset of folds. Each item is ``{"key", "protocol", "run"}``."""
    ours = protocol_config(protocol).flat()
    theirs = cfg.flat()
    out = [{"key": "config", "protocol": protocol.config, "run": cfg.name}] if cfg.name != protocol.config else []
    out += [{"key": k, "protocol": v, "run": theirs.get(k)} for k, v in ours.items()
            if k not in NOT_DEVIATIONS and theirs.get(k) != v and not (aux_settings and k == "loss.aux")]
    if aux_settings and any(a != ours["loss.aux"] for a in aux_settings):
        out.append({"key": "loss.aux", "protocol": ours["loss.aux"], "run": ",".join(aux_settings)})
    if list(seeds) != list(protocol.seeds):
        out.append({"key": "seeds", "protocol": list(protocol.seeds), "run": list(seeds)})
    if folds:
        out.append({"key": "folds", "protocol": "all", "run": list(folds)})
    return out


def seeds_for(protocol: Any | None, n_seeds: int | None, base_seed: int) -> list[int]:
    """The seeds of a run: the protocol's (its first ``n_seeds`` when fewer are asked for, more
    continuing from its last), else ``base_seed .. base_seed + n_seeds - 1``."""
    if protocol is None:
        return list(range(base_seed, base_seed + (n_seeds or 1)))
    listed = list(protocol.seeds)
    if n_seeds is None or n_seeds == len(listed):
        return listed
    if n_seeds < len(listed):
        return listed[:n_seeds]
    return listed + list(range(max(listed) + 1, max(listed) + 1 + n_seeds - len(listed)))


def provenance(protocol: Any | None, devs: list[dict[str, Any]]) -> dict[str, Any]:
    """What result files record about the protocol: name, version, sha256, title, reference,
    the choices the publication does not pin down, and the run's deviations."""
    if protocol is None:
        return {"protocol": None, "deviations": []}
    return {
        "protocol": {**protocol.record(), "title": protocol.title, "reference": protocol.reference,
                     "unconfirmed": protocol.unconfirmed()},
        "deviations": devs,
    }


def deviation_text(devs: list[dict[str, Any]], explicit: Sequence[str] = (), limit: int = 6) -> str:
    """``config 'paper' -> 'cpu-small' (12 values), train.epochs 50 -> 2, seeds [0, 1, 2, 3, 4] -> [0, 1]``:
    the preset and the options given explicitly first; values that only follow from another
    preset are counted, not listed (metrics.json lists every one)."""
    explicit = [canonical_key(k) for k in explicit]  # loss.w_gender is loss.weights.gender
    named = {d["key"] for d in devs if d["key"] in ("config", "seeds", "folds", "loss.aux") or d["key"] in explicit}
    from_preset = [d for d in devs if d["key"] not in named]
    items = []
    for d in devs:
        if d["key"] == "config":
            items.append(f"config {d['protocol']!r} -> {d['run']!r} ({len(from_preset)} values)")
        elif d["key"] in named:
            items.append(f"{d['key']} {d['protocol']!r} -> {d['run']!r}")
    if not any(d["key"] == "config" for d in devs):
        items += [f"{d['key']} {d['protocol']!r} -> {d['run']!r}" for d in from_preset]
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
