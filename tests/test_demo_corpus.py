"""The synthetic IEMOCAP-shaped demo corpus (serprep.demo).

(1) layout and label syntax exactly as docs/corpora.md describes IEMOCAP_full_release;
(2) the same seed gives the same bytes;
(3) no single cue (utterance energy, utterance f0) separates the 4 merged classes: best
    single-feature classifier UA < 0.60 (leave one session out);
(4) the classes are learnable from log-Mel statistics: logistic regression on per-utterance
    mean+std of the 40 static log-Mel bands, leave one session out, UA > LEARNABLE_UA.

Measured when this file was written (module corpus: hours=0.25, seed=0, ~240 utterances, ~130
of them in the 4 merged classes): single feature energy 0.438 (tree) / 0.459 (naive Bayes),
f0 0.282 / 0.257; logistic regression 0.560. Over seeds 1-4 at 0.25 h: single-feature max
<= 0.46, logistic regression 0.49-0.62; at 0.5 h (seeds 0-3): <= 0.46 and 0.56-0.61. The
bounds keep that margin for numeric drift across library versions.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serprep.config import FeatureConfig
from serprep.demo import IEMOCAP_CODE_COUNTS, write_demo_corpus
from serprep.features import logmel_3ch

HOURS = 0.25
SEED = 0
SINGLE_FEATURE_MAX_UA = 0.60
LEARNABLE_UA = 0.45

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
SUMMARY = re.compile(
    r"^\[(?P<start>\d+\.\d{4}) - (?P<end>\d+\.\d{4})\]\t"
    r"(?P<utt>(?P<dialog>Ses0(?P<sess>[1-5])[FM]_(?:impro0[1-8][ab]?|script0[1-3]_[1-3]b?))"
    r"_(?P<gender>[FM])\d{3})\t"
    r"(?P<code>neu|hap|exc|sad|ang|fru|sur|fea|dis|oth|xxx)\t"
    r"\[\d\.\d{4}, \d\.\d{4}, \d\.\d{4}\]$"
)
EVALUATOR = re.compile(r"^(?:C-[EFM]\d:\t(?:[A-Z][a-z]+; ?)+\t\(.*\)|A-[EFM]\d:\tval \d; act \d;(?: dom  \d;)?\t\(.*\))$")
TRANSCRIPT = re.compile(r"^(?P<utt>\S+) \[(?P<start>\d{3,}\.\d{4})-(?P<end>\d{3,}\.\d{4})\]: .+$")
MERGE4 = {"ang": "ang", "hap": "hap", "exc": "hap", "neu": "neu", "sad": "sad"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo") / "IEMOCAP_full_release"
    return root, write_demo_corpus(root, hours=HOURS, seed=SEED)


def _summary_lines(root: Path) -> list[dict]:
    rows = []
    for f in sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt")):
        for line in f.read_text(encoding="utf-8").split("\n"):
            m = SUMMARY.match(line)
            if m:
                rows.append({**m.groupdict(), "session_dir": f.parts[-4], "file": f})
    return rows


# ---------------------------------------------------------------------------------------------
# (1) layout


def test_layout_and_label_syntax(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    assert (root / "README.txt").is_file()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [f"Session{i}" for i in range(1, 6)]

    modes = set()
    for sess in range(1, 6):
        emo_dir = root / f"Session{sess}" / "dialog" / "EmoEvaluation"
        tr_dir = root / f"Session{sess}" / "dialog" / "transcriptions"
        label_files = sorted(emo_dir.glob("*.txt"))
        assert label_files, emo_dir
        assert [f.stem for f in label_files] == sorted(f.stem for f in tr_dir.glob("*.txt"))
        genders_in_session = set()
        for f in label_files:
            assert f.stem.startswith(f"Ses0{sess}")
            modes.add("script" if "_script" in f.stem else "impro")
            raw = f.read_bytes()
            assert b"\r" not in raw and raw.endswith(b"\n")
            lines = raw.decode("utf-8").split("\n")
            assert lines[0] == HEADER and lines[1] == ""
            # Blocks: summary line, >= 1 evaluator lines, blank line.
            starts, genders, utts, i = [], [], [], 2
            while i < len(lines) - 1:
                m = SUMMARY.match(lines[i])
                assert m, f"{f.name}:{i + 1}: {lines[i]!r}"
                assert m["dialog"] == f.stem and m["sess"] == str(sess)
                starts.append(float(m["start"]))
                genders.append(m["gender"])
                utts.append(m["utt"])
                i += 1
                n_eval = 0
                while lines[i] != "":
                    assert EVALUATOR.match(lines[i]), f"{f.name}:{i + 1}: {lines[i]!r}"
                    n_eval += 1
                    i += 1
                assert n_eval >= 2
                i += 1
            assert starts == sorted(starts)
            if len(genders) >= 4:  # both speakers take turns in a dialog
                assert set(genders) == {"F", "M"}
            genders_in_session |= set(genders)
            # Transcriptions: one line per labelled turn, same time stamps.
            tr = {}
            for line in (tr_dir / f.name).read_text(encoding="utf-8").splitlines():
                t = TRANSCRIPT.match(line)
                assert t, line
                tr[t["utt"]] = (float(t["start"]), float(t["end"]))
            assert set(tr) == set(utts)
        assert genders_in_session == {"F", "M"}
    assert modes == {"impro", "script"}

    rows = _summary_lines(root)
    assert len(rows) == summary["n_utterances"]
    wavs = set(root.glob("Session*/sentences/wav/*/*.wav"))
    expected = set()
    total = 0.0
    for r in rows:
        wav = root / r["session_dir"] / "sentences" / "wav" / r["dialog"] / f"{r['utt']}.wav"
        expected.add(wav)
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        # Gender = first letter of the LAST "_" token; it names the speaker, not the dialog actor.
        assert r["utt"].split("_")[-1][0] == r["gender"]
        # End - start equals the wav duration (4 decimals).
        assert abs((float(r["end"]) - float(r["start"])) - info.frames / 16000) < 1.5e-4
        assert 1.5 - 1e-9 <= info.frames / 16000 <= 7.0 + 1e-9
        total += info.frames / 16000
    assert wavs == expected  # every labelled turn has a wav, and nothing else is there

    # Summary dict and class skew.
    assert abs(total - summary["total_seconds"]) < 0.01
    assert HOURS * 3600 <= total <= HOURS * 3600 + 5 * 7.0
    codes = Counter(r["code"] for r in rows)
    assert codes == Counter(summary["emotions"])
    n = len(rows)
    all_counts = sum(IEMOCAP_CODE_COUNTS.values())
    for code, count in IEMOCAP_CODE_COUNTS.items():
        assert abs(codes.get(code, 0) - n * count / all_counts) <= 3, (code, codes)
    speakers = Counter(f"Ses0{r['sess']}{r['gender']}" for r in rows)
    assert speakers == Counter(summary["speakers"]) and len(speakers) == 10


# ---------------------------------------------------------------------------------------------
# (2) determinism


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = write_demo_corpus(tmp_path / "a", hours=0.01, seed=7)
    b = write_demo_corpus(tmp_path / "b", hours=0.01, seed=7)
    write_demo_corpus(tmp_path / "c", hours=0.01, seed=8)
    assert {k: v for k, v in a.items() if k != "root"} == {k: v for k, v in b.items() if k != "root"}
    da, db, dc = _digests(tmp_path / "a"), _digests(tmp_path / "b"), _digests(tmp_path / "c")
    assert sum(k.endswith(".wav") for k in da) >= 5
    assert da == db
    assert da != dc


# ---------------------------------------------------------------------------------------------
# (3) + (4) separability


@pytest.fixture(scope="module")
def features(corpus: tuple[Path, dict]) -> dict[str, np.ndarray]:
    """Per-utterance features of the 4-class (ang, hap+exc, neu, sad) utterances."""
    import librosa

    root, _ = corpus
    cfg = FeatureConfig()
    energy, f0, logmel, labels, groups = [], [], [], [], []
    for r in _summary_lines(root):
        if r["code"] not in MERGE4:
            continue
        wav = root / r["session_dir"] / "sentences" / "wav" / r["dialog"] / f"{r['utt']}.wav"
        x, _ = sf.read(str(wav), dtype="float32")
        energy.append(20 * np.log10(np.sqrt(np.mean(x**2)) + 1e-9))  # RMS level, dB
        # f0: YIN on the louder 40 % of frames (those are voiced: vowels dominate the energy).
        track = librosa.yin(x, fmin=60, fmax=500, sr=16000, frame_length=1024, hop_length=256)
        rms = librosa.feature.rms(y=x, frame_length=1024, hop_length=256)[0][: len(track)]
        f0.append(np.log(np.median(track[rms >= np.percentile(rms, 60)])))
        static = logmel_3ch(x, cfg)[0]
        logmel.append(np.concatenate([static.mean(0), static.std(0)]))
        labels.append(MERGE4[r["code"]])
        groups.append(r["sess"])
    return {
        "energy": np.array(energy)[:, None],
        "f0": np.array(f0)[:, None],
        "logmel": np.array(logmel),
        "y": np.array(labels),
        "groups": np.array(groups),
    }


def _loso_ua(make_model, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """Balanced accuracy of leave-one-session-out predictions pooled over the 5 folds."""
    from sklearn.metrics import balanced_accuracy_score

    pred = np.empty(len(y), dtype=y.dtype)
    for g in np.unique(groups):
        test = groups == g
        pred[test] = make_model().fit(x[~test], y[~test]).predict(x[test])
    return float(balanced_accuracy_score(y, pred))


def test_no_single_feature_separates_the_classes(features: dict[str, np.ndarray]) -> None:
    from sklearn.naive_bayes import GaussianNB
    from sklearn.tree import DecisionTreeClassifier

    y, groups = features["y"], features["groups"]
    assert set(y) == {"ang", "hap", "neu", "sad"}
    models = {
        "tree3": lambda: DecisionTreeClassifier(max_depth=3, class_weight="balanced", random_state=0),
        "gnb": GaussianNB,
    }
    uas = {
        (feat, name): _loso_ua(make, features[feat], y, groups)
        for feat in ("energy", "f0")
        for name, make in models.items()
    }
    print("single-feature LOSO UA:", {f"{k[0]}/{k[1]}": round(v, 3) for k, v in uas.items()})
    assert max(uas.values()) < SINGLE_FEATURE_MAX_UA, uas


def test_classes_are_learnable_from_logmel_statistics(features: dict[str, np.ndarray]) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def make():
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.03, class_weight="balanced", max_iter=3000))

    ua = _loso_ua(make, features["logmel"], features["y"], features["groups"])
    print(f"logistic regression on log-Mel mean+std, LOSO UA: {ua:.3f}")
    assert ua > LEARNABLE_UA, ua


def test_iemocap_reader_reads_it_unchanged(corpus: tuple[Path, dict]) -> None:
    from serprep.corpora.iemocap import read_corpus

    root, summary = corpus
    utts = read_corpus(root).utterances
    assert len(utts) == summary["n_utterances"]
    assert Counter(u.speaker for u in utts) == Counter(summary["speakers"])
    assert Counter(u.emotion_raw for u in utts) == Counter(summary["emotions"])
    assert {u.extras["mode"] for u in utts} == {"improvised", "scripted"}
    assert all((root / u.path).is_file() for u in utts)


# ---------------------------------------------------------------------------------------------
# The MSP-IMPROV layout (--layout msp-improv): same renderer, MSP-IMPROV's files and label syntax

MSP_HOURS = 0.1
MSP_CONSENSUS = re.compile(
    r"^UTD-IMPROV-(?P<stem>(?P<sent>S(?:0[1-9]|1\d|20))(?P<target>[AHSN])-(?P<spk>(?P<gender>[FM])0(?P<sess>[1-6]))"
    r"-(?P<cond>[RSPT])-(?P<pair>FM|MF)\d{2})\.avi; (?P<code>[AHSNOX]); "
    r"A:(?P<a>\d\.\d{6}); V:(?P<v>\d\.\d{6}); D:(?P<d>\d\.\d{6}) ; N:(?P<n>\d\.\d{6});$"
)
MSP_RATER = re.compile(
    r"^rater\d{4}; (?P<label>Angry|Happy|Sad|Neutral|Other); [A-Za-z,]*; "
    r"A:(?P<a>[1-5])\.0; V:(?P<v>[1-5])\.0; D:(?P<d>[1-5])\.0; N:(?P<n>[1-5])\.0;$"
)
MSP_NAMES = {"A": "Angry", "H": "Happy", "S": "Sad", "N": "Neutral", "O": "Other"}


@pytest.fixture(scope="module")
def msp_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo_msp") / "MSP-IMPROV"
    return root, write_demo_corpus(root, hours=MSP_HOURS, seed=SEED, layout="msp-improv")


def _msp_blocks(root: Path) -> list[tuple[re.Match, list[re.Match]]]:
    raw = (root / "Evaluation.txt").read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n") and not raw.endswith(b"\n\n")
    blocks = []
    for text in raw.decode("utf-8").rstrip("\n").split("\n\n"):
        head, *raters = text.split("\n")
        m = MSP_CONSENSUS.match(head)
        assert m, head
        parsed = [MSP_RATER.match(line) for line in raters]
        assert all(parsed) and len(parsed) >= 5, text
        blocks.append((m, parsed))
    return blocks


def test_msp_layout_and_label_syntax(msp_corpus: tuple[Path, dict]) -> None:
    from serprep.demo import MSP_IMPROV_CODE_COUNTS

    root, summary = msp_corpus
    assert summary["layout"] == "msp-improv"
    blocks = _msp_blocks(root)
    assert len(blocks) == summary["n_utterances"]
    assert sorted(p.name for p in (root / "Audio").iterdir()) == [f"session{i}" for i in range(1, 7)]
    expected, total = set(), 0.0
    for m, raters in blocks:
        wav = root / "Audio" / f"session{m['sess']}" / f"{m['sent']}{m['target']}" / m["cond"] / f"MSP-IMPROV-{m['stem']}.wav"
        expected.add(wav)
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert 1.5 - 1e-9 <= info.frames / 16000 <= 7.0 + 1e-9
        total += info.frames / 16000
        assert m["pair"][0] == m["gender"]
        # The consensus label is the raters' majority (X: no label has one); its scores their means.
        votes = Counter(r["label"] for r in raters)
        if m["code"] == "X":
            assert max(votes.values()) <= len(raters) // 2, votes
        else:
            assert votes[MSP_NAMES[m["code"]]] > len(raters) // 2, (m["code"], votes)
        for key in "avdn":
            assert float(m[key]) == pytest.approx(np.mean([int(r[key]) for r in raters]), abs=1e-6)
    assert set(root.glob("Audio/session*/*/*/*.wav")) == expected  # every turn has its wav, nothing else
    assert abs(total - summary["total_seconds"]) < 0.01
    assert MSP_HOURS * 3600 <= total <= MSP_HOURS * 3600 + 6 * 7.0

    codes = Counter(m["code"] for m, _ in blocks)
    assert codes == Counter(summary["emotions"])
    n, all_counts = len(blocks), sum(MSP_IMPROV_CODE_COUNTS.values())
    for code, count in MSP_IMPROV_CODE_COUNTS.items():  # MSP-IMPROV's skew, N > H >> S, A
        assert abs(codes.get(code, 0) - n * count / all_counts) <= 3, (code, codes)
    per_speaker = Counter((m["spk"], m["code"]) for m, _ in blocks)
    assert {(s, c): k for s, cs in summary["speaker_emotions"].items() for c, k in cs.items()} == dict(per_speaker)
    assert sorted(summary["speakers"]) == [f"{g}0{s}" for g in "FM" for s in range(1, 7)]
    assert Counter(m["cond"] for m, _ in blocks) == Counter(summary["conditions"]) and set(summary["conditions"]) == set("PRST")


def test_msp_reader_reads_it_unchanged(msp_corpus: tuple[Path, dict]) -> None:
    from serprep.corpora.msp_improv import read_corpus

    root, summary = msp_corpus
    listing = read_corpus(root)
    assert listing.issues == []
    utts = listing.utterances
    assert len(utts) == summary["n_utterances"]
    counts = Counter((u.speaker, u.emotion_raw) for u in utts)
    assert dict(counts) == {(s, c): k for s, cs in summary["speaker_emotions"].items() for c, k in cs.items()}
    assert all(u.gender == u.speaker[0] for u in utts)
    assert Counter(u.session for u in utts) == Counter(summary["sessions"])
    scenario = {"R": "read", "S": "improvised", "P": "natural", "T": "target"}
    assert Counter(u.extras["scenario"] for u in utts) == Counter(
        {scenario[c]: k for c, k in summary["conditions"].items()})
    assert all((root / u.path).is_file() for u in utts)


def test_msp_same_seed_same_bytes(tmp_path: Path) -> None:
    a = write_demo_corpus(tmp_path / "a", hours=0.01, seed=7, layout="msp-improv")
    b = write_demo_corpus(tmp_path / "b", hours=0.01, seed=7, layout="msp-improv")
    write_demo_corpus(tmp_path / "c", hours=0.01, seed=8, layout="msp-improv")
    assert {k: v for k, v in a.items() if k != "root"} == {k: v for k, v in b.items() if k != "root"}
    da, db, dc = _digests(tmp_path / "a"), _digests(tmp_path / "b"), _digests(tmp_path / "c")
    assert sum(k.endswith(".wav") for k in da) >= 5
    assert da == db
    assert da != dc


def test_msp_layout_builds_a_4class_store(msp_corpus: tuple[Path, dict], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from serprep.cli import main
    from serprep.store import StoreReader

    root, summary = msp_corpus
    out = tmp_path / "msp.h5"
    result = CliRunner().invoke(main, ["build", "msp-improv", "--root", str(root), "--out", str(out),
                                       "--classes", "4class", "-j", "1", "-q"])
    assert result.exit_code == 0, result.output
    reader = StoreReader(out)
    assert reader.corpus == "msp-improv" and reader.vocab("emotion") == ["ang", "hap", "neu", "sad"]
    manifest = reader.manifest()
    assert (manifest["status"] == "ok").sum() == sum(summary["emotions"].get(c, 0) for c in "AHNS")
    labelled = manifest[manifest["emotion"] != ""]
    to4 = {"A": "ang", "H": "hap", "N": "neu", "S": "sad"}
    expected = {(s, to4[c]): k for s, cs in summary["speaker_emotions"].items() for c, k in cs.items() if c in to4}
    assert Counter(zip(labelled["speaker"], labelled["emotion"])) == Counter(expected)
    assert reader.fold_ids("loso") == [1, 2, 3, 4, 5, 6]
    _assert_ratings_follow_the_class(reader)


def _assert_ratings_follow_the_class(reader) -> None:
    """The demo's ratings reach the store's segments on the 1-5 scale and depend on the class
    as _VAD_MEANS says (anger most aroused, sadness least; happiness most positive), so
    dimensional tasks are learnable from it."""
    assert reader.dimension_scales() == {name: (1.0, 5.0) for name in ("arousal", "valence", "dominance")}
    seg = reader.segments()
    original = seg[(seg["copy"] == 0) & (seg["emotion"] >= 0)]
    assert original[["arousal", "valence", "dominance"]].notna().all().all()
    assert original["arousal"].between(1, 5).all()
    mean = original.groupby("emotion")[["arousal", "valence"]].mean()
    mean.index = [reader.vocab("emotion")[k] for k in mean.index]
    assert mean.loc["ang", "arousal"] > mean.loc["neu", "arousal"] > mean.loc["sad", "arousal"]
    assert mean.loc["ang", "arousal"] - mean.loc["sad", "arousal"] > 0.8
    assert mean.loc["hap", "valence"] > mean.loc["neu", "valence"] > mean.loc["ang", "valence"]


def test_iemocap_layout_ratings_reach_the_store(corpus: tuple[Path, dict], tmp_path: Path) -> None:
    from serprep.store import StoreReader
    from store_fixtures import build

    root, _ = corpus
    out = tmp_path / "demo.h5"
    build("iemocap", root, out)
    _assert_ratings_follow_the_class(StoreReader(out))


def test_demo_corpus_command_layout_option(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from serprep.cli import main

    result = CliRunner().invoke(main, ["demo-corpus", "--layout", "msp-improv", "--out", str(tmp_path / "m"),
                                       "--hours", "0.01", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "msp-improv layout" in result.output
    assert (tmp_path / "m" / "Evaluation.txt").is_file() and not (tmp_path / "m" / "Session1").exists()
    result = CliRunner().invoke(main, ["demo-corpus", "--out", str(tmp_path / "i"), "--hours", "0.01"])
    assert result.exit_code == 0 and (tmp_path / "i" / "Session1").is_dir()  # default: IEMOCAP
    result = CliRunner().invoke(main, ["demo-corpus", "--layout", "crema-d", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and not (tmp_path / "x").exists()
