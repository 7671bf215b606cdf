"""A tiny CREMA-D tree: AudioWAV/AAAA_SSS_EEE_LL.wav beside VideoDemographics.csv (docs/corpora.md).

Quirks reproduced: the header-only ``1076_MTI_SAD_XX.wav`` of the release (44-byte RIFF header,
no frames) and a 0-byte wav (both listed by the reader, failures of the build); files of an
actor missing from VideoDemographics.csv and wavs whose names do not parse (skipped and
recorded); AppleDouble ``._*``, ``.DS_Store``, notes, the MP3 copies, the crowd's
processedResults/ and other root files of the repository (ignored).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .common import APPLEDOUBLE, SR, _stable_seed, speaker_voice, speech_like, write_wav
from .truth import CorpusTruth

CREMA_SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
CREMA_EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
CREMA_INTENSITIES = ("LO", "MD", "HI")
DEMOGRAPHICS_HEADER = '"ActorID","Age","Sex","Race","Ethnicity"'
_RACES = ("Caucasian", "African American", "Asian", "Unknown")
_ETHNICITIES = ("Not Hispanic", "Hispanic")
#: The file of the release that holds no audio (a header only).
HEADER_ONLY = "1076_MTI_SAD_XX"


def _header_only_wav(sr: int = SR) -> bytes:
    """A 44-byte RIFF/WAVE header (16-bit mono PCM) with a 0-byte data chunk."""
    fmt = (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
    fmt += sr.to_bytes(4, "little") + (2 * sr).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + fmt + b"data" + (0).to_bytes(4, "little")
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def make_crema_d(root: Path, *, n_female: int = 9, n_male: int = 11, seed: int = 0, quirks: bool = True) -> CorpusTruth:
    """Write a tiny CREMA-D tree under ``root``; return the ground truth (:class:`CorpusTruth`).

    Each actor has one file per emotion on the 11 sentences of unspecified intensity (XX)
    plus one IEO file (LO/MD/HI, or XX for neutral); 0.5-1.5 s of 16 kHz speech-like audio each.
    Actor 1076 is always present (the header-only file is his or hers).
    """
    root = Path(root)
    audio = root / "AudioWAV"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(_stable_seed("crema-d", seed))
    n = n_female + n_male
    pool = [a for a in range(1001, 1092) if a != 1076]
    actor_ids = sorted([1076, *(int(a) for a in rng.choice(pool, size=n - 1, replace=False))])
    sexes = ["F"] * n_female + ["M"] * n_male
    rng.shuffle(sexes)
    actors = {str(a): s for a, s in zip(actor_ids, sexes)}
    # An actor with files but no VideoDemographics.csv line (skipped, recorded).
    stray_actor = str(next(a for a in range(1091, 1000, -1) if str(a) not in actors))

    demographics = []
    for actor, sex in actors.items():
        demographics.append((int(actor), int(rng.integers(20, 75)), "Female" if sex == "F" else "Male",
                             _RACES[int(rng.integers(0, len(_RACES)))], _ETHNICITIES[int(rng.integers(0, 2))]))
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    for row in demographics:
        w.writerow(row)
    (root / "VideoDemographics.csv").write_text(DEMOGRAPHICS_HEADER + "\n" + buf.getvalue(), newline="\n")
    demo = {str(r[0]): r for r in demographics}

    plain = [s for s in CREMA_SENTENCES if s != "IEO"]
    truth: list[dict] = []
    # A 0-byte file: the 4th file of the first actor other than 1076.
    zero_actor = next(a for a in actors if a != "1076")
    for a_index, (actor, sex) in enumerate(actors.items()):
        names = []
        for e_index, emotion in enumerate(CREMA_EMOTIONS):
            sentence = plain[(a_index + 5 * e_index) % len(plain)]
            if actor == "1076" and emotion == "SAD":
                sentence = "MTI"
            names.append((sentence, emotion, "XX"))
        emotion = CREMA_EMOTIONS[a_index % len(CREMA_EMOTIONS)]
        level = "XX" if emotion == "NEU" else CREMA_INTENSITIES[a_index % 3]
        names.append(("IEO", emotion, level))
        voice = speaker_voice(actor, sex, seed)
        _, age, sex_word, race, ethnicity = demo[actor]
        for i, (sentence, emotion, level) in enumerate(names):
            stem = f"{actor}_{sentence}_{emotion}_{level}"
            path = audio / f"{stem}.wav"
            n_samples = int(rng.integers(int(0.5 * SR), int(1.5 * SR)))
            failure = ""
            if quirks and stem == HEADER_ONLY:
                path.write_bytes(_header_only_wav())
                n_samples, failure = 0, "audio has no samples"
            elif quirks and actor == zero_actor and i == 3:
                path.write_bytes(b"")
                n_samples, failure = 0, "empty file (0 bytes)"
            else:
                sig = speech_like(n_samples, SR, f0=voice["f0"], formant_scale=voice["formant_scale"],
                                  seed=_stable_seed("crema-sig", stem, seed))
                write_wav(path, sig, SR)
            truth.append({
                "utt_id": stem, "session": actor, "speaker": actor, "gender": sex, "emotion_raw": emotion,
                "path": f"AudioWAV/{stem}.wav", "sentence": sentence, "intensity": level, "age": float(age),
                "race": race, "ethnicity": ethnicity, "n_samples": n_samples,
                "duration": n_samples / SR if not failure else None, "failed": bool(failure), "failure": failure,
            })

    skipped: list[dict] = []
    ignored: list[str] = []
    if quirks:
        def stray_wav(name: str, message: str, utt_id: str) -> None:
            write_wav(audio / name, speech_like(int(0.6 * SR), SR, seed=_stable_seed("crema-stray", name, seed)), SR)
            skipped.append({"where": f"AudioWAV/{name}", "utt_id": utt_id, "message": message})

        for stem in (f"{stray_actor}_DFA_ANG_XX", f"{stray_actor}_IEO_HAP_HI"):
            stray_wav(f"{stem}.wav", f"actor {stray_actor} is not in VideoDemographics.csv", stem)
        first = truth[0]["utt_id"]
        stray_wav(f"{first} (1).wav", "is not AAAA_SSS_EEE_LL.wav", "")
        stray_wav(f"{first.split('_')[0]}_XYZ_ANG_XX.wav", "unknown sentence code 'XYZ'",
                  f"{first.split('_')[0]}_XYZ_ANG_XX")
        litter = {
            f"AudioWAV/._{first}.wav": APPLEDOUBLE,
            "AudioWAV/.DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(24),
            "AudioWAV/notes.txt": b"re-exported 2019\n",
            f"AudioMP3/{first}.mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(64),
            f"AudioMP3/{truth[1]['utt_id']}.mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(64),
            "processedResults/tabulatedVotes.csv": (
                ",fileName,A,D,F,H,N,S,numResponses,agreement,emoVote,meanEmoResp,meanEmoRespNorm\n"
                f"0,{first},2,0,0,0,8,0,10,0.8,N,1.4,0.2\n").encode(),
            "finishedResponses.csv": b",localid,sessionNums,queryType,questNum,pos,ans,ttr,numTries,clipNum,clipName\n",
            "SentenceFilenames.csv": b"Stimulus_Number,Filename\n1," + first.encode() + b"\n",
            "README.md": b"# CREMA-D\n",
            "LICENSE.txt": b"Open Database License\n",
            ".gitattributes": b"*.wav filter=lfs diff=lfs merge=lfs -text\n",
            "._VideoDemographics.csv": APPLEDOUBLE,
        }
        for rel, data in litter.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            ignored.append(rel)
    return CorpusTruth(truth, skipped, ignored)
