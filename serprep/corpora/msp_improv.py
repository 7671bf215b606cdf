"""MSP-IMPROV reader.

Labels come from the consensus lines of ``Evaluation.txt`` (also spelled ``Evalution.txt``),
which name the video ``UTD-IMPROV-<stem>.avi``; the audio is ``MSP-IMPROV-<stem>.wav`` under
``Audio/session<N>/<S01A>/<condition>/`` (some copies have no ``Audio/`` level). The speaker
field of the stem (``F01``) is the speaker of every published split.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import CorpusLayoutError
from . import CorpusInfo, CorpusListing, LabelIssue, Utterance, describe_folder

CORPUS = "msp-improv"
EVALUATION_NAMES = ("Evaluation.txt", "Evalution.txt")
EXPECTED = (
    "MSP-IMPROV layout: Evaluation.txt (or Evalution.txt) and "
    "Audio/session1..6/S01A/{P,R,S,T}/MSP-IMPROV-S01A-F01-P-FM01.wav (Audio/ level optional)"
)
SCENARIOS = {"R": "read", "S": "improvised", "P": "natural", "T": "target"}

_CONSENSUS = re.compile(r"^UTD-IMPROV-(?P<stem>[^\s;]+)\.avi\s*;\s*(?P<code>[A-Z])\s*;(?P<rest>.*)$")
_STEM = re.compile(
    r"^(?P<sentence>S\d{2})(?P<target>[AHSN])-(?P<gender>[FM])(?P<session>\d{2})-"
    r"(?P<condition>[RSPT])-(?P<pair>[A-Z]{2})(?P<turn>\d{2})$"
)
_SCORE = re.compile(r"([AVDN])\s*:\s*([^;\s]+)")


def read_corpus(root: Path) -> CorpusListing:
    """Every utterance named by a consensus line of the evaluation file.

    A consensus line that does not parse, or names a file stem of another shape, is skipped
    and listed as an issue.
    """
    evaluation = next((root / n for n in EVALUATION_NAMES if (root / n).is_file()), None)
    if evaluation is None:
        raise CorpusLayoutError(f"{root}: not an MSP-IMPROV root; expected {EXPECTED}; found {describe_folder(root)}")
    audio_base = root / "Audio" if (root / "Audio").is_dir() else root
    if not any(audio_base.glob("session[1-9]")):
        raise CorpusLayoutError(
            f"{root}: no session1..6 audio folders (looked in {audio_base.name}/); expected {EXPECTED}; found {describe_folder(audio_base)}"
        )
    rel_base = "" if audio_base == root else "Audio/"
    utterances: list[Utterance] = []
    issues: list[LabelIssue] = []
    seen: set[str] = set()
    text = evaluation.read_text(encoding="utf-8", errors="replace")
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line.startswith("UTD-IMPROV-"):
            continue  # rater lines, blank separators
        where = f"{evaluation.name}:{line_no}"
        m = _CONSENSUS.match(line)
        if not m:
            stem = line.split(";", 1)[0].strip()
            guess = f"MSP-IMPROV-{stem[len('UTD-IMPROV-'):-len('.avi')]}" if stem.endswith(".avi") else ""
            issues.append(LabelIssue(where, f"malformed consensus line {line!r}", guess))
            continue
        stem = m["stem"]
        s = _STEM.match(stem)
        if not s:
            issues.append(LabelIssue(where, f"unrecognised file stem {stem!r}"))
            continue
        utt_id = f"MSP-IMPROV-{stem}"
        if utt_id in seen:
            raise CorpusLayoutError(f"{evaluation}:{line_no}: {utt_id} labelled twice")
        seen.add(utt_id)
        scores = {k: _to_float(v) for k, v in _SCORE.findall(m["rest"])}
        session_no = int(s["session"])
        rel = f"{rel_base}session{session_no}/{s['sentence']}{s['target']}/{s['condition']}/{utt_id}.wav"
        utterances.append(
            Utterance(
                utt_id=utt_id,
                corpus=CORPUS,
                session=f"session{session_no}",
                speaker=f"{s['gender']}{s['session']}",
                gender=s["gender"],
                emotion_raw=m["code"],
                path=rel,
                extras={
                    "sentence": s["sentence"],
                    "target_emotion": s["target"],
                    "scenario": SCENARIOS[s["condition"]],
                    "turn": f"{s['pair']}{s['turn']}",
                    "arousal": scores.get("A", math.nan),
                    "valence": scores.get("V", math.nan),
                    "dominance": scores.get("D", math.nan),
                    "naturalness": scores.get("N", math.nan),
                },
            )
        )
    if not utterances:
        raise CorpusLayoutError(f"{evaluation}: no consensus lines (UTD-IMPROV-...avi; <code>; ...) found")
    return CorpusListing(utterances, issues)


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


INFO = CorpusInfo(
    name=CORPUS,
    title="MSP-IMPROV",
    manifest="msp_improv.toml",
    root="the folder holding Evaluation.txt (or Evalution.txt) and Audio/",
    speakers="12 (file-name field `F01`: gender letter + session)",
    read=read_corpus,
    dimensions=("arousal", "valence", "dominance", "naturalness"),
    scale="1-5",
)
