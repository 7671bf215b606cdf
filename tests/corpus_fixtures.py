"""Tiny on-the-fly copies of IEMOCAP and MSP-IMPROV for tests.

The trees reproduce the on-disk layouts of ``docs/corpora.md`` exactly: folder and
file names, label-file syntax (tabs, ``dom  2`` with two spaces, missing dominance, the space
before ``;`` after the MSP D value, ``NaN`` values, varying decimals), whole-dialog stereo wavs,
AppleDouble ``._*`` litter, non-wav entries, per-rater label files that must be ignored, and
(optionally) one corrupt and one empty utterance wav. Audio is speech-like (harmonic source,
vibrato, syllable-rate modulation, formant resonators, pauses, a little noise) and fully
deterministic for a given ``seed``.

Plain functions only (no pytest import): ``make_iemocap``, ``make_msp_improv``,
``speech_like``. Each ``make_*`` returns the ground truth, one dict per labelled utterance.
"""

from __future__ import annotations

import math
import wave
import zlib
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

__all__ = [
    "IEMOCAP_CODES",
    "MSP_CODES",
    "IEMOCAP_DIALOGS",
    "speech_like",
    "write_wav",
    "make_iemocap",
    "make_msp_improv",
    "SUMMARY_RE",
    "MSP_CONSENSUS_RE",
]

SR = 16000

# ---------------------------------------------------------------------------------------------
# Speech-like signal
# ---------------------------------------------------------------------------------------------


def _stable_seed(*parts: object) -> int:
    """A seed that does not depend on PYTHONHASHSEED."""
    return zlib.crc32("|".join(str(p) for p in parts).encode("utf-8"))


def _resonator(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    """Second-order all-pole resonator (one formant), unit gain at DC-ish."""
    r = math.exp(-math.pi * bw / sr)
    theta = 2.0 * math.pi * freq / sr
    a = [1.0, -2.0 * r * math.cos(theta), r * r]
    b = [1.0 - r]
    return lfilter(b, a, x)


def speaker_voice(speaker: str, gender: str, seed: int = 0) -> dict:
    """Deterministic voice parameters (f0, formant scale) for one speaker."""
    rng = np.random.default_rng(_stable_seed("voice", speaker, seed))
    if gender == "F":
        f0 = float(rng.uniform(185.0, 245.0))
        scale = float(rng.uniform(1.10, 1.20))
    else:
        f0 = float(rng.uniform(95.0, 140.0))
        scale = float(rng.uniform(0.95, 1.03))
    return {"f0": f0, "formant_scale": scale}


def speech_like(
    n_samples: int,
    sr: int = SR,
    *,
    f0: float = 120.0,
    formant_scale: float = 1.0,
    seed: int = 0,
    peak: float = 0.5,
) -> np.ndarray:
    """Cheap speech-like float32 signal of exactly ``n_samples`` samples in [-1, 1].

    Harmonic source at ``f0`` with slow intonation and vibrato, syllable-rate (3-6 Hz)
    amplitude modulation, short pauses, 3 formant resonators, a little noise.
    """
    n = int(n_samples)
    if n <= 0:
        return np.zeros(0, dtype=np.float32)
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64) / sr
    # f0 contour: declination + slow intonation + vibrato.
    dur = n / sr
    contour = (
        1.0
        + 0.08 * np.sin(2 * np.pi * rng.uniform(0.4, 1.0) * t + rng.uniform(0, 2 * np.pi))
        + 0.02 * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t + rng.uniform(0, 2 * np.pi))
        - 0.10 * (t / max(dur, 1e-3))
    )
    f0_t = f0 * contour
    phase = 2 * np.pi * np.cumsum(f0_t) / sr
    n_harm = max(1, int(min(4000.0, 0.45 * sr) // (f0 * 1.15)))
    src = np.zeros(n, dtype=np.float64)
    tilt = rng.uniform(0.9, 1.3)
    for k in range(1, n_harm + 1):
        src += np.sin(k * phase) / (k**tilt)
    # Aspiration noise in the source.
    src += 0.05 * rng.standard_normal(n)
    # Formants (cascade), vowel targets drawn per utterance.
    f1 = rng.uniform(350, 800) * formant_scale
    f2 = rng.uniform(900, 2200) * formant_scale
    f3 = rng.uniform(2400, 3000) * formant_scale
    y = src
    for freq, bw in ((f1, 80.0), (f2, 120.0), (f3, 200.0)):
        if freq < 0.45 * sr:
            y = _resonator(y, freq, bw, sr)
    # Syllable-rate envelope with short pauses.
    rate = rng.uniform(3.0, 6.0)
    env = np.clip(np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)), 0.0, None) ** 0.6
    env = 0.15 + 0.85 * env
    if dur > 0.6:
        for _ in range(int(rng.integers(1, 3))):
            width = int(rng.uniform(0.08, 0.2) * sr)
            start = int(rng.integers(0, max(1, n - width)))
            ramp = np.hanning(width) if width > 2 else np.ones(width)
            env[start : start + width] *= 1.0 - ramp[: len(env[start : start + width])]
    # Onset/offset fades (5 ms) to avoid clicks.
    fade = min(n // 2, int(0.005 * sr))
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade)
        env[:fade] *= ramp
        env[n - fade :] *= ramp[::-1]
    y = y * env
    rms = float(np.sqrt(np.mean(y * y))) if n else 0.0
    y = y + 0.01 * (rms if rms > 0 else 1e-3) * rng.standard_normal(n)  # ~40 dB SNR floor
    m = float(np.max(np.abs(y)))
    if m > 0:
        y = y * (peak / m)
    return y.astype(np.float32)


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")


def write_wav(path: Path, samples: np.ndarray, sr: int = SR) -> None:
    """Write 16-bit PCM (mono ``[n]`` or multi-channel ``[n, ch]``) with the stdlib."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(samples)
    channels = 1 if arr.ndim == 1 else arr.shape[1]
    data = _to_int16(arr) if arr.dtype != np.dtype("<i2") else arr
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.ascontiguousarray(data).tobytes())


def _corrupt_bytes(rng: np.random.Generator) -> bytes:
    """A RIFF/WAVE header whose fmt chunk is garbage, then truncated random bytes.

    libsndfile (soundfile) refuses it; the file is not empty.
    """
    fmt = (
        b"fmt "
        + (16).to_bytes(4, "little")
        + (0xBEEF).to_bytes(2, "little")  # unknown format tag
        + (0).to_bytes(2, "little")  # zero channels
        + (0).to_bytes(4, "little")  # zero sample rate
        + bytes(8)
    )
    junk = rng.integers(0, 256, 37, dtype=np.uint8).tobytes()
    body = b"WAVE" + fmt + b"data" + (64000).to_bytes(4, "little") + junk
    return b"RIFF" + (len(body) + 5000).to_bytes(4, "little") + body


# AppleDouble "._*" resource-fork litter: magic, "Mac OS X", binary (not valid UTF-8).
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\x00\x00\x00\t\x00\x00\x002\x00\x00\x0e\xb0ATTR\xff\xfe\x9a\x00"


# ---------------------------------------------------------------------------------------------
# IEMOCAP
# ---------------------------------------------------------------------------------------------

IEMOCAP_CODES = ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx")
_IEMOCAP_WEIGHTS = {
    "neu": 17, "fru": 18, "ang": 11, "sad": 11, "exc": 10, "hap": 6,
    "sur": 1, "fea": 1, "dis": 0.5, "oth": 0.5, "xxx": 24,
}  # fmt: skip
_CAT_NAMES = {
    "neu": "Neutral", "hap": "Happiness", "exc": "Excited", "sad": "Sadness",
    "ang": "Anger", "fru": "Frustration", "sur": "Surprise", "fea": "Fear",
    "dis": "Disgust", "oth": "Other",
}  # fmt: skip

# Dialogs per session (the irregular names of sessions 3 and 5 included).
IEMOCAP_DIALOGS: dict[int, tuple[str, ...]] = {
    1: ("Ses01F_impro01", "Ses01M_script01_2"),
    2: ("Ses02M_impro02", "Ses02F_script02_1"),
    3: ("Ses03M_impro05a", "Ses03M_impro08b", "Ses03F_script03_2"),
    4: ("Ses04F_impro07", "Ses04M_script01_3"),
    5: ("Ses05M_script01_1", "Ses05M_script01_1b", "Ses05F_impro04"),
}

_SENTENCES = (
    "Excuse me.", "Do you have your forms?", "Yeah.", "Let me see them.",
    "Is there a problem?", "Who told you to get in this line?", "You did.",
    "I don't know what to tell you.", "Well, what's the problem?", "Okay.",
    "I've been waiting here for two hours.", "That's not my fault.", "Oh, come on!",
    "I can't believe you did that.", "We'll figure it out.", "Really? That's wonderful.",
)  # fmt: skip

# Regex a reader's summary line must match (tests use it too).
SUMMARY_RE = r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(\S+)\t(\w+)\t\[(.*)\]$"


def _assign_codes(n: int, codes: tuple[str, ...], weights: dict, rng) -> list[str]:
    """Every code at least once (if n allows), the rest by weight, shuffled."""
    out = list(codes[: min(n, len(codes))])
    if n > len(out):
        p = np.array([weights[c] for c in codes], dtype=float)
        out += list(rng.choice(codes, size=n - len(out), p=p / p.sum()))
    rng.shuffle(out)
    return [str(c) for c in out]


def _iemocap_eval_lines(code: str, rng, speaker_letter: str) -> tuple[list[str], tuple]:
    """Evaluator lines of one block and the (v, a, d) averages of the external A- raters."""
    lines: list[str] = []
    others = [c for c in _CAT_NAMES if c != code]
    for e in ("E1", "E2", "E3")[: int(rng.integers(2, 4))]:
        if code == "xxx":
            labs = [_CAT_NAMES[str(rng.choice(others))]]
        else:
            labs = [_CAT_NAMES[code]]
            if rng.random() < 0.3:
                labs.append(_CAT_NAMES[str(rng.choice(others))])
        note = "(curious)" if rng.random() < 0.15 else "()"
        lines.append(f"C-{e}:\t" + " ".join(f"{lab};" for lab in labs) + f"\t{note}")
    self_letter = speaker_letter if rng.random() < 0.7 else ("M" if speaker_letter == "F" else "F")
    lines.append(f"C-{self_letter}1:\t{_CAT_NAMES[str(rng.choice(list(_CAT_NAMES)))]};\t()")
    vals, acts, doms = [], [], []
    for i, e in enumerate(("E1", "E3", "E4")[: int(rng.integers(2, 4))]):
        v, a = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        vals.append(v)
        acts.append(a)
        if i == 0 or rng.random() < 0.6:
            d = int(rng.integers(1, 6))
            doms.append(d)
            lines.append(f"A-{e}:\tval {v}; act {a}; dom  {d};\t()")
        else:
            lines.append(f"A-{e}:\tval {v}; act {a};\t()")  # dominance missing
    sv, sa = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    lines.append(f"A-{self_letter}1:\tval {sv}; act {sa}; dom  {int(rng.integers(1, 6))};\t()")
    vad = (
        round(float(np.mean(vals)), 4),
        round(float(np.mean(acts)), 4),
        round(float(np.mean(doms)), 4),
    )
    return lines, vad


def make_iemocap(
    root: Path,
    *,
    utts_per_speaker: int = 8,
    seed: int = 0,
    corrupt: bool = True,
    sessions=(1, 2, 3, 4, 5),
) -> list[dict]:
    """Build a tiny IEMOCAP_full_release tree directly under ``root``; return the ground truth.

    Per session, ``utts_per_speaker`` turns of each of the two speakers, spread over the
    session's dialogs (``IEMOCAP_DIALOGS``), speakers alternating in time. See the module
    docstring and the report in the tests for the litter created.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sessions = tuple(int(s) for s in sessions)
    rng = np.random.default_rng(_stable_seed("iemocap", seed))

    (root / "README.txt").write_text(
        "IEMOCAP: Interactive Emotional Dyadic Motion Capture Database (tiny test copy)\n"
    )
    (root / "Documentation").mkdir(exist_ok=True)
    (root / "Documentation" / "IEMOCAP_EmoEvaluation_notes.txt").write_text(
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n"
    )

    # Plan every turn first (so the special cases and the code set are corpus-wide).
    plan: list[dict] = []
    for s in sessions:
        dialogs = IEMOCAP_DIALOGS[s]
        counters: dict[tuple[str, str], int] = {}
        for i in range(2 * utts_per_speaker):
            letter = "F" if i % 2 == 0 else "M"
            dialog = dialogs[i % len(dialogs)]
            k = counters.get((dialog, letter), 0)
            counters[(dialog, letter)] = k + 1
            plan.append({"s": s, "dialog": dialog, "letter": letter, "num": k})
    n = len(plan)
    codes = _assign_codes(n, IEMOCAP_CODES, _IEMOCAP_WEIGHTS, rng)
    for p, c in zip(plan, codes):
        p["code"] = c
        p["n_samples"] = int(rng.integers(int(0.3 * SR), int(2.5 * SR)))
        p["kind"] = "ok"
    # Special cases on distinct turns: tiny (<25 ms), exactly 3.00 s, corrupt, empty.
    special = rng.permutation(n)
    if n >= 1:
        plan[special[0]]["n_samples"] = 200
    if n >= 2:
        plan[special[1]]["n_samples"] = 3 * SR
    if corrupt and n >= 4:
        plan[special[2]]["kind"] = "corrupt"
        plan[special[3]]["kind"] = "empty"

    truth: list[dict] = []
    by_dialog: dict[str, list[dict]] = {}
    for p in plan:
        by_dialog.setdefault(p["dialog"], []).append(p)

    for s in sessions:
        sess = f"Ses0{s}"
        sdir = root / f"Session{s}"
        emo = sdir / "dialog" / "EmoEvaluation"
        for sub in ("Attribute", "Categorical", "Self-evaluation"):
            (emo / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("transcriptions", "wav", "lab", "avi/DivX", "MOCAP_rotated"):
            (sdir / "dialog" / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("wav", "ForcedAlignment", "MOCAP_head"):
            (sdir / "sentences" / sub).mkdir(parents=True, exist_ok=True)
        (sdir / "sentences" / "wav" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(24))

        for d_idx, dialog in enumerate(IEMOCAP_DIALOGS[s]):
            turns = by_dialog.get(dialog, [])
            if not turns:
                continue
            mode = "improvised" if "_impro" in dialog else "scripted"
            drng = np.random.default_rng(_stable_seed("dialog", dialog, seed))
            clock = float(drng.uniform(1.0, 3.0))
            blocks: list[str] = []
            trans: list[tuple[float, str]] = []
            cat_lines: list[str] = []
            atr_lines: list[str] = []
            self_blocks: list[str] = []
            wav_dir = sdir / "sentences" / "wav" / dialog
            wav_dir.mkdir(parents=True, exist_ok=True)
            placed: list[tuple[float, str, np.ndarray]] = []
            for p in turns:
                letter = p["letter"]
                utt = f"{dialog}_{letter}{p['num']:03d}"
                start = round(clock, 4)
                end = round(start + p["n_samples"] / SR, 4)
                clock = end + float(drng.uniform(0.05, 0.6))
                urng = np.random.default_rng(_stable_seed("utt", utt, seed))
                ev_lines, (v, a, dom) = _iemocap_eval_lines(p["code"], urng, letter)
                summary = f"[{start:.4f} - {end:.4f}]\t{utt}\t{p['code']}\t[{v:.4f}, {a:.4f}, {dom:.4f}]"
                blocks.append("\n".join([summary, *ev_lines]) + "\n")
                text = _SENTENCES[int(urng.integers(0, len(_SENTENCES)))]
                trans.append((start, f"{utt} [{start:08.4f}-{end:08.4f}]: {text}"))
                # Per-rater files (ignored by readers): look like label lines.
                cat_lines.append(f"{utt} :{_CAT_NAMES.get(p['code'], 'Other')}; ()")
                atr_lines.append(f"{utt} :act {int(urng.integers(1, 6))}; val {int(urng.integers(1, 6))}; dom  2; ()")
                other = [c for c in IEMOCAP_CODES if c != p["code"]][int(urng.integers(0, 10))]
                self_blocks.append(
                    f"[{start:.4f} - {end:.4f}]\t{utt}\t{other}\t[3.0000, 3.0000, 3.0000]\n"
                    f"C-{letter}1:\t{_CAT_NAMES.get(other, 'Other')};\t()\n"
                )
                # The utterance wav.
                voice = speaker_voice(f"{sess}{letter}", letter, seed)
                sig = speech_like(
                    p["n_samples"], SR, f0=voice["f0"], formant_scale=voice["formant_scale"],
                    seed=_stable_seed("sig", utt, seed),
                )
                wav_path = wav_dir / f"{utt}.wav"
                is_bad = p["kind"] != "ok"
                if p["kind"] == "corrupt":
                    wav_path.write_bytes(_corrupt_bytes(urng))
                elif p["kind"] == "empty":
                    wav_path.write_bytes(b"")
                else:
                    write_wav(wav_path, sig, SR)
                placed.append((start, letter, sig))
                truth.append(
                    {
                        "utt_id": utt,
                        "session": sess,
                        "speaker": f"{sess}{letter}",
                        "gender": letter,
                        "emotion_raw": p["code"],
                        "path": wav_path.relative_to(root).as_posix(),
                        "dialog": dialog,
                        "mode": mode,
                        "valence": v,
                        "arousal": a,
                        "dominance": dom,
                        "start": start,
                        "end": end,
                        "transcript": text,
                        "n_samples": 0 if is_bad else int(p["n_samples"]),
                        "sample_rate": SR,
                        "corrupt": is_bad,
                    }
                )
            # XX turns: transcription only (no wav, no label).
            xx_letter = "M" if d_idx % 2 == 0 else "F"
            xx_start = round(clock, 4)
            xx_end = round(xx_start + 0.8, 4)
            trans.append((xx_start, f"{dialog}_{xx_letter}XX0 [{xx_start:08.4f}-{xx_end:08.4f}]: [LAUGHTER]"))
            trans.sort(key=lambda x: x[0])

            header = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
            (emo / f"{dialog}.txt").write_text(header + "\n".join(blocks) + "\n", newline="\n")
            (emo / "Categorical" / f"{dialog}_e2_cat.txt").write_text("\n".join(cat_lines) + "\n")
            (emo / "Attribute" / f"{dialog}_e3_atr.txt").write_text("\n".join(atr_lines) + "\n")
            # Same file name as the consensus file, label-file syntax, other codes: a trap
            # for readers that glob recursively.
            (emo / "Self-evaluation" / f"{dialog}.txt").write_text(header + "\n".join(self_blocks) + "\n")
            (sdir / "dialog" / "transcriptions" / f"{dialog}.txt").write_text(
                "\n".join(line for _, line in trans) + "\n"
            )
            # Whole-dialog STEREO wav (F on the left, M on the right) + AppleDouble litter.
            total = int((clock + 0.2) * SR)
            stereo = np.zeros((total, 2), dtype=np.float32)
            for st, letter, sig in placed:
                i0 = int(st * SR)
                seg = sig[: max(0, total - i0)]
                stereo[i0 : i0 + len(seg), 0 if letter == "F" else 1] += seg
            stereo += 0.002 * drng.standard_normal(stereo.shape).astype(np.float32)
            write_wav(sdir / "dialog" / "wav" / f"{dialog}.wav", stereo, SR)
            (sdir / "dialog" / "wav" / f"._{dialog}.wav").write_bytes(APPLEDOUBLE)
            (sdir / "dialog" / "avi" / "DivX" / f"._{dialog}.avi").write_bytes(APPLEDOUBLE)
            lab_dir = sdir / "dialog" / "lab" / f"{sess}_{turns[0]['letter']}"
            lab_dir.mkdir(parents=True, exist_ok=True)
            (lab_dir / f"{turns[0]['dialog']}_{turns[0]['letter']}{turns[0]['num']:03d}.lab").write_text(
                f"{placed[0][0]:.4f} {placed[0][0] + 0.5:.4f} HELLO\n"
            )
            fa = sdir / "sentences" / "ForcedAlignment" / dialog
            fa.mkdir(parents=True, exist_ok=True)
            (fa / f"{dialog}_{turns[0]['letter']}{turns[0]['num']:03d}.wdseg").write_text(
                " SFrm  EFrm    SegAScr Word\n    0    14    -75423 <s>\n"
            )
            # Litter inside sentences/wav/<dialog>/ for the first dialog of each session.
            if d_idx == 0:
                first = f"{turns[0]['dialog']}_{turns[0]['letter']}{turns[0]['num']:03d}"
                (wav_dir / f"._{first}.wav").write_bytes(APPLEDOUBLE)
                (wav_dir / f"{dialog}.pk").write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00N.")
        # AppleDouble litter at the top level of EmoEvaluation (matches *.txt!).
        (emo / f"._{IEMOCAP_DIALOGS[s][0]}.txt").write_bytes(APPLEDOUBLE)
    return truth


# ---------------------------------------------------------------------------------------------
# MSP-IMPROV
# ---------------------------------------------------------------------------------------------

MSP_CODES = ("A", "H", "S", "N", "O", "X")
_MSP_WEIGHTS = {"A": 10, "H": 25, "S": 10, "N": 40, "O": 3, "X": 7}
_MSP_NAMES = {"A": "Angry", "H": "Happy", "S": "Sad", "N": "Neutral", "O": "Other"}
_MSP_SCENARIO = {"R": "read", "S": "improvised", "P": "natural", "T": "target"}
_MSP_SECONDARY = ("", "", "Frustrated", "Concerned,Surprised", "Excited", "Disappointed,Annoyed")

MSP_CONSENSUS_RE = (
    r"^UTD-IMPROV-(S\d\d[AHSN])-([FM]\d\d)-([RSPT])-([FM]{2}\d\d)\.avi; ([AHSNOX]); "
    r"A:(\S+); V:(\S+); D:(\S+) ; N:(\S+);$"
)


def _fmt_num(x: float, style: int) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "NaN"
    return ("{:.6f}", "{:.1f}", "{:.2f}", "{:.4f}")[style].format(x)


def make_msp_improv(
    root: Path,
    *,
    evaluation_name: str = "Evaluation.txt",
    audio_level: bool = True,
    utts_per_speaker: int = 6,
    seed: int = 0,
    corrupt: bool = True,
) -> list[dict]:
    """Build a tiny MSP-IMPROV tree under ``root``; return the ground truth (one dict per turn)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    audio_root = root / "Audio" if audio_level else root
    rng = np.random.default_rng(_stable_seed("msp", seed))

    plan: list[dict] = []
    used: set[str] = set()
    for s in range(1, 7):
        for g in ("F", "M"):
            spk = f"{g}{s:02d}"
            for i in range(utts_per_speaker):
                cond = "RSPT"[i % 4]
                while True:
                    sent = int(rng.integers(1, 21))
                    target = "AHSN"[int(rng.integers(0, 4))]
                    pair = "FM" if rng.random() < 0.5 else "MF"
                    turn = int(rng.integers(1, 30))
                    stem = f"MSP-IMPROV-S{sent:02d}{target}-{spk}-{cond}-{pair}{turn:02d}"
                    if stem not in used:
                        used.add(stem)
                        break
                plan.append(
                    {"s": s, "spk": spk, "g": g, "sent": sent, "target": target, "cond": cond,
                     "stem": stem}
                )  # fmt: skip
    n = len(plan)
    # Each code once on randomly chosen turns; the rest by weight, leaning to the target.
    guaranteed = dict(zip((int(i) for i in rng.permutation(n)), MSP_CODES))
    p_w = np.array([_MSP_WEIGHTS[c] for c in MSP_CODES], dtype=float)
    for i, p in enumerate(plan):
        if i in guaranteed:
            c = guaranteed[i]
        else:
            c = str(rng.choice(MSP_CODES, p=p_w / p_w.sum()))
            if c in "AHSN" and rng.random() < 0.5:
                c = p["target"]
        p["code"] = c
        p["n_samples"] = int(rng.integers(int(0.3 * SR), int(2.5 * SR)))
        p["sr"] = SR
        p["kind"] = "ok"
    special = rng.permutation(n)
    # One 44.1 kHz file (length a multiple of 441 so its 16 kHz length is exact: 160 per 441).
    p44 = plan[special[0]]
    p44["sr"] = 44100
    p44["n_samples"] = 441 * int(rng.integers(40, 200))
    if corrupt and n >= 3:
        plan[special[1]]["kind"] = "corrupt"
        plan[special[2]]["kind"] = "empty"

    blocks: list[str] = []
    truth: list[dict] = []
    for idx, p in enumerate(plan):
        urng = np.random.default_rng(_stable_seed("mspu", p["stem"], seed))
        a = float(urng.uniform(1.0, 5.0))
        v = float(urng.uniform(1.0, 5.0))
        d = float("nan") if urng.random() < 0.12 else float(urng.uniform(1.0, 5.0))
        nat = float("nan") if urng.random() < 0.12 else float(urng.uniform(1.0, 5.0))
        style = [0, 0, 1, 2, 3][idx % 5]
        # Ground truth = the value as written (rounded to the written decimals).
        a, v = float(_fmt_num(a, style)), float(_fmt_num(v, style))
        d, nat = float(_fmt_num(d, style)), float(_fmt_num(nat, style))
        vid = p["stem"].replace("MSP-IMPROV-", "UTD-IMPROV-", 1) + ".avi"
        lines = [
            f"{vid}; {p['code']}; A:{_fmt_num(a, style)}; V:{_fmt_num(v, style)}; "
            f"D:{_fmt_num(d, style)} ; N:{_fmt_num(nat, style)};"
        ]
        for r in range(int(urng.integers(3, 7))):
            rater = f"rater{int(urng.integers(1, 900)):04d}"
            if p["code"] in _MSP_NAMES and urng.random() < 0.75:
                prim = _MSP_NAMES[p["code"]]
            else:
                prim = list(_MSP_NAMES.values())[int(urng.integers(0, 5))]
            sec = _MSP_SECONDARY[int(urng.integers(0, len(_MSP_SECONDARY)))]
            rd = "NaN" if urng.random() < 0.05 else f"{int(urng.integers(1, 6))}.0"
            lines.append(
                f"{rater}; {prim}; {sec}; A:{int(urng.integers(1, 6))}.0; "
                f"V:{int(urng.integers(1, 6))}.0; D:{rd}; N:{int(urng.integers(1, 6))}.0;"
            )
        blocks.append("\n".join(lines))

        wav_dir = audio_root / f"session{p['s']}" / f"S{p['sent']:02d}{p['target']}" / p["cond"]
        wav_dir.mkdir(parents=True, exist_ok=True)
        wav_path = wav_dir / f"{p['stem']}.wav"
        if p["kind"] == "corrupt":
            wav_path.write_bytes(_corrupt_bytes(urng))
        elif p["kind"] == "empty":
            wav_path.write_bytes(b"")
        else:
            voice = speaker_voice(p["spk"], p["g"], seed)
            sig = speech_like(
                p["n_samples"], p["sr"], f0=voice["f0"], formant_scale=voice["formant_scale"],
                seed=_stable_seed("sig", p["stem"], seed),
            )
            write_wav(wav_path, sig, p["sr"])
        if idx % 5 == 1:
            (wav_dir / f"._{p['stem']}.wav").write_bytes(APPLEDOUBLE)
        is_bad = p["kind"] != "ok"
        ns = 0 if is_bad else int(p["n_samples"])
        truth.append(
            {
                "utt_id": p["stem"],
                "session": f"session{p['s']}",
                "speaker": p["spk"],
                "gender": p["g"],
                "emotion_raw": p["code"],
                "path": wav_path.relative_to(root).as_posix(),
                "sentence": f"S{p['sent']:02d}",
                "target_emotion": p["target"],
                "scenario": _MSP_SCENARIO[p["cond"]],
                "valence": v,
                "arousal": a,
                "dominance": d,
                "naturalness": nat,
                "n_samples": ns,
                "sample_rate": p["sr"],
                "n_samples_16k": ns * SR // p["sr"] if p["sr"] != SR else ns,
                "corrupt": is_bad,
            }
        )

    # Blocks in a shuffled order (readers must not rely on order).
    order = rng.permutation(len(blocks))
    (root / evaluation_name).write_text("\n\n".join(blocks[i] for i in order) + "\n", newline="\n")
    # Litter: AppleDouble of the label file, evaluator sub-folder, stray txt, .DS_Store.
    (root / f"._{evaluation_name}").write_bytes(APPLEDOUBLE)
    ev = root / "Evaluators"
    ev.mkdir(exist_ok=True)
    (ev / "evaluator_0042.txt").write_text(
        "UTD-IMPROV-S01A-F01-S-FM01.avi; A; A:4.0; V:2.0; D:3.0 ; N:3.0;\n"
        "rater0042; Angry; ; A:4.0; V:2.0; D:3.0; N:3.0;\n"
    )
    (audio_root / "session1" / "notes.txt").write_text("recorded at UTD\n")
    (audio_root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(24))
    return truth
