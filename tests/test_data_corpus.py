"""Corpus loading: WikiText directories, the pydoc corpus and the (faked, offline) HF loader."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest

from plprune.data import CorpusText, default_data_dir, load_wikitext2_hf, pydoc_corpus, read_wikitext_dir
from plprune.data.corpus import _drop_contained, _pydoc_document, _split_topic_names, word_tokenize_line
from plprune.errors import DataError, PlpruneError

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_WIKITEXT = REPO_ROOT.parent / "shared" / "data" / "wikitext-2"

TRAIN = " \n = Lobster = \n \n The lobster is a <unk> animal . It lives in the sea . \n \n"
TEST = " \n = Crab = \n \n The crab walks sideways on the beach . \n"


def write_dir(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def test_read_wikitext_dir_reads_train_and_test(tmp_path: Path) -> None:
    data_dir = write_dir(tmp_path / "wt", {"valid.txt": TRAIN, "test.txt": TEST})
    corpus = read_wikitext_dir(data_dir)
    assert isinstance(corpus, CorpusText)
    assert corpus.train == TRAIN
    assert corpus.test == TEST
    assert "valid.txt (train)" in corpus.source and "test.txt (test)" in corpus.source
    assert str(data_dir) in corpus.source


def test_read_wikitext_dir_custom_file_names(tmp_path: Path) -> None:
    data_dir = write_dir(tmp_path, {"a.txt": TRAIN, "b.txt": TEST})
    corpus = read_wikitext_dir(str(data_dir), train_file="a.txt", test_file="b.txt")
    assert (corpus.train, corpus.test) == (TRAIN, TEST)


def test_missing_dir_names_path_and_how_to_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        read_wikitext_dir(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "--data-dir" in message and "PLPRUNE_DATA_DIR" in message


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="not a directory"):
        read_wikitext_dir(file)


def test_missing_file_lists_present_files(tmp_path: Path) -> None:
    data_dir = write_dir(tmp_path, {"valid.txt": TRAIN, "train.txt": TRAIN, "notes.md": "hi"})
    with pytest.raises(DataError) as info:
        read_wikitext_dir(data_dir)
    message = str(info.value)
    assert "'test.txt' not found" in message
    assert "notes.md, train.txt, valid.txt" in message


def test_missing_file_in_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="directory is empty"):
        read_wikitext_dir(tmp_path)


@pytest.mark.parametrize("content", ["", " \n \n\t"])
def test_empty_or_whitespace_file(tmp_path: Path, content: str) -> None:
    data_dir = write_dir(tmp_path, {"valid.txt": TRAIN, "test.txt": content})
    with pytest.raises(DataError, match=r"test file .* empty or whitespace-only"):
        read_wikitext_dir(data_dir)


def test_non_utf8_file(tmp_path: Path) -> None:
    data_dir = write_dir(tmp_path, {"valid.txt": b"caf\xe9 au lait\n", "test.txt": TEST})
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_wikitext_dir(data_dir)


def test_default_data_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PLPRUNE_DATA_DIR", raising=False)
    assert default_data_dir() is None
    monkeypatch.setenv("PLPRUNE_DATA_DIR", "")
    assert default_data_dir() is None
    monkeypatch.setenv("PLPRUNE_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path


@pytest.mark.skipif(not REAL_WIKITEXT.is_dir(), reason=f"{REAL_WIKITEXT} not present")
def test_real_wikitext2() -> None:
    corpus = read_wikitext_dir(REAL_WIKITEXT)
    assert len(corpus.train.split()) == 213_886
    assert len(corpus.test.split()) == 241_211
    assert "<unk>" in corpus.train


def test_word_tokenize_line_splits_punctuation() -> None:
    assert word_tokenize_line("Call foo.bar(x), then stop.") == "Call foo . bar ( x ) , then stop ."
    assert word_tokenize_line("   ") == ""


def test_pydoc_document_drops_rst_rules_and_blank_lines() -> None:
    doc = _pydoc_document('The "assert" statement\n**********************\n\nIt works.\n')
    assert doc == 'The " assert " statement\nIt works .'


def test_pydoc_corpus_nonempty_deterministic() -> None:
    first, second = pydoc_corpus(), pydoc_corpus()
    assert first == second
    assert len(first.train.split()) > 20_000
    assert len(first.test.split()) > 1_000
    assert "pydoc_data.topics" in first.source


def test_pydoc_corpus_splits_whole_documents() -> None:
    from pydoc_data.topics import topics

    corpus = pydoc_corpus(test_fraction=0.2)
    documents = _drop_contained({n: _pydoc_document(text) for n, text in topics.items()})
    names = sorted(documents)
    train_names, test_names = _split_topic_names(names, 0.2)
    assert set(train_names).isdisjoint(test_names)
    assert set(train_names) | set(test_names) == set(names)
    assert len(test_names) == math.ceil(0.2 * len(names))
    for name in test_names:
        doc = _pydoc_document(topics[name])
        assert doc in corpus.test and doc not in corpus.train
    for name in train_names[:10]:
        assert _pydoc_document(topics[name]) in corpus.train


def test_drop_contained_keeps_containers_and_one_of_duplicates() -> None:
    docs = {"if": "if x", "compound": "while y\nif x", "b": "same", "a": "same", "other": "z"}
    assert _drop_contained(docs) == {"compound": "while y\nif x", "a": "same", "other": "z"}


def test_pydoc_test_fraction_changes_split() -> None:
    small, large = pydoc_corpus(0.05), pydoc_corpus(0.5)
    assert len(small.test) < len(large.test)
    assert len(small.train) > len(large.train)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 0.51, 1.0, float("nan"), True, "0.1"])
def test_pydoc_test_fraction_validated(bad: object) -> None:
    with pytest.raises(PlpruneError, match=r"test_fraction must lie in \(0, 0.5\]"):
        pydoc_corpus(bad)  # type: ignore[arg-type]


def test_load_wikitext2_hf_with_fake_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(path: str, config: str) -> dict[str, dict[str, list[str]]]:
        calls.append((path, config))
        return {
            "train": {"text": ["", " = A = \n", " some train words \n"]},
            "validation": {"text": [" valid \n"]},
            "test": {"text": [" test words \n"]},
        }

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    corpus = load_wikitext2_hf()
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1")]
    assert corpus.train == " = A = \n some train words \n"
    assert corpus.test == " test words \n"
    assert "wikitext-2-raw-v1" in corpus.source
    corpus = load_wikitext2_hf("wikitext-2-v1", train_split="validation")
    assert corpus.train == " valid \n"


def test_load_wikitext2_hf_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(PlpruneError, match=r"pip install plprune\[hf\]"):
        load_wikitext2_hf()
    with pytest.raises(PlpruneError, match="unknown WikiText config"):
        load_wikitext2_hf("wikitext-3")
    with pytest.raises(PlpruneError, match="must differ"):
        load_wikitext2_hf(train_split="test")

    def offline(path: str, config: str) -> None:
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(DataError, match="no network"):
        load_wikitext2_hf()
