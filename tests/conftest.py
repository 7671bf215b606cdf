"""Shared pytest setup: repo root on sys.path, tiny on-the-fly corpora (built once per session)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
_ROOT = _TESTS.parent
for _p in (str(_ROOT), str(_TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from corpus_fixtures import make_iemocap, make_msp_improv  # noqa: E402


@pytest.fixture(scope="session")
def iemocap_root(tmp_path_factory):
    """(root, truth): tiny IEMOCAP_full_release tree (5 sessions, defaults, corrupt=True)."""
    root = tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release"
    truth = make_iemocap(root)
    return root, truth


@pytest.fixture(scope="session")
def msp_root(tmp_path_factory):
    """(root, truth): tiny MSP-IMPROV tree with Evaluation.txt and the Audio/ level."""
    root = tmp_path_factory.mktemp("msp") / "MSP-IMPROV"
    truth = make_msp_improv(root)
    return root, truth


@pytest.fixture(
    scope="session",
    params=[("Evalution.txt", False), ("Evalution.txt", True), ("Evaluation.txt", False)],
    ids=["Evalution-noAudio", "Evalution-Audio", "Evaluation-noAudio"],
)
def msp_root_variant(request, tmp_path_factory):
    """(root, truth): MSP-IMPROV layout variants (misspelt label file, no Audio/ level)."""
    name, audio_level = request.param
    root = tmp_path_factory.mktemp("msp_variant") / "MSP-IMPROV"
    truth = make_msp_improv(root, evaluation_name=name, audio_level=audio_level, seed=1)
    return root, truth
