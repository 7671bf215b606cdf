"""`serprep build --functionals egemaps`: the 88 eGeMAPS v02 functionals of every extracted
original utterance, equal to a direct openSMILE call, checksummed, the same whatever the
workers and after a resume; opt-in (a build without it writes what it always did)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import h5py
import numpy as np
import opensmile
import pytest

from corpus_fixtures import make_iemocap, speech_like, write_wav
from serprep.assemble import BlockCollector
from serprep.audio import load_audio
from serprep.build import BuildOptions, build_store
from serprep.config import FeatureConfig, SegmentConfig
from serprep.errors import SerprepError, StoreError
from serprep.extract import Task, extract_block
from serprep.features import LogMelExtractor
from serprep.functionals import FunctionalsExtractor
from serprep.info import format_summary, store_summary
from serprep.journal import JournalError, journal_path
from serprep.store import StoreReader, verify
from store_fixtures import assert_same_store, build, store_content

BLOCK_SECONDS = 2.0  # several blocks on this corpus


def direct_egemaps(samples: np.ndarray) -> np.ndarray:
    """eGeMAPS v02 functionals of ``samples`` (16 kHz) straight from openSMILE."""
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    return smile.process_signal(samples, 16000).to_numpy().astype(np.float32).reshape(-1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("functionals") / "IEMOCAP_full_release"
    make_iemocap(root, utts_per_speaker=3, corrupt=True)
    return root


@pytest.fixture(scope="module")
def stores(corpus, tmp_path_factory) -> dict[str, Path]:
    """One build without functionals, one with, and an augmented one with (jobs=1)."""
    folder = tmp_path_factory.mktemp("stores")
    out = {"plain": folder / "plain.h5", "egemaps": folder / "egemaps.h5", "augmented": folder / "augmented.h5"}
    build("iemocap", corpus, out["plain"], block_seconds=BLOCK_SECONDS)
    build("iemocap", corpus, out["egemaps"], block_seconds=BLOCK_SECONDS, functionals="egemaps")
    build("iemocap", corpus, out["augmented"], block_seconds=BLOCK_SECONDS, functionals="egemaps",
          augment="default", copies=2)
    return out


def test_every_extracted_utterance_has_its_88_egemaps_functionals(stores, corpus):
    reader = StoreReader(stores["egemaps"])
    utt, names, values = reader.functionals("egemaps")
    manifest = reader.manifest()
    assert utt.tolist() == manifest.index[manifest.status == "ok"].tolist()  # failed files have none
    assert (manifest.status == "failed").any()
    assert values.shape == (len(utt), 88) and values.dtype == np.float32 and np.isfinite(values).all()
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals)
    assert names == list(smile.feature_names)
    for row, i in enumerate(utt):
        samples = load_audio(corpus / manifest.path[i], 16000).samples
        np.testing.assert_array_equal(values[row], direct_egemaps(samples))
    assert reader.functional_sets() == ["egemaps"]
    assert reader.build["functionals"] == "egemaps"
    assert json.loads(reader.attrs["versions"])["opensmile"] == opensmile.__version__
    assert verify(stores["egemaps"]) == []
    info = format_summary(store_summary(stores["egemaps"]))
    assert f"  functionals   egemaps (88 per extracted utterance), opensmile {opensmile.__version__}" in info.splitlines()


def test_augmented_copies_get_no_functionals(stores, corpus):
    reader = StoreReader(stores["augmented"])
    items = reader.items()
    assert (items["copy"] > 0).sum() == 2 * (items["copy"] == 0).sum()  # two copies of every original
    utt, _, values = reader.functionals("egemaps")
    assert utt.tolist() == sorted(items.loc[items["copy"] == 0, "utt"].tolist())  # one row per utterance
    paths = reader.manifest().path
    for row in (0, len(utt) - 1):  # the original audio's values, not a copy's
        np.testing.assert_array_equal(values[row], direct_egemaps(load_audio(corpus / paths[utt[row]], 16000).samples))


def test_functionals_only_add_to_a_store(stores):
    plain, with_functionals = store_content(stores["plain"]), store_content(stores["egemaps"])
    added = {k: v for k, v in with_functionals[0].items() if k not in plain[0]}
    assert sorted(added) == ["functionals/egemaps/names", "functionals/egemaps/utt", "functionals/egemaps/values",
                             "functionals/egemaps@attrs"]
    assert {k: v for k, v in with_functionals[0].items() if k not in added} == plain[0]
    np.testing.assert_array_equal(plain[2], with_functionals[2])


def test_a_build_without_the_flag_writes_what_it_always_did(stores):
    with h5py.File(stores["plain"], "r") as f:
        assert "functionals" not in f
        assert "functionals" not in json.loads(f.attrs["build"])
        assert "opensmile" not in json.loads(f.attrs["versions"])
        assert not any(k.startswith("functionals") for k in json.loads(f.attrs["checksums"]))
    reader = StoreReader(stores["plain"])
    assert reader.functional_sets() == []
    assert "functionals" not in store_summary(stores["plain"])
    with pytest.raises(StoreError, match=r"plain\.h5: store has no 'egemaps' functionals \(build it with serprep "
                                         r"build \.\.\. --functionals egemaps\)$"):
        reader.functionals("egemaps")


@pytest.mark.parametrize("options", [{"jobs": 2}, {"jobs": 2, "backend": "processes"}], ids=["threads", "processes"])
def test_workers_give_the_same_store(stores, corpus, tmp_path, options):
    out = tmp_path / "feats.h5"
    build("iemocap", corpus, out, block_seconds=BLOCK_SECONDS, functionals="egemaps", **options)
    assert_same_store(stores["egemaps"], out)


def test_an_interrupted_build_resumes_into_the_same_store(stores, corpus, tmp_path, monkeypatch):
    out = tmp_path / "feats.h5"
    original = BlockCollector.add
    calls = itertools.count()

    def add(self, block, writer):  # Ctrl-C as the fourth block reaches the writer
        if next(calls) == 3:
            raise KeyboardInterrupt
        return original(self, block, writer)

    monkeypatch.setattr(BlockCollector, "add", add)
    with pytest.raises(KeyboardInterrupt):
        build("iemocap", corpus, out, block_seconds=BLOCK_SECONDS, functionals="egemaps")
    monkeypatch.setattr(BlockCollector, "add", original)
    assert len(list(journal_path(out).glob("block-*.blk"))) == 4  # journaled before the writer gets it
    with pytest.raises(JournalError, match=r"another build \(options differ: functionals 'egemaps' -> None; "):
        build("iemocap", corpus, out, block_seconds=BLOCK_SECONDS, resume=True)  # not resumed without the flag
    summary = build("iemocap", corpus, out, block_seconds=BLOCK_SECONDS, functionals="egemaps", resume=True)
    assert summary.kept_blocks == 4
    assert_same_store(stores["egemaps"], out)


def test_non_finite_functionals_fail_the_utterance(tmp_path):
    """openSMILE fills a signal too short to analyse with NaN: that file is recorded as failed
    (no frames, no functionals), the others are kept."""
    for name, n in {"long.wav": 16000 * 2, "short.wav": 600}.items():
        write_wav(tmp_path / name, speech_like(n, 16000, f0=140.0, formant_scale=1.0, seed=1, peak=0.5))
    tasks = [Task(0, "long", "long.wav", 0, 150), Task(1, "short", "short.wav", 0, 150)]
    extractor = LogMelExtractor(FeatureConfig())
    out = extract_block(tasks, str(tmp_path), extractor, SegmentConfig(), None, 0, functionals=FunctionalsExtractor("egemaps"))
    long, short = out["entries"]
    assert short["error"] == "short.wav: egemaps functionals are not all finite (0.037 s of audio: too short for openSMILE?)"
    assert short["items"] == [] and "functionals" not in short
    assert long["error"] is None and long["functionals"].shape == (88,)
    plain = extract_block(tasks[:1], str(tmp_path), extractor, SegmentConfig(), None, 0)
    np.testing.assert_array_equal(out["frames"], plain["frames"])  # only the long file's frames


def test_unknown_set_is_refused_before_any_work(corpus, tmp_path):
    with pytest.raises(SerprepError, match=r"^--functionals 'compare': unknown set; choose egemaps$"):
        build_store(BuildOptions(corpus="iemocap", root=corpus, out=tmp_path / "x.h5", functionals="compare"))
    assert list(tmp_path.iterdir()) == []
