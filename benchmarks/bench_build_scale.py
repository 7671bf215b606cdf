"""Benchmark a build of a 100k-utterance MSP-Podcast-shaped corpus against the 4-hour demo build.

    python benchmarks/bench_build_scale.py                  # 100k utterances of 1-2 s, 2 jobs
    python benchmarks/bench_build_scale.py --utterances 20000

MSP-Podcast has ~150k utterances (~240 h): a build of it is dominated by what costs per
utterance (file opens, headers, hashing, manifest rows, per-utterance tables), not by audio
length. This generates (cached under --workdir) a corpus in MSP-Podcast's exact layout:
``Audios/MSP-PODCAST_XXXX_YYYY.wav`` (16 kHz mono, 1-2 s of speech-like tones and noise) and
``Labels/labels_consensus.csv`` (FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender,
Split_Set; unknown speakers and genders included, class shares like the real corpus), and
runs in the same session, each command in its own process, --repeats times (median wall):

  * ``serprep build iemocap`` on the 4-hour IEMOCAP-shaped demo corpus (the plain-build
    baseline of benchmarks/bench_build.py);
  * ``serprep build msp-podcast --classes 4class`` on the generated corpus.

It prints a markdown table: audio extracted, wall time, x real time, utterances per second,
peak RSS of the writer (the main process) and of all processes, and the ratio of real-time
factors against the baseline. The target: writer memory under 1 GB, real-time factor near
the baseline's.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_build import ensure_corpus, run_repeated  # noqa: E402

SR = 16000
#: EmoClass shares roughly like MSP-Podcast 1.11 (N and H dominate; X = no agreement).
CLASS_SHARES = {"N": 0.30, "H": 0.19, "A": 0.08, "S": 0.07, "C": 0.05, "U": 0.04, "D": 0.03, "F": 0.02,
                "O": 0.06, "X": 0.16}
PARTITION_SHARES = {"Train": 0.66, "Development": 0.14, "Test1": 0.12, "Test2": 0.08}


def _clip_pool(rng: np.random.Generator, n: int = 64) -> list[np.ndarray]:
    """2-s int16 clips: a gliding harmonic voice with syllable-rate envelope and noise."""
    t = np.arange(2 * SR) / SR
    clips = []
    for _ in range(n):
        f0 = rng.uniform(90, 260) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SR
        voice = sum(np.sin(k * phase) / k for k in range(1, 8))
        envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 6) * t)) ** 2
        x = 0.2 * voice * envelope + 0.01 * rng.standard_normal(len(t))
        clips.append((np.clip(x, -1, 1) * 30000).astype("<i2"))
    return clips


def ensure_podcast_corpus(workdir: Path, n: int, seed: int) -> Path:
    """The MSP-Podcast-shaped corpus of ``n`` utterances (written once, then reused)."""
    root = workdir / f"podcast_{n}_seed{seed}"
    if (root / ".complete").exists():
        return root
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    (root / "Audios").mkdir(parents=True, exist_ok=True)
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    clips = _clip_pool(rng)
    codes = rng.choice(list(CLASS_SHARES), size=n, p=list(CLASS_SHARES.values()))
    parts = rng.choice(list(PARTITION_SHARES), size=n, p=list(PARTITION_SHARES.values()))
    # ~1,400 known speakers, each in one partition; 10 % of utterances with an unknown speaker.
    speakers_per_part = {p: np.arange(i * 1000, i * 1000 + int(1400 * s)) for i, (p, s) in
                         enumerate(PARTITION_SHARES.items())}
    with open(root / "Labels" / "labels_consensus.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        for i in range(n):
            podcast, segment = divmod(i, 250)
            name = f"MSP-PODCAST_{podcast + 1:04d}_{segment + 1:04d}.wav"
            part = parts[i]
            if rng.random() < 0.10:
                spk, gender = "Unknown", "Unknown"
            else:
                spk_id = int(rng.choice(speakers_per_part[part]))
                spk, gender = str(spk_id), ("Female" if spk_id % 2 else "Male")
            act, val, dom = rng.uniform(1, 7, size=3).round(1)
            w.writerow([name, codes[i], act, val, dom, spk, gender, part])
            samples = int(SR * rng.uniform(1.0, 2.0))
            clip = clips[i % len(clips)]
            with wave.open(str(root / "Audios" / name), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(SR)
                out.writeframes(clip[:samples].tobytes())
    (root / ".complete").write_text("ok")
    print(f"generated {root} ({n} utterances) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=100_000)
    ap.add_argument("--baseline-hours", type=float, default=4.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench_out")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    from serprep.store import StoreReader

    corpora = {
        "iemocap": (f"{args.baseline_hours:g} h IEMOCAP-shaped demo", ensure_corpus(args.workdir, args.baseline_hours, 0), []),
        "msp-podcast": (f"{args.utterances // 1000}k-utterance MSP-Podcast-shaped",
                        ensure_podcast_corpus(args.workdir, args.utterances, args.seed), ["--classes", "4class"]),
    }
    serprep = [sys.executable, "-m", "serprep.cli"]
    rows = []
    for corpus, (label, root, extra) in corpora.items():
        out = args.workdir / f"scale_{corpus}.h5"
        res = run_repeated(serprep + ["build", corpus, "--root", str(root), "--out", str(out), "--jobs", str(args.jobs),
                                      "--quiet", *extra], args.repeats, before_each=lambda out=out: out.unlink(missing_ok=True))
        reader = StoreReader(out)
        manifest = reader.manifest()
        ok = manifest["status"] == "ok"
        audio = float(manifest.loc[ok, "duration"].sum())
        rows.append((label, int(ok.sum()), len(manifest), audio, res))
    base_rate = rows[0][3] / rows[0][4]["wall"]
    print(f"\n(`python benchmarks/bench_build_scale.py --utterances {args.utterances} --repeats {args.repeats}`, "
          f"{args.jobs} jobs)\n")
    print("| corpus | utterances extracted / listed | audio (h) | wall (s), median [range] | x real time | utterances/s "
          "| vs 4 h demo (x real time) | peak RSS, writer (MiB) | peak memory, all processes (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, n_ok, n_all, audio, r in rows:
        walls = r["walls"]
        print(f"| {label} | {n_ok} / {n_all} | {audio / 3600:.2f} | {r['wall']:.1f} [{min(walls):.1f}-{max(walls):.1f}] "
              f"| {audio / r['wall']:.0f} | {n_ok / r['wall']:.0f} | {audio / r['wall'] / base_rate:.2f}x "
              f"| {r['peak_main_mib']:.0f} | {r['peak_tree_mib']:.0f} |")


if __name__ == "__main__":
    main()
