"""IEMOCAP (``IEMOCAP_full_release``) reader.

Labels come from the consensus summary lines of ``Session*/dialog/EmoEvaluation/*.txt`` (top
level only: the Attribute/Categorical/Self-evaluation sub-folders hold per-rater files). An
utterance is exactly what a summary line names; its wav is
``Session*/sentences/wav/<dialog>/<utt_id>.wav``. Dialog-level wavs, AppleDouble ``._*`` files
and other litter are never taken as utterances.

Speaker and gender come from the first letter of the utterance id's LAST ``_`` token (the
speaking actor), not from the dialog prefix (the actor wearing motion-capture markers).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CorpusLayoutError
from . import CorpusInfo, CorpusListing, LabelIssue, Utterance, describe_folder

CORPUS = "iemocap"
EXPECTED = "IEMOCAP_full_release layout: Session1..Session5/dialog/EmoEvaluation/<dialog>.txt and Session*/sentences/wav/<dialog>/<utterance>.wav"

_SESSION_DIR = re.compile(r"^Session([1-9])$")
_SUMMARY = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d+)?)\s*-\s*(?P<end>\d+(?:\.\d+)?)\s*\]\s+"
    r"(?P<utt>\S+)\s+(?P<code>\S+)\s+\[(?P<vad>[^\]]*)\]\s*$"
)
_TURN = re.compile(r"^[FM]\d{3}$")
_TRANSCRIPT = re.compile(r"^(?P<utt>\S+)\s+\[[^\]]*\]:\s?(?P<text>.*)$")


def read_corpus(root: Path) -> CorpusListing:
    """Every utterance named by a consensus summary line under ``root``.

    A summary line that does not parse (or names no IEMOCAP utterance, or one of another
    session) is skipped and listed as an issue; a line whose end time precedes its start
    time is kept with a warning.
    """
    sessions = sorted(
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (m := _SESSION_DIR.match(p.name))
    )
    if not sessions:
        hint = ""
        if (root / "IEMOCAP_full_release").is_dir():
            hint = f" (did you mean {root / 'IEMOCAP_full_release'}?)"
        raise CorpusLayoutError(
            f"{root}: not an IEMOCAP root{hint}; expected {EXPECTED}; found {describe_folder(root)}"
        )
    utterances: list[Utterance] = []
    issues: list[LabelIssue] = []
    seen: dict[str, Path] = {}
    for number, session_dir in sessions:
        label_dir = session_dir / "dialog" / "EmoEvaluation"
        if not label_dir.is_dir():
            raise CorpusLayoutError(
                f"{label_dir}: missing; expected {EXPECTED}; {session_dir.name} holds {describe_folder(session_dir)}"
            )
        transcripts = _read_transcriptions(session_dir / "dialog" / "transcriptions")
        label_files = sorted(
            p for p in label_dir.iterdir() if p.is_file() and p.suffix == ".txt" and not p.name.startswith(".")
        )
        for label_file in label_files:
            for utt in _parse_label_file(label_file, root, number, issues):
                if utt.utt_id in seen:
                    raise CorpusLayoutError(
                        f"{label_file}: utterance {utt.utt_id} is also labelled in {seen[utt.utt_id]}"
                    )
                seen[utt.utt_id] = label_file
                utt.extras["transcript"] = transcripts.get(utt.utt_id, "")
                utterances.append(utt)
    if not utterances:
        raise CorpusLayoutError(f"{root}: no summary lines found in Session*/dialog/EmoEvaluation/*.txt; expected {EXPECTED}")
    return CorpusListing(utterances, issues)


def parse_utterance_id(utt_id: str) -> tuple[str, str, str]:
    """``(dialog, session, gender)`` of an utterance id such as ``Ses03M_impro05a_F012``.

    Splits on ``_`` so the irregular dialog names (``impro05a``, ``script01_1b``) work.
    """
    dialog, _, turn = utt_id.rpartition("_")
    if not dialog or not _TURN.match(turn) or not re.match(r"^Ses\d{2}[FM]_", utt_id):
        raise ValueError(f"not an IEMOCAP utterance id: {utt_id!r}")
    return dialog, utt_id[:5], turn[0]


def _parse_label_file(path: Path, root: Path, session_number: int, issues: list[LabelIssue]) -> list[Utterance]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CorpusLayoutError(f"{path}: cannot read label file ({exc.strerror})") from None
    rel = path.relative_to(root).as_posix()
    out = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("["):
            continue  # header, evaluator lines (C-*, A-*), blank lines
        where = f"{rel}:{line_no}"
        m = _SUMMARY.match(line.rstrip("\r"))
        if not m:
            tokens = line.split()
            guess = next((t for t in tokens if re.match(r"^Ses\d{2}[FM]_\S+_[FM]\d{3}$", t)), "")
            issues.append(LabelIssue(where, f"malformed summary line {line.strip()!r}", guess))
            continue
        utt_id = m["utt"]
        try:
            dialog, session, gender = parse_utterance_id(utt_id)
        except ValueError as exc:
            issues.append(LabelIssue(where, str(exc)))
            continue
        if session != f"Ses{session_number:02d}":
            issues.append(LabelIssue(where, f"utterance {utt_id} found under Session{session_number}", utt_id))
            continue
        if float(m["end"]) < float(m["start"]):
            issues.append(LabelIssue(where, f"utterance {utt_id} ends before it starts "
                                            f"([{m['start']} - {m['end']}])", utt_id, skipped=False))
        vad = _parse_vad(m["vad"])
        wav = f"Session{session_number}/sentences/wav/{dialog}/{utt_id}.wav"
        out.append(
            Utterance(
                utt_id=utt_id,
                corpus=CORPUS,
                session=session,
                speaker=session + gender,
                gender=gender,
                emotion_raw=m["code"],
                path=wav,
                duration=None,
                extras={
                    "dialog": dialog,
                    "mode": "improvised" if "_impro" in dialog else "scripted",
                    "valence": vad[0],
                    "arousal": vad[1],
                    "dominance": vad[2],
                    "start": float(m["start"]),
                    "end": float(m["end"]),
                },
            )
        )
    return out


def _parse_vad(text: str) -> tuple[float, float, float]:
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            values.append(float(part))
        except ValueError:
            values.append(float("nan"))
    values += [float("nan")] * (3 - len(values))
    return values[0], values[1], values[2]


def _read_transcriptions(folder: Path) -> dict[str, str]:
    """Utterance id -> transcript. Lines of turns without a wav (``..._MXX0``) are kept harmlessly."""
    out: dict[str, str] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.txt")):
        if path.name.startswith("."):
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            m = _TRANSCRIPT.match(line.strip())
            if m:
                out[m["utt"]] = m["text"].strip()
    return out


INFO = CorpusInfo(
    name=CORPUS,
    title="IEMOCAP",
    manifest="iemocap.toml",
    root="IEMOCAP_full_release/ (holding Session1..Session5/)",
    speakers="10 (session + the letter of the utterance id's last `_` token); gender from that letter",
    read=read_corpus,
    dimensions=("valence", "arousal", "dominance"),
    scale="1-5",
)
