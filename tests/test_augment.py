"""Tests for serprep.augment: presets, seeded augmentation chains, and their records."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serprep.augment import (
    AugmentPresetError,
    Augmenter,
    SyntheticReverb,
    available_presets,
    copy_seed,
    load_preset,
    validate_preset,
)

SR = 16000


def _speechlike(seconds: float = 1.0, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """Harmonic tone with a syllable-rate envelope plus a little noise: cheap, speech-ish."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 150.0
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t)
    x = tone * envelope + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (amp * x / np.max(np.abs(x))).astype(np.float32)


def _one(name: str, **params: Any) -> dict[str, Any]:
    """A one-transform preset that always fires (isolates one transform for a check)."""
    return {"name": f"only-{name}", "transform": [{"name": name, "p": 1.0, **params}]}


#: Every transform of the default preset, always applied, with known ranges.
ALL_ON = {
    "name": "all-on",
    "transform": [
        {"name": "TimeStretch", "p": 1.0, "min_rate": 0.9, "max_rate": 1.1,
         "leave_length_unchanged": False},
        {"name": "PitchShift", "p": 1.0, "min_semitones": -1.0, "max_semitones": 1.0},
        {"name": "SyntheticReverb", "p": 1.0, "min_rt60": 0.15, "max_rt60": 0.5,
         "min_wet": 0.1, "max_wet": 0.4},
        {"name": "BandPassFilter", "p": 1.0, "min_center_freq": 800.0,
         "max_center_freq": 2000.0, "min_bandwidth_fraction": 1.0,
         "max_bandwidth_fraction": 1.9},
        {"name": "Gain", "p": 1.0, "min_gain_db": -6.0, "max_gain_db": 6.0},
        {"name": "AddGaussianSNR", "p": 1.0, "min_snr_db": 10.0, "max_snr_db": 30.0},
    ],
}


# ----------------------------------------------------------------------------- presets


def test_bundled_presets_load_and_roundtrip() -> None:
    assert {"default", "light"} <= set(available_presets())
    for name in ("default", "light"):
        preset = load_preset(name)
        assert preset["name"] == name
        assert preset["transform"] and all("p" in e for e in preset["transform"])
        aug = Augmenter(preset, SR)
        described = aug.describe()
        assert described == preset
        json.dumps(described)  # recordable in the store as JSON
        # A recorded preset must rebuild the same augmenter.
        assert validate_preset(described) == described
    default_names = [e["name"] for e in load_preset("default")["transform"]]
    assert {"AddGaussianSNR", "Gain", "TimeStretch", "SyntheticReverb", "PitchShift"} <= set(
        default_names
    )
    pitch = next(e for e in load_preset("default")["transform"] if e["name"] == "PitchShift")
    assert -1.0 <= pitch["min_semitones"] <= pitch["max_semitones"] <= 1.0 and pitch["p"] <= 0.3


def test_user_toml_and_yaml_files(tmp_path: Path) -> None:
    toml_file = tmp_path / "mine.toml"
    toml_file.write_text('[[transform]]\nname = "Gain"\np = 1.0\nmin_gain_db = -1\nmax_gain_db = 1\n')
    preset = load_preset(str(toml_file))
    assert preset["name"] == "mine" and preset["transform"][0]["name"] == "Gain"
    assert str(tmp_path) not in json.dumps(preset)  # no machine-specific path recorded

    yaml = pytest.importorskip("yaml")
    yaml_file = tmp_path / "mine.yml"
    yaml_file.write_text(yaml.safe_dump({"transform": preset["transform"]}))
    assert load_preset(str(yaml_file))["transform"] == preset["transform"]


BAD_ENTRIES = [
    ('name = "AddPinkNoise"\np = 0.5', "unknown transform name 'AddPinkNoise'"),
    ('name = "Gain"\np = 0.5\nmin_gain = -3.0', "unknown parameter(s) min_gain"),
    ('name = "Gain"\nmin_gain_db = -3.0\nmax_gain_db = 3.0', "missing application probability"),
    ('name = "Gain"\np = 1.5', "p must be within 0..1"),
    ('name = "Gain"\np = 0.5\nmin_gain_db = "loud"', "min_gain_db must be a number"),
    ('name = "Gain"\np = 0.5\nmin_gain_db = 6.0\nmax_gain_db = -6.0', "min_gain_db (6.0) >"),
    ('name = "TimeStretch"\np = 0.5\nleave_length_unchanged = 1', "must be true/false"),
    ('name = "LowPassFilter"\np = 0.5\nmin_rolloff = 7\nmax_rolloff = 12', "invalid parameters"),
    ('name = "SyntheticReverb"\np = 0.5\nmin_rt60 = 0.0', "invalid parameters"),
]


@pytest.mark.parametrize("body,reason", BAD_ENTRIES)
def test_bad_preset_error_names_file_and_entry(tmp_path: Path, body: str, reason: str) -> None:
    path = tmp_path / "broken.toml"
    good = '[[transform]]\nname = "Gain"\np = 0.5\n'
    path.write_text(f"{good}\n[[transform]]\n{body}\n")
    with pytest.raises(ValueError) as info:
        load_preset(str(path))
    message = str(info.value)
    assert isinstance(info.value, AugmentPresetError)
    assert "\n" not in message
    assert str(path) in message and "transform #2" in message
    assert reason in message


@pytest.mark.parametrize(
    "text,reason",
    [
        ("[[transform]\nname = ", "cannot read TOML"),
        ('[[transforms]]\nname = "Gain"\np = 1.0\n', "unknown top-level key"),
        ('description = "nothing"\n', "no [[transform]] entries"),
    ],
)
def test_bad_preset_file_level_errors(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_preset(str(path))
    assert str(path) in str(info.value) and reason in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_preset_name_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown augmentation preset 'nope'.*default"):
        load_preset("nope")
    missing = tmp_path / "absent.toml"
    with pytest.raises(ValueError, match="absent.toml: .*not found"):
        load_preset(str(missing))


# ----------------------------------------------------------------------------- apply


def test_same_seed_same_output_any_call_order() -> None:
    x = _speechlike()
    aug = Augmenter("default", SR)
    y1, c1 = aug.apply(x, seed=11)
    # Disturb everything that could carry state between calls.
    aug.apply(x, seed=12)
    random.random()
    np.random.rand(7)
    y2, c2 = aug.apply(x, seed=11)
    y3, c3 = Augmenter(load_preset("default"), SR).apply(x, seed=11)
    assert np.array_equal(y1, y2) and np.array_equal(y1, y3)
    assert c1 == c2 == c3
    y4, c4 = aug.apply(x, seed=12)
    assert y4.shape != y1.shape or not np.array_equal(y1, y4)
    assert c4 != c1
    assert np.array_equal(x, _speechlike())  # input untouched


def test_same_output_in_spawned_process() -> None:
    x = _speechlike(seconds=0.5)
    seed = copy_seed(1234, "Ses01F_impro01_F000", 2)
    aug = Augmenter(ALL_ON, SR)
    here = aug.apply(x, seed)
    # spawn: a fresh interpreter (new hash salt, fresh RNG state, fresh imports). The bound
    # method travels pickled, as it would to joblib/multiprocessing workers building a store
    # (and, unlike a test-module function, needs no import of this file in the child).
    with mp.get_context("spawn").Pool(1) as pool:
        there = pool.apply(aug.apply, (x, seed))
    assert np.array_equal(here[0], there[0])
    assert here[1] == there[1]


def test_other_threads_drawing_from_the_global_generators_change_nothing() -> None:
    """Copies do not depend on what else the process draws meanwhile: a Dask worker's event
    loop calls ``random.sample`` (``dask.sizeof``) while the next block is augmented, which
    shifted copies when ``apply`` seeded the process-global generators (a store built on a
    cluster then differed from a local one). Every transform, always applied."""
    extra = [{"name": "AddGaussianNoise", "p": 1.0}, {"name": "LowPassFilter", "p": 1.0},
             {"name": "HighPassFilter", "p": 1.0}]
    aug = Augmenter({"name": "every", "transform": ALL_ON["transform"] + extra}, SR)
    names = {e["name"] for e in ALL_ON["transform"] + extra}
    from serprep.augment import TRANSFORMS

    assert names == set(TRANSFORMS)
    x = _speechlike(seconds=0.5)
    seeds = [copy_seed(0, f"utt{i}", 1) for i in range(6)]
    quiet = [aug.apply(x, s) for s in seeds]
    stop = threading.Event()

    def draw() -> None:  # what another thread of the process may do at any time
        while not stop.is_set():
            random.random()
            random.sample(range(100), 3)
            np.random.rand(3)

    thread = threading.Thread(target=draw)
    thread.start()
    try:
        busy = [aug.apply(x, s) for s in seeds]
    finally:
        stop.set()
        thread.join()
    for (y1, c1), (y2, c2) in zip(quiet, busy):
        assert c1 == c2 and np.array_equal(y1, y2)
    # ... and apply leaves the global generators' states alone.
    random.seed(5)
    np.random.seed(5)
    aug.apply(x, seeds[0])
    assert (random.random(), np.random.rand()) == (random.Random(5).random(), np.random.RandomState(5).rand())


def test_chain_parameters_within_configured_ranges() -> None:
    x = _speechlike(seconds=0.5)
    aug = Augmenter(ALL_ON, SR)
    for seed in range(12):
        y, chain = aug.apply(x, seed)
        names = [c["name"] for c in chain if c["name"] != "PeakNormalize"]
        assert names == [e["name"] for e in ALL_ON["transform"]]
        json.dumps(chain)  # plain JSON types only
        p = {c["name"]: c["params"] for c in chain}
        assert 0.9 <= p["TimeStretch"]["rate"] <= 1.1
        assert -1.0 <= p["PitchShift"]["num_semitones"] <= 1.0
        assert 0.15 <= p["SyntheticReverb"]["rt60"] <= 0.5
        assert 0.1 <= p["SyntheticReverb"]["wet"] <= 0.4
        assert isinstance(p["SyntheticReverb"]["ir_seed"], int)
        assert 800.0 <= p["BandPassFilter"]["center_freq"] <= 2000.0
        assert -6.0 - 1e-9 <= p["Gain"]["gain_db"] <= 6.0 + 1e-9
        assert 10.0 - 1e-9 <= p["AddGaussianSNR"]["snr_db"] <= 30.0 + 1e-9
        assert y.dtype == np.float32 and y.ndim == 1


def test_probability_zero_and_one() -> None:
    x = _speechlike(seconds=0.25)
    never = {"transform": [{"name": "Gain", "p": 0.0, "min_gain_db": 3.0, "max_gain_db": 3.0}]}
    y, chain = Augmenter(never, SR).apply(x, 5)
    assert chain == [] and np.array_equal(y, x)
    y, chain = Augmenter(_one("Gain", min_gain_db=3.0, max_gain_db=3.0), SR).apply(x, 5)
    assert [c["name"] for c in chain] == ["Gain"]
    np.testing.assert_allclose(y, x * 10 ** (3 / 20), rtol=1e-5)


def test_recorded_snr_matches_added_noise() -> None:
    x = _speechlike(seconds=1.0)
    aug = Augmenter(_one("AddGaussianSNR", min_snr_db=10.0, max_snr_db=30.0), SR)
    for seed in range(5):
        y, chain = aug.apply(x, seed)
        assert [c["name"] for c in chain] == ["AddGaussianSNR"]  # no peak normalisation
        noise = y.astype(np.float64) - x
        measured = 20 * math.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))
                                   / np.sqrt(np.mean(noise**2)))
        assert abs(measured - chain[0]["params"]["snr_db"]) < 1.0


def test_time_stretch_changes_length_by_recorded_rate() -> None:
    x = _speechlike(seconds=1.0)
    aug = Augmenter(
        _one("TimeStretch", min_rate=0.9, max_rate=1.1, leave_length_unchanged=False), SR
    )
    for seed in range(4):
        y, chain = aug.apply(x, seed)
        rate = chain[0]["params"]["rate"]
        assert abs(len(y) - len(x) / rate) <= 2


def test_synthetic_reverb_keeps_length_and_changes_signal() -> None:
    x = _speechlike(seconds=0.5)
    aug = Augmenter(_one("SyntheticReverb", min_rt60=0.3, max_rt60=0.3, min_wet=0.5,
                         max_wet=0.5), SR)
    y, chain = aug.apply(x, 3)
    params = chain[0]["params"]
    assert params["rt60"] == pytest.approx(0.3) and params["wet"] == pytest.approx(0.5)
    assert y.shape == x.shape and not np.allclose(y, x, atol=1e-3)
    ir = SyntheticReverb.impulse_response(0.3, SR, params["ir_seed"])
    assert ir.shape == (int(0.3 * SR),)
    # Decays: the last tenth carries far less energy than the first tenth (~ -54 dB apart).
    tenth = len(ir) // 10
    assert np.sum(ir[-tenth:] ** 2) < 1e-3 * np.sum(ir[:tenth] ** 2)


def test_output_float32_finite_and_clip_safe() -> None:
    loud = _speechlike(seconds=0.5, amp=0.99).astype(np.float64)  # float64 in is accepted
    aug = Augmenter(_one("Gain", min_gain_db=6.0, max_gain_db=6.0), SR)
    y, chain = aug.apply(loud, 1)
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    assert np.max(np.abs(y)) <= 1.0
    assert chain[-1]["name"] == "PeakNormalize" and 0 < chain[-1]["params"]["gain"] < 1
    for seed in range(3):
        y, _ = Augmenter("default", SR).apply(loud, seed)
        assert y.dtype == np.float32 and np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 1.0
    y, chain = aug.apply(np.zeros(0, dtype=np.float32), 1)
    assert y.dtype == np.float32 and y.size == 0 and chain == []


def test_apply_rejects_bad_input() -> None:
    aug = Augmenter("light", SR)
    with pytest.raises(ValueError, match="mono"):
        aug.apply(np.zeros((2, 100), dtype=np.float32), 0)
    with pytest.raises(ValueError, match="non-finite"):
        aug.apply(np.array([0.0, np.nan], dtype=np.float32), 0)
    with pytest.raises(ValueError, match="seed"):
        aug.apply(np.zeros(10, dtype=np.float32), -1)


# ----------------------------------------------------------------------------- seeds


def test_copy_seed_stable_and_distinct() -> None:
    s = copy_seed(0, "Ses01F_impro01_F000", 1)
    # Pinned: changing the scheme would silently change every rebuilt store's copies.
    assert s == copy_seed(0, "Ses01F_impro01_F000", 1) == 0x5A3B069BB519B3AA
    seeds = {
        copy_seed(base, utt, k)
        for base in (0, 1)
        for utt in ("Ses01F_impro01_F000", "Ses01F_impro01_F001")
        for k in (1, 2, 3)
    }
    assert len(seeds) == 12
    assert all(isinstance(v, int) and 0 <= v < 2**63 for v in seeds)
