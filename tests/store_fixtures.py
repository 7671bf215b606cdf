"""Helpers that build small stores for tests (plain functions, no pytest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serprep.build import BuildOptions, BuildSummary, build_store


def build(corpus: str, root: Path, out: Path, **options) -> BuildSummary:
    """Build quietly in-process (``jobs=1`` unless given) and return the summary."""
    options.setdefault("jobs", 1)
    options.setdefault("progress", False)
    return build_store(BuildOptions(corpus=corpus, root=root, out=out, **options), log=lambda m: None)


def store_content(path: Path) -> tuple[dict, str, Any]:
    """What two builds of the same plan must share byte for byte: the checksum table (every
    dataset's values and every attribute set), the corpus fingerprint and the /features values."""
    import json

    import h5py

    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["checksums"]), str(f.attrs["corpus_fingerprint"]), f["features"][()]


def assert_same_store(expected: Path, actual: Path) -> None:
    """``actual`` holds the content of ``expected`` (root attributes like ``created`` aside) and
    verifies."""
    import numpy as np

    from serprep.store import verify

    a, b = store_content(expected), store_content(actual)
    assert a[0] == b[0], sorted(k for k in set(a[0]) | set(b[0]) if a[0].get(k) != b[0].get(k))[:5]
    assert a[1] == b[1]
    np.testing.assert_array_equal(a[2], b[2])
    assert verify(actual) == []


def downgrade_to_schema_2(path: Path) -> None:
    """Rewrite a store in place as serprep 0.5 (schema 2) wrote it: no rating columns, no
    ``dimensions``, ``feature_kind`` or ``feature_channels`` attributes; checksums and content
    id recomputed, so the result is a valid schema 2 store."""
    import json

    import h5py

    from serprep.store import DIMENSIONS, root_digest

    with h5py.File(path, "r+") as f:
        checksums = json.loads(f.attrs["checksums"])
        for name in DIMENSIONS:
            if f"segments/{name}" in f:
                del f[f"segments/{name}"]
                del checksums[f"segments/{name}"]
        for key in ("dimensions", "feature_kind", "feature_channels"):
            if key in f.attrs:
                del f.attrs[key]
        f.attrs["schema_version"] = 2
        f.attrs["checksums"] = json.dumps(checksums, sort_keys=True)
        f.attrs["attrs_sha256"] = root_digest(f.attrs)
