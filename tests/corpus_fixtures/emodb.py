"""A tiny EmoDB tree (``wav/SSTTTEV.wav`` plus the label side folders; docs/corpora.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import APPLEDOUBLE, _corrupt_bytes, _stable_seed, speaker_voice, speech_like, write_wav

#: Speaker number -> gender, as the corpus documents it.
EMODB_SPEAKERS = {"03": "M", "08": "F", "09": "F", "10": "M", "11": "M", "12": "M",
                  "13": "F", "14": "F", "15": "M", "16": "F"}  # fmt: skip
EMODB_TEXTS = ("a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10")
#: Emotion letters in the order the documentation lists them.
EMODB_CODES = ("W", "L", "E", "A", "F", "T", "N")
EMODB_SR = 16000  # EmoDB's native rate (the feature rate too)


class EmodbTruth(list):
    """What :func:`make_emodb` wrote: one dict per utterance the reader must list (the list
    itself), ``issues`` (one dict per ``.wav`` the reader must skip and record: ``path``,
    ``utt_id`` (the id the issue names, "" if none), ``reason``) and ``ignored`` (relative
    paths of litter that is neither an utterance nor an issue)."""

    def __init__(self, utterances: list[dict], issues: list[dict], ignored: list[str]) -> None:
        super().__init__(utterances)
        self.issues = issues
        self.ignored = ignored


def _label_file(stem: str, rng: np.random.Generator, unit: str) -> str:
    """An xlabel-style phone or syllable label file (the side folders' content)."""
    t = 0.0
    lines = [f"signal {stem}", "nfields 1", "#"]
    for _ in range(int(rng.integers(3, 8))):
        t += float(rng.uniform(0.05, 0.3))
        lines.append(f"    {t:.6f}  121 {unit}{int(rng.integers(1, 40))}")
    return "\n".join(lines) + "\n"


def make_emodb(
    root: Path,
    *,
    utts_per_speaker: int = 5,
    seed: int = 0,
    corrupt: bool = True,
    faults: bool = True,
) -> EmodbTruth:
    """Build a tiny EmoDB tree under ``root`` (the folder holding ``wav/``).

    Ten speakers of the speaker table, ``utts_per_speaker`` files each with emotion letters
    taken in turn (every letter appears; every speaker has at least one of W, F, T, N when
    ``utts_per_speaker >= 4``), one second version (``...b``) of a take, label files in
    ``lablaut/``, ``labsilb/``, ``silb/``, AppleDouble and ``.DS_Store`` litter, a readme.
    ``corrupt`` makes one anger (W) wav undecodable and one boredom (L) wav empty (listed by
    the reader, failed by the build); ``faults`` adds a wav of a speaker outside the table and one whose name does not
    parse (both skipped by the reader and recorded as issues).
    """
    root = Path(root)
    wav_dir = root / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(_stable_seed("emodb", seed))

    plan: list[dict] = []
    used: set[str] = set()
    position = 0
    for number, gender in EMODB_SPEAKERS.items():
        for _ in range(utts_per_speaker):
            code = EMODB_CODES[position % len(EMODB_CODES)]
            position += 1
            while True:
                text = EMODB_TEXTS[int(rng.integers(0, len(EMODB_TEXTS)))]
                stem = f"{number}{text}{code}a"
                if stem not in used:
                    break
            used.add(stem)
            plan.append({"number": number, "gender": gender, "text": text, "code": code, "version": "a"})
    # A second version of one take (EmoDB keeps both: ...a and ...b).
    first = dict(plan[0], version="b")
    plan.insert(1, first)
    for p in plan:
        p["stem"] = f"{p['number']}{p['text']}{p['code']}{p['version']}"
        p["n_samples"] = int(rng.integers(int(0.5 * EMODB_SR), int(1.5 * EMODB_SR)))
        p["kind"] = "ok"
    if corrupt:
        # One anger take undecodable, one boredom take empty: one failure inside 4class, one outside.
        for code, kind in (("W", "corrupt"), ("L", "empty")):
            options = [i for i, p in enumerate(plan) if i > 1 and p["code"] == code]
            if options:
                plan[options[int(rng.integers(0, len(options)))]]["kind"] = kind

    truth: list[dict] = []
    ignored: list[str] = []
    for idx, p in enumerate(plan):
        urng = np.random.default_rng(_stable_seed("emodbu", p["stem"], seed))
        path = wav_dir / f"{p['stem']}.wav"
        if p["kind"] == "corrupt":
            path.write_bytes(_corrupt_bytes(urng))
        elif p["kind"] == "empty":
            path.write_bytes(b"")
        else:
            spk = f"spk{p['number']}"
            voice = speaker_voice(spk, p["gender"], seed)
            sig = speech_like(p["n_samples"], EMODB_SR, f0=voice["f0"], formant_scale=voice["formant_scale"],
                              seed=_stable_seed("sig", p["stem"], seed))
            write_wav(path, sig, EMODB_SR)
        if idx % 7 == 3:
            (wav_dir / f"._{p['stem']}.wav").write_bytes(APPLEDOUBLE)
            ignored.append(f"wav/._{p['stem']}.wav")
        for folder, suffix, unit in (("lablaut", "lablaut", "p"), ("labsilb", "labsilb", "s"), ("silb", "silb", "s")):
            side = root / folder
            side.mkdir(exist_ok=True)
            (side / f"{p['stem']}.{suffix}").write_text(_label_file(p["stem"], urng, unit))
        bad = p["kind"] != "ok"
        truth.append({
            "utt_id": p["stem"],
            "session": f"spk{p['number']}",
            "speaker": f"spk{p['number']}",
            "gender": p["gender"],
            "emotion_raw": p["code"],
            "path": f"wav/{p['stem']}.wav",
            "text": p["text"],
            "version": p["version"],
            "sample_rate": EMODB_SR,
            "n_samples": 0 if bad else p["n_samples"],
            "duration": 0.0 if bad else p["n_samples"] / EMODB_SR,
            "corrupt": bad,
        })

    issues: list[dict] = []
    if faults:
        frng = np.random.default_rng(_stable_seed("emodbf", seed))
        # Speaker 02 is not in the speaker table: its gender is unknown.
        write_wav(wav_dir / "02a01Fa.wav", speech_like(int(0.6 * EMODB_SR), EMODB_SR, seed=int(frng.integers(1 << 30))))
        issues.append({"path": "wav/02a01Fa.wav", "utt_id": "02a01Fa", "reason": "speaker"})
        # A mangled name (text code with one digit): not an EmoDB name at all.
        write_wav(wav_dir / "13a7Fa.wav", speech_like(int(0.6 * EMODB_SR), EMODB_SR, seed=int(frng.integers(1 << 30))))
        issues.append({"path": "wav/13a7Fa.wav", "utt_id": "", "reason": "name"})

    # Litter: Finder files, a readme, a non-wav file in wav/.
    for rel, data in ((".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(24)),
                      ("wav/.DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(24)),
                      ("._wav", APPLEDOUBLE),
                      ("readme.txt", b"Berlin Database of Emotional Speech\n"),
                      ("wav/notes.txt", b"03a01Fa.wav: the first file\n")):
        (root / rel).write_bytes(data)
        ignored.append(rel)
    return EmodbTruth(truth, issues, ignored)
