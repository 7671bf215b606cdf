"""A tiny MSP-Podcast tree: Audios/MSP-PODCAST_XXXX_YYYY.wav and Labels/labels_consensus.csv.

Variants: the label table spelled ``labels_concensus.csv``, release 1.12's
``labels_consensus.json`` alone or beside the CSV (the CSV is read), and older releases'
``Validation`` for Development. Quirks: speakers ``Unknown`` (one pseudo speaker per partition)
with Male, Female and Unknown genders; Test3 rows whose labels are withheld (empty EmoClass and
ratings); a labelled row whose wav is missing (a build failure); wavs no row names, a row whose
file name does not parse, and litter (AppleDouble, .DS_Store, labels_detailed.csv, transcripts).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .common import APPLEDOUBLE, SR, _stable_seed, speaker_voice, speech_like, write_wav
from .truth import CorpusTruth

PODCAST_CODES = ("A", "S", "H", "U", "F", "D", "C", "N", "O", "X")
PODCAST_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
_WEIGHTS = {"A": 8, "S": 8, "H": 15, "U": 3, "F": 2, "D": 2, "C": 3, "N": 40, "O": 4, "X": 15}
#: Known speakers per partition (F, M alternating); Test3's labels are withheld.
_KNOWN = {"Train": 6, "Development": 3, "Test1": 3, "Test2": 2, "Test3": 1}
_UNKNOWN = {"Train": 3, "Development": 3, "Test1": 3, "Test2": 2, "Test3": 2}
_GENDER_WORD = {"F": "Female", "M": "Male", "U": "Unknown"}


def _codes_for(partition: str, n: int, rng: np.random.Generator) -> list[str]:
    """Codes of a partition's rows: every code in Train, A/H/N/S in every labelled partition."""
    if partition == "Test3":
        return [""] * n
    need = list(PODCAST_CODES) if partition == "Train" else ["A", "H", "N", "S"]
    p = np.array([_WEIGHTS[c] for c in PODCAST_CODES], dtype=float)
    out = need[:n] + [str(c) for c in rng.choice(PODCAST_CODES, size=max(0, n - len(need)), p=p / p.sum())]
    rng.shuffle(out)
    return out


def _fmt(x: float, rng: np.random.Generator) -> str:
    return ("{:.1f}", "{:.2f}", "{:.4f}", "{:.6f}")[int(rng.integers(0, 4))].format(x)


def make_msp_podcast(
    root: Path,
    *,
    label_name: str = "labels_consensus.csv",
    json_too: bool = False,
    development_name: str = "Development",
    utts_per_speaker: int = 4,
    seed: int = 0,
    quirks: bool = True,
    shared_speaker: bool = False,
) -> CorpusTruth:
    """Write a tiny MSP-Podcast tree under ``root``; return the ground truth (:class:`CorpusTruth`).

    ``label_name``: the label table written (``labels_consensus.csv``, ``labels_concensus.csv``
    or ``labels_consensus.json``); ``json_too``: also a ``labels_consensus.json`` that lists one
    more file (the CSV must be read); ``development_name``: ``Validation`` for older releases;
    ``shared_speaker``: one Train speaker also speaks in Test1 (the build must refuse it).
    """
    root = Path(root)
    audios = root / "Audios"
    labels = root / "Labels"
    audios.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(_stable_seed("msp-podcast", seed))
    ids = iter(int(i) for i in rng.choice(np.arange(1, 2200), size=sum(_KNOWN.values()), replace=False))
    podcasts = iter(int(i) for i in rng.choice(np.arange(1, 3000), size=40, replace=False))
    next_segment: dict[int, int] = {}

    def new_name(podcast: int) -> str:
        next_segment[podcast] = next_segment.get(podcast, 0) + int(rng.integers(1, 9))
        return f"MSP-PODCAST_{podcast:04d}_{next_segment[podcast]:04d}"

    plan: list[dict] = []
    for partition, n_known in _KNOWN.items():
        split_set = development_name if partition == "Development" else partition
        rows = []
        for s in range(n_known):
            spk, g = str(next(ids)), "FM"[s % 2]
            own = [next(podcasts) for _ in range(1 + s % 2)]
            rows += [{"spk": spk, "g": g, "podcast": own[i % len(own)]} for i in range(utts_per_speaker)]
        shared = next(podcasts)
        rows += [{"spk": "", "g": "FMU"[i % 3], "podcast": shared} for i in range(_UNKNOWN[partition])]
        for row, code in zip(rows, _codes_for(partition, len(rows), rng)):
            row.update(partition=partition, split_set=split_set, code=code, stem=new_name(row["podcast"]))
            plan.append(row)
    if shared_speaker:
        # The last row of the first Train speaker moves to Test1: that speaker is in two partitions.
        first = plan[0]["spk"]
        moved = [r for r in plan if r["spk"] == first][-1]
        moved.update(partition="Test1", split_set="Test1")

    truth: list[dict] = []
    table: list[tuple[str, ...]] = []
    missing_done = False
    for row in plan:
        stem, labelled = row["stem"], row["code"] != ""
        dims = [_fmt(float(rng.uniform(1.0, 7.0)), rng) if labelled else "" for _ in range(3)]
        act, val, dom = (float(d) if d else float("nan") for d in dims)
        n_samples = int(rng.integers(int(0.5 * SR), int(1.5 * SR)))
        failure = ""
        if quirks and not missing_done and row["partition"] == "Train" and row["spk"] and row["code"] == "N":
            missing_done, n_samples, failure = True, 0, "cannot read file"
        else:
            voice = speaker_voice(row["spk"] or stem, "F" if row["g"] == "F" else "M", seed)
            sig = speech_like(n_samples, SR, f0=voice["f0"], formant_scale=voice["formant_scale"],
                              seed=_stable_seed("podcast-sig", stem, seed))
            write_wav(audios / f"{stem}.wav", sig, SR)
        table.append((f"{stem}.wav", row["code"], *dims, row["spk"] or "Unknown", _GENDER_WORD[row["g"]],
                      row["split_set"]))
        truth.append({
            "utt_id": stem, "session": stem.split("_")[1],
            "speaker": row["spk"] or f"unknown:{row['partition']}", "gender": row["g"],
            "emotion_raw": row["code"], "path": f"Audios/{stem}.wav", "partition": row["partition"],
            "split_set": row["split_set"], "arousal": act, "valence": val, "dominance": dom,
            "n_samples": n_samples, "duration": n_samples / SR if not failure else None,
            "failed": bool(failure), "failure": failure,
        })
    assert missing_done or not quirks

    skipped: list[dict] = []
    ignored: list[str] = []
    if quirks:
        table.append(("MSP-PODCAST_0007.wav", "N", "4.0", "4.0", "4.0", "Unknown", "Unknown", "Train"))
        skipped.append({"utt_id": "", "message": "file name 'MSP-PODCAST_0007.wav' is not MSP-PODCAST_XXXX_YYYY.wav",
                        "where": None})  # line number filled in below (CSV) or the JSON key
        for i in range(2):  # audio no row names
            stem = new_name(next(podcasts))
            write_wav(audios / f"{stem}.wav", speech_like(int(0.6 * SR), SR, seed=_stable_seed("unlabelled", stem)), SR)
            ignored.append(f"Audios/{stem}.wav")
    table.sort(key=lambda r: r[0])

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PODCAST_COLUMNS)
    w.writerows(table)
    as_json = {r[0]: {"EmoClass": r[1], "EmoAct": _num(r[2]), "EmoVal": _num(r[3]), "EmoDom": _num(r[4]),
                      "SpkrID": int(r[5]) if r[5].isdigit() else r[5], "Gender": r[6], "Split_Set": r[7]}
               for r in table}
    if label_name.endswith(".json"):
        (labels / label_name).write_text(json.dumps(as_json, indent=2) + "\n")
        where = lambda r: f"Labels/{label_name}[{r[0]}]"  # noqa: E731
    else:
        (labels / label_name).write_text(buf.getvalue(), newline="\n")
        line_of = {r[0]: i for i, r in enumerate(table, start=2)}
        where = lambda r: f"Labels/{label_name}:{line_of[r[0]]}"  # noqa: E731
    if json_too:
        extra = dict(as_json)
        extra["MSP-PODCAST_2999_0001.wav"] = {"EmoClass": "N", "EmoAct": 4.0, "EmoVal": 4.0, "EmoDom": 4.0,
                                              "SpkrID": "Unknown", "Gender": "Unknown", "Split_Set": "Train"}
        (labels / "labels_consensus.json").write_text(json.dumps(extra) + "\n")
        ignored.append("Labels/labels_consensus.json")
    for s in skipped:
        s["where"] = where(("MSP-PODCAST_0007.wav",))

    if quirks:
        first = truth[0]["utt_id"]
        detailed = "FileName,WorkerID,EmoClass,EmoAct,EmoVal,EmoDom\n" + f"{first}.wav,WORKER0001,Neutral,4.0,4.0,4.0\n"
        litter = {
            f"Audios/._{first}.wav": APPLEDOUBLE,
            "Audios/.DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(24),
            f"Labels/._{label_name}": APPLEDOUBLE,
            "Labels/labels_detailed.csv": detailed.encode(),
            f"Transcripts/{first}.txt": b"so what do you think about that\n",
            "Partitions.txt": f"Train; {first}.wav\n".encode(),
            "README.txt": b"MSP-Podcast corpus\n",
        }
        for rel, data in litter.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            ignored.append(rel)
    return CorpusTruth(truth, skipped, ignored)


def _num(text: str) -> float | None:
    return float(text) if text else None
