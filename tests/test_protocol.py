"""Evaluation protocols (``serprep/protocols/*.toml``, :mod:`serprep.protocol`).

The built-in files are loaded as shipped; invalid ones are real files written from an edited
copy of ``acrnn.toml``; builds run the real ``serprep`` command on a tiny generated IEMOCAP
tree whose selected utterances are 4-8 s long, so the ACRNN segmentation (first and last
300 frames, denser windows for minority classes) actually shows in the store.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

import serprep
from corpus_fixtures import make_iemocap, speech_like, write_wav
from faults.fault_helpers import assert_one_line_error, listing, run
from serprep.labels import load_spec
from serprep.protocol import Protocol, ProtocolError, ProtocolMismatch, load_protocol, protocol_names
from serprep.segments import segment_offsets
from serprep.store import StoreReader
from store_fixtures import build

PROTOCOL_DIR = Path(serprep.__file__).resolve().parent / "protocols"
BUILT_IN = {"acrnn", "iemocap-5531", "liu2023", "msp-improv-6"}
FOUR = ("ang", "hap", "neu", "sad")


# ---------------------------------------------------------------------------------------------
# The built-in files
# ---------------------------------------------------------------------------------------------
def test_every_builtin_protocol_loads_and_is_identified_by_its_bytes(tmp_path):
    assert set(protocol_names()) == BUILT_IN
    for name in protocol_names():
        data = (PROTOCOL_DIR / f"{name}.toml").read_bytes()
        p = load_protocol(name)
        assert p.source == "built-in" and p.built_in
        assert p.record() == {"name": name, "version": tomllib.loads(data.decode())["protocol"]["version"],
                              "sha256": hashlib.sha256(data).hexdigest()}
        # The same bytes from a file are the same protocol (same record), only the source differs.
        copy = tmp_path / f"{name}.toml"
        copy.write_bytes(data)
        from_file = load_protocol(str(copy))
        assert from_file.record() == p.record() and from_file.source == str(copy) and not from_file.built_in
        # What the store side needs exists in the corpus' label manifest.
        spec = load_spec(p.corpus)
        assert p.classes in spec.classes and p.subset in spec.subsets and p.scheme in spec.folds
        # Every choice carries a source, and results can record the file.
        assert set(p.sources) >= {"run.config", "run.seeds"} | {f"run.set.{k}" for k in p.run_set}
        assert p.title and p.reference and len(p.seeds) == 5


def test_builtin_protocols_encode_the_published_choices():
    acrnn = load_protocol("acrnn")
    assert (acrnn.corpus, acrnn.classes, acrnn.subset, acrnn.scheme) == ("iemocap", "4class", "improvised",
                                                                         "loso-speaker")
    assert (acrnn.n_mels, acrnn.segment_frames, acrnn.augment, acrnn.balance) == (40, 300, "", True)
    assert acrnn.seeds == (0, 1, 2, 3, 4) and acrnn.config == "paper"
    assert {k: acrnn.run_set[k] for k in ("train.aggregate", "train.lr", "train.batch_size", "train.selection",
                                          "loss.aux")} == {"train.aggregate": "max", "train.lr": 1e-5,
                                                           "train.batch_size": 40, "train.selection": "val_ua",
                                                           "loss.aux": "none"}
    assert "64.74" in acrnn.published and any("768" in n for n in acrnn.notes)
    # 4class keeps happy apart from excited; the 5531 set merges them.
    spec = load_spec("iemocap")
    assert "exc" not in spec.class_map("4class") and spec.class_map("4class-merged")["exc"] == "hap"
    # The test speaker's session partner validates: every loso-speaker fold stays in one session.
    for fold in spec.fold_definitions("loso-speaker"):
        assert len(fold.test) == 1 and len(fold.validation) == 1 and fold.test[0][:5] == fold.validation[0][:5]

    common = load_protocol("iemocap-5531")
    assert (common.classes, common.subset, common.scheme) == ("4class-merged", "all", "loso")
    assert common.run_set == {"train.aggregate": "mean", "train.selection": "top3_average"}
    msp = load_protocol("msp-improv-6")
    assert (msp.corpus, msp.classes, msp.subset, msp.scheme) == ("msp-improv", "4class", "all", "loso")
    assert len(load_spec("msp-improv").fold_definitions("loso")) == 6
    liu = load_protocol("liu2023")
    assert (liu.classes, liu.subset, liu.scheme, liu.augment, liu.balance) == ("4class-merged", "all", "loso",
                                                                               "default", True)
    assert liu.run_set["loss.aux"] == "gender+speaker" and liu.run_set["train.aggregate"] == "mean"


def test_unconfirmed_choices_are_the_ones_marked_ours():
    assert load_protocol("acrnn").unconfirmed() == ["store.segment_hop", "run.set.train.epochs"]
    liu = load_protocol("liu2023")
    assert set(liu.unconfirmed()) == {
        "store.classes", "store.subset", "store.scheme", "store.n_mels", "store.segment_frames",
        "store.segment_hop", "store.augment", "run.config", "run.seeds", "run.set.loss.w_gender",
        "run.set.loss.w_speaker", "run.set.train.lr", "run.set.train.batch_size", "run.set.train.aggregate",
        "run.set.train.selection",
    }
    # What the abstract states is not marked as ours.
    assert set(liu.sources) - set(liu.unconfirmed()) == {"store.corpus", "store.balance", "run.set.loss.aux"}
    for name in protocol_names():
        p = load_protocol(name)
        for key in p.unconfirmed():
            assert p.sources[key].startswith("ours:"), (name, key)
    # The validation rule of the common protocols is ours (many papers select on the test session).
    assert "store.scheme" in load_protocol("iemocap-5531").unconfirmed()
    assert "store.classes" not in load_protocol("iemocap-5531").unconfirmed()


def test_build_command_names_the_protocol_or_its_file(tmp_path):
    assert load_protocol("acrnn").build_command() == "serprep build iemocap --root ROOT --protocol acrnn --out STORE.h5"
    path = write_protocol(tmp_path, "my acrnn.toml", rename="my-acrnn")
    assert load_protocol(str(path)).build_command(out="x.h5") == \
        f"serprep build iemocap --root ROOT --protocol '{path}' --out x.h5"


# ---------------------------------------------------------------------------------------------
# Invalid files: refused in one line naming the file and the key
# ---------------------------------------------------------------------------------------------
ACRNN_TEXT = (PROTOCOL_DIR / "acrnn.toml").read_text(encoding="utf-8")


def write_protocol(folder: Path, filename: str, *edits: tuple[str, str], rename: str | None = "my-acrnn") -> Path:
    """A copy of acrnn.toml with each ``(old, new)`` edit applied (each must apply once)."""
    text = ACRNN_TEXT
    if rename:
        edits = (('name = "acrnn"', f'name = "{rename}"'), *edits)
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = folder / filename
    path.write_text(text, encoding="utf-8")
    return path


LR_SOURCE = next(line for line in ACRNN_TEXT.splitlines() if line.startswith('"run.set.train.lr" ='))


@pytest.mark.parametrize("edit, fragments", [
    ((LR_SOURCE + "\n", ""), ["sources", "no entry for 'run.set.train.lr'"]),
    (('"store.subset" = "Chen', '"store.subsets" = "ours: x"\n"store.subset" = "Chen'),
     ["sources.'store.subsets'", "names no choice"]),
    (("balance = true\n", "balance = true\ncolour = \"red\"\n"), ["store.colour", "unknown key"]),
    (("n_mels = 40\n", ""), ["store.n_mels", "missing"]),
    (("seeds = [0, 1, 2, 3, 4]", "seeds = [0, 1, 1]"), ["run.seeds", "distinct non-negative integers"]),
    (("seeds = [0, 1, 2, 3, 4]", "seeds = []"), ["run.seeds"]),
    (("seeds = [0, 1, 2, 3, 4]", "seeds = [0, -1]"), ["run.seeds"]),
    (("seeds = [0, 1, 2, 3, 4]", "seeds = [0, true]"), ["run.seeds"]),
    (('scheme = "loso-speaker"', 'scheme = "loso-dialog"'),
     ["store.scheme", "no fold scheme 'loso-dialog'", "iemocap.toml"]),
    (('classes = "4class"', 'classes = "7class"'), ["store.classes", "no class set '7class'"]),
    (('subset = "improvised"', 'subset = "spontaneous"'), ["store.subset", "'spontaneous'"]),
    (("segment_hop = 300", "segment_hop = 301"), ["store.segment_hop", "longer than segment_frames"]),
    (("n_mels = 40", "n_mels = 400"), ["store.n_mels", "use at most"]),
    (('augment = ""', 'augment = "loud"'), ["store.augment", "'loud'", "default"]),
    (('augment = ""', 'augment = "presets/mine.toml"'), ["store.augment", "not a file"]),
    (('version = "1.0"', "version = 1.0"), ["protocol.version", "quote it"]),
    (('"loss.aux" = "none"', '"loss.aux" = "none"\n"data.scheme" = "loso"'), ["run.set.data.scheme", "store.scheme"]),
    (('"loss.aux" = "none"', '"loss.aux" = "none"\n"lr" = 0.1'), ["run.set.lr", "section.key"]),
    (("\n[sources]\n", "\n[extras]\nx = 1\n\n[sources]\n"), ["extras", "unknown section"]),
    (('config = "paper"', 'config = "configs/mine.toml"'), ["run.config"]),
])
def test_an_invalid_protocol_file_is_refused_naming_the_key(tmp_path, edit, fragments):
    path = write_protocol(tmp_path, "bad.toml", edit)
    with pytest.raises(ProtocolError) as info:
        load_protocol(str(path))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_undocumented_choice_and_bad_seeds_are_one_line_errors_of_the_command(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    out = tmp_path / "feats.h5"
    cases = [
        (write_protocol(tmp_path, "nosource.toml", (LR_SOURCE + "\n", "")), "no entry for 'run.set.train.lr'"),
        (write_protocol(tmp_path, "seeds.toml", ("seeds = [0, 1, 2, 3, 4]", 'seeds = "0-4"')), "run.seeds"),
    ]
    for path, fragment in cases:
        ran = run("serprep", "build", "iemocap", "--root", corpus, "--out", out, "--protocol", path, "-q")
        assert_one_line_error(ran, str(path), fragment, code=1)
    assert not out.exists()


def test_a_changed_copy_may_not_use_a_builtin_name(tmp_path):
    edited = write_protocol(tmp_path, "acrnn.toml", ("n_mels = 40", "n_mels = 64"), rename=None)
    with pytest.raises(ProtocolError, match=r"protocol\.name: 'acrnn' is a built-in protocol; a changed copy"):
        load_protocol(str(edited))
    assert load_protocol(str(write_protocol(tmp_path, "mine.toml", ("n_mels = 40", "n_mels = 64")))).n_mels == 64


def test_unknown_names_and_missing_files_are_refused():
    with pytest.raises(ProtocolError, match="unknown protocol 'acrn'; built-in: acrnn, iemocap-5531, liu2023"):
        load_protocol("acrn")
    with pytest.raises(ProtocolError, match="nowhere/p.toml: protocol file not found"):
        load_protocol("nowhere/p.toml")


# ---------------------------------------------------------------------------------------------
# serprep build --protocol on a tiny corpus
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(root, truth): tiny IEMOCAP tree whose ang/hap/neu/sad improvised turns last 4-8 s
    (rewritten after generation), so utterances get two or more 300-frame windows."""
    root = tmp_path_factory.mktemp("protocol") / "IEMOCAP_full_release"
    truth = make_iemocap(root, utts_per_speaker=8, corrupt=False)
    rng = np.random.default_rng(0)
    for t in truth:
        if t["mode"] == "improvised" and t["emotion_raw"] in FOUR:
            t["n_samples"] = int(rng.integers(4 * 16000, 8 * 16000))
            write_wav(root / t["path"], speech_like(t["n_samples"], seed=int(rng.integers(1 << 30))))
    return root, truth


@pytest.fixture(scope="module")
def acrnn_store(corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("acrnn") / "feats-acrnn.h5"
    ran = run("serprep", "build", "iemocap", "--root", root, "--protocol", "acrnn", "--out", out, "-j", "1",
              "--seed", "3", "-q")
    assert ran.returncode == 0, ran.stderr
    return out, ran


@pytest.fixture(scope="module")
def default_store(corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("default") / "feats.h5"
    build("iemocap", root, out)
    return out


def test_protocol_build_makes_the_protocols_store(acrnn_store, corpus):
    out, ran = acrnn_store
    root, truth = corpus
    protocol = load_protocol("acrnn")
    assert f"protocol acrnn 1.0 (sha256 {protocol.sha256[:16]}" in ran.stdout
    r = StoreReader(out)
    b = r.build
    assert (b["classes"], b["subset"], b["balance"], b["augment"]) == ("4class", "improvised", True, None)
    assert b["protocol"] == {**protocol.record(), "title": protocol.title, "built_in": True}
    assert (r.feature_config.n_mels, r.segment_config.frames, r.segment_config.hop) == (40, 300, 300)
    assert r.vocab("emotion") == list(FOUR)
    # Improvised ang/hap/neu/sad only: excited and scripted turns stay outside the classes.
    m = r.manifest()
    by_id = {t["utt_id"]: t for t in truth}
    for row in m.itertuples():
        t = by_id[row.utt_id]
        assert row.emotion == (t["emotion_raw"] if t["mode"] == "improvised" and t["emotion_raw"] in FOUR else "")
    # loso-speaker: a fold for each manifest fold whose test speaker has selected utterances.
    speakers = set(m.loc[m.emotion != "", "speaker"])
    expected = [f for f in load_spec("iemocap").fold_definitions("loso-speaker") if f.test[0] in speakers]
    assert "loso-speaker" in r.fold_schemes() and len(r.fold_ids("loso-speaker")) == len(expected) >= 5
    for k, definition in zip(r.fold_ids("loso-speaker"), expected):
        fold = r.fold("loso-speaker", k)
        assert fold.test_speakers == list(definition.test)
        assert fold.validation_speakers == [s for s in definition.validation if s in speakers]
    # No augmentation anywhere; the store passes the protocol's own check.
    assert (r.segments()["copy"] == 0).all()
    assert protocol.store_mismatches(r) == []
    protocol.check_store(r, str(out))


def test_balance_without_augment_adds_dense_training_windows_for_minority_classes_only(acrnn_store):
    r = StoreReader(acrnn_store[0])
    hops = r.build["hops"]
    emotions = r.vocab("emotion")
    m = r.manifest()
    counts = {c: int((m.emotion == c).sum()) for c in emotions}
    majority = max(counts, key=counts.get)
    assert hops[majority] == 300 and all(hops[c] < 300 for c in emotions if counts[c] < counts[majority])
    segs = r.segments()
    dense_classes = {emotions[k] for k in segs.loc[segs.dense, "emotion"]}
    assert dense_classes and majority not in dense_classes
    assert dense_classes <= {c for c in emotions if hops[c] < 300}
    # The plain windows are ACRNN's: first and last 300 frames up to 6 s, hop 300 beyond.
    items = r.items()
    for utt, group in segs[~segs.dense].groupby("utt"):
        n_frames = int(items.loc[items.utt == utt, "n_frames"].iloc[0])
        assert group.offset.tolist() == segment_offsets(n_frames, 300, 300).tolist()
        if 300 < n_frames <= 600:
            assert group.offset.tolist() == [0, n_frames - 300]
    # Dense windows are for training only: never in a validation or test part.
    for k in r.fold_ids("loso-speaker"):
        fold = r.fold("loso-speaker", k)
        held_out = np.concatenate([fold.validation_segments, fold.test_segments])
        assert not segs.dense.values[held_out].any()
    assert any(segs.dense.values[r.fold("loso-speaker", k).balanced_index].any() for k in r.fold_ids("loso-speaker"))


def test_a_store_built_otherwise_is_refused_with_the_command_that_fits(default_store):
    r = StoreReader(default_store)
    assert r.build["protocol"] is None
    protocol = load_protocol("acrnn")
    assert protocol.store_mismatches(r) == [
        "classes 4class-merged (protocol acrnn: 4class)", "subset all (protocol acrnn: improvised)",
        "segment hop 150 (protocol acrnn: 300)", "balance off (protocol acrnn: on)",
    ]
    with pytest.raises(ProtocolMismatch) as info:
        protocol.check_store(r, "feats.h5")
    message = str(info.value)
    assert "\n" not in message
    assert message == ("feats.h5 was not built for protocol acrnn (classes 4class-merged, needs 4class; subset all, "
                       "needs improvised; segment hop 150, needs 300; balance off, needs on): "
                       "serprep build iemocap --root ROOT --protocol acrnn --out feats-acrnn.h5")
    # The default build is the 5531 protocol's store but for the fold-scheme-independent rest.
    assert load_protocol("iemocap-5531").store_mismatches(r) == []


def test_store_of_another_protocol_is_refused(acrnn_store):
    r = StoreReader(acrnn_store[0])
    mismatches = load_protocol("msp-improv-6").store_mismatches(r)
    assert mismatches[0] == "corpus iemocap (protocol msp-improv-6: msp-improv)"
    assert "augment none (protocol liu2023: default)" in load_protocol("liu2023").store_mismatches(r)


@pytest.mark.parametrize("args, fragments", [
    (("--classes", "4class-merged"), ["--classes 4class-merged", "protocol acrnn", "classes = 4class"]),
    (("--n-mels", "64"), ["--n-mels 64", "n_mels = 40"]),
    (("--no-balance",), ["--no-balance", "balance = true"]),
    (("--augment", "default"), ["--augment default", 'augment = ""']),
    (("--segment-hop", "150"), ["--segment-hop 150", "segment_hop = 300"]),
])
def test_an_option_that_contradicts_the_protocol_is_refused(corpus, tmp_path, args, fragments):
    root, _ = corpus
    out = tmp_path / "feats.h5"
    ran = run("serprep", "build", "iemocap", "--root", root, "--protocol", "acrnn", "--out", out, "-q", *args)
    assert_one_line_error(ran, *fragments, code=1)
    assert listing(tmp_path) == [] and "extracting" not in ran.stderr


def test_a_protocol_of_another_corpus_is_refused(corpus, tmp_path):
    root, _ = corpus
    ran = run("serprep", "build", "iemocap", "--root", root, "--protocol", "msp-improv-6",
              "--out", tmp_path / "m.h5", "-q")
    assert_one_line_error(ran, "protocol msp-improv-6 is defined on corpus msp-improv, not iemocap",
                          "serprep build msp-improv --root ROOT --protocol msp-improv-6", code=1)
    assert listing(tmp_path) == []


def test_options_equal_to_the_protocol_or_outside_it_are_accepted(corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "same.h5"
    ran = run("serprep", "build", "iemocap", "--root", root, "--protocol", "acrnn", "--out", out, "-q",
              "--classes", "4class", "--subset", "improvised", "--balance", "--segment-hop", "300",
              "--seed", "9", "--max-copies", "2", "--jobs", "1", "--strict")
    assert ran.returncode == 0, ran.stderr
    r = StoreReader(out)
    assert r.build["seed"] == 9 and r.build["max_copies"] == 2 and r.build["protocol"]["name"] == "acrnn"


def test_a_protocol_file_is_built_and_recorded_as_a_file(corpus, tmp_path):
    root, _ = corpus
    path = write_protocol(tmp_path, "hop150.toml", ("segment_hop = 300", "segment_hop = 150"), rename="acrnn-hop150")
    out = tmp_path / "s.h5"
    ran = run("serprep", "build", "iemocap", "--root", root, "--protocol", path, "--out", out, "-q", "-j", "1")
    assert ran.returncode == 0, ran.stderr
    r = StoreReader(out)
    recorded = r.build["protocol"]
    assert recorded["name"] == "acrnn-hop150" and recorded["built_in"] is False
    assert recorded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert r.segment_config.hop == 150 and str(path) not in json.dumps(r.build)  # no absolute path in the store
    assert load_protocol(str(path)).store_mismatches(r) == []
    assert load_protocol("acrnn").store_mismatches(r) == ["segment hop 150 (protocol acrnn: 300)"]


def test_in_process_builds_must_use_the_protocols_options(corpus, tmp_path):
    root, _ = corpus
    protocol = load_protocol("acrnn")
    with pytest.raises(ProtocolMismatch, match=r"classes 4class-merged, protocol acrnn: 4class"):
        build("iemocap", root, tmp_path / "x.h5", protocol=protocol)
    assert listing(tmp_path) == []
    build("iemocap", root, tmp_path / "y.h5", **protocol.build_options())
    assert StoreReader(tmp_path / "y.h5").build["protocol"]["sha256"] == protocol.sha256


def test_info_shows_the_protocol(acrnn_store, default_store):
    out, _ = acrnn_store
    protocol = load_protocol("acrnn")
    ran = run("serprep", "info", out)
    assert ran.returncode == 0, ran.stderr
    assert f"  protocol      acrnn 1.0 (sha256 {protocol.sha256[:16]}...): {protocol.title}" in ran.stdout
    data = json.loads(run("serprep", "info", out, "--json").stdout)
    assert data["build"]["protocol"]["sha256"] == protocol.sha256 and data["protocol_note"] is None
    plain = run("serprep", "info", default_store)
    assert "  protocol      none (built without --protocol)" in plain.stdout


def test_protocol_is_a_frozen_value():
    p = load_protocol("acrnn")
    assert isinstance(p, Protocol) and p == load_protocol("acrnn") and hash(p) == hash(load_protocol("acrnn"))
    with pytest.raises(AttributeError):
        p.n_mels = 64  # type: ignore[misc]
