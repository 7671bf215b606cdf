"""``sertrain.html_report``: the HTML report of a real cv run, rendered in a real headless Chromium.

One real ablation grid under the iemocap-5531 protocol (2 folds × 2 seeds × aux none /
gender+speaker, one small optimiser step per epoch, so it deviates from the protocol) and a
real ``sertrain compare`` of its two settings are written once; the report of a setting
folder (a plain cv run) and of the grid are then opened in ``chromium --headless`` and
checked in the DOM the browser built: sections, protocol deviations, tables whose numbers
are those of metrics.json formatted as in the printed table.txt, figures that decode, no
console error, no external reference, and a screenshot with content.

Chromium is Debian's ``chromium`` package. Without it the browser tests skip, except in CI
(``CI=true``), where ``.ci/run`` installs it and a missing browser fails.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from sertrain.cli import main
from sertrain.errors import InputError
from sertrain.html_report import write_html_report
from sertrain_fixtures import learnable_store, store_base

CHROMIUM = shutil.which("chromium")
# Two epochs of one small batch: learning curves with a line, in seconds. One torch thread:
# on a busy CI machine several threads per tiny batch cost far more than they gain.
FAST = ["--folds", "1,2", "--seeds", "2", "--epochs", "2", "--steps-per-epoch", "1", "--batch-size", "8",
        "--threads", "1", "--num-workers", "0", "--device", "cpu", "--config", "cpu-small", "--no-report", "-q"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def need_chromium() -> str:
    """The chromium executable; a skip outside CI when it is not installed, a failure in CI."""
    if CHROMIUM:
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed: CI must run the browser tests (.ci/run installs it)")
    pytest.skip("chromium not installed (apt-get install chromium): the report is not checked in a browser")


# --------------------------------------------------------------------------- browser helpers


def chromium(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url``; stdout and stderr (its log, console messages included).

    ``--virtual-time-budget`` lets the page finish loading (images decoded, the load event's
    script run) before the DOM is dumped or the screenshot taken.
    """
    cmd = [need_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def console_problems(stderr: str) -> list[str]:
    """Console messages and uncaught exceptions in Chromium's log (``...:CONSOLE:...] "message"``).

    The report itself logs nothing, so any console line is a problem (a JavaScript error or
    anything a script logs); test_console_error_detection_works shows such lines get caught.
    """
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


class Dom(HTMLParser):
    """What the checks need from a page: headings, ids, links, tables, images, body attributes."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.source = text
        self.elements: list[tuple[str, dict[str, str]]] = []  # every start tag with its attributes
        self.items: list[str] = []  # <li> texts
        self.code: dict[str, str] = {}  # <code title=FULL>SHORT</code>: SHORT -> FULL
        self.embedded: list[str] = []  # <style> and <script> contents
        self.headings: list[tuple[int, str]] = []
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self.img_src: list[str] = []
        self.body: dict[str, str] = {}
        self.tables: list[dict[str, Any]] = []
        self._text: list[str] | None = None  # collecting a heading's, cell's, item's or code's text
        self._tag = ""  # the last start tag (the element whose text comes next, for style/script)
        self._code: list[str] | None = None
        self._title: str | None = None
        self._heading = 0
        self._part = "tbody"
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        self._tag = tag
        if tag == "code":
            self._code, self._title = [], a.get("title")
        elif tag == "li":
            self._text = []
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "body":
            self.body = a
        elif tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        elif tag == "img":
            self.img_src.append(a.get("src", ""))
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading, self._text = int(tag[1]), []
        elif tag == "table":
            self.tables.append({"class": a.get("class", ""), "caption": "", "thead": [], "tbody": [], "tfoot": []})
        elif tag in ("thead", "tbody", "tfoot"):
            self._part = tag
        elif tag == "tr" and self.tables:
            self.tables[-1][self._part].append([])
        elif tag in ("td", "th", "caption"):
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "code" and self._code is not None:
            if self._title:
                self.code["".join(self._code).strip()] = self._title
            self._code = None
        if self._text is None:
            return
        text = " ".join(" ".join(self._text).split())
        if tag == "li":
            self.items.append(text)
            self._text = None
        elif re.fullmatch(r"h[1-6]", tag) and self._heading:
            self.headings.append((self._heading, text))
            self._heading, self._text = 0, None
        elif tag in ("td", "th") and self.tables and self.tables[-1][self._part]:
            self.tables[-1][self._part][-1].append(text)
            self._text = None
        elif tag == "caption" and self.tables:
            self.tables[-1]["caption"] = text
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._tag in ("style", "script"):
            self.embedded.append(data)
        if self._text is not None:
            self._text.append(data)
        if self._code is not None:
            self._code.append(data)

    def table(self, cls: str) -> dict[str, Any]:
        found = [t for t in self.tables if cls in t["class"].split()]
        assert len(found) == 1, (cls, [t["class"] for t in self.tables])
        return found[0]


def render(html_file: Path, tmp: Path) -> tuple[Dom, str]:
    """(the DOM Chromium built after loading, Chromium's stderr)."""
    done = chromium(html_file.resolve().as_uri(), tmp, "--dump-dom")
    return Dom(done.stdout), done.stderr


# --------------------------------------------------------------------------- expected formats
# As the printed tables (table.txt) show them: percentages with one decimal, "mean ± std".


def pct(x: float | None, signed: bool = False) -> str:
    return "-" if x is None else (f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}")


def pm(stat: dict) -> str:
    return pct(stat["mean"]) if stat.get("std") is None else f"{pct(stat['mean'])} ± {pct(stat['std'])}"


def interval(e: dict | None, signed: bool = False) -> str:
    if not e or e.get("low") is None or e.get("high") is None:
        return "-"
    return f"[{pct(e['low'], signed)}, {pct(e['high'], signed)}]"


def printed_row(table_txt: str, first_cell: str) -> list[str]:
    """The cells of the printed table's row that starts with ``first_cell``."""
    for line in table_txt.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in table.txt:\n{table_txt}")


def contains_run(cells: list[str], part: list[str]) -> bool:
    """Whether ``part`` occurs in ``cells`` as consecutive cells."""
    return any(cells[i:i + len(part)] == part for i in range(len(cells) - len(part) + 1))


# --------------------------------------------------------------------------- fixtures: one real grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """A real ablation grid (settings none, gender+speaker; 2 folds × 2 seeds) under the
    iemocap-5531 protocol, with a real ``sertrain compare`` of its two settings written into
    the ``none`` folder. The store is the plain learnable one, built as that protocol asks."""
    import torch

    store = learnable_store(store_base(tmp_path_factory))
    out = tmp_path_factory.mktemp("html_report") / "grid"
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(main, ["cv", str(store), "--out", str(out), "--protocol", "iemocap-5531",
                                           "--aux", "none,gender+speaker", *FAST])
    finally:
        torch.set_num_threads(threads)  # --threads sets it for the whole test process
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["compare", str(out / "gender+speaker"), str(out / "none"),
                                       "--out", str(out / "none"), "--bootstrap", "1000", "--permutations", "1000"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def single(grid) -> tuple[Path, Path]:
    """(run folder, report written with the default output path) of one setting: a plain cv run."""
    run = grid / "none"
    return run, write_html_report(run)


@pytest.fixture(scope="module")
def rendered(single, tmp_path_factory) -> tuple[Dom, str]:
    return render(single[1], tmp_path_factory.mktemp("chromium"))


# --------------------------------------------------------------------------- tests


def test_report_is_one_self_contained_file(single):
    run, report = single
    assert report == run / "report.html"
    html = report.read_text(encoding="utf-8")
    dom = Dom(html)
    # No address anywhere in the page, unless the run's own metadata holds it (shown as text).
    metrics_text = (run / "metrics.json").read_text()
    for scheme in ("http://", "https://", "file:"):
        assert scheme not in html or scheme in metrics_text, scheme
    # Nothing is loaded from anywhere: no stylesheet, script, font, frame or object by reference ...
    tags = {tag for tag, _ in dom.elements}
    assert not tags & {"link", "iframe", "frame", "object", "embed", "base", "source", "video", "audio"}, tags
    assert [tag for tag, a in dom.elements if tag == "script" and "src" in a] == []
    # ... no attribute holds an address (every link is an anchor in the page, every image an
    # inline PNG that decodes) ...
    for tag, attrs in dom.elements:
        for name, value in attrs.items():
            assert not re.match(r"\s*(https?:|file:|ftp:|//)", value, re.I), (tag, name, value[:80])
    assert dom.hrefs and all(h.startswith("#") for h in dom.hrefs), dom.hrefs
    assert dom.img_src and all(s.startswith("data:image/png;base64,") for s in dom.img_src)
    for src in dom.img_src:
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)
    # ... and the inline style and script fetch nothing (no url(), @import, fetch or XHR).
    embedded = "\n".join(dom.embedded)
    assert embedded.strip() and not re.search(r"url\s*\(|@import|fetch\s*\(|XMLHttpRequest|import\s*\(|https?:",
                                              embedded, re.I)


def test_sections_tables_and_numbers_in_the_browser(single, rendered):
    run, _ = single
    dom, _ = rendered
    m = json.loads((run / "metrics.json").read_text())
    table_txt = (run / "table.txt").read_text()
    preds = pd.read_csv(run / "predictions.csv")

    titles = [t for _, t in dom.headings]
    assert dom.headings[0] == (1, m["title"])
    for section in ("Contents", "Protocol", "Provenance", "Results", "Confusion matrices", "Per-gender recall",
                    "Learning curves", "Comparisons", "Notes"):
        assert section in titles, titles
    assert "95 % bootstrap confidence intervals" in titles
    # Every table-of-contents entry leads to a section of the page.
    assert {h[1:] for h in dom.hrefs} <= dom.ids and len(dom.hrefs) >= 8

    # The protocol, the warning that this run deviates from it, every deviation, and the
    # choices the publication leaves open.
    protocol = m["protocol"]
    assert protocol["name"] == "iemocap-5531" and m["deviations"]
    assert "Not the protocol's numbers" in dom.source
    assert dom.code[protocol["sha256"][:12] + "…"] == protocol["sha256"]  # short, full in the tooltip
    deviations = dom.table("deviations")
    assert deviations["thead"][0] == ["key", "protocol", "this run"]
    assert [r[0] for r in deviations["tbody"]] == [d["key"] for d in m["deviations"]]
    epochs = next(r for r in deviations["tbody"] if r[0] == "train.epochs")
    assert epochs[1:] == ["50", "2"]
    assert [i for i in dom.items if i in protocol["unconfirmed"]] == protocol["unconfirmed"]

    # Per-fold table: one row per fold, numbers from metrics.json, as table.txt prints them.
    folds = dom.table("folds")
    assert folds["thead"][0][:4] == ["fold", "test speakers", "utts", "runs"]
    assert [r[0] for r in folds["tbody"]] == [str(f["fold"]) for f in m["per_fold"]] == ["1", "2"]
    for row, f in zip(folds["tbody"], m["per_fold"]):
        values = [pm(f[k]) for k in ("wa", "ua", "macro_f1", "ua_F", "ua_M")]
        assert " ± " in values[0]  # two seeds: mean ± sample std
        assert row[1:4] == [", ".join(f["test_speakers"]), str(f["n"]), "2"]
        assert row[4:9] == values
        assert contains_run(printed_row(table_txt, str(f["fold"])), values), (values, table_txt)
    mean_row, pooled_row = folds["tfoot"]
    s = m["summary"]
    assert mean_row[0] == "mean ± std"
    assert mean_row[4:9] == [pm(s[k]) for k in ("wa", "ua", "macro_f1", "ua_F", "ua_M")]
    assert contains_run(printed_row(table_txt, "mean ± std"), mean_row[4:9])
    assert pooled_row[0] == "pooled" and pooled_row[2] == str(s["pooled"]["n_utterances"])
    assert pooled_row[4:9] == [pct(s["pooled"][k]) for k in ("wa", "ua", "macro_f1", "ua_F", "ua_M")]

    # Bootstrap intervals: over utterances and over speakers, side by side.
    ci = dom.table("ci")
    assert ci["thead"][0] == ["metric", "estimate", "over utterances [low, high]", "over speakers [low, high]"]
    iv = m["intervals"]
    by_metric = {r[0]: r[1:] for r in ci["tbody"]}
    for key, label in (("wa", "WA"), ("ua", "UA"), ("macro_f1", "F1")):
        assert by_metric[label] == [pct(iv["utterance"][key]["estimate"]), interval(iv["utterance"][key]),
                                    interval(iv["speaker"][key])]
    gap = by_metric["UA gap F − M (points)"]
    assert gap == [pct(iv["utterance"]["ua_gap_f_minus_m"]["estimate"], signed=True),
                   interval(iv["utterance"]["ua_gap_f_minus_m"], signed=True),
                   interval(iv["speaker"]["ua_gap_f_minus_m"], signed=True)]

    # Confusion matrices summed over folds and seeds: one count per row of predictions.csv.
    counts, norm = [t for t in dom.tables if t["class"] == "cm"]
    classes = m["classes"]
    assert [r[0] for r in counts["tbody"]] == classes
    assert [[int(v) for v in r[1:-1]] for r in counts["tbody"]] == m["confusion_total"]
    assert counts["tfoot"][0][-1] == str(len(preds))
    for row, cm_row in zip(norm["tbody"], m["confusion_total"]):
        assert row[1:] == [pct(v / sum(cm_row)) if sum(cm_row) else "-" for v in cm_row]

    # Recall per class and gender, pooled over every (fold, seed) prediction: recomputed here.
    gender = dom.table("gender")
    assert gender["thead"][0][:5] == ["class", "recall F", "n F", "recall M", "n M"]
    for row in gender["tbody"]:
        for g, (recall_cell, n_cell) in zip(("F", "M"), (row[1:3], row[3:5])):
            sel = preds[(preds.emotion == row[0]) & (preds.gender == g)]
            assert n_cell == str(len(sel))
            assert recall_cell == (pct((sel.emotion == sel.predicted).mean()) if len(sel) else "-")

    # The paired comparison written by `sertrain compare` (A = gender+speaker, B = none).
    cmp = json.loads(next(run.glob("compare*.json")).read_text())
    compare = dom.table("compare")
    assert compare["thead"][0][3] == "Δ (A − B) over utterances"
    ua_cmp = cmp["metrics"]["ua"]
    assert ua_cmp["utterance"]["delta"] == pytest.approx(ua_cmp["a"] - ua_cmp["b"])  # what "A − B" claims
    ua = next(r for r in compare["tbody"] if r[0] == "UA")
    assert ua[1:3] == [pct(cmp["metrics"]["ua"]["a"]), pct(cmp["metrics"]["ua"]["b"])]
    assert ua[3].startswith(pct(cmp["metrics"]["ua"]["utterance"]["delta"], signed=True) + " "
                            + interval(cmp["metrics"]["ua"]["utterance"], signed=True))


def test_figures_decode_without_console_errors(single, rendered, tmp_path):
    run, report = single
    dom, stderr = rendered
    m = json.loads((run / "metrics.json").read_text())
    # Two confusion matrices and one learning-curve figure per fold, all decoded by the browser.
    assert len(dom.img_src) == 2 + len(m["folds"])
    assert all(s.startswith("data:image/png;base64,") for s in dom.img_src)
    assert dom.body.get("data-image-count") == str(len(dom.img_src))  # the load-event script ran
    assert dom.body.get("data-images-ok") == "true"
    assert console_problems(stderr) == []

    shot = tmp_path / "report.png"
    chromium(report.resolve().as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,4000",
             "--hide-scrollbars")
    from PIL import Image

    assert shot.read_bytes().startswith(PNG_MAGIC)
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        grey = im.convert("L")
        lo, hi = grey.getextrema()
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert hi - lo > 150  # dark text on a light page, not one flat colour
    assert colours is None or len(colours) > 200  # text, tables and figures, not an empty page


def test_console_error_detection_works(tmp_path):
    """The checks above can fail: a script error is seen in the log and a broken image in the DOM."""
    from sertrain import html_report

    page = tmp_path / "broken.html"
    # The report's own image check, on an image that does not decode, then a script error.
    page.write_text("<!DOCTYPE html><html><body><img src=\"data:image/png;base64,AAAA\" alt=\"broken\">"
                    f"<script>{html_report._SCRIPT}</script>"
                    "<script>console.error('deliberate'); undefinedFunction();</script></body></html>")
    dom, stderr = render(page, tmp_path)
    problems = console_problems(stderr)
    assert any("deliberate" in p for p in problems), stderr[-2000:]
    assert any("Uncaught ReferenceError" in p for p in problems), stderr[-2000:]
    assert dom.body.get("data-image-count") == "1" and dom.body.get("data-images-ok") == "false"


def test_grid_report_starts_with_the_comparison(grid, tmp_path):
    report = write_html_report(grid, tmp_path / "out" / "grid.html")
    assert report == tmp_path / "out" / "grid.html" and not (grid / "report.html").exists()
    dom, stderr = render(report, tmp_path)
    comparison = json.loads((grid / "comparison.json").read_text())
    settings = list(comparison["settings"])
    assert settings == ["none", "gender+speaker"]

    sections = [t for level, t in dom.headings if level == 2]
    assert sections == ["Contents", "Comparison of the settings", "Setting none", "Setting gender+speaker", "Notes"]
    table = dom.table("grid")
    assert [r[0] for r in table["tbody"]] == ["none (baseline)", "gender+speaker"]
    for row, name in zip(table["tbody"], settings):
        s = comparison["settings"][name]["summary"]
        assert row[1:5] == [str(s["n_runs"]), pm(s["ua"]), pm(s["wa"]), pm(s["macro_f1"])]
    delta = dom.table("grid-delta")
    d = comparison["settings"]["gender+speaker"]["delta_vs_baseline"]["ua"]
    assert delta["tbody"][0][0] == "gender+speaker"
    assert delta["tbody"][0][1].startswith(f"{pct(d['delta'], signed=True)} {interval(d, signed=True)}")
    # Each setting has the sections of a single run: its own per-fold table and figures.
    assert len([t for t in dom.tables if t["class"] == "folds"]) == 2
    assert {"setting-none-results", "setting-gender-speaker-curves"} <= dom.ids
    assert len(dom.img_src) == 2 * (2 + 2)
    assert dom.body.get("data-images-ok") == "true"
    assert console_problems(stderr) == []


def test_errors_name_the_file_in_one_line(grid, tmp_path):
    def error(run_dir: Path) -> str:
        with pytest.raises(InputError) as exc:
            write_html_report(run_dir, tmp_path / "never.html")
        assert not (tmp_path / "never.html").exists()
        message = str(exc.value)
        assert "\n" not in message
        return message

    assert error(tmp_path / "nope") == f"{tmp_path / 'nope'}: no such run folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    message = error(empty)
    assert message.startswith(f"{empty / 'metrics.json'}: not found") and "not a sertrain cv run folder" in message
    # A single run inside the cv folder has a metrics.json, but not the cv result's.
    seed_dir = grid / "none" / "fold_1" / "seed_0"
    assert error(seed_dir) == (f"{seed_dir / 'metrics.json'}: not a sertrain cv run folder "
                               "(format None, expected 'sertrain-cv/2')")
    broken = tmp_path / "broken"
    shutil.copytree(grid / "none", broken, ignore=shutil.ignore_patterns("fold_*"))
    text = (broken / "metrics.json").read_text()
    (broken / "metrics.json").write_text(text[: len(text) // 2])
    assert error(broken).startswith(f"{broken / 'metrics.json'}: not readable JSON (")
    # A broken setting of a grid is named too.
    grid_copy = tmp_path / "grid"
    shutil.copytree(grid, grid_copy, ignore=shutil.ignore_patterns("fold_*"))
    (grid_copy / "gender+speaker" / "metrics.json").unlink()
    assert error(grid_copy).startswith(f"{grid_copy / 'gender+speaker' / 'metrics.json'}: not found")
