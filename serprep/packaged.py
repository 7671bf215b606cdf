"""Package data (label manifests, augmentation presets) read with :mod:`importlib.resources`.

The data ship inside the ``serprep`` package (``serprep/manifests/``), so an installed wheel has
them as well as a source checkout. Stores record the path and hash of the manifest they were
built with, and the build refuses an ``--out`` that names one of them, so the data must be real
files: a zip import is refused with a one-line error.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import SerprepError


def manifests_dir() -> Path:
    """The ``manifests/`` folder of the package (``$SERPREP_MANIFESTS`` overrides it)."""
    env = os.environ.get("SERPREP_MANIFESTS")
    if env:
        return Path(env)
    folder = resources.files("serprep").joinpath("manifests")
    if not isinstance(folder, Path):
        raise SerprepError(f"serprep's package data is not on a file system ({folder}); install serprep "
                           "as a normal (non-zip) package")
    return folder
