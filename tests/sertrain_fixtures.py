"""Tiny stores for the sertrain tests, built by serprep from generated corpora.

``learnable_store`` writes an IEMOCAP-layout corpus (``corpus_fixtures.make_iemocap``) and
replaces each labelled utterance's audio by speech-like audio whose emotion is clearly
audible: pitch level, loudness and spectral tilt differ by class (angry: high, loud, bright;
happy: high, medium; neutral: medium; sad: low, quiet, dull), on top of the per-speaker
voices. A working pipeline learns it to well above chance on held-out speakers within a few
epochs; a broken one (labels shuffled, padding leaking, wrong normalisation) stays near 25 %.
It is then built with ``serprep.build.build_store`` (via ``store_fixtures.build``), so the
tests read a real store through ``serprep.store.StoreReader``.

Stores are cached per (tmp root, parameters) so several test modules share one build.
This module holds helpers only (no tests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.signal

from corpus_fixtures import SR, make_iemocap, speaker_voice, speech_like, write_wav
from store_fixtures import build

#: Emotion code -> (f0 multiplier, peak amplitude, spectral tilt: +1 bright .. -1 dull).
EMOTION_CUES = {
    "ang": (1.35, 0.90, 1.0),
    "hap": (1.20, 0.55, 0.3),
    "exc": (1.20, 0.55, 0.3),
    "neu": (1.00, 0.30, 0.0),
    "sad": (0.80, 0.10, -1.0),
}

_CACHE: dict[tuple, Path] = {}


def emotional_audio(n: int, code: str, speaker: str, gender: str, seed: int) -> np.ndarray:
    """Speech-like audio of ``n`` samples with the cues of emotion ``code``."""
    f0_mult, peak, tilt = EMOTION_CUES[code]
    voice = speaker_voice(speaker, gender, 0)
    rng = np.random.default_rng(seed)
    f0 = voice["f0"] * f0_mult * float(rng.uniform(0.93, 1.07))
    y = speech_like(n, SR, f0=f0, formant_scale=voice["formant_scale"], seed=seed, peak=1.0).astype(np.float64)
    if tilt > 0:  # brighten: add high-passed noise and harmonics
        sos = scipy.signal.butter(4, 2500, "highpass", fs=SR, output="sos")
        y = y + tilt * 0.6 * scipy.signal.sosfilt(sos, y) + tilt * 0.05 * rng.standard_normal(n)
    elif tilt < 0:  # dull: low-pass
        sos = scipy.signal.butter(4, 1200, "lowpass", fs=SR, output="sos")
        y = scipy.signal.sosfilt(sos, y)
    m = float(np.max(np.abs(y))) or 1.0
    return (y * (peak * float(rng.uniform(0.85, 1.0)) / m)).astype(np.float32)


def make_learnable_corpus(root: Path, utts_per_speaker: int = 28, seed: int = 0) -> list[dict]:
    """IEMOCAP-layout corpus whose 4-class utterances carry strong emotion cues."""
    truth = make_iemocap(root, utts_per_speaker=utts_per_speaker, seed=seed, corrupt=False)
    for t in truth:
        code = t["emotion_raw"]
        if code in EMOTION_CUES and t["n_samples"] > 0:
            sig = emotional_audio(
                t["n_samples"], code, t["speaker"], t["gender"], seed=hash_seed(t["utt_id"], seed)
            )
            write_wav(root / t["path"], sig, SR)
    return truth


def hash_seed(text: str, seed: int) -> int:
    import zlib

    return zlib.crc32(f"{text}|{seed}".encode())


def learnable_store(base: Path, utts_per_speaker: int = 28, seed: int = 0, **build_options) -> Path:
    """Build (once per ``base`` and parameters) a learnable store; returns its path."""
    key = (str(base), utts_per_speaker, seed, tuple(sorted(build_options.items())))
    if key in _CACHE and _CACHE[key].exists():
        return _CACHE[key]
    tag = f"learn_u{utts_per_speaker}_s{seed}" + "".join(f"_{k}{v}" for k, v in sorted(build_options.items()))
    root = base / tag / "IEMOCAP_full_release"
    out = base / tag / "feats.h5"
    if not out.exists():
        make_learnable_corpus(root, utts_per_speaker, seed)
        build("iemocap", root, out, **build_options)
    _CACHE[key] = out
    return out


def no_folds_store(base: Path) -> Path:
    """A valid store without folds: one session only, so every fold definition is dropped."""
    from corpus_fixtures import make_iemocap

    out = base / "nofolds" / "feats.h5"
    if not out.exists():
        root = base / "nofolds" / "IEMOCAP_full_release"
        make_iemocap(root, utts_per_speaker=4, sessions=(1,), corrupt=False)
        build("iemocap", root, out)
    return out


def unrated_store(base: Path) -> Path:
    """A small EmoDB store: a corpus without dimensional ratings (no rating columns, empty
    ``dimension_scales()``), for the refusals of the dimensional tasks."""
    from corpus_fixtures import make_emodb

    out = base / "unrated" / "feats.h5"
    if not out.exists():
        root = base / "unrated" / "emodb"
        make_emodb(root, utts_per_speaker=4, corrupt=False)
        build("emodb", root, out)
    return out


def mels64_store(base: Path) -> Path:
    """A small store with 64 mel bands (for feature-config mismatch tests)."""
    from corpus_fixtures import make_iemocap
    from serprep.config import FeatureConfig

    out = base / "mels64" / "feats.h5"
    if not out.exists():
        root = base / "mels64" / "IEMOCAP_full_release"
        make_iemocap(root, utts_per_speaker=3, corrupt=False)
        build("iemocap", root, out, features=FeatureConfig(n_mels=64))
    return out


def small_cfg(**overrides):
    """The cpu-small config for fast in-process runs: no loader workers, no early stopping,
    and ``overrides`` (dotted keys)."""
    from sertrain.config import apply_overrides, load_config

    base = {"train.num_workers": 0, "train.patience": 0}
    base.update(overrides)
    return apply_overrides(load_config("cpu-small"), base)


def store_base(tmp_path_factory) -> Path:
    """One folder per pytest session shared by all sertrain test modules."""
    base = tmp_path_factory.getbasetemp() / "sertrain_stores"
    base.mkdir(exist_ok=True)
    return base


def short_run_checkpoint(base: Path) -> Path:
    """``best.pt`` of one short epoch (4 steps) on fold 1 of the learnable store, trained once
    per ``base``: a real checkpoint for tests of predict and checkpoint handling, whose
    numbers need not be good."""
    from sertrain.config import apply_overrides, load_config
    from sertrain.train import train_fold

    out = base / "short_run"
    if not (out / "best.pt").exists():
        cfg = apply_overrides(load_config("cpu-small"), {"train.num_workers": 0, "train.patience": 0,
                                                         "train.epochs": 1, "train.steps_per_epoch": 4})
        train_fold(learnable_store(base), 1, cfg, out, device="cpu")
    return out / "best.pt"


def assert_one_line_error(result, code: int, fragment: str) -> None:
    """A click ``CliRunner`` result failed with exit ``code`` and one ``error:`` line holding
    ``fragment`` on stderr, without a traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
