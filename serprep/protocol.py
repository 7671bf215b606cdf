"""Published evaluation protocols, read from versioned TOML files (``serprep/protocols/``).

A *protocol* names everything a reported number depends on: the corpus, class set, subset
and fold scheme (with its validation rule), the store's build options, and the training
side's config preset, overrides, seeds and model-selection rule. Each is one TOML file,
shipped as package data (read with :mod:`importlib.resources`, so it works from a wheel)
or given as a path; the SHA-256 of the file's bytes identifies it in stores and results.

Both packages read protocols here: ``serprep build --protocol`` builds the store a protocol
asks for (and records it), ``sertrain cv --protocol`` runs it and checks the store with
:meth:`Protocol.check_store`.

Every choice has a source. ``[sources]`` holds one entry per choice (``store.<key>``,
``run.config``, ``run.seeds``, ``run.set.<section.key>``); an entry starting with ``ours:``
marks a choice the publication does not pin down (:meth:`Protocol.unconfirmed`). A file
with a choice but no source is refused, so a protocol cannot quietly carry an undocumented
decision. The format is documented field by field in ``docs/protocols.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .errors import SerprepError

if TYPE_CHECKING:  # only for annotations: importing the build here would be a cycle
    from .build import BuildOptions
    from .labels import CorpusSpec

__all__ = [
    "Protocol",
    "ProtocolError",
    "ProtocolMismatch",
    "load_protocol",
    "protocol_names",
    "BUILD_FLAGS",
]


class ProtocolError(SerprepError):
    """A protocol file is missing, unreadable or invalid (one line naming the file and key)."""


class ProtocolMismatch(SerprepError):
    """A store, or a build's options, do not match a protocol (one line saying what differs)."""


#: Keys of ``[protocol]``: required, then optional (with their defaults).
PROTOCOL_REQUIRED = ("name", "version", "title", "description", "reference")
PROTOCOL_OPTIONAL = ("notes", "published")
#: Keys of ``[store]``, all required: the build options a protocol fixes.
STORE_KEYS = ("corpus", "classes", "subset", "scheme", "n_mels", "segment_frames", "segment_hop", "augment", "balance")
#: Keys of ``[run]``: ``set`` is optional (a protocol may use its config preset unchanged).
RUN_KEYS = ("config", "seeds", "set")
#: ``[run.set]`` keys that other fields own: one place per choice, so they cannot disagree.
RUN_SET_OWNED = {"data.scheme": "store.scheme", "train.seed": "run.seeds"}
#: The ``serprep build`` flag of each build option a protocol fixes (for messages).
BUILD_FLAGS = {
    "classes": "--classes",
    "subset": "--subset",
    "n_mels": "--n-mels",
    "segment_frames": "--segment-frames",
    "segment_hop": "--segment-hop",
    "augment": "--augment",
    "balance": "--balance",
}
#: Prefix of a source entry for a choice the publication does not pin down.
OURS = "ours:"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CONFIG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
_BUILTIN = "built-in"


@dataclass(frozen=True)
class Protocol:
    """One loaded, validated protocol file. Treat ``run_set`` and ``sources`` as read-only."""

    name: str
    version: str
    sha256: str  # of the file's bytes: what identifies the protocol in stores and results
    title: str
    description: str
    reference: str
    source: str  # "built-in" or the file path it was read from
    corpus: str
    classes: str
    subset: str
    scheme: str
    n_mels: int
    segment_frames: int
    segment_hop: int
    augment: str  # "" = no augmentation, else a bundled preset name
    balance: bool
    config: str
    seeds: tuple[int, ...]
    run_set: dict[str, Any] = field(hash=False)
    sources: dict[str, str] = field(hash=False)
    notes: tuple[str, ...] = ()
    #: The published result the protocol reproduces, as text ("" when there is none).
    published: str = ""

    # -- identity ----------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """What a store or a result records: ``{"name", "version", "sha256"}``."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @property
    def built_in(self) -> bool:
        """True for a protocol shipped with serprep (``source == "built-in"``)."""
        return self.source == _BUILTIN

    def unconfirmed(self) -> list[str]:
        """Keys whose source starts with ``ours:`` (choices the publication does not pin down),
        in file order: store keys, ``run.config``, ``run.seeds``, then ``run.set.*``."""
        return [key for key, text in self.sources.items() if _is_ours(text)]

    # -- the data side -----------------------------------------------------------------------
    def build_command(self, root: str = "ROOT", out: str = "STORE.h5") -> str:
        """The ``serprep build`` command line that makes this protocol's store."""
        ref = self.name if self.built_in else self.source
        return (f"serprep build {self.corpus} --root {shlex.quote(str(root))} --protocol {shlex.quote(ref)} "
                f"--out {shlex.quote(str(out))}")

    def build_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`serprep.build.BuildOptions` that this protocol fixes
        (``protocol=self`` included), for building in-process."""
        from .config import FeatureConfig, SegmentConfig

        return {
            "classes": self.classes,
            "subset": self.subset,
            "features": FeatureConfig(n_mels=self.n_mels),
            # The CLI's rule for the densest balancing hop, so both paths build the same store.
            "segments": SegmentConfig(frames=self.segment_frames, hop=self.segment_hop,
                                      min_hop=max(1, min(50, self.segment_hop))),
            "augment": self.augment or None,
            "balance": self.balance,
            "protocol": self,
        }

    def build_settings(self, corpus: str, given: Mapping[str, Any], out: str = "STORE.h5") -> dict[str, Any]:
        """Values of the build options this protocol fixes, for ``serprep build --protocol``.

        ``given`` holds the options the user gave explicitly (keys of :data:`BUILD_FLAGS`);
        one that contradicts the protocol is refused in one line naming the option and the
        protocol's value. An explicit option equal to the protocol's value is accepted.
        ``out`` only fills in the command suggested when the corpus is another.
        """
        if corpus != self.corpus:
            raise ProtocolMismatch(
                f"protocol {self.name} is defined on corpus {self.corpus}, not {corpus}: "
                f"{self.build_command(out=out)}"
            )
        wanted = self._build_values()
        for key, value in given.items():
            if key not in BUILD_FLAGS:
                raise KeyError(key)  # a programming error, not a user one
            if _normalise(key, value) != wanted[key]:
                flag = _flag_text(key, value)
                raise ProtocolMismatch(
                    f"{flag} conflicts with protocol {self.name} ({key} = {_toml_text(wanted[key])}); "
                    "leave the option out, or build without --protocol"
                )
        return {key: (wanted[key] or None) if key == "augment" else wanted[key] for key in BUILD_FLAGS}

    def check_build_options(self, opts: "BuildOptions", spec: "CorpusSpec") -> None:
        """Refuse build options that do not make this protocol's store, so that a store never
        records a protocol it was not built for (the CLI sets them; in-process callers use
        :meth:`build_options`)."""
        diffs = self._differences(
            corpus=opts.corpus, classes=opts.classes or spec.default_classes,
            subset=opts.subset or spec.default_subset, schemes=list(spec.folds), n_mels=opts.features.n_mels,
            frames=opts.segments.frames, hop=opts.segments.hop, augment=_augment_record(opts.augment),
            balance=opts.balance,
        )
        if diffs:
            details = "; ".join(f"{what} {have}, protocol {self.name}: {need}" for what, have, need in diffs)
            raise ProtocolMismatch(f"build options do not make the store of protocol {self.name} ({details})")

    def store_mismatches(self, reader: Any) -> list[str]:
        """What differs between a store (a :class:`serprep.store.StoreReader`) and ``[store]``,
        each like ``"classes 4class-merged (protocol acrnn: 4class)"``; empty if it fits."""
        return [f"{what} {have} (protocol {self.name}: {need})" for what, have, need in self._store_differences(reader)]

    def check_store(self, reader: Any, name: str) -> None:
        """Raise :class:`ProtocolMismatch` (one line, with the command that builds the right
        store) unless ``reader`` holds this protocol's store; ``name`` is how to call the store."""
        diffs = self._store_differences(reader)
        if not diffs:
            return
        path = Path(name)
        suggested = path.with_name(f"{path.stem}-{self.name}{path.suffix or '.h5'}")
        details = "; ".join(f"{what} {have}, needs {need}" for what, have, need in diffs)
        raise ProtocolMismatch(f"{name} was not built for protocol {self.name} ({details}): "
                               f"{self.build_command(out=str(suggested))}")

    # -- internals ---------------------------------------------------------------------------
    def _build_values(self) -> dict[str, Any]:
        return {"classes": self.classes, "subset": self.subset, "n_mels": self.n_mels,
                "segment_frames": self.segment_frames, "segment_hop": self.segment_hop,
                "augment": self.augment, "balance": self.balance}

    def _store_differences(self, reader: Any) -> list[tuple[str, str, str]]:
        build = reader.build
        return self._differences(
            corpus=reader.corpus, classes=build.get("classes"), subset=build.get("subset"),
            schemes=reader.fold_schemes(), n_mels=reader.feature_config.n_mels,
            frames=reader.segment_config.frames, hop=reader.segment_config.hop, augment=build.get("augment"),
            balance=bool(build.get("balance")),
        )

    def _differences(self, *, corpus: str, classes: str | None, subset: str | None, schemes: list[str],
                     n_mels: int, frames: int, hop: int, augment: Any, balance: bool) -> list[tuple[str, str, str]]:
        """``(what, have, need)`` for every build option that is not the protocol's."""
        out: list[tuple[str, str, str]] = []

        def differ(what: str, have: Any, need: Any) -> None:
            if have != need:
                out.append((what, str(have), str(need)))

        differ("corpus", corpus, self.corpus)
        differ("classes", classes, self.classes)
        differ("subset", subset, self.subset)
        if self.scheme not in schemes:
            out.append(("fold schemes", ", ".join(schemes) or "none", self.scheme))
        differ("n_mels", n_mels, self.n_mels)
        differ("segment frames", frames, self.segment_frames)
        differ("segment hop", hop, self.segment_hop)
        have_aug = augment.get("preset") if isinstance(augment, dict) else None
        differ("augment", have_aug or "none", self.augment or "none")
        if have_aug and have_aug == self.augment and not _same_preset(augment.get("spec"), self.augment):
            # Same name, other transforms: the bundled preset changed since (or was edited).
            out.append(("augment", f"{have_aug} (other transforms)", f"{self.augment} as bundled"))
        differ("balance", "on" if balance else "off", "on" if self.balance else "off")
        return out


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _builtin_dir() -> Any:
    """The bundled protocols folder (a Traversable: a real folder, or inside a zip/wheel)."""
    return resources.files("serprep").joinpath("protocols")


def protocol_names() -> list[str]:
    """Names of the built-in protocols (``serprep/protocols/*.toml``), sorted."""
    folder = _builtin_dir()
    if not folder.is_dir():
        return []
    return sorted(entry.name[: -len(".toml")] for entry in folder.iterdir() if entry.name.endswith(".toml"))


def _looks_like_path(name_or_path: str) -> bool:
    # Only a .toml suffix or a folder separator makes it a file: a stray file named like a
    # built-in protocol in the working folder must not replace it.
    return name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path


def load_protocol(name_or_path: str) -> Protocol:
    """A built-in protocol by name, or a protocol TOML file by path (``*.toml`` or containing
    a ``/``). Raises :class:`ProtocolError`, one line naming the file and the key."""
    text = str(name_or_path)
    if _looks_like_path(text):
        path = Path(text).expanduser()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ProtocolError(f"{path}: protocol file not found") from None
        except IsADirectoryError:
            raise ProtocolError(f"{path}: is a directory, not a protocol file") from None
        except OSError as exc:
            raise ProtocolError(f"{path}: cannot read protocol file ({exc.strerror or exc})") from None
        protocol = _parse(data, where=str(path), source=str(path))
        _refuse_builtin_name(protocol, str(path))
        return protocol
    names = protocol_names()
    if text not in names:
        raise ProtocolError(f"unknown protocol {text!r}; built-in: {', '.join(names) or 'none'} "
                            "(or give the path of a .toml protocol file)")
    data = _builtin_dir().joinpath(f"{text}.toml").read_bytes()
    protocol = _parse(data, where=f"serprep/protocols/{text}.toml", source=_BUILTIN)
    if protocol.name != text:
        raise ProtocolError(f"serprep/protocols/{text}.toml: protocol.name: is {protocol.name!r}; "
                            f"a built-in protocol's name must be its file name ({text!r})")
    return protocol


def _refuse_builtin_name(protocol: Protocol, where: str) -> None:
    """A file that reuses a built-in protocol's name must be that protocol, byte for byte:
    an edited copy reported as "acrnn 1.0" would pass for the published protocol."""
    if protocol.name not in protocol_names():
        return
    builtin_sha = hashlib.sha256(_builtin_dir().joinpath(f"{protocol.name}.toml").read_bytes()).hexdigest()
    if builtin_sha != protocol.sha256:
        raise ProtocolError(f"{where}: protocol.name: {protocol.name!r} is a built-in protocol; "
                            "a changed copy needs a name of its own")


def _parse(data: bytes, where: str, source: str) -> Protocol:
    """Validate a protocol file's content; every error is one line ``WHERE: KEY: problem``."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError(f"{where}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{where}: invalid TOML ({_one_line(exc)})") from None

    def fail(key: str, problem: str) -> ProtocolError:
        return ProtocolError(f"{where}: {key}: {problem}")

    for section in doc:
        if section not in ("protocol", "store", "run", "sources"):
            raise fail(section, "unknown section or key (a protocol file has [protocol], [store], [run], [sources])")
    head = _table(doc, "protocol", fail)
    store = _table(doc, "store", fail)
    run = _table(doc, "run", fail)
    sources_table = _table(doc, "sources", fail)

    # [protocol]
    _no_unknown(head, PROTOCOL_REQUIRED + PROTOCOL_OPTIONAL, "protocol", fail)
    meta = {key: _string(head, key, "protocol", fail) for key in PROTOCOL_REQUIRED}
    if not _NAME_RE.match(meta["name"]):
        raise fail("protocol.name", f"{meta['name']!r} must be lower-case letters, digits, '.', '_' or '-'")
    if not _VERSION_RE.match(meta["version"]):
        raise fail("protocol.version", f"{meta['version']!r} must look like \"1.0\"")
    for key in ("title", "reference"):
        if not meta[key].strip():
            raise fail(f"protocol.{key}", "must not be empty")
    notes = head.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) and n.strip() for n in notes):
        raise fail("protocol.notes", "must be a list of non-empty strings")
    published = head.get("published", "")
    if not isinstance(published, str):
        raise fail("protocol.published", f"must be a string, got {published!r}")

    # [store]
    _no_unknown(store, STORE_KEYS, "store", fail)
    for key in STORE_KEYS:
        if key not in store:
            raise fail(f"store.{key}", "missing (a protocol fixes every build option of its store)")
    values = _store_values(store, fail)

    # [run]
    _no_unknown(run, RUN_KEYS, "run", fail)
    config = run.get("config")
    if not isinstance(config, str) or not _NAME_RE.match(config.lower()) or config.endswith(".toml"):
        raise fail("run.config", f"must name a sertrain config preset (e.g. \"paper\"), got {config!r}")
    seeds = run.get("seeds")
    if (not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise fail("run.seeds", f"must be a non-empty list of distinct non-negative integers, got {seeds!r}")
    run_set = _run_set(run.get("set", {}), fail)

    # [sources]: one entry per choice, and nothing else.
    sources = _flatten(sources_table, "")
    required = [f"store.{k}" for k in STORE_KEYS] + ["run.config", "run.seeds"] + [f"run.set.{k}" for k in run_set]
    for key in required:
        if key not in sources:
            raise fail("sources", f"no entry for '{key}' (every choice needs its source; begin it with "
                                  f"'{OURS}' where the publication does not pin it down)")
    for key, text in sources.items():
        if key not in required:
            raise fail(f"sources.'{key}'", "names no choice of this protocol (store.<key>, run.config, "
                                           "run.seeds or run.set.<section.key>)")
        if not isinstance(text, str) or not text.strip():
            raise fail(f"sources.'{key}'", "must be a non-empty string")

    return Protocol(
        name=meta["name"], version=meta["version"], sha256=hashlib.sha256(data).hexdigest(), title=meta["title"],
        description=meta["description"], reference=meta["reference"], source=source, **values,
        config=config, seeds=tuple(int(s) for s in seeds), run_set=run_set,
        sources={key: sources[key].strip() for key in required}, notes=tuple(n.strip() for n in notes),
        published=published.strip(),
    )


def _store_values(store: dict[str, Any], fail: Any) -> dict[str, Any]:
    """The validated ``[store]`` values, checked against the corpus' label manifest."""
    from .corpora import corpus_names
    from .labels import load_spec

    corpus = store["corpus"]
    if corpus not in corpus_names():
        raise fail("store.corpus", f"unknown corpus {corpus!r} (known: {', '.join(corpus_names())})")
    spec = load_spec(corpus)
    manifest = f"{spec.path.name} v{spec.version}"
    for key, table, what in (("classes", spec.classes, "class set"), ("subset", spec.subsets, "subset"),
                             ("scheme", spec.folds, "fold scheme")):
        value = store[key]
        if not isinstance(value, str) or value not in table:
            raise fail(f"store.{key}", f"{manifest} has no {what} {value!r} (it has {', '.join(table)})")
    for key in ("n_mels", "segment_frames", "segment_hop"):
        if not _is_int(store[key]) or store[key] <= 0:
            raise fail(f"store.{key}", f"must be a positive integer, got {store[key]!r}")
    if store["segment_hop"] > store["segment_frames"]:
        raise fail("store.segment_hop", f"{store['segment_hop']} is longer than segment_frames "
                                        f"{store['segment_frames']} (frames between windows would be lost)")
    _check_n_mels(store["n_mels"], fail)
    augment = store["augment"]
    if not isinstance(augment, str):
        raise fail("store.augment", f"must be a string (\"\" for none), got {augment!r}")
    if augment:
        from .augment import available_presets

        if "/" in augment or "\\" in augment or augment.endswith((".toml", ".yaml", ".yml")):
            raise fail("store.augment", f"{augment!r}: must name a bundled preset, not a file "
                                        "(a protocol must not depend on a file only one machine has)")
        if augment not in available_presets():
            raise fail("store.augment", f"no bundled augmentation preset {augment!r} "
                                        f"(bundled: {', '.join(available_presets()) or 'none'})")
    if not isinstance(store["balance"], bool):
        raise fail("store.balance", f"must be true or false, got {store['balance']!r}")
    return {key: store[key] for key in STORE_KEYS}


def _check_n_mels(n_mels: int, fail: Any) -> None:
    """Refuse a band count the feature extractor would refuse at build time (empty filters)."""
    from .config import FeatureConfig
    from .features import check_feature_config

    try:
        check_feature_config(FeatureConfig(n_mels=n_mels))
    except SerprepError as exc:
        raise fail("store.n_mels", str(exc).replace(f"--n-mels {n_mels}: ", "")) from None


def _run_set(table: Any, fail: Any) -> dict[str, Any]:
    """``[run.set]`` as ``{"section.key": value}``: quoted dotted keys or nested tables alike."""
    if not isinstance(table, dict):
        raise fail("run.set", "must be a table of \"section.key\" = value")
    out = _flatten(table, "")
    for key, value in out.items():
        if not _CONFIG_KEY_RE.match(key):
            raise fail(f"run.set.{key}", "keys are sertrain config keys \"section.key\" (e.g. \"train.lr\")")
        if key in RUN_SET_OWNED:
            raise fail(f"run.set.{key}", f"is given by {RUN_SET_OWNED[key]}; set it there only")
        if not _plain_value(value):
            raise fail(f"run.set.{key}", f"must be a string, number, boolean or a list of them, got {value!r}")
    return out


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _table(doc: dict[str, Any], name: str, fail: Any) -> dict[str, Any]:
    if name not in doc:
        raise fail(f"[{name}]", "missing section")
    if not isinstance(doc[name], dict):
        raise fail(name, "must be a table ([" + name + "])")
    return doc[name]


def _no_unknown(table: dict[str, Any], known: tuple[str, ...], section: str, fail: Any) -> None:
    for key in table:
        if key not in known:
            raise fail(f"{section}.{key}", f"unknown key (known: {', '.join(known)})")


def _string(table: dict[str, Any], key: str, section: str, fail: Any) -> str:
    if key not in table:
        raise fail(f"{section}.{key}", "missing")
    value = table[key]
    if not isinstance(value, str):
        hint = " (quote it)" if isinstance(value, (int, float)) else ""
        raise fail(f"{section}.{key}", f"must be a string, got {value!r}{hint}")
    return value


def _flatten(table: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}, "c.d": 2}`` -> ``{"a.b": 1, "c.d": 2}`` (file order kept)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_value(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, list):
        return all(_plain_value(v) for v in value)
    return False


def _is_ours(text: str) -> bool:
    return text.strip().lower().startswith(OURS)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _normalise(key: str, value: Any) -> Any:
    """A command-line value in the protocol's terms (``--augment`` absent or "" = none)."""
    if key == "augment":
        return value or ""
    return value


def _flag_text(key: str, value: Any) -> str:
    if key == "balance":
        return "--balance" if value else "--no-balance"
    if key == "augment" and not value:
        return "--augment ''"
    return f"{BUILD_FLAGS[key]} {value}"


def _toml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value) if value == "" else value
    return str(value)


def _augment_record(augment: str | None) -> dict[str, Any] | None:
    """The ``augment`` entry a build with ``--augment augment`` records (name only)."""
    if not augment:
        return None
    name = Path(augment).name if ("/" in augment or "\\" in augment or augment.endswith(
        (".toml", ".yaml", ".yml"))) else augment
    return {"preset": name}


def _same_preset(spec: Any, name: str) -> bool:
    """Whether a store's recorded preset ``spec`` is the bundled preset ``name`` as it is now
    (``spec`` None: nothing recorded to compare, e.g. build options before the build)."""
    if spec is None:
        return True
    from .augment import load_preset

    try:
        current = json.loads(json.dumps(load_preset(name)))
    except (SerprepError, ValueError):
        return False
    return bool(current == spec)
