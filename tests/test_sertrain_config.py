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
    w = lo.weights
    assert lo.active_weights() == {"gender": w["gender"], "speaker": w["speaker"]}
    for aux, expected in (("none", {}), ("gender", {"gender": w["gender"]}), ("speaker", {"speaker": w["speaker"]}),
                          ("vad", {"arousal": w["arousal"], "valence": w["valence"], "dominance": w["dominance"]}),
                          ("vad+gender", {"gender": w["gender"], "arousal": w["arousal"], "valence": w["valence"],
                                          "dominance": w["dominance"]})):
        assert apply_overrides(load_config("cpu-small"), {"loss.aux": aux}).loss.active_weights() == expected


def test_loss_weights_table_and_the_old_keys():
    """loss.weights has one weight per registered task; the old loss.w_gender / loss.w_speaker
    spelling (older configs and protocol files) is read as loss.weights.<task>, in one place."""
    from sertrain.config import Config
    from sertrain.tasks import TASKS

    cfg = load_config("cpu-small")
    assert list(cfg.loss.weights) == list(TASKS)
    assert cfg.flat()["loss.weights.gender"] == 0.3
    assert apply_overrides(cfg, {"loss.w_gender": 0.5}).loss.weights["gender"] == 0.5
    assert apply_overrides(cfg, {"loss.weights.arousal": 1}).loss.weights["arousal"] == 1.0
    assert apply_overrides(cfg, {"loss.weights": "{valence = 0.7}"}).loss.weights["valence"] == 0.7
    old = Config.from_dict({"loss": {"aux": "gender", "w_gender": 0.2, "w_speaker": 0.4}})
    assert old.loss.weights["gender"] == 0.2 and old.loss.weights["speaker"] == 0.4
    assert old.loss.weights["arousal"] == TASKS["arousal"].default_weight
    with pytest.raises(InputError, match="disagree"):
        Config.from_dict({"loss": {"w_gender": 0.2, "weights": {"gender": 0.3}}})
    with pytest.raises(InputError, match=r"unknown task\(s\) \['age'\]"):
        Config.from_dict({"loss": {"weights": {"age": 0.3}}})
    with pytest.raises(InputError, match="loss.weights.gender must be a finite number >= 0"):
        apply_overrides(cfg, {"loss.weights.gender": -1.0})
    with pytest.raises(InputError, match="loss.weights.gender must be a finite number"):
        apply_overrides(cfg, {"loss.weights.gender": float("nan")})
    with pytest.raises(InputError, match="unknown config key loss.weights.age"):
        apply_overrides(cfg, {"loss.weights.age": 1.0})
    with pytest.raises(InputError, match="'age' is not a task"):
        apply_overrides(cfg, {"loss.aux": "gender+age"})
    with pytest.raises(InputError, match="names arousal twice"):
        apply_overrides(cfg, {"loss.aux": "arousal+vad"})
