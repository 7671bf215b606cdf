"""sertrain.config: presets, overrides, validation."""

from __future__ import annotations

import pytest

from sertrain.config import (
    Config,
    apply_overrides,
    default_config_name,
    load_config,
    parse_value,
    preset_names,
)
from sertrain.errors import InputError


def test_presets_ship_and_load():
    assert {"paper", "cpu-small"} <= set(preset_names())
    paper, small = load_config("paper"), load_config("cpu-small")
    assert paper.name == "paper" and small.name == "cpu-small"
    assert paper.train.lr == 1e-5 and paper.train.batch_size == 60  # ACRNN
    assert small.model.lstm_hidden == 64 and small.model.conv_channels[0] == 16
    assert default_config_name("cuda") == "paper" and default_config_name("cpu") == "cpu-small"


def test_overrides_coerce_types_and_round_trip():
    cfg = apply_overrides(load_config("cpu-small"), {"train.lr": 1, "train.epochs": 3, "model.conv_channels": [8, 8, 8]})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and cfg.model.conv_channels == [8, 8, 8]
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert apply_overrides(cfg, {"train.seed": "7"}).train.seed == 7  # --set strings parse as TOML
    assert parse_value("[1, 2]") == [1, 2] and parse_value("gender") == "gender"


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"train.nope": 1}, "unknown config key 'train.nope'"),
        ({"lr": 1}, "unknown config key 'lr'"),
        ({"train.epochs": "many"}, "train.epochs: expected"),
        ({"train.lr": -1.0}, "train.lr must be > 0"),
        ({"loss.aux": "emotion"}, "loss.aux must be one of"),
        ({"model.conv_pools": [[2, 4]]}, "same non-zero length"),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides, pattern):
    with pytest.raises(InputError, match=pattern) as info:
        apply_overrides(load_config("cpu-small"), overrides)
    assert "\n" not in str(info.value)


def test_config_file_with_defaults_and_unknown_keys(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('[train]\nlr = 0.01\n[model]\nlstm_hidden = 8\n')
    cfg = load_config(str(good))
    assert cfg.name == "mine" and cfg.train.lr == 0.01 and cfg.model.lstm_hidden == 8
    assert cfg.model.linear_dim == 768  # unspecified keys keep the method's defaults
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 0.01\n")
    with pytest.raises(InputError, match="unknown key"):
        load_config(str(bad))
    with pytest.raises(InputError, match="neither a preset"):
        load_config("no-such-config")


def test_aux_selects_loss_weights():
    lo = load_config("cpu-small").loss
    assert lo.effective_weights() == (lo.w_gender, lo.w_speaker)
    for aux, expected in (("none", (0.0, 0.0)), ("gender", (lo.w_gender, 0.0)), ("speaker", (0.0, lo.w_speaker))):
        assert apply_overrides(load_config("cpu-small"), {"loss.aux": aux}).loss.effective_weights() == expected
