"""CREMA-D (Crowd-sourced Emotional Multimodal Actors Dataset) reader, audio only.

The label is the file name: ``AudioWAV/AAAA_SSS_EEE_LL.wav`` (``1001_DFA_ANG_XX.wav``) gives
the actor ``AAAA`` (1001-1091), one of 12 sentences ``SSS``, the acted emotion ``EEE`` (ANG,
DIS, FEA, HAP, NEU, SAD) and the intensity ``LL`` (LO, MD, HI on sentence IEO; XX =
unspecified). Sex, age, race and ethnicity come from ``VideoDemographics.csv`` beside
``AudioWAV/``. ``--root`` is the folder holding both (the top of the CREMA-D repository or
download); the other folders (AudioMP3/, VideoFlash/, processedResults/ with the perceived
labels of the crowd) are not read.

A ``.wav`` whose name does not parse (or names another sentence) and every file of an actor
missing from ``VideoDemographics.csv`` are skipped and recorded as :class:`LabelIssue`; an
emotion code outside the six is kept and reported by the build as an unknown label code.
Empty files (the release has at least one, ``1076_MTI_SAD_XX.wav``) are listed like any other:
the build records them as failures. The reader lists one folder and reads one small CSV (and
the first bytes of one wav, to recognise a Git LFS checkout whose audio was never fetched).
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

from ..errors import CorpusLayoutError
from . import CorpusInfo, CorpusListing, LabelIssue, Utterance, describe_folder

CORPUS = "crema-d"
AUDIO_DIR = "AudioWAV"
DEMOGRAPHICS = "VideoDemographics.csv"
EXPECTED = (
    "CREMA-D layout: AudioWAV/AAAA_SSS_EEE_LL.wav (1001_DFA_ANG_XX.wav) and VideoDemographics.csv "
    "in the same folder"
)

#: The 12 sentences (the code in the file name), as the CREMA-D documentation lists them.
SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
INTENSITIES = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
SEXES = {"male": "M", "female": "F"}

_NAME = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<intensity>LO|MD|HI|XX)$")
_LOOSE = re.compile(r"^\d{4}_[A-Za-z]{3}_[A-Za-z]{3}_[A-Za-z]{2}$")
_LFS_MAGIC = b"version https://git-lfs"


def read_corpus(root: Path) -> CorpusListing:
    """Every ``AudioWAV/*.wav`` whose name parses and whose actor ``VideoDemographics.csv`` knows."""
    audio_dir = root / AUDIO_DIR
    if not audio_dir.is_dir():
        raise CorpusLayoutError(
            f"{root}: not a CREMA-D root{_hint(root)}; expected {EXPECTED}; found {describe_folder(root)}")
    demographics_path = root / DEMOGRAPHICS
    if not demographics_path.is_file():
        raise CorpusLayoutError(
            f"{demographics_path}: missing (it gives each actor's sex); expected {EXPECTED}; "
            f"found {describe_folder(root)}")
    actors = _read_demographics(demographics_path)
    try:
        with os.scandir(audio_dir) as it:
            names = sorted(e.name for e in it if not e.name.startswith(".") and e.name.lower().endswith(".wav")
                           and e.is_file())
    except OSError as exc:
        raise CorpusLayoutError(f"{audio_dir}: cannot list ({exc.strerror})") from None
    if not names:
        raise CorpusLayoutError(f"{audio_dir}: no .wav files; expected {EXPECTED}; found {describe_folder(audio_dir)}")
    _refuse_lfs_pointers(audio_dir, names)

    utterances: list[Utterance] = []
    issues: list[LabelIssue] = []
    for name in names:
        rel = f"{AUDIO_DIR}/{name}"
        stem = name[: -len(".wav")]
        m = _NAME.match(stem)
        if not m:
            issues.append(LabelIssue(rel, f"file name {name!r} is not AAAA_SSS_EEE_LL.wav",
                                     stem if _LOOSE.match(stem) else ""))
            continue
        if m["sentence"] not in SENTENCES:
            issues.append(LabelIssue(rel, f"unknown sentence code {m['sentence']!r} in {name!r} "
                                          f"(expected one of {' '.join(SENTENCES)})", stem))
            continue
        actor = actors.get(m["actor"])
        if actor is None:
            issues.append(LabelIssue(rel, f"actor {m['actor']} is not in {DEMOGRAPHICS}", stem))
            continue
        if isinstance(actor, str):  # the actor's demographics line is unusable: say why
            issues.append(LabelIssue(rel, actor, stem))
            continue
        utterances.append(
            Utterance(
                utt_id=stem,
                corpus=CORPUS,
                session=m["actor"],
                speaker=m["actor"],
                gender=actor["gender"],
                emotion_raw=m["emotion"],
                path=rel,
                extras={
                    "sentence": m["sentence"],
                    "intensity": m["intensity"],
                    "age": actor["age"],
                    "race": actor["race"],
                    "ethnicity": actor["ethnicity"],
                },
            )
        )
    if not utterances:
        raise CorpusLayoutError(f"{audio_dir}: no file named like 1001_DFA_ANG_XX.wav of an actor in {DEMOGRAPHICS}; "
                                f"expected {EXPECTED}; found {describe_folder(audio_dir)}")
    return CorpusListing(utterances, issues)


def _read_demographics(path: Path) -> dict[str, dict[str, object] | str]:
    """Actor id -> gender, age, race, ethnicity; or the reason the actor's line is unusable."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise CorpusLayoutError(f"{path}: cannot read ({exc.strerror})") from None
    rows = csv.reader(text.splitlines())
    header = [h.strip() for h in next(rows, [])]
    missing = [c for c in ("ActorID", "Sex") if c not in header]
    if missing:
        raise CorpusLayoutError(f"{path}: no column {', '.join(missing)}; expected the header "
                                f"\"ActorID\",\"Age\",\"Sex\",\"Race\",\"Ethnicity\"; found {','.join(header) or 'nothing'}")
    col = {name: header.index(name) for name in ("ActorID", "Age", "Sex", "Race", "Ethnicity") if name in header}
    actors: dict[str, dict[str, object] | str] = {}
    for line_no, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue

        def cell(name: str) -> str:
            i = col.get(name)
            return row[i].strip() if i is not None and i < len(row) else ""

        actor = cell("ActorID")
        where = f"{DEMOGRAPHICS}:{line_no}"
        if not re.fullmatch(r"\d{4}", actor):
            continue  # not an actor line (nothing refers to it): ignored
        if actor in actors:
            raise CorpusLayoutError(f"{path}:{line_no}: actor {actor} is listed twice")
        sex = cell("Sex")
        if sex.lower() not in SEXES:
            actors[actor] = f"sex {sex!r} of actor {actor} ({where}) is not Male or Female"
            continue
        actors[actor] = {
            "gender": SEXES[sex.lower()],
            "age": _to_float(cell("Age")),
            "race": cell("Race"),
            "ethnicity": cell("Ethnicity"),
        }
    return actors


def _refuse_lfs_pointers(audio_dir: Path, names: list[str]) -> None:
    """A clone of the CREMA-D repository without ``git lfs pull`` holds text pointers, not audio."""
    try:
        with open(audio_dir / names[0], "rb") as f:
            head = f.read(len(_LFS_MAGIC))
    except OSError:
        return  # the build reports unreadable files one by one
    if head == _LFS_MAGIC:
        raise CorpusLayoutError(f"{audio_dir}: {names[0]} is a Git LFS pointer, not audio; "
                                "fetch the audio (git lfs pull) and build again")


def _hint(root: Path) -> str:
    """Where the user pointed one level too low (at AudioWAV/) or too high."""
    if root.name == AUDIO_DIR or (root.parent / DEMOGRAPHICS).is_file():
        return f" (did you mean {root.parent}?)"
    try:
        below = sorted(p for p in root.iterdir() if p.is_dir() and (p / AUDIO_DIR).is_dir())
    except OSError:
        below = []
    if below:
        return f" (did you mean {below[0]}?)"
    return ""


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


INFO = CorpusInfo(
    name=CORPUS,
    title="CREMA-D",
    manifest="crema_d.toml",
    root="the folder holding AudioWAV/ and VideoDemographics.csv",
    speakers="91 actors (file-name field `1001`); sex from VideoDemographics.csv",
    read=read_corpus,
)
