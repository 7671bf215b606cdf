"""A tiny IEMOCAP_full_release tree (layout and label syntax of docs/corpora.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import APPLEDOUBLE, SR, _assign_codes, _corrupt_bytes, _stable_seed, speaker_voice, speech_like, write_wav

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


