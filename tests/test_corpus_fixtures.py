"""Sanity checks of the on-the-fly corpora themselves (tests/corpus_fixtures.py)."""

from __future__ import annotations

import math
import re
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

from corpus_fixtures import (
    IEMOCAP_CODES,
    MSP_CODES,
    MSP_CONSENSUS_RE,
    SUMMARY_RE,
    make_iemocap,
    speech_like,
)

SUMMARY = re.compile(SUMMARY_RE)


def _label_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.glob("Session*/dialog/EmoEvaluation/*.txt")
        if not p.name.startswith("._")
    )


# ------------------------------------------------------------------------------------ IEMOCAP


def test_iemocap_every_code_present(iemocap_root):
    _, truth = iemocap_root
    assert set(Counter(t["emotion_raw"] for t in truth)) == set(IEMOCAP_CODES)


def test_iemocap_summary_lines_match_truth(iemocap_root):
    root, truth = iemocap_root
    by_id = {t["utt_id"]: t for t in truth}
    seen = []
    for path in _label_files(root):
        raw = path.read_bytes()
        assert b"\r" not in raw
        lines = raw.decode("utf-8").split("\n")
        assert lines[0] == "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
        assert lines[1] == ""
        starts = []
        for line in lines[2:]:
            if line.startswith("["):
                m = SUMMARY.match(line)
                assert m, line
                start, end, utt, code, vad = m.groups()
                t = by_id[utt]
                assert (float(start), float(end), code) == (t["start"], t["end"], t["emotion_raw"])
                v, a, d = (float(x) for x in vad.split(","))
                assert (v, a, d) == (t["valence"], t["arousal"], t["dominance"])
                starts.append(float(start))
                seen.append(utt)
            elif line:
                assert re.match(r"^[CA]-[EFM]\d:\t", line), line
        assert starts == sorted(starts)
    assert sorted(seen) == sorted(by_id)
    text = "\n".join(p.read_text() for p in _label_files(root))
    assert "dom  " in text
    assert re.search(r"^A-E\d:\tval \d; act \d;\t\(\)$", text, re.M)  # dominance missing


def test_iemocap_layout_and_litter(iemocap_root):
    root, truth = iemocap_root
    assert (root / "README.txt").is_file() and (root / "Documentation").is_dir()
    dialogs = {t["dialog"] for t in truth}
    for name in ("Ses03M_impro05a", "Ses03M_impro08b", "Ses05M_script01_1", "Ses05M_script01_1b"):
        assert name in dialogs
    for t in truth:
        assert (root / t["path"]).is_file()
        assert t["path"] == (
            f"Session{t['session'][-1]}/sentences/wav/{t['dialog']}/{t['utt_id']}.wav"
        )
    assert list(root.glob("Session*/dialog/wav/._*.wav"))
    assert list(root.glob("Session*/dialog/avi/DivX/._*.avi"))
    assert list(root.glob("Session*/sentences/wav/*/._*.wav"))
    assert list(root.glob("Session*/sentences/wav/.DS_Store"))
    assert list(root.glob("Session*/sentences/wav/*/*.pk"))
    assert list(root.glob("Session*/dialog/EmoEvaluation/Self-evaluation/*.txt"))
    # XX turns are transcribed but have neither wav nor label.
    trans = "".join(p.read_text() for p in root.glob("Session*/dialog/transcriptions/*.txt"))
    xx = re.findall(r"^(\S+XX\d) \[", trans, re.M)
    assert xx and not set(xx) & {t["utt_id"] for t in truth}


def test_iemocap_dialog_wav_is_stereo(iemocap_root):
    root, _ = iemocap_root
    wavs = [p for p in root.glob("Session*/dialog/wav/*.wav") if not p.name.startswith("._")]
    assert wavs
    for p in wavs:
        with wave.open(str(p)) as w:
            assert w.getnchannels() == 2 and w.getframerate() == 16000


def test_iemocap_gender_from_last_token(iemocap_root):
    _, truth = iemocap_root
    differs = 0
    for t in truth:
        last = t["utt_id"].split("_")[-1]
        assert t["gender"] == last[0] and t["speaker"] == t["session"] + last[0]
        differs += t["dialog"][5] != t["gender"]
    assert 0 < differs < len(truth)
    assert len({t["speaker"] for t in truth}) == 10


def test_iemocap_audio_truth(iemocap_root):
    root, truth = iemocap_root
    bad = [t for t in truth if t["corrupt"]]
    assert len(bad) == 2 and any((root / t["path"]).stat().st_size == 0 for t in bad)
    for t in bad:
        try:
            sf.read(root / t["path"])
        except Exception:
            pass
        else:  # pragma: no cover
            raise AssertionError(f"{t['path']} decodes")
    good = [t for t in truth if not t["corrupt"]]
    lengths = [t["n_samples"] for t in good]
    assert 200 in lengths and 48000 in lengths
    for t in good:
        info = sf.info(str(root / t["path"]))
        assert (info.channels, info.samplerate, info.subtype) == (1, 16000, "PCM_16")
        assert info.frames == t["n_samples"]


def test_iemocap_session_subset_and_determinism(tmp_path):
    a = make_iemocap(tmp_path / "a", sessions=(3,), utts_per_speaker=6, seed=5)
    b = make_iemocap(tmp_path / "b", sessions=(3,), utts_per_speaker=6, seed=5)
    assert a == b
    assert {t["session"] for t in a} == {"Ses03"} and len(a) == 12
    assert set(t["emotion_raw"] for t in a) == set(IEMOCAP_CODES)
    for t in a:
        assert (tmp_path / "a" / t["path"]).read_bytes() == (tmp_path / "b" / t["path"]).read_bytes()
    assert not (tmp_path / "a" / "Session1").exists()


# ------------------------------------------------------------------------------------ MSP-IMPROV


def _consensus(root: Path, name: str) -> dict[str, tuple]:
    out = {}
    for block in (root / name).read_text().split("\n\n"):
        line = block.strip("\n").split("\n")[0]
        m = re.match(MSP_CONSENSUS_RE, line)
        assert m, line
        sent_t, spk, cond, pair, code, a, v, d, n = m.groups()
        out[f"MSP-IMPROV-{sent_t}-{spk}-{cond}-{pair}"] = (code, float(a), float(v), float(d), float(n))
    return out


def _same(x: float, y: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or x == y


def test_msp_labels_match_truth(msp_root):
    root, truth = msp_root
    cons = _consensus(root, "Evaluation.txt")
    assert set(cons) == {t["utt_id"] for t in truth}
    for t in truth:
        code, a, v, d, n = cons[t["utt_id"]]
        assert code == t["emotion_raw"] and (a, v) == (t["arousal"], t["valence"])
        assert _same(d, t["dominance"]) and _same(n, t["naturalness"])
    assert set(t["emotion_raw"] for t in truth) == set(MSP_CODES)
    text = (root / "Evaluation.txt").read_text()
    assert "D:NaN ;" in text and "N:NaN;" in text
    assert re.search(r"A:\d\.\d;", text) and re.search(r"A:\d\.\d{6};", text)
    assert re.search(r"^\S+; \w+; ; A:", text, re.M)  # empty secondary labels


def test_msp_layout_and_audio(msp_root):
    root, truth = msp_root
    assert {t["speaker"] for t in truth} == {f"{g}0{s}" for g in "FM" for s in range(1, 7)}
    for t in truth:
        stem = t["utt_id"]
        parts = stem.split("-")
        assert t["path"] == f"Audio/{t['session']}/{parts[2]}/{parts[4]}/{stem}.wav"
        assert t["speaker"] == parts[3] and t["gender"] == parts[3][0]
        assert t["session"] == f"session{int(parts[3][1:])}"
    assert {t["scenario"] for t in truth} == {"read", "improvised", "natural", "target"}
    bad = [t for t in truth if t["corrupt"]]
    assert len(bad) == 2
    rates = Counter()
    for t in truth:
        if t["corrupt"]:
            continue
        info = sf.info(str(root / t["path"]))
        assert info.frames == t["n_samples"] and info.samplerate == t["sample_rate"]
        rates[info.samplerate] += 1
    assert rates[44100] >= 1 and rates[16000] > 1
    assert list(root.glob("Audio/**/._*.wav")) and (root / "._Evaluation.txt").exists()
    assert list((root / "Evaluators").glob("*.txt"))


def test_msp_variants(msp_root_variant):
    root, truth = msp_root_variant
    names = {p.name for p in root.iterdir()}
    label = "Evalution.txt" if "Evalution.txt" in names else "Evaluation.txt"
    assert set(_consensus(root, label)) == {t["utt_id"] for t in truth}
    for t in truth:
        assert (root / t["path"]).is_file()
    if "Audio" not in names:
        assert all(t["path"].startswith("session") for t in truth)


def test_speech_like_is_speechy():
    x = speech_like(16000, 16000, f0=120.0, seed=3)
    assert x.dtype == np.float32 and x.shape == (16000,)
    assert np.all(np.isfinite(x)) and 0.1 < np.max(np.abs(x)) <= 1.0
    np.testing.assert_array_equal(x, speech_like(16000, 16000, f0=120.0, seed=3))
    # Energy concentrated below 4 kHz (harmonics + formants), a noise floor above.
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    assert power[freqs < 4000].sum() > 100 * power[freqs >= 4000].sum() > 0
    # Syllable-rate amplitude modulation: 20 ms frame energies vary a lot.
    frames = (x[: 16000 // 320 * 320].reshape(-1, 320) ** 2).mean(axis=1)
    assert frames.max() > 10 * np.median(frames)
    assert len(speech_like(200, 16000, seed=1)) == 200
