"""Fault injection, ``sertrain predict`` (issue items: per-file errors, non-finite values,
too-short audio, bounded memory).

Every file named on the command line gets a result or one ``error: <file>: <reason>`` line
on stderr; one bad file never hides the others' results, a number printed is never ``nan``,
``--json`` stays strict JSON, and the exit status is 1 when any file failed (2 for a bad
checkpoint, as for every other command). Memory does not grow with the length of a file.
All commands run as real subprocesses; no input file is ever modified.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from corpus_fixtures import speech_like, write_wav
from fault_helpers import Ran, assert_one_line_error, cli_env, command, run, tree_digest
from sertrain.checkpoint import payload_digest
from sertrain_fixtures import short_run_checkpoint, store_base

SR = 16000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return short_run_checkpoint(store_base(tmp_path_factory))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Good and bad audio files, by kind. ``missing`` does not exist."""
    d = tmp_path_factory.mktemp("fault_predict_inputs")
    files = {k: d / f"{k}.wav" for k in ("good", "good_44k", "missing", "empty", "corrupt", "short",
                                          "loud", "nan", "folder", "truncated", "one_hz")}
    write_wav(files["good"], speech_like(4 * SR, SR, seed=1))
    stereo = np.stack([speech_like(3 * 44100, 44100, seed=2), speech_like(3 * 44100, 44100, seed=3)], axis=1)
    write_wav(files["good_44k"], stereo, 44100)
    files["empty"].write_bytes(b"")
    files["corrupt"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(range(200)))
    write_wav(files["short"], speech_like(16, SR, seed=4))  # 1 ms
    # Finite samples, but so large that the power spectrum overflows float32: features are inf/nan.
    sf.write(files["loud"], speech_like(2 * SR, SR, seed=5) * np.float32(1e30), SR, subtype="FLOAT")
    bad = speech_like(2 * SR, SR, seed=6)
    bad[SR] = np.nan
    sf.write(files["nan"], bad, SR, subtype="FLOAT")
    files["folder"].mkdir()
    write_wav(files["one_hz"], speech_like(4000, SR, seed=7), sr=1)  # a broken header: 1 Hz
    data = files["good"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2 + 1])  # header still claims 4 s
    return files


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (what a strict parser in another language does)."""

    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def error_lines(ran: Ran) -> list[str]:
    assert "Traceback" not in ran.stderr, ran.stderr
    return [line for line in ran.stderr_lines if line.startswith("error: ")]


#: What each bad input must say, after ``error: <file>: ``.
REASONS = {
    "missing": "no such audio file",
    "empty": "empty file (0 bytes)",
    "corrupt": "cannot decode audio",
    "short": "audio too short to classify (0.001 s < 0.5 s)",
    "one_hz": "sample rate 1 Hz is implausible for speech (below 4000 Hz)",
    "loud": "features are not finite (audio samples too large?)",
    "nan": "audio contains NaN or infinite samples",
    "folder": "is a directory",
}
MIXED = ["good", "missing", "empty", "corrupt", "short", "loud", "nan", "folder", "one_hz", "good_44k"]


def test_mixed_list_reports_every_file(checkpoint, inputs):
    before = tree_digest(inputs["good"].parent)
    paths = [inputs[k] for k in MIXED]
    ran = run("sertrain", "predict", checkpoint, *paths, "--device", "cpu")
    assert ran.returncode == 1, (ran.returncode, ran.stderr)
    # The good files' results, in input order, the one after the bad ones included.
    out = ran.stdout.strip().splitlines()
    assert [line.split(": ")[0] for line in out] == [str(inputs["good"]), str(inputs["good_44k"])], ran.stdout
    assert all("segment(s)" in line and "nan" not in line for line in out), ran.stdout
    assert "[2 segment(s), 3.00 s]" in out[1]  # 301 frames: two windows
    # One error line per bad file, in input order, each naming the file and the reason.
    errors = error_lines(ran)
    bad = [k for k in MIXED if k in REASONS]
    assert len(errors) == len(bad), ran.stderr
    for line, kind in zip(errors, bad):
        assert line.startswith(f"error: {inputs[kind]}: "), line
        assert REASONS[kind] in line, (kind, line)
    assert tree_digest(inputs["good"].parent) == before


def test_mixed_list_json_is_strict_and_complete(checkpoint, inputs):
    before = tree_digest(inputs["good"].parent)
    paths = [inputs[k] for k in MIXED]
    ran = run("sertrain", "predict", checkpoint, *paths, "--device", "cpu", "--json")
    assert ran.returncode == 1, (ran.returncode, ran.stderr)
    data = strict_json(ran.stdout)
    assert [d["file"] for d in data] == [str(p) for p in paths]
    for kind, entry in zip(MIXED, data):
        if kind in REASONS:
            assert set(entry) == {"file", "error"} and REASONS[kind] in entry["error"], entry
        else:
            assert abs(sum(entry["probabilities"].values()) - 1) < 1e-5, entry
            assert entry["label"] in entry["probabilities"]
    assert len(error_lines(ran)) == len(REASONS)
    assert tree_digest(inputs["good"].parent) == before


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_one_bad_file_is_one_error_line(checkpoint, inputs, kind):
    before = tree_digest(inputs["good"].parent)
    ran = run("sertrain", "predict", checkpoint, inputs[kind], "--device", "cpu")
    line = assert_one_line_error(ran, REASONS[kind], code=1)
    assert line.startswith(f"error: {inputs[kind]}: ")
    assert ran.stdout.strip() == "" and "nan" not in ran.stdout.lower()
    assert tree_digest(inputs["good"].parent) == before


def test_non_finite_features_never_print_nan_json(checkpoint, inputs):
    ran = run("sertrain", "predict", checkpoint, inputs["loud"], "--device", "cpu", "--json")
    assert_one_line_error(ran, str(inputs["loud"]), "features are not finite", code=1)
    assert strict_json(ran.stdout) == [{"file": str(inputs["loud"]), "error": REASONS["loud"]}]


def test_non_finite_posteriors_fail_each_file(checkpoint, inputs, tmp_path):
    # Finite weights (the loader refuses NaN ones) so large that the first layer overflows:
    # every posterior is NaN, and no label may come out.
    payload = torch.load(checkpoint, weights_only=True)
    name = next(k for k, v in payload["model_state"].items() if v.is_floating_point() and v.dim() > 1)
    payload["model_state"][name] = torch.full_like(payload["model_state"][name], 3e38)
    payload["content_sha256"] = payload_digest(payload)  # a consistent file: the model itself misbehaves
    broken = tmp_path / "huge_weights.pt"
    torch.save(payload, broken)
    ran = run("sertrain", "predict", broken, inputs["good"], inputs["good_44k"], "--device", "cpu", "--json")
    assert ran.returncode == 1, ran.stderr
    errors = error_lines(ran)
    assert len(errors) == 2 and all("posteriors are not finite" in e for e in errors), ran.stderr
    assert [set(d) for d in strict_json(ran.stdout)] == [{"file", "error"}] * 2


def test_min_duration_option(checkpoint, inputs):
    help_text = run("sertrain", "predict", "--help").stdout
    assert "--min-duration" in help_text and "0.6 s" in help_text
    ran = run("sertrain", "predict", checkpoint, inputs["short"], "--device", "cpu", "--min-duration", "0")
    assert ran.returncode == 0, ran.stderr
    assert "[1 segment(s), 0.00 s]" in ran.stdout
    ran = run("sertrain", "predict", checkpoint, inputs["good"], "--device", "cpu", "--min-duration", "5")
    assert_one_line_error(ran, "audio too short to classify (4 s < 5 s)", code=1)
    assert_one_line_error(run("sertrain", "predict", checkpoint, inputs["good"], "--min-duration", "-1"),
                          "--min-duration", code=2)


def test_all_good_exit_0_and_truncated_file_uses_what_is_there_with_a_warning(checkpoint, inputs):
    ran = run("sertrain", "predict", checkpoint, inputs["good"], inputs["truncated"], "--device", "cpu")
    assert ran.returncode == 0, ran.stderr
    assert error_lines(ran) == []
    lines = ran.stdout.strip().splitlines()
    assert len(lines) == 2 and "2.00 s]" in lines[1], ran.stdout  # the half that is there
    present = inputs["truncated"].stat().st_size - 44  # after the 44-byte header
    assert ran.stderr_lines == [f"warning: {inputs['truncated']}: truncated file: the header announces "
                                f"{4 * SR * 2} bytes of audio, the file holds {present}"], ran.stderr


def test_bad_checkpoint_is_still_one_line_exit_2(checkpoint, inputs, tmp_path):
    not_ckpt = tmp_path / "x.pt"
    not_ckpt.write_text("hello")
    ran = run("sertrain", "predict", not_ckpt, inputs["good"], inputs["missing"])
    assert_one_line_error(ran, "not a readable sertrain checkpoint", code=2)
    assert ran.stdout == ""


# ---------------------------------------------------------------------------------------------
# Bounded memory: a 20-minute file peaks at about the memory of a 1-minute one.
# ---------------------------------------------------------------------------------------------
# Runs argv[2:] and writes its peak RSS (KiB, from wait4) to argv[1]. A small wrapper process
# starts the command because a child's ru_maxrss also counts the memory it shared with its
# parent before exec: forked from pytest (torch loaded, a model trained), it would report
# pytest's size instead of its own.
_WRAPPER = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_mb(tmp_path: Path, *args: object) -> tuple[float, Ran]:
    """Run ``sertrain args``; return its peak RSS (MiB) and what it did."""
    argv = command("sertrain", *args)
    report = tmp_path / "maxrss.txt"
    p = subprocess.run([sys.executable, "-c", _WRAPPER, str(report), *argv], capture_output=True, text=True,
                       env=cli_env(), timeout=600)
    return int(report.read_text()) / 1024.0, Ran(argv, p.returncode, p.stdout, p.stderr)


def test_memory_does_not_grow_with_file_length(checkpoint, tmp_path):
    unit = speech_like(10 * SR, SR, seed=7)  # tiled: a long file at the cost of a short one
    peaks = {}
    for minutes in (1, 20):
        path = tmp_path / f"{minutes}min.wav"
        write_wav(path, np.tile(unit, 6 * minutes))
        peaks[minutes], ran = peak_rss_mb(tmp_path, "predict", checkpoint, path, "--device", "cpu")
        assert ran.returncode == 0, ran.stderr
        assert f"{minutes * 60:.2f} s]" in ran.stdout
    print(f"peak RSS: 1 min {peaks[1]:.0f} MB, 20 min {peaks[20]:.0f} MB")
    assert peaks[20] - peaks[1] < 100, peaks
