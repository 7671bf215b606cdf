"""EmoDB (Berlin Database of Emotional Speech) reader.

The label is the file name: ``wav/SSTTTEV.wav`` (``03a01Fa.wav``) gives speaker ``SS``, text
``TTT``, emotion letter ``E`` and version letter ``V``. Only ``wav/`` is read: the side folders
``lablaut/``, ``labsilb/`` and ``silb/`` hold phone and syllable label files, not audio.
AppleDouble ``._*`` files and other litter are never taken as utterances.

Gender comes from the corpus' speaker table (:data:`SPEAKERS`); a file of a speaker the table
does not know, or a ``.wav`` whose name is not ``SSTTTEV``, is skipped and recorded as a
:class:`LabelIssue`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CorpusLayoutError
from . import CorpusInfo, CorpusListing, LabelIssue, Utterance, describe_folder

CORPUS = "emodb"
EXPECTED = "EmoDB layout: wav/SSTTTEV.wav (e.g. wav/03a01Fa.wav; lablaut/, labsilb/, silb/ beside it are ignored)"

#: Speaker number -> gender (the corpus documentation's speaker table).
SPEAKERS = {"03": "M", "08": "F", "09": "F", "10": "M", "11": "M",
            "12": "M", "13": "F", "14": "F", "15": "M", "16": "F"}
#: The ten text codes (a = short sentences, b = longer ones).
TEXTS = ("a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10")
#: Emotion letters (German initials): W Wut, L Langeweile, E Ekel, A Angst, F Freude, T Trauer, N neutral.
EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness", "N": "neutral"}

#: A file stem of EmoDB's shape. The emotion letter is any capital letter here: a letter the
#: manifest does not list is kept and reported by the build as an unknown label code.
_STEM = re.compile(r"^(?P<speaker>\d{2})(?P<text>[ab]\d{2})(?P<emotion>[A-Z])(?P<version>[a-z])$")


def speaker_id(number: str) -> str:
    """The speaker id of a file-name speaker field: ``03`` -> ``spk03``."""
    return f"spk{number}"


def read_corpus(root: Path) -> CorpusListing:
    """Every ``wav/*.wav`` under ``root`` whose name parses as an EmoDB file name.

    A ``.wav`` whose name does not parse, or names a speaker outside the speaker table, is
    skipped and listed as an issue; an unknown text code is kept with a warning.
    """
    wav_dir = root / "wav"
    if not wav_dir.is_dir():
        raise CorpusLayoutError(
            f"{root}: not an EmoDB root{_hint(root)}; expected {EXPECTED}; found {describe_folder(root)}")
    utterances: list[Utterance] = []
    issues: list[LabelIssue] = []
    for path in sorted(wav_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() != ".wav":
            continue  # AppleDouble ._*, .DS_Store, notes, sub-folders
        rel = path.relative_to(root).as_posix()
        m = _STEM.match(path.stem)
        if not m:
            issues.append(LabelIssue(rel, "not an EmoDB file name: expected SSTTTEV.wav (speaker, text, "
                                          "emotion letter, version letter)"))
            continue
        number = m["speaker"]
        if number not in SPEAKERS:
            issues.append(LabelIssue(rel, f"speaker {number} is not in EmoDB's speaker table "
                                          f"({', '.join(SPEAKERS)}); its gender is unknown", path.stem))
            continue
        if m["text"] not in TEXTS:
            issues.append(LabelIssue(rel, f"text code {m['text']} is not one of EmoDB's ten texts",
                                     path.stem, skipped=False))
        speaker = speaker_id(number)
        utterances.append(
            Utterance(
                utt_id=path.stem,
                corpus=CORPUS,
                session=speaker,
                speaker=speaker,
                gender=SPEAKERS[number],
                emotion_raw=m["emotion"],
                path=rel,
                extras={"text": m["text"], "version": m["version"]},
            )
        )
    if not utterances:
        raise CorpusLayoutError(
            f"{wav_dir}: no EmoDB file names (SSTTTEV.wav) found"
            + (f" ({len(issues)} .wav file(s) skipped: {issues[0].where}: {issues[0].message})" if issues else "")
            + f"; expected {EXPECTED}; wav/ holds {describe_folder(wav_dir)}"
        )
    return CorpusListing(utterances, issues)


def _holds_emodb_wavs(folder: Path) -> bool:
    try:
        return any(p.suffix.lower() == ".wav" and _STEM.match(p.stem) for p in folder.iterdir()
                   if not p.name.startswith("."))
    except OSError:
        return False


def _hint(root: Path) -> str:
    """A hint when ``root`` is ``wav/`` itself (one level too low) or the folder above the
    corpus (one level too high)."""
    if _holds_emodb_wavs(root):
        return f" (this looks like the wav/ folder itself: did you mean {root.parent}?)"
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return ""
    for child in children:
        if (child / "wav").is_dir() and _holds_emodb_wavs(child / "wav"):
            return f" (did you mean {child}?)"
    return ""


INFO = CorpusInfo(
    name=CORPUS,
    title="EmoDB (Berlin Database of Emotional Speech)",
    manifest="emodb.toml",
    root="the folder holding wav/ (wav/03a01Fa.wav)",
    speakers="10 (file-name field `03` -> `spk03`); gender from the corpus' speaker table",
    read=read_corpus,
)
