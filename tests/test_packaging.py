"""The wheel carries everything serprep needs: built, installed into a clean venv, and used.

A source checkout finds the label manifests, augmentation presets and protocols whatever the
packaging says; an installed wheel only has what ``[tool.setuptools.package-data]`` ships.
This test builds the wheel the way a user's ``pip install .`` does (build isolation), installs
it with its dependencies into a fresh virtual environment, and runs ``serprep build`` (with a
bundled preset and a bundled protocol) on a generated corpus from a folder outside the
checkout, so nothing can be imported from the source tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str], cwd: Path, timeout: float = 900) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SERPREP_MANIFESTS")}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)], cwd=out)
    (found,) = out.glob("serprep-*.whl")
    return found


def test_wheel_ships_manifests_presets_protocols_and_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    from serprep.corpora import registry

    for info in registry().values():
        assert f"serprep/manifests/{info.manifest}" in names
    for preset in ("default", "light"):
        assert f"serprep/manifests/augment/{preset}.toml" in names
    assert {f"serprep/protocols/{p}.toml" for p in ("acrnn", "iemocap-5531", "msp-improv-6", "liu2023")} <= names
    assert {"sertrain/configs/cpu-small.toml", "sertrain/configs/paper.toml"} <= names
    # Nothing outside the two packages (no tests, no top-level manifests/ folder).
    assert {n.split("/")[0] for n in names if not n.startswith("serprep-")} == {"serprep", "sertrain"}


def test_installed_wheel_builds_a_store_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    bin_ = venv / "bin"
    _run([str(bin_ / "pip"), "install", "--quiet", f"{wheel}[egemaps]"], cwd=tmp_path, timeout=1800)
    where = _run([str(bin_ / "python"), "-c", "import serprep, sertrain; print(serprep.__file__); print(sertrain.__file__)"],
                 cwd=tmp_path)
    assert all(str(venv) in line for line in where.split()), where

    _run([str(bin_ / "serprep"), "demo-corpus", "--out", "corpus", "--hours", "0.05", "--seed", "0"], cwd=tmp_path)
    _run([str(bin_ / "serprep"), "build", "iemocap", "--root", "corpus", "--out", "aug.h5", "--augment", "default",
          "--balance", "--jobs", "1", "-q"], cwd=tmp_path)
    _run([str(bin_ / "serprep"), "build", "iemocap", "--root", "corpus", "--protocol", "iemocap-5531",
          "--out", "p.h5", "--jobs", "1", "-q"], cwd=tmp_path)
    _run([str(bin_ / "serprep"), "build", "iemocap", "--root", "corpus", "--out", "f.h5", "--functionals", "egemaps",
          "--jobs", "1", "-q"], cwd=tmp_path)  # the egemaps extra brings a working openSMILE
    _run([str(bin_ / "sertrain"), "baseline", "f.h5", "--out", "baseline", "--folds", "1"], cwd=tmp_path)
    info = _run([str(bin_ / "serprep"), "info", "aug.h5"], cwd=tmp_path)
    assert "augmentation  default" in info
    assert "iemocap-5531" in _run([str(bin_ / "serprep"), "info", "p.h5"], cwd=tmp_path)
    listing = _run([str(bin_ / "serprep"), "corpora"], cwd=tmp_path)
    from serprep.corpora import corpus_names

    assert [line.split(":")[0] for line in listing.splitlines() if line and not line[0].isspace()][:-1] == corpus_names()
    _run([str(bin_ / "sertrain"), "cv", "--help"], cwd=tmp_path)
