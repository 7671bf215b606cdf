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
