"""The corpus registry is the one list of corpora: CLI, info, protocols, README and fixtures follow it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus_fixtures import GENERATORS
from serprep.cli import main
from serprep.corpora import corpus_info, corpus_names, read_corpus, registry
from serprep.corpus_table import README_BEGIN, README_END, corpus_table_markdown
from serprep.errors import CorpusLayoutError
from serprep.labels import load_spec

README = Path(__file__).resolve().parent.parent / "README.md"
SHARED_4CLASS = ["ang", "hap", "neu", "sad"]


def test_every_registered_corpus_has_a_fixture_generator_and_vice_versa():
    assert sorted(GENERATORS) == corpus_names()


@pytest.mark.parametrize("corpus", corpus_names())
def test_manifest_offers_all_and_the_shared_4class_space(corpus):
    spec = load_spec(corpus)
    assert spec.corpus == corpus
    assert spec.path.name == corpus_info(corpus).manifest
    assert spec.class_names("4class") == SHARED_4CLASS
    every = spec.class_map("all")
    # `all` keeps every raw class distinct: no two codes share a class name.
    assert len(set(every.values())) == len(every)
    assert set(spec.class_map("4class").items()) <= set(every.items())


@pytest.mark.parametrize("corpus", corpus_names())
def test_reader_reads_its_generated_tree(corpus, tmp_path):
    GENERATORS[corpus](tmp_path / corpus)
    listing = read_corpus(corpus, tmp_path / corpus)
    assert listing.utterances and all(u.corpus == corpus for u in listing.utterances)
    assert {u.gender for u in listing.utterances} <= {"F", "M", "U"}
    info = corpus_info(corpus)
    for dim in info.dimensions:
        assert all(dim in u.extras for u in listing.utterances), dim


def test_build_choices_come_from_the_registry():
    result = CliRunner().invoke(main, ["build", "--help"])
    assert result.exit_code == 0
    # click may wrap the usage line inside a name (`msp-\n podcast`): drop whitespace first.
    choices = re.sub(r"\s+", "", result.output.split("{", 1)[1].split("}", 1)[0]).split("|")
    assert choices == corpus_names()
    bad = CliRunner().invoke(main, ["build", "timit", "--root", ".", "--out", "x.h5"])
    assert bad.exit_code == 2 and all(f"'{name}'" in bad.output for name in corpus_names())


def test_unknown_corpus_names_the_known_ones():
    with pytest.raises(CorpusLayoutError, match="unknown corpus 'timit'; known: " + ", ".join(corpus_names())):
        read_corpus("timit", ".")


def test_readme_corpus_table_is_the_generated_one():
    text = README.read_text(encoding="utf-8")
    assert README_BEGIN in text and README_END in text, "README lacks the generated corpus table"
    block = text[text.index(README_BEGIN): text.index(README_END) + len(README_END)]
    assert block == corpus_table_markdown(), "README corpus table is stale: paste `serprep corpora --markdown`"
    for name in registry():
        assert f"| `{name}` |" in block


def test_corpora_command_lists_every_corpus_with_its_class_sets():
    result = CliRunner().invoke(main, ["corpora"])
    assert result.exit_code == 0
    for name in corpus_names():
        spec = load_spec(name)
        assert f"{name}: {corpus_info(name).title}" in result.output
        for cls in spec.classes:
            assert f"{cls}: {spec.classes[cls]['description']}" in result.output
