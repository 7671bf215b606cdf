"""Fold schemes: written tables, generated speaker folds, official partitions (serprep.folds)."""

from __future__ import annotations

from collections import Counter

import pytest

from serprep.errors import SerprepError
from serprep.folds import check_scheme, deal_speakers, draw_validation, generate_folds, resolve_folds

# CREMA-D's shape: 91 actors, 48 male and 43 female.
ACTORS = {str(1001 + i): ("M" if i % 2 == 0 or i < 4 else "F") for i in range(91)}


def _check_disjoint(folds, speakers):
    for f in folds:
        parts = [set(f.train), set(f.validation), set(f.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert parts[0] | parts[1] | parts[2] <= set(speakers)


def test_speaker_kfold_deals_every_speaker_once_with_balanced_genders():
    assert Counter(ACTORS.values()) == {"M": 48, "F": 43}
    entry = {"generate": "speaker-kfold", "k": 5, "validation": 4, "seed": 0}
    definitions = generate_folds("t", entry, ACTORS)
    assert len(definitions) == 5
    tested = [s for d in definitions for s in d.test]
    assert sorted(tested) == sorted(ACTORS)  # every actor tested exactly once
    sizes = [len(d.test) for d in definitions]
    assert max(sizes) - min(sizes) <= 1
    for gender in "FM":
        per_fold = [sum(ACTORS[s] == gender for s in d.test) for d in definitions]
        assert max(per_fold) - min(per_fold) <= 1, (gender, per_fold)
    folds, notes = resolve_folds(definitions, set(ACTORS))
    assert not notes and len(folds) == 5
    _check_disjoint(folds, ACTORS)
    for f in folds:
        assert len(f.validation) == 4
        assert Counter(ACTORS[s] for s in f.validation) == {"F": 2, "M": 2}
        assert len(f.train) == 91 - len(f.test) - 4


def test_generated_folds_are_seeded():
    entry = {"generate": "speaker-kfold", "k": 5, "validation": 2, "seed": 0}
    a = generate_folds("t", entry, ACTORS)
    assert a == generate_folds("t", entry, dict(reversed(list(ACTORS.items()))))  # order of discovery irrelevant
    assert a != generate_folds("t", entry | {"seed": 1}, ACTORS)


def test_leave_one_speaker_out_tests_each_speaker_and_validates_from_the_training_side():
    emodb = {"03": "M", "08": "F", "09": "F", "10": "M", "11": "M", "12": "M", "13": "F", "14": "F", "15": "M", "16": "F"}
    definitions = generate_folds("t", {"generate": "leave-one-speaker-out", "validation": 2, "seed": 0}, emodb)
    assert [d.test for d in definitions] == [(s,) for s in sorted(emodb)]
    folds, _ = resolve_folds(definitions, set(emodb))
    _check_disjoint(folds, emodb)
    for f in folds:
        assert sorted(emodb[s] for s in f.validation) == ["F", "M"]
        assert len(f.train) == 7


def test_validation_never_draws_unknown_or_test_speakers():
    speakers = {"a": "F", "b": "M", "c": "F", "unknown:Train": "U", "d": "M"}
    for fold in range(10):
        drawn = draw_validation(speakers, ["a"], 3, seed=0, fold=fold)
        assert "a" not in drawn and "unknown:Train" not in drawn
        assert len(drawn) == 2  # b, c, d are known: one stays for training
    # At least one speaker is left for training.
    assert len(draw_validation({"a": "F", "b": "M", "c": "F"}, ["a"], 5, seed=0, fold=0)) == 1


def test_deal_keeps_groups_non_empty_when_k_exceeds_speakers():
    groups = deal_speakers({"a": "F", "b": "M"}, 5, seed=0)
    assert sorted(s for g in groups for s in g) == ["a", "b"] and all(groups)


PARTITIONS = {
    "spk1": {"Train"}, "spk2": {"Train"}, "spk3": {"Development"}, "spk4": {"Test1"}, "spk5": {"Test2"},
    "unknown:Train": {"Train"}, "unknown:Test1": {"Test1"},
}
PARTITION_ENTRY = {"generate": "partition", "column": "partition", "train": ["Train"], "validation": ["Development"],
                   "test": ["Test1", "Test2", "Test3"]}


def test_partition_folds_follow_the_official_split():
    genders = {s: "U" if s.startswith("unknown:") else "F" for s in PARTITIONS}
    definitions = generate_folds("t", PARTITION_ENTRY, genders, PARTITIONS)
    folds, notes = resolve_folds(definitions, set(PARTITIONS))
    assert [f.label for f in folds] == ["Test1", "Test2"]
    assert notes == ["fold 3 (Test3): no labelled utterances; dropped"]
    test1, test2 = folds
    assert test1.test == ("spk4", "unknown:Test1") and test2.test == ("spk5",)
    for f in folds:
        # Training is the Train partition only: the other test partition never leaks into it.
        assert f.train == ("spk1", "spk2", "unknown:Train") and f.validation == ("spk3",)


def test_a_known_speaker_in_two_partitions_is_refused():
    crossing = PARTITIONS | {"spk2": {"Train", "Test2"}}
    with pytest.raises(SerprepError, match=r"speaker spk2 is in partitions Test2, Train"):
        generate_folds("msp_podcast.toml [folds.official]", PARTITION_ENTRY, {s: "F" for s in crossing}, crossing)


@pytest.mark.parametrize("entry, message", [
    ({"generate": "random"}, "is not a fold kind"),
    ({"generate": "speaker-kfold", "k": 1}, "k >= 2"),
    ({"generate": "partition", "column": "partition", "train": ["Train"], "test": ["Test1"]}, "needs `validation`"),
    ({"folds": [{"test": ["a"], "validation": ["a"]}]}, "in both test and validation"),
    ({}, r"needs `folds = \[\.\.\.\]`"),
])
def test_bad_schemes_are_refused_in_one_line(entry, message):
    with pytest.raises(SerprepError, match=message):
        check_scheme("x.toml [folds.s]", entry)
