"""``sertrain cv --protocol``: the protocol's config and seeds, the store check, and the
record of the protocol and of every deviation in the result files."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from serprep.protocol import load_protocol, protocol_names
from sertrain.cli import main
from sertrain.config import apply_overrides, canonical_key
from sertrain.protocols import deviation_text, deviations, protocol_config, run_config, seeds_for
from sertrain_fixtures import learnable_store, store_base
from store_fixtures import build

FAST = ["--config", "cpu-small", "--epochs", "1", "--steps-per-epoch", "1", "--num-workers", "0", "--device", "cpu",
        "--no-report", "-q"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def default_store(tmp_path_factory):
    return learnable_store(store_base(tmp_path_factory), balance=True)


@pytest.fixture(scope="module")
def protocol_store(default_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("protocol") / "iemocap-5531.h5"
    build("iemocap", default_store.parent / "IEMOCAP_full_release", out, **load_protocol("iemocap-5531").build_options())
    return out


@pytest.mark.parametrize("name", protocol_names())
def test_every_protocol_resolves_to_a_valid_config(name):
    protocol = load_protocol(name)
    cfg = protocol_config(protocol)
    assert cfg.data.scheme == protocol.scheme and cfg.name == protocol.config
    flat = cfg.flat()
    for key, value in protocol.run_set.items():  # loss.w_gender (the old spelling) is loss.weights.gender
        assert flat[canonical_key(key)] == value, key
    # Run exactly as stated: no deviation.
    assert deviations(protocol, cfg, list(protocol.seeds)) == []


def test_acrnn_config_is_the_published_setup():
    cfg = protocol_config(load_protocol("acrnn"))
    assert (cfg.train.aggregate, cfg.loss.aux, cfg.train.lr, cfg.data.scheme) == ("max", "none", 1e-5, "loso-speaker")
    assert list(load_protocol("acrnn").seeds) == [0, 1, 2, 3, 4]


def test_seeds_for():
    acrnn = load_protocol("acrnn")
    assert seeds_for(acrnn, None, 0) == [0, 1, 2, 3, 4]
    assert seeds_for(acrnn, 2, 0) == [0, 1]
    assert seeds_for(acrnn, 7, 0) == [0, 1, 2, 3, 4, 5, 6]
    assert seeds_for(None, None, 3) == [3] and seeds_for(None, 3, 3) == [3, 4, 5]


def test_deviations_name_each_difference():
    protocol = load_protocol("iemocap-5531")
    cfg = run_config(protocol, "cpu-small", {"train.epochs": 2})
    devs = deviations(protocol, cfg, [0, 1], folds=[1])
    keys = [d["key"] for d in devs]
    assert keys[0] == "config" and devs[0] == {"key": "config", "protocol": "paper", "run": "cpu-small"}
    assert {"key": "train.epochs", "protocol": 50, "run": 2} in devs
    assert {"key": "seeds", "protocol": [0, 1, 2, 3, 4], "run": [0, 1]} in devs
    assert {"key": "folds", "protocol": "all", "run": [1]} in devs
    assert "model.conv_channels" in keys  # every value that follows from the other preset is listed
    text = deviation_text(devs, ["train.epochs"])
    assert text.startswith("config 'paper' -> 'cpu-small' (") and "train.epochs 50 -> 2" in text
    assert "model.conv_channels" not in text  # counted in the config item, not listed
    # Options that only change how data are read are not deviations.
    same = apply_overrides(protocol_config(protocol), {"train.num_workers": 0, "train.eval_batch_size": 7})
    assert deviations(protocol, same, list(protocol.seeds)) == []


def test_cv_refuses_a_store_built_for_something_else(default_store, tmp_path):
    result = run("cv", default_store, "--protocol", "iemocap-5531", "--out", tmp_path / "x", *FAST)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {default_store} was not built for protocol iemocap-5531 (balance on, needs off)")
    assert "serprep build iemocap --root ROOT --protocol iemocap-5531 --out" in line
    assert not (tmp_path / "x").exists()
    acrnn = run("cv", default_store, "--protocol", "acrnn", "--out", tmp_path / "y", *FAST)
    assert "classes 4class-merged, needs 4class" in acrnn.stderr and "subset all, needs improvised" in acrnn.stderr
    missing = run("cv", default_store, "--protocol", tmp_path / "nope.toml", "--out", tmp_path / "z", *FAST)
    assert missing.exit_code == 2 and missing.stderr.strip() == f"error: {tmp_path / 'nope.toml'}: protocol file not found"


def test_cv_under_a_protocol_records_it_and_its_deviations(protocol_store, tmp_path):
    out = tmp_path / "run"
    result = run("cv", protocol_store, "--protocol", "iemocap-5531", "--out", out, "--seeds", "2", "--folds", "1",
                 *FAST)
    assert result.exit_code == 0, result.output
    assert "note: this run deviates from protocol iemocap-5531: config 'paper' -> 'cpu-small'" in result.stderr
    protocol = load_protocol("iemocap-5531")
    metrics = json.loads((out / "metrics.json").read_text())
    assert {k: metrics["protocol"][k] for k in ("name", "version", "sha256")} == protocol.record()
    assert metrics["protocol"]["unconfirmed"] == protocol.unconfirmed()
    keys = {d["key"] for d in metrics["deviations"]}
    assert {"config", "train.epochs", "train.steps_per_epoch", "seeds", "folds"} <= keys
    assert metrics["title"].startswith(f"protocol iemocap-5531 {protocol.version} with {len(keys)} deviation(s)")
    assert metrics["seeds"] == [0, 1] and metrics["scheme"] == protocol.scheme
    assert metrics["config"]["train"]["aggregate"] == protocol.run_set["train.aggregate"]
    assert metrics["store"]["build"]["protocol"]["sha256"] == protocol.sha256
    # Each run's own metrics.json records the protocol too.
    run_metrics = json.loads((out / "fold_1" / "seed_1" / "metrics.json").read_text())
    assert run_metrics["protocol"]["sha256"] == protocol.sha256 and run_metrics["seed"] == 1
    assert metrics["title"] in result.output


def test_grid_settings_record_their_own_aux_deviation():
    """In an --aux grid under a protocol, each setting's results name its own loss.aux (or
    none when it is the protocol's), not the grid's list."""
    from sertrain.cv import _setting_provenance

    protocol = load_protocol("iemocap-5531")
    cfg = protocol_config(protocol)
    devs = deviations(protocol, cfg, list(protocol.seeds), aux_settings=["none", cfg.loss.aux])
    assert {"key": "loss.aux", "protocol": cfg.loss.aux, "run": f"none,{cfg.loss.aux}"} in devs
    prov = {"protocol": protocol.record(), "deviations": devs}
    assert _setting_provenance(prov, "none")["deviations"] == [
        {"key": "loss.aux", "protocol": cfg.loss.aux, "run": "none"}]
    assert _setting_provenance(prov, cfg.loss.aux)["deviations"] == []
