"""Versioned label maps, subsets and fold definitions, read from ``manifests/<corpus>.toml``."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import SerprepError
from .packaged import manifests_dir

@dataclass(frozen=True)
class FoldDefinition:
    """Speakers of each part of one fold; training = every other speaker unless ``train`` says."""

    test: tuple[str, ...]
    validation: tuple[str, ...]
    train: tuple[str, ...] | None = None
    label: str = ""  # what a fold is called when it is not just a number ("Test1")


@dataclass
class CorpusSpec:
    """The content of one corpus manifest file."""

    corpus: str
    version: str
    path: Path
    classes: dict[str, dict[str, Any]]
    subsets: dict[str, dict[str, Any]]
    folds: dict[str, dict[str, Any]]
    default_classes: str
    default_subset: str
    default_folds: str
    #: Every label code the corpus documents; anything else is reported as a warning.
    codes: tuple[str, ...] = ()

    def class_map(self, name: str) -> dict[str, str]:
        if name not in self.classes:
            raise SerprepError(f"{self.path.name}: unknown class set {name!r}; choose from {', '.join(self.classes)}")
        return dict(self.classes[name]["map"])

    def class_names(self, name: str) -> list[str]:
        """Class vocabulary in a stable (sorted) order."""
        return sorted(set(self.class_map(name).values()))

    def subset_filter(self, name: str) -> tuple[str | None, set[str] | None]:
        if name not in self.subsets:
            raise SerprepError(f"{self.path.name}: unknown subset {name!r}; choose from {', '.join(self.subsets)}")
        entry = self.subsets[name]
        if "column" not in entry:
            return None, None
        return entry["column"], set(entry["values"])

    def fold_definitions(self, scheme: str, speakers: Mapping[str, str] | None = None,
                         partitions: Mapping[str, set[str]] | None = None) -> list[FoldDefinition]:
        """The folds of ``scheme``. Generated schemes need the present ``speakers`` (speaker ->
        gender) and, for partition schemes, each speaker's partitions (:mod:`serprep.folds`)."""
        from .folds import fold_kind, generate_folds

        if scheme not in self.folds:
            raise SerprepError(f"{self.path.name}: unknown fold scheme {scheme!r}; choose from {', '.join(self.folds)}")
        entry = self.folds[scheme]
        if fold_kind(entry) != "table" and speakers is None:
            raise SerprepError(f"{self.path.name}: fold scheme {scheme!r} is generated from the corpus' speakers")
        return generate_folds(f"{self.path.name} [folds.{scheme}]", entry, speakers or {}, partitions)

    def partition_column(self, scheme: str) -> str | None:
        """The manifest column a partition scheme splits on (``None`` for speaker schemes)."""
        entry = self.folds[scheme]
        return str(entry["column"]) if entry.get("generate") == "partition" else None


def load_spec(corpus: str) -> CorpusSpec:
    """Read and validate the manifest of ``corpus``."""
    from .corpora import corpus_info

    path = manifests_dir() / corpus_info(corpus).manifest
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SerprepError(f"{path}: cannot read label manifest ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SerprepError(f"{path}: invalid TOML ({exc})") from None
    try:
        spec = CorpusSpec(
            corpus=data["corpus"],
            version=str(data["version"]),
            path=path,
            classes=data["classes"],
            subsets=data["subsets"],
            folds=data["folds"],
            default_classes=data["default_classes"],
            default_subset=data["default_subset"],
            default_folds=data["default_folds"],
            codes=tuple(str(c) for c in data["codes"]),
        )
    except KeyError as exc:
        raise SerprepError(f"{path}: missing key {exc.args[0]!r}") from None
    for name, entry in spec.classes.items():
        unknown = sorted(set(entry["map"]) - set(spec.codes))
        if unknown:
            raise SerprepError(f"{path}: class set {name!r} maps codes {unknown} that are not in `codes`")
    from .folds import check_scheme

    for scheme, entry in spec.folds.items():
        check_scheme(f"{path} [folds.{scheme}]", entry)
    for key, names in (("default_classes", spec.classes), ("default_subset", spec.subsets), ("default_folds", spec.folds)):
        if getattr(spec, key) not in names:
            raise SerprepError(f"{path}: {key} = {getattr(spec, key)!r} is not one of {', '.join(names)}")
    return spec
