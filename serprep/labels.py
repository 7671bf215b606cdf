"""Versioned label maps, subsets and fold definitions, read from ``manifests/<corpus>.toml``."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SerprepError

MANIFEST_FILES = {"iemocap": "iemocap.toml", "msp-improv": "msp_improv.toml"}


def manifests_dir() -> Path:
    """The ``manifests/`` folder (``$SERPREP_MANIFESTS`` overrides the one beside the package)."""
    env = os.environ.get("SERPREP_MANIFESTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "manifests"


@dataclass(frozen=True)
class FoldDefinition:
    """Speakers of each part of one fold; training = every other speaker."""

    test: tuple[str, ...]
    validation: tuple[str, ...]


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

    def fold_definitions(self, scheme: str) -> list[FoldDefinition]:
        if scheme not in self.folds:
            raise SerprepError(f"{self.path.name}: unknown fold scheme {scheme!r}; choose from {', '.join(self.folds)}")
        return [
            FoldDefinition(tuple(f["test"]), tuple(f.get("validation", ())))
            for f in self.folds[scheme]["folds"]
        ]


def load_spec(corpus: str) -> CorpusSpec:
    """Read and validate the manifest of ``corpus``."""
    if corpus not in MANIFEST_FILES:
        raise SerprepError(f"no label manifest for corpus {corpus!r}")
    path = manifests_dir() / MANIFEST_FILES[corpus]
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
    for scheme, entry in spec.folds.items():
        for i, fold in enumerate(entry["folds"], start=1):
            overlap = set(fold["test"]) & set(fold.get("validation", ()))
            if overlap:
                raise SerprepError(f"{path}: fold {scheme}/{i} puts {sorted(overlap)} in both test and validation")
    return spec
