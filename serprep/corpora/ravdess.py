"""RAVDESS (Ryerson Audio-Visual Database of Emotional Speech and Song) reader, audio only.

The label is the file name: ``Actor_NN/MM-VV-EE-II-SS-RR-AA.wav`` (``03-01-05-02-01-02-07.wav``)
gives modality ``MM`` (03 audio-only), vocal channel ``VV`` (01 speech, 02 song), emotion
``EE``, intensity ``II``, statement ``SS``, repetition ``RR`` and actor ``AA`` (odd male, even
female). ``--root`` is the folder holding ``Actor_01`` .. ``Actor_24`` (the extracted speech
zip, ``Audio_Speech_Actors_01-24/``, often with the song zip extracted into the same actor
folders), or a folder holding ``Audio_Speech_Actors_01-24/`` and/or ``Audio_Song_Actors_01-24/``
(both are read). Where a folder holds Actor_NN folders those are read and nothing else (some
copies repeat the speech zip in a sub-folder beside them).

Song files are listed like speech files (``vocal_channel = song``); the manifest's default
subset keeps speech only, so they stay in the store's manifest, visibly excluded. A ``.wav``
whose name does not parse, names a video modality, or names another actor than its folder is
skipped and recorded as a :class:`LabelIssue`; an emotion code outside 01-08 is kept and
reported by the build as an unknown label code.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CorpusLayoutError
from . import CorpusInfo, CorpusListing, LabelIssue, Utterance, describe_folder

CORPUS = "ravdess"
EXPECTED = (
    "RAVDESS layout: Actor_01..Actor_24/MM-VV-EE-II-SS-RR-AA.wav (the folder Audio_Speech_Actors_01-24/), "
    "or a folder holding Audio_Speech_Actors_01-24/ and/or Audio_Song_Actors_01-24/"
)

EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
            "07": "disgust", "08": "surprised"}
VOCAL_CHANNELS = {"01": "speech", "02": "song"}
INTENSITIES = {"01": "normal", "02": "strong"}
MODALITIES = {"01": "full audio-video", "02": "video-only", "03": "audio-only"}
#: Emotions the song recordings have (no disgust, no surprise).
SONG_EMOTIONS = ("01", "02", "03", "04", "05", "06")

_ACTOR_DIR = re.compile(r"^Actor_(\d{2})$")
_ZIP_DIR = re.compile(r"^Audio_(Speech|Song)_Actors_01-24$", re.IGNORECASE)
_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")


def actor_gender(actor: int) -> str:
    """RAVDESS actors: odd numbers are male, even numbers female."""
    return "M" if actor % 2 else "F"


def read_corpus(root: Path) -> CorpusListing:
    """Every ``Actor_NN/*.wav`` (of the root, or of its speech and song zip folders) whose
    name parses as a RAVDESS audio file name."""
    actor_dirs = _actor_dirs(root)
    if actor_dirs:
        parts = [(root, actor_dirs)]
    else:
        zips = sorted(p for p in _subdirs(root) if _ZIP_DIR.match(p.name))
        parts = [(z, _actor_dirs(z)) for z in zips]
        parts = [(z, dirs) for z, dirs in parts if dirs]
        if not parts:
            raise CorpusLayoutError(
                f"{root}: not a RAVDESS root{_hint(root, zips)}; expected {EXPECTED}; found {describe_folder(root)}")
    utterances: list[Utterance] = []
    issues: list[LabelIssue] = []
    seen: dict[str, str] = {}
    for _, dirs in parts:
        for actor_dir in dirs:
            folder_actor = _ACTOR_DIR.match(actor_dir.name).group(1)
            for path in sorted(actor_dir.iterdir()):
                if path.name.startswith(".") or not path.is_file() or path.suffix.lower() != ".wav":
                    continue  # AppleDouble ._*, .DS_Store, notes, video files, sub-folders
                rel = path.relative_to(root).as_posix()
                utt = _parse(path.stem, rel, folder_actor, issues)
                if utt is None:
                    continue
                if utt.utt_id in seen:
                    raise CorpusLayoutError(
                        f"{root}: {utt.utt_id}.wav is both {seen[utt.utt_id]} and {rel}; keep one copy of each file")
                seen[utt.utt_id] = rel
                utterances.append(utt)
    if not utterances:
        where = ", ".join(d.relative_to(root).as_posix() or "." for _, dirs in parts for d in dirs[:3])
        raise CorpusLayoutError(
            f"{root}: no RAVDESS audio file names (MM-VV-EE-II-SS-RR-AA.wav) in the actor folders ({where}, ...)"
            + (f"; {len(issues)} .wav file(s) skipped: {issues[0].where}: {issues[0].message}" if issues else "") + f"; expected {EXPECTED}")
    return CorpusListing(utterances, issues)


def _parse(stem: str, rel: str, folder_actor: str, issues: list[LabelIssue]) -> Utterance | None:
    m = _NAME.match(stem)
    if not m:
        issues.append(LabelIssue(rel, "not a RAVDESS audio file name: expected MM-VV-EE-II-SS-RR-AA.wav"))
        return None
    modality, channel, emotion, intensity, statement, repetition, actor = m.groups()
    problems = []
    if modality != "03":
        problems.append(f"modality {modality} ({MODALITIES.get(modality, 'unknown')}) is not audio-only (03)")
    if channel not in VOCAL_CHANNELS:
        problems.append(f"vocal channel {channel} is not 01 (speech) or 02 (song)")
    if intensity not in INTENSITIES:
        problems.append(f"intensity {intensity} is not 01 (normal) or 02 (strong)")
    if statement not in ("01", "02"):
        problems.append(f"statement {statement} is not 01 or 02")
    if repetition not in ("01", "02"):
        problems.append(f"repetition {repetition} is not 01 or 02")
    if not 1 <= int(actor) <= 24:
        problems.append(f"actor {actor} is not 01-24")
    elif actor != folder_actor:
        problems.append(f"actor field {actor} disagrees with its folder Actor_{folder_actor}")
    if problems:
        issues.append(LabelIssue(rel, "; ".join(problems), stem))
        return None
    if emotion == "01" and intensity == "02":
        issues.append(LabelIssue(rel, "neutral with strong intensity (RAVDESS records neutral at "
                                      "normal intensity only)", stem, skipped=False))
    if channel == "02" and emotion in EMOTIONS and emotion not in SONG_EMOTIONS:
        issues.append(LabelIssue(rel, f"song with emotion {emotion} ({EMOTIONS[emotion]}), which "
                                      "RAVDESS records in speech only", stem, skipped=False))
    speaker = f"Actor_{actor}"
    return Utterance(
        utt_id=stem,
        corpus=CORPUS,
        session=speaker,
        speaker=speaker,
        gender=actor_gender(int(actor)),
        emotion_raw=emotion,
        path=rel,
        extras={
            "vocal_channel": VOCAL_CHANNELS[channel],
            "intensity": INTENSITIES[intensity],
            "statement": statement,
            "repetition": repetition,
        },
    )


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _actor_dirs(folder: Path) -> list[Path]:
    return [p for p in _subdirs(folder) if _ACTOR_DIR.match(p.name)]


def _holds_ravdess_wavs(folder: Path) -> bool:
    try:
        return any(p.suffix.lower() == ".wav" and _NAME.match(p.stem) for p in folder.iterdir()
                   if not p.name.startswith("."))
    except OSError:
        return False


def _hint(root: Path, zips: list[Path]) -> str:
    """A hint when ``root`` is one actor folder (one level too low) or the folder above the
    corpus (one level too high)."""
    if zips:
        return f" ({', '.join(z.name for z in zips)} holds no Actor_NN folders)"
    if _ACTOR_DIR.match(root.name) or _holds_ravdess_wavs(root):
        return f" (this looks like one actor's folder: did you mean {root.parent}?)"
    for child in _subdirs(root):
        if _actor_dirs(child) or any(_ZIP_DIR.match(p.name) and _actor_dirs(p) for p in _subdirs(child)):
            return f" (did you mean {child}?)"
    return ""


INFO = CorpusInfo(
    name=CORPUS,
    title="RAVDESS (audio-only speech and song)",
    manifest="ravdess.toml",
    root="the folder holding Actor_01..Actor_24/ (Audio_Speech_Actors_01-24/), or one holding "
         "Audio_Speech_Actors_01-24/ and Audio_Song_Actors_01-24/",
    speakers="24 actors (`Actor_01`, from the file name's last field); odd male, even female",
    read=read_corpus,
)
