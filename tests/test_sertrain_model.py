"""sertrain.model: shapes, masking, both configs on one code path, input-spec refusal."""

from __future__ import annotations

import json

import pytest
import torch

from serprep.config import FeatureConfig
from sertrain.config import load_config
from sertrain.errors import InputError
from sertrain.model import (
    InputSpec,
    build_model,
    check_input_spec,
    count_parameters,
    forward_macs,
    pooled_lengths,
    time_mask,
)

SPEC = InputSpec(n_mels=40, frames=300, feature_config_json=FeatureConfig().to_json())


def small_model(n_speakers: int = 6):
    torch.manual_seed(0)
    return build_model(load_config("cpu-small").model, SPEC, 4, 2, n_speakers)


def test_output_shapes_cpu_small():
    model = small_model().eval()
    x = torch.randn(5, 3, 300, 40)
    valid = torch.tensor([300, 250, 120, 3, 1])
    out = model(x, valid)
    assert out["emotion"].shape == (5, 4)
    assert out["gender"].shape == (5, 2)
    assert out["speaker"].shape == (5, 6)
    # cpu-small pools time by 2 then 2: 300 -> 75 steps; lengths are ceil-divided.
    assert out["weights"].shape == (5, 75)
    assert out["lengths"].tolist() == [75, 63, 30, 1, 1]
    assert torch.allclose(out["weights"].sum(1), torch.ones(5))


def test_attention_gives_padded_steps_zero_weight():
    model = small_model().eval()
    out = model(torch.randn(3, 3, 300, 40), torch.tensor([300, 100, 40]))
    w, lengths = out["weights"], out["lengths"]
    mask = time_mask(lengths, w.shape[1])
    assert torch.all(w[~mask] == 0)
    assert torch.all(w[mask] > 0)


def test_padded_frames_do_not_change_output():
    """Whatever the padded frames hold, every output (logits, attention, embedding) is unchanged."""
    model = small_model().eval()
    torch.manual_seed(1)
    valid = torch.tensor([300, 217, 90, 12])
    x = torch.randn(4, 3, 300, 40)
    pad = ~time_mask(valid, 300)
    x_zero = x.masked_fill(pad[:, None, :, None], 0.0)
    x_noise = x.clone()
    x_noise[pad[:, None, :, None].expand_as(x)] = 1e3 * torch.randn(int(pad.sum()) * 3 * 40)
    with torch.no_grad():
        a, b = model(x_zero, valid), model(x_noise, valid)
    for key in ("emotion", "gender", "speaker", "weights", "embedding"):
        assert torch.equal(a[key], b[key]), key


def test_sample_output_independent_of_batch_neighbours_and_length_of_padding():
    """In eval mode a segment's output depends only on its own valid frames."""
    model = small_model().eval()
    torch.manual_seed(2)
    x = torch.randn(2, 3, 300, 40)
    valid = torch.tensor([150, 300])
    with torch.no_grad():
        both = model(x, valid)["emotion"]
        alone = model(x[:1], valid[:1])["emotion"]
    torch.testing.assert_close(both[:1], alone, rtol=1e-5, atol=1e-5)


def test_pooled_lengths_ceil_and_clamp():
    lengths = torch.tensor([0, 1, 2, 3, 299, 300])
    assert pooled_lengths(lengths, 2, 150).tolist() == [1, 1, 1, 2, 150, 150]
    assert pooled_lengths(lengths, 1, 300).tolist() == [1, 1, 2, 3, 299, 300]


def test_gradients_reach_every_parameter():
    model = small_model().train()
    out = model(torch.randn(4, 3, 300, 40), torch.tensor([300, 200, 100, 50]))
    (out["emotion"].sum() + out["gender"].sum() + out["speaker"].sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_paper_config_is_acrnn_sized_and_same_code_path():
    cfg = load_config("paper").model
    assert cfg.conv_channels == [128, 256, 256, 256, 256, 256]
    assert cfg.conv_kernels[0] == [5, 3] and cfg.conv_pools[0] == [2, 4]
    assert cfg.linear_dim == 768 and cfg.lstm_hidden == 128
    model = build_model(cfg, SPEC, 4, 2, 8)
    assert type(model) is type(small_model())
    assert model.out_steps == 150
    # ~6.7 G multiply-adds per 300-frame segment (method.md's compute budget).
    assert 6.0e9 < forward_macs(cfg, SPEC) < 7.5e9
    assert count_parameters(model) > 10 * count_parameters(small_model())
    with torch.no_grad():  # a short forward on 2 segments is affordable
        out = model.eval()(torch.randn(2, 3, 300, 40), torch.tensor([300, 80]))
    assert out["emotion"].shape == (2, 4) and out["weights"].shape == (2, 150)


def test_no_speaker_head_without_training_speakers():
    model = small_model(n_speakers=0).eval()
    out = model(torch.randn(2, 3, 300, 40), torch.tensor([300, 300]))
    assert "speaker" not in out


def test_input_shape_mismatch_is_one_line_error():
    model = small_model().eval()
    with pytest.raises(InputError, match="expected input"):
        model(torch.randn(2, 3, 300, 64), torch.tensor([300, 300]))


def test_pooling_too_deep_for_input_is_refused():
    cfg = load_config("cpu-small").model
    with pytest.raises(InputError, match="leaves no time/frequency bins"):
        build_model(cfg, InputSpec(n_mels=6, frames=300), 4, 2, 2)


@pytest.mark.parametrize(
    "store_spec, pattern",
    [
        (InputSpec(64, 300, feature_config_json=FeatureConfig(n_mels=64).to_json()), "n_mels 64 but the model was built for 40"),
        (InputSpec(40, 200, feature_config_json=FeatureConfig().to_json()), "200-frame segments but the model was built for 300"),
        (InputSpec(40, 300, feature_config_json=FeatureConfig(preemphasis=0.0).to_json()), "feature config mismatch: preemphasis"),
        (InputSpec(40, 300, channels=1, feature_config_json=FeatureConfig().to_json()),
         "store has 1 channels per frame but the model was built for 3"),
    ],
)
def test_check_input_spec_names_the_mismatch(store_spec, pattern):
    with pytest.raises(InputError, match=pattern) as info:
        check_input_spec(SPEC, store_spec, "feats.h5")
    assert "\n" not in str(info.value)


def test_check_input_spec_accepts_identical():
    check_input_spec(SPEC, InputSpec(40, 300, feature_config_json=json.dumps(FeatureConfig().to_dict(), sort_keys=True)), "x")
