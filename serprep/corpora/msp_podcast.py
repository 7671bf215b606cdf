"""MSP-Podcast reader.

Labels come from one table, ``Labels/labels_consensus.csv`` (older releases spell it
``labels_concensus.csv``; release 1.12 adds ``labels_consensus.json``, read only when no CSV is
there), one row per segment: ``FileName`` (``MSP-PODCAST_0001_0008.wav``), ``EmoClass`` (the
consensus code, empty where the labels of a test set are withheld), ``EmoAct``, ``EmoVal``,
``EmoDom`` (1-7), ``SpkrID`` (a number, or ``Unknown``), ``Gender`` (Male, Female, Unknown) and
``Split_Set`` (Train, Development, Test1, Test2, Test3; older releases say Validation). The audio
is ``Audios/<FileName>``. Exactly the rows of the table are the utterances: audio without a row
is ignored, and a row whose wav is missing is listed (the build records it as a failure).

Speakers: a known ``SpkrID`` is the speaker as written (``127``); rows of unknown speakers get
one pseudo speaker per partition (``unknown:Train``...), so the official partitions stay
speaker independent; an unknown gender is ``U``. The partition is kept normalised in the
``partition`` column (``Validation`` -> ``Development``) and as written in ``split_set``.

~150,000 rows: one pass over the table with the csv module and no file-system call per row
(the wavs are neither listed nor stat'ed).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import CorpusLayoutError
from ..store import UNKNOWN_GENDER, UNKNOWN_SPEAKER_PREFIX
from . import CorpusInfo, CorpusListing, LabelIssue, Utterance, describe_folder

CORPUS = "msp-podcast"
AUDIO_DIR = "Audios"
LABEL_DIR = "Labels"
#: Label tables in the order they are looked for: the CSV wins over the JSON of release 1.12.
LABEL_FILES = ("labels_consensus.csv", "labels_concensus.csv", "labels_consensus.json", "labels_concensus.json")
EXPECTED = (
    "MSP-Podcast layout: Labels/labels_consensus.csv (or labels_concensus.csv, or labels_consensus.json) "
    "and Audios/MSP-PODCAST_0001_0008.wav"
)
REQUIRED_COLUMNS = ("FileName", "EmoClass", "SpkrID", "Gender", "Split_Set")
DIMENSION_COLUMNS = {"arousal": "EmoAct", "valence": "EmoVal", "dominance": "EmoDom"}
#: Split_Set as written -> the partition it is (older releases call Development Validation).
PARTITIONS = {"Train": "Train", "Development": "Development", "Validation": "Development",
              "Test1": "Test1", "Test2": "Test2", "Test3": "Test3"}
SPLIT_SETS = {name: name for name in PARTITIONS}
GENDERS = {"female": "F", "male": "M", "f": "F", "m": "M", "unknown": UNKNOWN_GENDER, "": UNKNOWN_GENDER}
UNKNOWN_IDS = {"", "unknown", "nan"}  # "nan": a table written by pandas

_NAME = re.compile(r"^MSP-PODCAST_(?P<podcast>\d+)_(?P<segment>\d+(?:_\d+)?)$")


def read_corpus(root: Path) -> CorpusListing:
    """One utterance per row of the consensus label table."""
    label_dir = root / LABEL_DIR
    label_file = next((label_dir / n for n in LABEL_FILES if (label_dir / n).is_file()), None)
    if label_file is None:
        if label_dir.is_dir():
            raise CorpusLayoutError(f"{label_dir}: no labels_consensus.csv (nor labels_concensus.csv, "
                                    f"labels_consensus.json); expected {EXPECTED}; found {describe_folder(label_dir)}")
        raise CorpusLayoutError(
            f"{root}: not an MSP-Podcast root{_hint(root)}; expected {EXPECTED}; found {describe_folder(root)}")
    if not (root / AUDIO_DIR).is_dir():
        raise CorpusLayoutError(f"{root}: no {AUDIO_DIR}/ folder (the extracted audio); expected {EXPECTED}; "
                                f"found {describe_folder(root)}")
    rel_labels = f"{LABEL_DIR}/{label_file.name}"
    rows = _json_rows(label_file, rel_labels) if label_file.suffix == ".json" else _csv_rows(label_file, rel_labels)

    utterances: list[Utterance] = []
    issues: list[LabelIssue] = []
    seen: dict[str, str] = {}
    nan = math.nan
    speakers: dict[str, str] = {}  # SpkrID as written -> speaker id ("" = unknown); one string each
    for where, row in rows:
        name = row["FileName"].strip()
        has_suffix = name.lower().endswith(".wav")
        stem = name[:-4] if has_suffix else name
        m = _NAME.match(stem)
        if not m:
            issues.append(LabelIssue(where, f"file name {name!r} is not MSP-PODCAST_XXXX_YYYY.wav"))
            continue
        split_set = row["Split_Set"].strip()
        partition = PARTITIONS.get(split_set)
        split_set = SPLIT_SETS.get(split_set, split_set)  # one shared string per value
        if partition is None:
            issues.append(LabelIssue(where, f"{stem}: Split_Set {split_set!r} is not one of "
                                            f"{', '.join(PARTITIONS)}", stem))
            continue
        gender_text = row["Gender"].strip()
        gender = GENDERS.get(gender_text.lower())
        if gender is None:
            issues.append(LabelIssue(where, f"{stem}: Gender {gender_text!r} is not Male, Female or Unknown", stem))
            continue
        if stem in seen:
            raise CorpusLayoutError(f"{label_file}: {stem} is labelled twice ({seen[stem]} and {where})")
        seen[stem] = where
        raw_speaker = row["SpkrID"]
        speaker = speakers.get(raw_speaker)
        if speaker is None:
            speaker = speakers[raw_speaker] = _speaker_id(raw_speaker)
        extras: dict[str, object] = {"partition": partition, "split_set": split_set}
        for key, column in DIMENSION_COLUMNS.items():
            text = row.get(column, "")
            if text is None or text == "":
                extras[key] = nan
                continue
            try:
                extras[key] = float(text)
            except ValueError:
                extras[key] = nan
                issues.append(LabelIssue(where, f"{stem}: {column} {text!r} is not a number (kept as NaN)",
                                         stem, skipped=False))
        utterances.append(
            Utterance(
                utt_id=stem,
                corpus=CORPUS,
                session=m["podcast"],
                speaker=speaker if speaker else UNKNOWN_SPEAKER_PREFIX + partition,
                gender=gender,
                emotion_raw=row["EmoClass"].strip(),
                path=f"{AUDIO_DIR}/{name}" if has_suffix else f"{AUDIO_DIR}/{stem}.wav",
                extras=extras,
            )
        )
    if not utterances:
        raise CorpusLayoutError(f"{label_file}: no row names an MSP-PODCAST_XXXX_YYYY.wav file; expected {EXPECTED}")
    return CorpusListing(utterances, issues)


def _speaker_id(value: Any) -> str:
    """The speaker id as written (``127``; ``127.0`` from a float column is ``127``); "" = unknown."""
    text = str(value).strip() if value is not None else ""
    if text.lower() in UNKNOWN_IDS:
        return ""
    if text.endswith(".0") and text[:-2].isdigit():
        text = text[:-2]
    return text


def _csv_rows(path: Path, rel: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``(where, row)`` per data row; a missing column is a layout error."""
    try:
        f = open(path, encoding="utf-8-sig", errors="replace", newline="")
    except OSError as exc:
        raise CorpusLayoutError(f"{path}: cannot read label table ({exc.strerror})") from None
    with f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        _check_columns(path, header)
        index = {name: header.index(name) for name in (*REQUIRED_COLUMNS, *DIMENSION_COLUMNS.values()) if name in header}
        width = max(index.values()) + 1
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            where = f"{rel}:{reader.line_num}"
            if len(row) < width:
                # A short line: what it has is read; the missing fields are empty.
                row = row + [""] * (width - len(row))
            yield where, {name: row[i] for name, i in index.items()}


def _json_rows(path: Path, rel: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``(where, row)`` per entry of the JSON table: ``{FileName: {column: value}}`` (or a list of
    row objects with ``FileName``); values as strings, ``null`` as ""."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise CorpusLayoutError(f"{path}: cannot read label table ({exc.strerror})") from None
    except ValueError as exc:
        raise CorpusLayoutError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        entries: Iterable[tuple[str, Any]] = data.items()
    elif isinstance(data, list):
        entries = ((str(e.get("FileName", "")) if isinstance(e, dict) else "", e) for e in data)
    else:
        raise CorpusLayoutError(f"{path}: expected an object mapping FileName to its labels; found a {type(data).__name__}")
    checked = False
    for key, entry in entries:
        if not isinstance(entry, dict):
            yield f"{rel}[{key}]", {"FileName": "", **{c: "" for c in REQUIRED_COLUMNS[1:]}}
            continue
        if not checked:
            _check_columns(path, ["FileName", *entry])
            checked = True
        row = {c: _json_text(entry.get(c)) for c in (*REQUIRED_COLUMNS[1:], *DIMENSION_COLUMNS.values())}
        row["FileName"] = str(key)
        yield f"{rel}[{key}]", row


def _json_text(value: Any) -> str:
    """A JSON value as the CSV would hold it: ``null`` -> "", numbers as written by ``str``."""
    return "" if value is None else str(value)


def _check_columns(path: Path, header: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CorpusLayoutError(f"{path}: no column {', '.join(missing)}; expected FileName, EmoClass, EmoAct, EmoVal, "
                                f"EmoDom, SpkrID, Gender, Split_Set; found {', '.join(header) or 'nothing'}")


def _hint(root: Path) -> str:
    """Where the user pointed at Audios/ or Labels/ (one level too low) or at the folder above."""
    if root.name in (AUDIO_DIR, LABEL_DIR) or any((root.parent / LABEL_DIR / n).is_file() for n in LABEL_FILES):
        return f" (did you mean {root.parent}?)"
    try:
        below = sorted(p for p in root.iterdir() if p.is_dir() and (p / LABEL_DIR).is_dir())
    except OSError:
        below = []
    if below:
        return f" (did you mean {below[0]}?)"
    return ""


INFO = CorpusInfo(
    name=CORPUS,
    title="MSP-Podcast",
    manifest="msp_podcast.toml",
    root="the folder holding Audios/ and Labels/ (labels_consensus.csv or .json)",
    speakers="SpkrID of the label table as written (`Unknown`: pseudo speaker `unknown:<partition>`); "
             "gender from its Gender column (`U` where unknown)",
    read=read_corpus,
    dimensions=("arousal", "valence", "dominance"),
    scale="1-7",
)
