"""Utterance-level functionals (``serprep build --functionals egemaps``): the 88 eGeMAPS v02
functionals of openSMILE, the standard classical SER baseline's input.

:class:`FunctionalsExtractor` runs in the extraction workers beside the log-Mel extractor,
on each original utterance's decoded samples (augmented copies get none). It is picklable
(it holds only the set's name) and builds its ``opensmile.Smile`` lazily, once per thread,
so neither ``serprep --help`` nor a build without ``--functionals`` imports opensmile.

Non-finite values: openSMILE fills the functionals of a signal too short to analyse (under
~60 ms) with NaN. Such an utterance is skipped and recorded in ``/failures`` like a file
whose log-Mel features are not finite (fatal with ``--strict``), so every extracted
utterance of a store built with functionals has a finite row and the model and the baseline
are tested on the same utterances.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np

from .errors import SerprepError

#: ``--functionals`` name -> (openSMILE feature set, feature level).
FUNCTIONAL_SETS: dict[str, tuple[str, str]] = {"egemaps": ("eGeMAPSv02", "Functionals")}


def check_functionals(name: str | None) -> None:
    """Refuse an unknown ``--functionals`` name, or a known one without opensmile installed
    (one line, before any work)."""
    if name is None:
        return
    if name not in FUNCTIONAL_SETS:
        raise SerprepError(f"--functionals {name!r}: unknown set; choose {', '.join(FUNCTIONAL_SETS)}")
    from importlib.util import find_spec  # not imported here: the workers import it

    if find_spec("opensmile") is None:
        raise SerprepError(f"--functionals {name} needs the opensmile package: pip install 'serprep[egemaps]'")


def opensmile_version() -> str:
    """The installed opensmile package's version ("not installed" without it)."""
    from importlib import metadata

    try:
        return metadata.version("opensmile")
    except metadata.PackageNotFoundError:
        return "not installed"


class FunctionalsExtractor:
    """``extractor(samples, sample_rate) -> float32 [n_features]`` for one set of
    :data:`FUNCTIONAL_SETS`; :meth:`names` gives the feature names in that order."""

    def __init__(self, name: str) -> None:
        if name not in FUNCTIONAL_SETS:
            raise SerprepError(f"--functionals {name!r}: unknown set; choose {', '.join(FUNCTIONAL_SETS)}")
        self.name = name
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"])

    def smile(self) -> Any:
        """This thread's ``opensmile.Smile`` for the set (built on first use)."""
        smile = getattr(self._local, "smile", None)
        if smile is None:
            import opensmile

            feature_set, level = FUNCTIONAL_SETS[self.name]
            smile = opensmile.Smile(feature_set=opensmile.FeatureSet[feature_set],
                                    feature_level=opensmile.FeatureLevel[level])
            self._local.smile = smile
        return smile

    def names(self) -> list[str]:
        """The feature names, in the order of :meth:`__call__`'s values."""
        return list(self.smile().feature_names)

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """The functionals of one signal (mono float samples) as float32 ``[n_features]``;
        NaN where openSMILE cannot compute them (too short a signal)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Segment too short, filling with NaN."
            frame = self.smile().process_signal(np.asarray(samples, dtype=np.float32), sample_rate)
        return np.asarray(frame.to_numpy(), dtype=np.float32).reshape(-1)
