"""The build plan is a pure value: same inputs, same plan and fingerprint; every content
option, the listing, the header durations and the versions change the fingerprint, and
`plan_difference` names what changed."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from serprep.audio import audio_duration
from serprep.build import BuildOptions, package_versions, plan_options
from serprep.config import FeatureConfig, SegmentConfig
from serprep.corpora import read_corpus
from serprep.labels import load_spec
from serprep.plan import BuildPlan, EmptyPlan, durations_needed, plan_build, plan_difference

VERSIONS = {"python": "3.11.0", "serprep": "0.3.0", "numpy": "2.1.0"}


@pytest.fixture(scope="module")
def inputs(iemocap_root):
    root, _ = iemocap_root
    spec = load_spec("iemocap")
    return root, spec, read_corpus("iemocap", root)


def make_plan(inputs, versions=VERSIONS, listing=None, **options) -> BuildPlan:
    root, spec, default_listing = inputs
    listing = listing or default_listing
    opts = plan_options(BuildOptions(corpus="iemocap", root=root, out=root.parent / "x.h5", **options), spec)
    durations = {i: audio_duration(root / listing.utterances[i].path)
                 for i in durations_needed(opts, spec, listing.utterances)}
    return plan_build(opts, spec, listing, durations, versions)


def test_same_inputs_same_plan_and_fingerprint(inputs):
    root, spec, _ = inputs
    a = make_plan(inputs)
    b = make_plan((root, spec, read_corpus("iemocap", root)))  # read again: new objects, same values
    assert a == b and a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    text = json.dumps(a.to_dict(), sort_keys=True)  # JSON-serialisable as it is
    assert json.dumps(b.to_dict(), sort_keys=True) == text
    assert json.loads(text)["derived"]["blocks"] == [list(block) for block in a.blocks]
    assert plan_difference(a.summary(), b) == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.classes = "all"


def test_planning_reads_no_file(inputs, tmp_path):
    """Balanced augmentation needs header durations: the caller reads them; the plan itself
    is computed from values only, so it is the same after the corpus is gone."""
    root, spec, listing = inputs
    copy = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(root, copy)
    options = dict(augment="default", balance=True)
    before = make_plan((copy, spec, read_corpus("iemocap", copy)), **options)
    opts = plan_options(BuildOptions(corpus="iemocap", root=copy, out=tmp_path / "x.h5", **options), spec)
    durations = {i: audio_duration(copy / before.utts[i].path) for i in durations_needed(opts, spec, before.utts)}
    assert durations and any(durations.values())
    shutil.rmtree(copy)
    again = plan_build(opts, spec, read_corpus("iemocap", root), durations, VERSIONS)
    assert again.fingerprint == before.fingerprint


def test_blocks_cover_every_task_once_in_order(inputs):
    plan = make_plan(inputs, block_seconds=3.0)
    assert [t for block in plan.blocks for t in block] == list(range(len(plan.tasks)))
    assert len(plan.blocks) > 3 > len(make_plan(inputs).blocks)
    assert [t.utt for t in plan.block_tasks(1)] == [plan.tasks[t].utt for t in plan.blocks[1]]
    assert [t.utt for t in plan.tasks] == list(plan.labelled)


@pytest.mark.parametrize("option, value, words", [
    ("classes", "4class", "classes '4class-merged' -> '4class'"),
    ("subset", "improvised", "subset 'all' -> 'improvised'"),
    ("features", FeatureConfig(n_mels=64), "features.n_mels 40 -> 64"),
    ("segments", SegmentConfig(frames=300, hop=100, min_hop=50), "segments.hop 150 -> 100"),
    ("augment", "light", "augment None -> "),
    ("copies", 2, "copies 1 -> 2"),
    ("balance", True, "balance False -> True"),
    ("max_copies", 2, "max_copies 4 -> 2"),
    ("seed", 7, "seed 0 -> 7"),
    ("block_seconds", 5.0, "block_seconds 60.0 -> 5.0"),
])
def test_each_content_option_changes_the_fingerprint(inputs, option, value, words):
    base = make_plan(inputs)
    other = make_plan(inputs, **{option: value})
    assert other.fingerprint != base.fingerprint
    text = plan_difference(base.summary(), other)
    assert text.startswith("options differ: ") and words in text, text


def test_a_protocol_changes_the_fingerprint(inputs):
    from serprep.protocol import load_protocol

    acrnn = load_protocol("acrnn")
    base = make_plan(inputs, **{k: v for k, v in acrnn.build_options().items() if k != "protocol"})
    with_protocol = make_plan(inputs, **acrnn.build_options())
    assert with_protocol.fingerprint != base.fingerprint
    assert "protocol None -> " in plan_difference(base.summary(), with_protocol)


def test_options_that_do_not_change_the_store_leave_the_plan_alone(inputs):
    base = make_plan(inputs)
    for options in ({"jobs": 2}, {"backend": "processes"}, {"strict": True}, {"overwrite": True},
                    {"progress": False}, {"task_timeout": 5.0}, {"resume": True}, {"journal": False}):
        assert make_plan(inputs, **options).fingerprint == base.fingerprint, options


def test_listing_durations_and_versions_change_the_fingerprint(inputs):
    root, spec, listing = inputs
    base = make_plan(inputs)
    relabelled = read_corpus("iemocap", root)
    relabelled.utterances[3].emotion_raw = "neu" if relabelled.utterances[3].emotion_raw != "neu" else "sad"
    changed = make_plan(inputs, listing=relabelled)
    assert changed.fingerprint != base.fingerprint
    assert plan_difference(base.summary(), changed).startswith("corpus listing differs")
    newer = make_plan(inputs, versions={**VERSIONS, "numpy": "2.2.0"})
    assert plan_difference(base.summary(), newer) == "versions differ: numpy '2.1.0' -> '2.2.0'"
    # Header durations (balanced augmentation): a file whose header says another length.
    opts = plan_options(BuildOptions(corpus="iemocap", root=root, out=root.parent / "x.h5", augment="default",
                                     balance=True), spec)
    needed = durations_needed(opts, spec, listing.utterances)
    durations = {i: audio_duration(root / listing.utterances[i].path) for i in needed}
    a = plan_build(opts, spec, listing, durations, VERSIONS)
    b = plan_build(opts, spec, listing, {**durations, needed[0]: durations[needed[0]] + 1.0}, VERSIONS)
    assert "audio durations read from the file headers differ" in plan_difference(a.summary(), b)
    assert durations_needed(plan_options(BuildOptions(corpus="iemocap", root=root, out=root / "x"), spec),
                            spec, listing.utterances) == []


def test_real_package_versions_are_in_the_plan(inputs):
    plan = make_plan(inputs, versions=package_versions())
    assert plan.versions["serprep"] and plan.to_dict()["versions"]["numpy"]


def test_a_plan_with_nothing_to_extract_is_refused(inputs):
    root, spec, listing = inputs
    empty = dataclasses.replace(listing, utterances=[u for u in listing.utterances if u.emotion_raw == "xxx"])
    opts = plan_options(BuildOptions(corpus="iemocap", root=root, out=root.parent / "x.h5"), spec)
    with pytest.raises(EmptyPlan, match="no utterance falls in class set '4class-merged' / subset 'all'"):
        plan_build(opts, spec, empty, {}, VERSIONS)
