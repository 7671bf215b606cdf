"""A tiny RAVDESS audio tree (``Actor_NN/MM-VV-EE-II-SS-RR-AA.wav``; docs/corpora.md)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .common import APPLEDOUBLE, _corrupt_bytes, _stable_seed, speaker_voice, speech_like, write_wav

RAVDESS_CODES = ("01", "02", "03", "04", "05", "06", "07", "08")
#: Song has no disgust (07) nor surprise (08).
RAVDESS_SONG_CODES = ("01", "02", "03", "04", "05", "06")
RAVDESS_SR = 48000
SPEECH_DIR = "Audio_Speech_Actors_01-24"
SONG_DIR = "Audio_Song_Actors_01-24"
#: Where the song files go: into the speech zip's actor folders (``merged``), into their own
#: zip folder beside the speech one (``zips``; the root then holds both), or nowhere (``speech``).
LAYOUTS = ("merged", "zips", "speech")


class RavdessTruth(list):
    """What :func:`make_ravdess` wrote: one dict per file the reader must list (song files
    included; the list itself), ``issues`` (one dict per ``.wav`` the reader must skip and
    record: ``path``, ``utt_id``, ``reason``), ``ignored`` (relative paths of litter that is
    neither an utterance nor an issue) and ``layout``."""

    def __init__(self, utterances: list[dict], issues: list[dict], ignored: list[str], layout: str) -> None:
        super().__init__(utterances)
        self.issues = issues
        self.ignored = ignored
        self.layout = layout


def actor_gender(actor: int) -> str:
    return "M" if actor % 2 else "F"


def make_ravdess(
    root: Path,
    *,
    layout: str = "merged",
    speech_per_actor: int = 3,
    song_per_actor: int = 1,
    seed: int = 0,
    corrupt: bool = True,
    faults: bool = True,
) -> RavdessTruth:
    """Build a tiny RAVDESS audio tree under ``root``.

    ``root`` is what ``--root`` names: the speech zip's folder (``Audio_Speech_Actors_01-24``
    holding ``Actor_01`` .. ``Actor_24``) for the ``merged`` and ``speech`` layouts, and the
    folder holding both zip folders for ``zips``. Every actor has ``speech_per_actor`` speech
    files (emotions taken in turn: all eight appear, each actor has one of 01/03/04/05 when
    ``speech_per_actor >= 3``); every actor but 18 has ``song_per_actor`` song files. One sad
    speech file is stereo. 48 kHz, 16-bit. ``corrupt`` makes one angry speech wav undecodable
    and one calm speech wav empty (listed, failed by the build); ``faults`` adds a file whose actor field disagrees with
    its folder and one whose name has six fields (both skipped and recorded as issues).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    speech_base = root / SPEECH_DIR if layout == "zips" else root
    song_base = {"zips": root / SONG_DIR, "merged": root, "speech": None}[layout]
    rng = np.random.default_rng(_stable_seed("ravdess", seed))

    plan: list[dict] = []
    used: set[str] = set()

    def add(actor: int, channel: str, code: str, base: Path) -> None:
        while True:
            intensity = "01" if code == "01" else ("01", "02")[int(rng.integers(0, 2))]
            statement = ("01", "02")[int(rng.integers(0, 2))]
            repetition = ("01", "02")[int(rng.integers(0, 2))]
            stem = f"03-{channel}-{code}-{intensity}-{statement}-{repetition}-{actor:02d}"
            if stem not in used:
                break
        used.add(stem)
        plan.append({"actor": actor, "channel": channel, "code": code, "intensity": intensity,
                     "statement": statement, "repetition": repetition, "stem": stem, "base": base,
                     "n_samples": int(rng.integers(int(0.5 * RAVDESS_SR), int(0.9 * RAVDESS_SR))),
                     "channels": 1, "kind": "ok"})

    for actor in range(1, 25):
        for j in range(speech_per_actor):
            add(actor, "01", RAVDESS_CODES[(2 * (actor - 1) + j) % len(RAVDESS_CODES)], speech_base)
        if song_base is not None and actor != 18:
            for j in range(song_per_actor):
                add(actor, "02", RAVDESS_SONG_CODES[(actor + j) % len(RAVDESS_SONG_CODES)], song_base)
    four = Counter(p["actor"] for p in plan if p["channel"] == "01" and p["code"] in ("01", "03", "04", "05"))

    def pick(code: str) -> dict:
        """A plain speech file of emotion ``code`` (of any emotion if there is none) of an actor
        with another ang/hap/neu/sad speech file, so every actor keeps a 4class utterance."""
        plain = [p for p in plan if p["channel"] == "01" and p["kind"] == "ok" and p["channels"] == 1]
        options = ([p for p in plain if p["code"] == code and four[p["actor"]] > 1]
                   or [p for p in plain if p["code"] == code] or plain)
        return options[int(rng.integers(0, len(options)))]

    pick("04")["channels"] = 2
    if corrupt:
        # One angry take undecodable, one calm take empty: one failure inside 4class, one outside.
        pick("05")["kind"] = "corrupt"
        pick("02")["kind"] = "empty"

    truth: list[dict] = []
    ignored: list[str] = []
    for idx, p in enumerate(plan):
        folder = p["base"] / f"Actor_{p['actor']:02d}"
        path = folder / f"{p['stem']}.wav"
        folder.mkdir(parents=True, exist_ok=True)
        if p["kind"] == "corrupt":
            path.write_bytes(_corrupt_bytes(np.random.default_rng(_stable_seed("bad", p["stem"], seed))))
        elif p["kind"] == "empty":
            path.write_bytes(b"")
        else:
            speaker = f"Actor_{p['actor']:02d}"
            voice = speaker_voice(speaker, actor_gender(p["actor"]), seed)
            sig = speech_like(p["n_samples"], RAVDESS_SR, f0=voice["f0"] * (1.3 if p["channel"] == "02" else 1.0),
                              formant_scale=voice["formant_scale"], seed=_stable_seed("sig", p["stem"], seed))
            if p["channels"] == 2:
                sig = np.stack([sig, 0.8 * sig], axis=1)
            write_wav(path, sig, RAVDESS_SR)
        if idx % 9 == 4:
            (folder / f"._{p['stem']}.wav").write_bytes(APPLEDOUBLE)
            ignored.append((folder / f"._{p['stem']}.wav").relative_to(root).as_posix())
        bad = p["kind"] != "ok"
        truth.append({
            "utt_id": p["stem"],
            "session": f"Actor_{p['actor']:02d}",
            "speaker": f"Actor_{p['actor']:02d}",
            "gender": actor_gender(p["actor"]),
            "emotion_raw": p["code"],
            "path": path.relative_to(root).as_posix(),
            "vocal_channel": "speech" if p["channel"] == "01" else "song",
            "intensity": "normal" if p["intensity"] == "01" else "strong",
            "statement": p["statement"],
            "repetition": p["repetition"],
            "sample_rate": RAVDESS_SR,
            "channels": p["channels"],
            "n_samples": 0 if bad else p["n_samples"],
            "duration": 0.0 if bad else p["n_samples"] / RAVDESS_SR,
            "corrupt": bad,
        })

    issues: list[dict] = []
    if faults:
        frng = np.random.default_rng(_stable_seed("ravdessf", seed))
        short = int(0.5 * RAVDESS_SR)
        # Actor field 06 in Actor_05's folder (a file moved by hand).
        wrong = speech_base / "Actor_05" / "03-01-03-01-02-01-06.wav"
        write_wav(wrong, speech_like(short, RAVDESS_SR, seed=int(frng.integers(1 << 30))), RAVDESS_SR)
        issues.append({"path": wrong.relative_to(root).as_posix(), "utt_id": wrong.stem, "reason": "actor"})
        # Six fields: the repetition is missing.
        mangled = speech_base / "Actor_10" / "03-01-05-02-01-10.wav"
        write_wav(mangled, speech_like(short, RAVDESS_SR, seed=int(frng.integers(1 << 30))), RAVDESS_SR)
        issues.append({"path": mangled.relative_to(root).as_posix(), "utt_id": "", "reason": "name"})

    # Litter: Finder files, a video file of the AV release, a note.
    litter = [
        (root / ".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(24)),
        (speech_base / "Actor_02" / ".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(24)),
        (speech_base / "Actor_02" / "01-01-01-01-01-01-02.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(16)),
        (speech_base / "Actor_03" / "notes.txt", b"re-recorded?\n"),
    ]
    for path, data in litter:
        path.write_bytes(data)
        ignored.append(path.relative_to(root).as_posix())
    return RavdessTruth(truth, issues, ignored, layout)
