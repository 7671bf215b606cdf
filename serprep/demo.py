"""A synthetic, IEMOCAP-shaped demo corpus: speech-like audio with emotion-dependent prosody.

IEMOCAP cannot be redistributed, yet the pipeline (reader -> store -> training -> evaluation)
needs a corpus with the same on-disk layout, the same label syntax and a similar class skew to
be demonstrated and tested end to end. :func:`write_demo_corpus` writes one:

* the exact ``IEMOCAP_full_release`` layout of ``docs/corpora.md`` (``README.txt``,
  ``Session1..5/dialog/EmoEvaluation/<dialog>.txt``, ``dialog/transcriptions/<dialog>.txt``,
  ``sentences/wav/<dialog>/<utt>.wav``), so the IEMOCAP reader reads it unchanged;
* 5 sessions x (one female + one male speaker), improvised and scripted dialogs, turns of the
  two speakers interleaved, the speaker's gender in the LAST ``_`` token of the utterance id;
* IEMOCAP's consensus-code skew (neu 1708, fru 1849, ang 1103, sad 1084, exc 1041, hap 595,
  sur 107, fea 40, xxx 2507, oth/dis a handful);
* audio from a small source-filter synthesiser (Rosenberg glottal pulses with jitter and
  shimmer, breath noise, 4 formant resonators per syllable, fricative/stop/nasal onsets, word
  pauses, a touch of room reverberation and a session noise floor);
* emotions rendered as OVERLAPPING distributions of f0 level and range, speaking rate,
  energy, spectral tilt, jitter/shimmer, breathiness, pausing and formant shift, on top of
  speaker differences (base f0, level, vocal-tract length, voice quality). Every cue alone
  is weak (on the 4 merged classes, leave one session out, a depth-3 tree or Gaussian naive
  Bayes on utterance energy alone or f0 alone stays at or below about 46 % UA), but together
  they are learnable (logistic regression on per-utterance mean+std of the 40 log-Mel bands
  reaches about 55-62 % UA; chance 25 %), so a working pipeline is visibly above chance and a
  broken one visibly at chance, without the task being trivial. tests/test_demo_corpus.py
  checks both bounds.

Everything is drawn from ``numpy.random.default_rng`` streams derived from ``seed``: the same
seed gives byte-identical files. Generation is vectorised per utterance (one resonator
cascade per syllable via ``scipy.signal.sosfilt``); half an hour of audio takes seconds.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal
import soundfile as sf

SAMPLE_RATE = 16000

#: Consensus-code counts of the real IEMOCAP (corpora.md); the demo draws labels in these
#: proportions so that the 4-class merged set (ang, hap+exc, neu, sad) is skewed like the real one.
IEMOCAP_CODE_COUNTS: dict[str, int] = {
    "xxx": 2507,
    "fru": 1849,
    "neu": 1708,
    "ang": 1103,
    "sad": 1084,
    "exc": 1041,
    "hap": 595,
    "sur": 107,
    "fea": 40,
    "oth": 3,
    "dis": 2,
}

# Rater vocabulary of the evaluator lines (C-E2:\tNeutral;\t()).
_CATEGORY_NAMES: dict[str, str] = {
    "neu": "Neutral",
    "fru": "Frustration",
    "ang": "Anger",
    "sad": "Sadness",
    "exc": "Excited",
    "hap": "Happiness",
    "sur": "Surprise",
    "fea": "Fear",
    "dis": "Disgust",
    "oth": "Other",
}

# Mean valence / activation / dominance per code (1..5 scale), for the rater lines.
_VAD_MEANS: dict[str, tuple[float, float, float]] = {
    "neu": (2.9, 2.6, 2.8),
    "fru": (2.1, 3.1, 3.3),
    "ang": (1.8, 3.7, 3.9),
    "sad": (2.2, 2.3, 2.4),
    "exc": (3.9, 3.6, 3.4),
    "hap": (3.9, 3.1, 3.1),
    "sur": (3.1, 3.6, 3.0),
    "fea": (2.1, 3.3, 2.4),
    "dis": (1.9, 3.0, 3.2),
    "oth": (2.7, 2.9, 2.9),
    "xxx": (2.7, 2.9, 2.9),
}

# --------------------------------------------------------------------------------------
# Prosody: per-class means of the utterance-level parameters. Each utterance samples its
# parameters around its class mean with the (deliberately large) spreads below, so classes
# overlap on every single cue; the class differences are spread over many cues so that only
# a model combining them does well.
_PROSODY_FIELDS = (
    "f0_st",  # f0 level, semitones relative to the speaker's base f0
    "range_st",  # f0 excursion (std of the intonation contour), semitones
    "rate",  # syllables per second
    "energy_db",  # speech level relative to the speaker's habitual level
    "tilt",  # voice quality: + = pressed/flat spectrum, - = lax/steep spectrum
    "jitter",  # relative per-cycle f0 perturbation
    "shimmer",  # relative per-cycle amplitude perturbation (log)
    "breath",  # aspiration noise relative to the voiced source
    "pause",  # probability of a pause after a word
    "formant",  # formant scaling (smiling/lip spreading up, lax down)
)

_PROSODY_MEANS: dict[str, tuple[float, ...]] = {
    #        f0_st range rate  energy tilt   jitter shimmer breath pause formant
    "neu": (0.0, 2.0, 4.2, 0.0, 0.0, 0.010, 0.06, 0.06, 0.28, 1.00),
    "sad": (-1.5, 1.25, 3.3, -4.0, -1.7, 0.018, 0.08, 0.14, 0.42, 0.97),
    "ang": (2.0, 2.4, 4.9, 4.0, 1.7, 0.012, 0.07, 0.03, 0.20, 1.03),
    "hap": (3.0, 3.6, 4.5, 1.5, 0.6, 0.009, 0.06, 0.05, 0.24, 1.05),
    "exc": (3.5, 3.9, 4.9, 2.8, 0.9, 0.009, 0.06, 0.045, 0.20, 1.05),
    "fru": (0.9, 2.2, 4.4, 1.8, 0.7, 0.012, 0.07, 0.05, 0.26, 1.01),
    "sur": (4.5, 4.3, 4.2, 1.5, 0.3, 0.010, 0.06, 0.06, 0.30, 1.03),
    "fea": (3.5, 2.6, 5.1, -1.0, -0.2, 0.020, 0.10, 0.10, 0.30, 1.01),
    "dis": (-0.5, 2.0, 3.8, 1.0, 0.3, 0.014, 0.08, 0.07, 0.32, 0.99),
    "oth": (0.5, 2.4, 4.3, 0.5, 0.1, 0.011, 0.06, 0.06, 0.28, 1.00),
}
# Spreads: additive for f0_st / energy_db / tilt / pause / formant, log-normal (multiplicative)
# for range_st / rate / jitter / shimmer / breath.
_PROSODY_SPREAD = np.array([1.8, 0.3, 0.13, 3.0, 0.6, 0.3, 0.3, 0.4, 0.10, 0.02])
_LOG_FIELDS = np.array([False, True, True, False, False, True, True, True, False, False])
# Codes whose utterances are rendered as a blend of two prosodies (no majority / frustration).
_BLEND_POOL = ("neu", "fru", "ang", "sad", "exc", "hap")

# Adult male vowel formants F1..F3 (Hz, Peterson & Barney style) and a fixed F4.
_VOWELS = np.array(
    [
        [270, 2290, 3010],  # i
        [390, 1990, 2550],  # I
        [530, 1840, 2480],  # e
        [660, 1720, 2410],  # ae
        [730, 1090, 2440],  # a
        [570, 840, 2410],  # o
        [440, 1020, 2240],  # U
        [300, 870, 2240],  # u
        [640, 1190, 2390],  # ^
        [490, 1350, 1690],  # er
    ],
    dtype=float,
)
_BANDWIDTHS = np.array([80.0, 110.0, 160.0, 250.0])

# Words for the transcription files (content is irrelevant to the audio).
_WORDS = (
    "i you we they it that this what why how no yes okay well so just really know think "
    "mean want need go come get make take look see tell said told time now here there "
    "never always right sure fine good bad great job money home car house work call back "
    "wait please sorry thank about again maybe something nothing anything everything"
).split()


@dataclass(frozen=True)
class _Speaker:
    sid: str  # e.g. Ses01F
    gender: str  # F | M
    f0: float  # base f0, Hz
    level_db: float  # habitual level / microphone distance
    formant_scale: float  # vocal-tract length
    tilt: float  # voice-quality offset
    breath: float  # breathiness multiplier
    rate: float  # speaking-rate multiplier
    range: float  # intonation-range multiplier


@dataclass(frozen=True)
class _Session:
    name: str  # Session1
    noise_db: float  # noise floor, dBFS
    noise_color: float  # one-pole low-pass coefficient of the noise
    reverb_t60: float  # seconds
    reverb_mix: float  # reverberant / direct amplitude ratio


@dataclass(frozen=True)
class _Utt:
    utt_id: str
    dialog: str
    session: int  # 1..5
    gender: str
    code: str
    n_samples: int
    start: float
    index: int  # global index (seeds the audio stream)


def _draw_speakers(rng: np.random.Generator, session: int) -> dict[str, _Speaker]:
    speakers = {}
    for gender in ("F", "M"):
        f0 = rng.uniform(170.0, 260.0) if gender == "F" else rng.uniform(90.0, 140.0)
        fscale = rng.uniform(1.10, 1.22) if gender == "F" else rng.uniform(0.95, 1.05)
        sid = f"Ses{session:02d}{gender}"
        speakers[gender] = _Speaker(
            sid=sid,
            gender=gender,
            f0=float(f0),
            level_db=float(np.clip(rng.normal(0.0, 3.0), -6.0, 6.0)),
            formant_scale=float(fscale),
            tilt=float(rng.normal(0.0, 0.3)),
            breath=float(np.exp(rng.normal(0.0, 0.3)) * (1.3 if gender == "F" else 1.0)),
            rate=float(rng.uniform(0.9, 1.1)),
            range=float(rng.uniform(0.85, 1.15)),
        )
    return speakers


def _draw_session(rng: np.random.Generator, session: int) -> _Session:
    return _Session(
        name=f"Session{session}",
        noise_db=float(rng.uniform(-58.0, -46.0)),
        noise_color=float(rng.uniform(0.5, 0.95)),
        reverb_t60=float(rng.uniform(0.15, 0.4)),
        reverb_mix=float(rng.uniform(0.1, 0.3)),
    )


def _label_sequence(rng: np.random.Generator, n: int, counts: dict[str, int] | None = None) -> list[str]:
    """``n`` codes whose every prefix follows the proportions of ``counts`` (default: IEMOCAP's)
    closely.

    Stratified ("systematic") ordering: item i of a class with n_c expected items gets the key
    (i + u) / n_c with u uniform, and the sequence is the keys sorted. Any prefix then holds
    each class within about one item of its expected count, so even a 0.1 h corpus keeps the
    skew and has every frequent class in every session, while the order is still random.
    """
    counts = IEMOCAP_CODE_COUNTS if counts is None else counts
    total = sum(counts.values())
    keys: list[tuple[float, str]] = []
    for code, count in counts.items():
        expected = n * count / total
        k = int(math.ceil(expected)) + 1
        u = rng.uniform(0.0, 1.0, size=k)
        keys.extend(((i + u[i]) / expected, code) for i in range(k))
    keys.sort()
    return [code for _, code in keys[:n]]


def _dialog_names(session: int) -> list[str]:
    """Valid IEMOCAP dialog names of one session, improvised and scripted interleaved."""
    impro = [f"impro{k:02d}" for k in range(1, 9)]
    script = [f"script{a:02d}_{b}" for a, b in ((1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1), (3, 2))]
    base: list[str] = []
    for i in range(max(len(impro), len(script))):
        for part in (impro, script):
            if i < len(part):
                base.append(part[i])
    # Each dialog is recorded twice in IEMOCAP, once with each actor wearing the markers.
    names = []
    for b in base:
        for marker in ("F", "M"):
            names.append(f"Ses{session:02d}{marker}_{b}")
    return names


def _sample_prosody(rng: np.random.Generator, code: str) -> np.ndarray:
    if code in _PROSODY_MEANS and code != "fru":
        mean = np.array(_PROSODY_MEANS[code])
    else:
        # fru / xxx: blend of two prosodies, so these classes sit between the others.
        pool = np.array([IEMOCAP_CODE_COUNTS[c] for c in _BLEND_POOL], dtype=float)
        if code == "fru":
            a, b = "fru", str(rng.choice(("ang", "neu", "sad")))
        else:
            a, b = (str(c) for c in rng.choice(_BLEND_POOL, size=2, p=pool / pool.sum()))
        w = rng.uniform(0.0, 1.0)
        mean = w * np.array(_PROSODY_MEANS[a]) + (1 - w) * np.array(_PROSODY_MEANS[b])
    z = rng.standard_normal(len(mean)) * _PROSODY_SPREAD
    out = np.where(_LOG_FIELDS, mean * np.exp(z), mean + z)
    return out


def _resonator_sos(freqs: np.ndarray, bws: np.ndarray) -> np.ndarray:
    """Cascade of two-pole resonators with unit gain at DC, as second-order sections."""
    r = np.exp(-np.pi * bws / SAMPLE_RATE)
    theta = 2 * np.pi * np.minimum(freqs, 0.45 * SAMPLE_RATE) / SAMPLE_RATE
    a1 = -2 * r * np.cos(theta)
    a2 = r * r
    sos = np.zeros((len(freqs), 6))
    sos[:, 0] = 1 + a1 + a2  # DC gain 1
    sos[:, 3] = 1.0
    sos[:, 4] = a1
    sos[:, 5] = a2
    return sos


@lru_cache(maxsize=None)
def _fricative_sos(kind: int) -> np.ndarray:
    bands = ((3800.0, 7600.0), (2200.0, 4200.0), (1200.0, 7000.0))  # s, sh, f
    lo, hi = bands[kind]
    return scipy.signal.butter(2, (lo, hi), btype="bandpass", fs=SAMPLE_RATE, output="sos")


def _ramp_envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    attack = max(1, min(attack, n // 2))
    release = max(1, min(release, n - attack))
    env[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    env[n - release :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, release + 1) / release)
    return env


def _render(rng: np.random.Generator, spk: _Speaker, room: _Session, code: str, n: int) -> np.ndarray:
    """Synthesise one utterance of exactly ``n`` samples (float64, roughly in [-1, 1])."""
    sr = SAMPLE_RATE
    p = dict(zip(_PROSODY_FIELDS, _sample_prosody(rng, code)))
    rate = max(2.0, p["rate"] * spk.rate)
    dur = n / sr

    # --- 1. syllable plan: (onset start, nucleus start, end, consonant kind, stress) --------
    lead, tail = rng.uniform(0.08, 0.3), rng.uniform(0.12, 0.3)
    syl: list[tuple[float, float, float, int, bool]] = []
    t = lead
    pause_p = float(np.clip(p["pause"], 0.02, 0.8))
    while True:
        n_syl = int(rng.choice((1, 1, 2, 2, 2, 3, 3, 4)))
        d = np.exp(rng.normal(0.0, 0.25, size=n_syl)) / rate
        if t + d.sum() > dur - tail:
            if not syl:  # very short: squeeze one word in
                d *= (dur - tail - t) / d.sum()
            else:
                break
        stress_pos = int(rng.integers(n_syl))
        for i, di in enumerate(d):
            kind = int(rng.choice((-1, 0, 1, 2, 3, 4), p=(0.3, 0.15, 0.08, 0.07, 0.22, 0.18)))
            onset = 0.0 if kind < 0 else di * rng.uniform(0.2, 0.4)
            syl.append((t, t + onset, t + di, kind, i == stress_pos))
            t += di
        if rng.random() < pause_p:
            t += rng.uniform(0.12, 0.5) * 4.2 / rate
        else:
            t += rng.uniform(0.0, 0.04)
    syl_arr = np.array([(a, b, c) for a, b, c, _, _ in syl])

    # --- 2. f0 contour: accents at syllable centres, declination, final fall/rise -----------
    centres = 0.5 * (syl_arr[:, 1] + syl_arr[:, 2])
    stress = np.array([s for *_, s in syl], dtype=float)
    rng_st = p["range_st"] * spk.range
    accents = rng_st * (0.55 * rng.standard_normal(len(syl)) + 0.9 * stress - 0.45)
    accents -= np.linspace(0.0, 1.0, len(syl)) * rng_st * rng.uniform(0.3, 1.0)  # declination
    accents[-1] += rng_st * (1.2 if rng.random() < 0.2 else -1.0)  # question rise / final fall
    knots_t = np.concatenate(([0.0], centres, [dur]))
    knots_v = np.concatenate((accents[:1], accents, accents[-1:]))
    time = np.arange(n) / sr
    contour = np.interp(time, knots_t, knots_v)
    contour = scipy.signal.lfilter([0.01], [1, -0.99], contour - contour[0]) + contour[0]
    f0 = np.clip(spk.f0 * 2.0 ** ((p["f0_st"] + contour) / 12.0), 55.0, 600.0)

    # --- 3. glottal source: Rosenberg flow derivative with jitter and shimmer ---------------
    cyc = np.cumsum(f0) / sr
    k = cyc.astype(np.int64)
    jitter = rng.standard_normal(k[-1] + 2) * float(np.clip(p["jitter"], 0.0, 0.08))
    cyc = np.cumsum(f0 * (1.0 + jitter[k])) / sr
    k = cyc.astype(np.int64)
    ph = cyc - k
    tilt = p["tilt"] + spk.tilt
    tp = 0.42
    tn = float(np.clip(0.2 - 0.06 * tilt, 0.05, 0.4))  # short closing phase = flat spectrum
    opening = ph < tp
    closing = (ph >= tp) & (ph < tp + tn)
    src = np.where(opening, np.sin(np.pi * ph / tp) / tp, 0.0)
    src -= np.where(closing, np.sin(0.5 * np.pi * (ph - tp) / tn) / tn, 0.0)
    shimmer = np.exp(rng.standard_normal(k[-1] + 1) * float(np.clip(p["shimmer"], 0.0, 0.4)))
    src *= shimmer[k]
    # Extra spectral tilt: one-pole low-pass, stronger for lax voices.
    a_tilt = float(np.clip(0.55 - 0.22 * tilt, 0.0, 0.92))
    src = scipy.signal.lfilter([1.0 - a_tilt], [1.0, -a_tilt], src)
    src /= np.sqrt(np.mean(src**2)) + 1e-12
    # Breath: aspiration noise, louder in the open phase.
    breath = float(np.clip(p["breath"] * spk.breath, 0.0, 0.6))
    src += breath * 1.5 * rng.standard_normal(n) * (0.4 + opening)
    noise = rng.standard_normal(n)

    # --- 4. vocal tract per syllable ---------------------------------------------------------
    out = np.zeros(n)
    vowel_ids = rng.integers(len(_VOWELS), size=len(syl))
    fscale = spk.formant_scale * p["formant"]
    base_gain_db = rng.normal(0.0, 1.0, size=len(syl)) + 0.35 * (accents - accents.mean())
    for i, (t0, t1, t2, kind, st) in enumerate(syl):
        a, b, c = int(t0 * sr), int(t1 * sr), min(int(t2 * sr), n)
        gain = 10.0 ** ((base_gain_db[i] + (2.0 + 0.4 * rng_st) * st) / 20.0)
        # Nucleus: voiced source through F1..F4 of the vowel.
        freqs = np.append(_VOWELS[vowel_ids[i]], 3500.0) * fscale * np.exp(rng.normal(0.0, 0.04, 4))
        seg = scipy.signal.sosfilt(_resonator_sos(freqs, _BANDWIDTHS * np.exp(rng.normal(0, 0.15, 4))), src[b:c])
        seg /= np.sqrt(np.mean(seg**2)) + 1e-12
        m = c - b
        out[b:c] += gain * seg * _ramp_envelope(m, int(0.02 * sr), int(min(0.06 * sr, m / 3)))
        if kind < 0 or b - a < 8:
            continue
        m = b - a
        if kind <= 2:  # fricative: band-passed noise
            cons = scipy.signal.sosfilt(_fricative_sos(kind), noise[a:b])
            level = 0.25
        elif kind == 3:  # stop: closure then a short burst
            burst = min(m, int(0.015 * sr))
            cons = np.zeros(m)
            # Normalise the burst itself (not the closure+burst) so its level is fixed.
            seg_b = scipy.signal.sosfilt(_fricative_sos(2), noise[b - burst : b])
            cons[m - burst :] = seg_b / (np.sqrt(np.mean(seg_b**2)) + 1e-12)
            out[a:b] += 0.4 * gain * cons * _ramp_envelope(m, 1, int(0.005 * sr))
            continue
        else:  # nasal murmur: voiced, low formants, wide bandwidths
            cons = scipy.signal.sosfilt(
                _resonator_sos(np.array([260.0, 1100.0, 2400.0]) * fscale, np.array([90.0, 300.0, 400.0])),
                src[a:b],
            )
            level = 0.3
        cons /= np.sqrt(np.mean(cons**2)) + 1e-12
        out[a:b] += level * gain * cons * _ramp_envelope(m, int(0.01 * sr), int(0.01 * sr))

    # --- 5. level, room, noise floor --------------------------------------------------------
    active = np.zeros(n, dtype=bool)
    for t0, _, t2, _, _ in syl:
        active[int(t0 * sr) : int(t2 * sr)] = True
    level_db = -26.0 + spk.level_db + p["energy_db"]
    out *= 10.0 ** (level_db / 20.0) / (np.sqrt(np.mean(out[active] ** 2)) + 1e-12)
    # Room: exponentially decaying noise tail (T60) mixed under the direct sound.
    ir_len = int(room.reverb_t60 * sr)
    ir = rng.standard_normal(ir_len) * np.exp(-6.9 * np.arange(ir_len) / ir_len)
    ir *= room.reverb_mix / np.sqrt(np.sum(ir**2))
    ir[0] = 1.0
    out = scipy.signal.fftconvolve(out, ir)[:n]
    floor = scipy.signal.lfilter([1.0 - room.noise_color], [1.0, -room.noise_color], rng.standard_normal(n))
    floor *= 10.0 ** ((room.noise_db + rng.normal(0.0, 2.0)) / 20.0) / (np.sqrt(np.mean(floor**2)) + 1e-12)
    return out + floor


def _to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def _plan(rng: np.random.Generator, hours: float) -> tuple[list[_Utt], dict[int, dict[str, _Speaker]], dict[int, _Session]]:
    """Decide every utterance (dialog, speaker, label, duration, start time) before any audio."""
    budget = hours * 3600.0 / 5.0  # seconds per session
    speakers = {s: _draw_speakers(rng, s) for s in range(1, 6)}
    rooms = {s: _draw_session(rng, s) for s in range(1, 6)}
    # Durations: log-normal, IEMOCAP-like (mean ~4 s), clipped to 1.5-7 s, whole milliseconds
    # so that start/end with 4 decimals match the wav length exactly.
    per_session: dict[int, list[int]] = {}
    for s in range(1, 6):
        lengths: list[int] = []
        total = 0.0
        while total < budget:
            d = float(np.clip(rng.lognormal(math.log(3.7), 0.4), 1.5, 7.0))
            ms = int(round(d * 1000))
            lengths.append(ms * (SAMPLE_RATE // 1000))
            total += ms / 1000
        per_session[s] = lengths
    codes = iter(_label_sequence(rng, sum(len(v) for v in per_session.values())))

    utts: list[_Utt] = []
    for s in range(1, 6):
        lengths = per_session[s]
        names = _dialog_names(s)
        n_dialogs = int(np.clip(round(len(lengths) / 18), 1, len(names)))
        for dialog, chunk in zip(names[:n_dialogs], np.array_split(np.array(lengths), n_dialogs)):
            t = rng.uniform(1.0, 8.0)
            gender = str(rng.choice(("F", "M")))
            turns = Counter()
            for n_samples in chunk:
                start = round(t, 3)
                utt_id = f"{dialog}_{gender}{turns[gender]:03d}"
                turns[gender] += 1
                utts.append(_Utt(utt_id, dialog, s, gender, next(codes), int(n_samples), start, len(utts)))
                t = start + n_samples / SAMPLE_RATE + rng.uniform(0.2, 2.5)
                if rng.random() < 0.85:  # mostly alternating turns
                    gender = "M" if gender == "F" else "F"
    return utts, speakers, rooms


def _rater_lines(rng: np.random.Generator, code: str) -> tuple[list[str], tuple[float, float, float]]:
    """Evaluator lines of one block and the averaged V/A/D of its external raters."""
    names = list(_CATEGORY_NAMES.values())
    raters = sorted(rng.choice(np.arange(1, 7), size=3, replace=False))
    if code == "xxx":  # no majority: three different labels
        labels = list(rng.choice(names, size=3, replace=False))
    else:
        labels = [_CATEGORY_NAMES[code]] * 2 + [
            _CATEGORY_NAMES[code] if rng.random() < 0.6 else str(rng.choice(names))
        ]
        labels = [labels[i] for i in rng.permutation(3)]
    lines = []
    for r, lab in zip(raters, labels):
        extra = f" {rng.choice(names)};" if rng.random() < 0.1 else ""
        lines.append(f"C-E{r}:\t{lab};{extra}\t()")
    vm = _VAD_MEANS[code]
    vad = []
    for r in sorted(rng.choice(np.arange(1, 7), size=2, replace=False)):
        v, a, d = (int(np.clip(round(m + rng.normal(0, 0.7)), 1, 5)) for m in vm)
        vad.append((v, a, d))
        lines.append(f"A-E{r}:\tval {v}; act {a}; dom  {d};\t()")
    mean = tuple(float(np.mean([x[i] for x in vad])) for i in range(3))
    return lines, mean  # type: ignore[return-value]


#: Layouts :func:`write_demo_corpus` can write (``serprep demo-corpus --layout``).
LAYOUTS = ("iemocap", "msp-improv")


def write_demo_corpus(out: Path, hours: float = 0.5, seed: int = 0, progress: bool = False,
                      layout: str = "iemocap") -> dict[str, Any]:
    """Write a synthetic corpus in the exact layout of ``layout`` under ``out``.

    ``iemocap``: :func:`_write_iemocap` (``IEMOCAP_full_release``: 5 sessions, 10 speakers);
    ``msp-improv``: :func:`_write_msp_improv` (``Evaluation.txt`` + ``Audio/``: 6 sessions,
    12 speakers). Both render the same synthetic speech with the same emotion-dependent prosody;
    the same ``seed``, ``hours`` and ``layout`` give byte-identical files. The summary always
    holds ``layout``, ``root``, ``seed``, ``hours``, ``n_utterances``, ``total_seconds``,
    ``emotions`` (the layout's own label code -> count), ``speakers`` (speaker -> count),
    ``speaker_emotions`` (speaker -> code -> count) and ``sessions``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "msp-improv":
        return _write_msp_improv(Path(out), hours, seed, progress)
    return _write_iemocap(Path(out), hours, seed, progress)


def _write_iemocap(out: Path, hours: float = 0.5, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Write a synthetic corpus in the exact ``IEMOCAP_full_release`` layout under ``out``.

    Args:
        out: root folder (created; existing files of the same names are overwritten). The IEMOCAP
            reader takes it as the corpus root.
        hours: total audio duration in hours (summed over utterances; the last utterance of each
            session may overshoot by a few seconds).
        seed: all randomness (speakers, labels, dialogs, audio) derives from it; the same seed
            and ``hours`` give byte-identical files.
        progress: show a tqdm progress bar on stderr.

    Returns:
        A summary: ``n_utterances``, ``total_seconds``, ``emotions`` (consensus code -> count),
        ``speakers`` (``Ses01F`` ... -> count), ``sessions`` (``Ses01`` ... -> count),
        ``n_dialogs``, ``seed``, ``hours`` and ``root`` (str).

    Layout (per ``SessionN``): ``dialog/EmoEvaluation/<dialog>.txt`` with the consensus label
    blocks (tab-separated summary line ``[start - end]  utt  code  [V, A, D]``, evaluator lines,
    blank line; LF endings; time order, speakers interleaved), ``dialog/transcriptions/<dialog>.txt``
    (``utt [sss.ssss-eee.eeee]: words.``) and ``sentences/wav/<dialog>/<utt>.wav`` (16 kHz mono
    PCM_16). Utterance ids are ``<dialog>_<F|M><NNN>``, the letter naming the speaker's gender;
    each session has one female and one male speaker. End minus start equals the wav length.
    """
    if not hours > 0:
        raise ValueError(f"hours must be positive, got {hours}")
    out = Path(out)
    plan_rng = np.random.default_rng([seed, 0])
    utts, speakers, rooms = _plan(plan_rng, hours)
    text_rng = np.random.default_rng([seed, 1])

    out.mkdir(parents=True, exist_ok=True)
    (out / "README.txt").write_text(
        "Synthetic IEMOCAP-shaped demo corpus written by serprep (serprep.demo.write_demo_corpus).\n"
        f"seed={seed} hours={hours}. Synthesised speech-like audio, NOT real speech; the layout\n"
        "and label syntax follow IEMOCAP_full_release so the IEMOCAP reader reads it unchanged.\n",
        encoding="utf-8",
    )

    # Label and transcription files, one per dialog, blocks in time order.
    by_dialog: dict[str, list[_Utt]] = {}
    for u in utts:
        by_dialog.setdefault(u.dialog, []).append(u)
    for dialog, items in by_dialog.items():
        sess = out / f"Session{items[0].session}"
        emo_dir = sess / "dialog" / "EmoEvaluation"
        tr_dir = sess / "dialog" / "transcriptions"
        emo_dir.mkdir(parents=True, exist_ok=True)
        tr_dir.mkdir(parents=True, exist_ok=True)
        (sess / "sentences" / "wav" / dialog).mkdir(parents=True, exist_ok=True)
        emo = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        tr = []
        for u in sorted(items, key=lambda x: x.start):
            end = u.start + u.n_samples / SAMPLE_RATE
            lines, (v, a, d) = _rater_lines(text_rng, u.code)
            emo.append(f"[{u.start:.4f} - {end:.4f}]\t{u.utt_id}\t{u.code}\t[{v:.4f}, {a:.4f}, {d:.4f}]")
            emo.extend(lines)
            emo.append("")
            n_words = max(1, int(round(u.n_samples / SAMPLE_RATE * text_rng.uniform(1.6, 2.6))))
            words = " ".join(text_rng.choice(_WORDS, size=n_words))
            tr.append(f"{u.utt_id} [{u.start:08.4f}-{end:08.4f}]: {words[0].upper()}{words[1:]}.")
        with open(emo_dir / f"{dialog}.txt", "w", encoding="utf-8", newline="\n") as fh:
            fh.write("\n".join(emo) + "\n")
        with open(tr_dir / f"{dialog}.txt", "w", encoding="utf-8", newline="\n") as fh:
            fh.write("\n".join(tr) + "\n")

    # Audio: each utterance has its own stream, so its bytes depend only on (seed, index).
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(utts), desc="demo corpus", unit="utt")
    for u in utts:
        rng = np.random.default_rng([seed, 2, u.index])
        x = _render(rng, speakers[u.session][u.gender], rooms[u.session], u.code, u.n_samples)
        path = out / f"Session{u.session}" / "sentences" / "wav" / u.dialog / f"{u.utt_id}.wav"
        sf.write(path, _to_pcm16(x), SAMPLE_RATE, subtype="PCM_16")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    speaker_emotions: dict[str, Counter] = {}
    for u in utts:
        speaker_emotions.setdefault(f"Ses{u.session:02d}{u.gender}", Counter())[u.code] += 1
    return {
        "layout": "iemocap",
        "root": str(out),
        "seed": seed,
        "hours": hours,
        "n_utterances": len(utts),
        "n_dialogs": len(by_dialog),
        "total_seconds": round(sum(u.n_samples for u in utts) / SAMPLE_RATE, 3),
        "emotions": dict(sorted(Counter(u.code for u in utts).items())),
        "speakers": dict(sorted(Counter(f"Ses{u.session:02d}{u.gender}" for u in utts).items())),
        "sessions": dict(sorted(Counter(f"Ses{u.session:02d}" for u in utts).items())),
        "speaker_emotions": {k: dict(sorted(v.items())) for k, v in sorted(speaker_emotions.items())},
    }


# --------------------------------------------------------------------------------------
# MSP-IMPROV layout
#
# Consensus-code counts of MSP-IMPROV: A/H/S/N are the published 4-class counts (7,798 of the
# 8,438 turns); how the other 640 split between O (other) and X (no agreement) is our guess.
MSP_IMPROV_CODE_COUNTS: dict[str, int] = {"N": 3477, "H": 2644, "S": 885, "A": 792, "X": 360, "O": 280}
#: Recording conditions of the 8,438 turns: S improvisation, P natural interaction between
#: scenes, T target sentence within an improvisation, R read target sentence.
MSP_IMPROV_CONDITION_COUNTS: dict[str, int] = {"S": 4381, "P": 2785, "T": 652, "R": 620}
# Which of the renderer's prosodies speaks each MSP-IMPROV code (X: a blend, like IEMOCAP's xxx).
_MSP_PROSODY = {"A": "ang", "H": "hap", "S": "sad", "N": "neu", "O": "oth", "X": "xxx"}
_MSP_NAMES = {"A": "Angry", "H": "Happy", "S": "Sad", "N": "Neutral", "O": "Other"}
_MSP_SECONDARY = ("", "", "", "Frustrated", "Excited", "Concerned", "Surprised", "Disappointed,Annoyed")
_MSP_TARGETS = ("A", "H", "S", "N")


@dataclass(frozen=True)
class _MspUtt:
    stem: str  # S01A-F01-S-FM01 (file MSP-IMPROV-<stem>.wav, video UTD-IMPROV-<stem>.avi)
    session: int  # 1..6
    gender: str
    code: str  # consensus code
    n_samples: int
    target: str  # emotion the scenario aimed at (A, H, S, N)
    sentence: int  # 1..20
    condition: str  # R, S, P, T
    index: int  # global index (seeds the audio stream)

    @property
    def speaker(self) -> str:
        return f"{self.gender}{self.session:02d}"

    @property
    def path(self) -> str:
        return (f"Audio/session{self.session}/S{self.sentence:02d}{self.target}/{self.condition}/"
                f"MSP-IMPROV-{self.stem}.wav")


def _plan_msp(rng: np.random.Generator, hours: float) -> tuple[list[_MspUtt], dict[int, dict[str, _Speaker]],
                                                                 dict[int, _Session]]:
    """Decide every MSP-IMPROV turn (speaker, label, scenario, condition, length) before any audio."""
    budget = hours * 3600.0 / 6.0  # seconds per session
    speakers = {s: _draw_speakers(rng, s) for s in range(1, 7)}
    rooms = {s: _draw_session(rng, s) for s in range(1, 7)}
    per_session: dict[int, list[int]] = {}
    for s in range(1, 7):
        lengths: list[int] = []
        total = 0.0
        while total < budget:
            d = float(np.clip(rng.lognormal(math.log(3.7), 0.4), 1.5, 7.0))
            ms = int(round(d * 1000))
            lengths.append(ms * (SAMPLE_RATE // 1000))
            total += ms / 1000
        per_session[s] = lengths
    codes = iter(_label_sequence(rng, sum(len(v) for v in per_session.values()), MSP_IMPROV_CODE_COUNTS))
    conditions = list(MSP_IMPROV_CONDITION_COUNTS)
    cond_p = np.array([MSP_IMPROV_CONDITION_COUNTS[c] for c in conditions], dtype=float)
    cond_p /= cond_p.sum()
    turns: Counter = Counter()
    utts: list[_MspUtt] = []
    for s in range(1, 7):
        gender = str(rng.choice(("F", "M")))
        for n_samples in per_session[s]:
            code = next(codes)
            # The scenario mostly elicits what the raters then perceive, not always.
            target = code if code in _MSP_TARGETS and rng.random() < 0.6 else str(rng.choice(_MSP_TARGETS))
            condition = str(rng.choice(conditions, p=cond_p))
            for sentence in (int(x) for x in rng.permutation(20) + 1):  # a sentence whose turn numbers are left
                key = (sentence, target, gender, s, condition)
                if turns[key] < 99:
                    break
            else:
                raise ValueError(f"hours={hours}: more turns than MSP-IMPROV file names can number")
            turns[key] += 1
            pair = gender + ("M" if gender == "F" else "F")
            stem = f"S{sentence:02d}{target}-{gender}{s:02d}-{condition}-{pair}{turns[key]:02d}"
            utts.append(_MspUtt(stem, s, gender, code, int(n_samples), target, sentence, condition, len(utts)))
            if rng.random() < 0.85:  # mostly alternating turns
                gender = "M" if gender == "F" else "F"
    return utts, speakers, rooms


def _msp_block(rng: np.random.Generator, u: _MspUtt) -> str:
    """One Evaluation.txt block: the consensus line, then one line per rater.

    Raters give a primary label, secondary labels (often none) and A/V/D/N scores (1-5, one
    decimal); the consensus line's scores are the raters' means with six decimals and, as in
    the real file, a space before the ``;`` after the D value.
    """
    names = list(_MSP_NAMES.values())
    n_raters = int(rng.integers(5, 8))
    if u.code == "X":  # no agreement: no label reaches a majority
        labels = [names[i % len(names)] for i in rng.permutation(len(names))][:n_raters]
        labels += [str(rng.choice(names)) for _ in range(n_raters - len(labels))]
        while max(Counter(labels).values()) > n_raters // 2:
            labels[int(rng.integers(n_raters))] = str(rng.choice(names))
    else:
        need = n_raters // 2 + 1
        labels = [_MSP_NAMES[u.code]] * need + [
            _MSP_NAMES[u.code] if rng.random() < 0.5 else str(rng.choice(names)) for _ in range(n_raters - need)]
        labels = [labels[i] for i in rng.permutation(n_raters)]
    v_mean, a_mean, d_mean = _VAD_MEANS[_MSP_PROSODY[u.code]]
    scores = []
    lines = []
    for lab in labels:
        a, v, d = (int(np.clip(round(m + rng.normal(0.0, 0.7)), 1, 5)) for m in (a_mean, v_mean, d_mean))
        nat = int(np.clip(round(rng.normal(3.6, 0.8)), 1, 5))
        scores.append((a, v, d, nat))
        secondary = _MSP_SECONDARY[int(rng.integers(len(_MSP_SECONDARY)))]
        lines.append(f"rater{int(rng.integers(1, 1000)):04d}; {lab}; {secondary}; "
                     f"A:{a:.1f}; V:{v:.1f}; D:{d:.1f}; N:{nat:.1f};")
    a, v, d, nat = (float(np.mean([x[i] for x in scores])) for i in range(4))
    head = f"UTD-IMPROV-{u.stem}.avi; {u.code}; A:{a:.6f}; V:{v:.6f}; D:{d:.6f} ; N:{nat:.6f};"
    return "\n".join([head, *lines])


def _write_msp_improv(out: Path, hours: float = 0.5, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Write a synthetic corpus in the exact MSP-IMPROV layout under ``out``.

    Layout (docs/corpora.md): ``Evaluation.txt`` (blocks separated by blank lines: the consensus
    line ``UTD-IMPROV-S01A-F01-S-FM01.avi; N; A:3.000000; V:3.500000; D:3.000000 ; N:3.500000;``
    then one line per rater, ``rater0042; Neutral; <secondary labels>; A:3.0; V:4.0; D:3.0; N:4.0;``;
    LF endings) and ``Audio/session1..6/S01A/{P,R,S,T}/MSP-IMPROV-S01A-F01-P-FM01.wav`` (16 kHz
    mono PCM_16). 6 sessions x one female + one male speaker (``F01`` .. ``M06``); consensus
    codes in MSP-IMPROV's proportions (:data:`MSP_IMPROV_CODE_COUNTS`), recording conditions in
    its proportions (:data:`MSP_IMPROV_CONDITION_COUNTS`); the scenario's target emotion matches
    the consensus code 60 % of the time (plus chance). Speech, speakers and rooms come from the
    same renderer and prosody tables as the IEMOCAP layout (``A`` speaks like ``ang``, ``H`` like
    ``hap``, ``S`` like ``sad``, ``N`` like ``neu``, ``O`` like ``oth``, ``X`` a blend).

    Returns the summary of :func:`write_demo_corpus` plus ``conditions`` (condition -> count).
    """
    if not hours > 0:
        raise ValueError(f"hours must be positive, got {hours}")
    plan_rng = np.random.default_rng([seed, 10])
    utts, speakers, rooms = _plan_msp(plan_rng, hours)
    text_rng = np.random.default_rng([seed, 11])
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.txt").write_text(
        "Synthetic MSP-IMPROV-shaped demo corpus written by serprep (serprep.demo.write_demo_corpus).\n"
        f"seed={seed} hours={hours}. Synthesised speech-like audio, NOT real speech; the layout\n"
        "and label syntax follow MSP-IMPROV so the MSP-IMPROV reader reads it unchanged.\n",
        encoding="utf-8",
    )
    blocks = [_msp_block(text_rng, u) for u in utts]
    with open(out / "Evaluation.txt", "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n\n".join(blocks) + "\n")

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(utts), desc="demo corpus", unit="utt")
    for u in utts:
        rng = np.random.default_rng([seed, 12, u.index])
        x = _render(rng, speakers[u.session][u.gender], rooms[u.session], _MSP_PROSODY[u.code], u.n_samples)
        path = out / u.path
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, _to_pcm16(x), SAMPLE_RATE, subtype="PCM_16")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    speaker_emotions: dict[str, Counter] = {}
    for u in utts:
        speaker_emotions.setdefault(u.speaker, Counter())[u.code] += 1
    return {
        "layout": "msp-improv",
        "root": str(out),
        "seed": seed,
        "hours": hours,
        "n_utterances": len(utts),
        "total_seconds": round(sum(u.n_samples for u in utts) / SAMPLE_RATE, 3),
        "emotions": dict(sorted(Counter(u.code for u in utts).items())),
        "speakers": dict(sorted(Counter(u.speaker for u in utts).items())),
        "sessions": dict(sorted(Counter(f"session{u.session}" for u in utts).items())),
        "conditions": dict(sorted(Counter(u.condition for u in utts).items())),
        "speaker_emotions": {k: dict(sorted(v.items())) for k, v in sorted(speaker_emotions.items())},
    }
