"""A tiny MSP-IMPROV tree (Evaluation.txt / Evalution.txt, with or without the Audio/ level)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .common import APPLEDOUBLE, SR, _corrupt_bytes, _stable_seed, speaker_voice, speech_like, write_wav

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
