"""``sertrain compare`` and ``sertrain cv --seeds`` on real runs of a learnable store.

A: trained for a few epochs (well above chance on held-out speakers); B: one optimiser step
at a tiny learning rate (near chance). Both: 2 folds × 2 seeds of the same store.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from sertrain.cli import main
from sertrain.compare import paired_difference
from sertrain_fixtures import assert_one_line_error, learnable_store, store_base

BASE = ["--num-workers", "0", "--device", "cpu", "--config", "cpu-small", "--no-report", "-q"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return learnable_store(store_base(tmp_path_factory), balance=True, augment="default")


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    a, b = base / "A", base / "B"
    ra = run("cv", store, "--out", a, "--folds", "1,2", "--seeds", "2", "--epochs", "4", *BASE)
    assert ra.exit_code == 0, ra.output
    rb = run("cv", store, "--out", b, "--folds", "1,2", "--seeds", "2", "--epochs", "1", "--steps-per-epoch", "1",
             "--lr", "1e-9", *BASE)
    assert rb.exit_code == 0, rb.output
    return a, b, ra


def test_seeds_times_folds_runs(runs):
    a, _, result = runs
    metrics = json.loads((a / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1] and metrics["folds"] == [1, 2]
    assert [(r["fold"], r["seed"]) for r in metrics["runs"]] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for r in metrics["runs"]:
        run_dir = a / r["dir"]
        assert r["dir"] == f"fold_{r['fold']}/seed_{r['seed']}" and (run_dir / "best.pt").is_file()
        assert json.loads((run_dir / "config.json").read_text())["train"]["seed"] == r["seed"]
    # Different seeds are different runs (init, dropout, batch order).
    h = [json.loads((a / f"fold_1/seed_{s}/history.json").read_text())[0]["train_loss"] for s in (0, 1)]
    assert h[0] != h[1]
    preds = pd.read_csv(a / "predictions.csv")
    assert sorted(preds.groupby(["fold", "seed"]).size().index.tolist()) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert metrics["summary"]["n_runs"] == 4 and metrics["per_fold"][0]["runs"] == 2
    assert metrics["summary_text"] in result.output and "over 2 folds × 2 seeds = 4 runs" in result.output
    assert "95 % CI utterances" in result.output and "95 % CI speakers (4)" in result.output


def test_compare_with_itself_is_zero_with_p_one(runs):
    a, _, _ = runs
    result = paired_difference(a, a)
    for key, m in result["metrics"].items():
        for unit in ("utterance", "speaker"):
            assert m[unit]["delta"] == 0 and m[unit]["p_value"] == 1, (key, unit, m)
    out = run("compare", a, a)
    assert out.exit_code == 0, out.output
    ua_row = next(ln for ln in out.output.splitlines() if ln.startswith("UA "))
    assert ua_row.split()[3:6] == ["+0.0", "[0.0,", "0.0]"] and ua_row.split()[6] == "1"


def test_compare_clearly_different_runs(runs, tmp_path):
    a, b, _ = runs
    out = run("compare", a, b, "--out", tmp_path, "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    ua = result["metrics"]["ua"]
    assert ua["a"] - ua["b"] > 0.2, ua
    assert ua["utterance"]["delta"] == pytest.approx(ua["a"] - ua["b"])
    assert ua["utterance"]["p_value"] < 0.01 and ua["utterance"]["low"] > 0
    assert result["n_utterances"] == 64 and result["seeds"] == [0, 1] and result["n_permutations"] == 10000
    (written,) = tmp_path.glob("compare_*_vs_*.json")
    assert json.loads(written.read_text())["metrics"]["ua"]["utterance"] == ua["utterance"]
    # The other direction: the same difference with the opposite sign.
    back = paired_difference(b, a)["metrics"]["ua"]["utterance"]
    assert back["delta"] == pytest.approx(-ua["utterance"]["delta"])


def test_compare_refuses_runs_that_do_not_pair(runs, store, tmp_path):
    a, _, _ = runs
    one_fold = tmp_path / "one_fold"
    assert run("cv", store, "--out", one_fold, "--folds", "1", "--seeds", "2", "--epochs", "1",
               "--steps-per-epoch", "1", *BASE).exit_code == 0
    assert_one_line_error(run("compare", a, one_fold), 2, "differ in folds ([1, 2] vs [1])")
    other_seeds = tmp_path / "seeds"
    assert run("cv", store, "--out", other_seeds, "--folds", "1,2", "--seeds", "2", "--seed", "5", "--epochs", "1",
               "--steps-per-epoch", "1", *BASE).exit_code == 0
    assert_one_line_error(run("compare", a, other_seeds), 2, "differ in seeds ([0, 1] vs [5, 6])")
    # Another protocol, another store: edited copies of A's result.
    for key, value, fragment in (
        ("protocol", {"name": "acrnn", "version": "1.0", "sha256": "ab" * 32}, "differ in protocol"),
        ("store", {"content_sha256": "cd" * 32}, "differ in store"),
    ):
        copy = tmp_path / f"copy_{key}"
        shutil.copytree(a, copy, ignore=shutil.ignore_patterns("*.pt"))
        metrics = json.loads((copy / "metrics.json").read_text())
        metrics[key] = value
        (copy / "metrics.json").write_text(json.dumps(metrics))
        assert_one_line_error(run("compare", a, copy), 2, fragment)
    assert_one_line_error(run("compare", a, a / "fold_1" / "seed_0"), 2, "not a cv result of format sertrain-cv/2")
    assert_one_line_error(run("compare", a, tmp_path / "missing"), 2, "no such run folder")
