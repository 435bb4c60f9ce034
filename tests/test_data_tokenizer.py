"""Word and BPE tokenizers: ids, special tokens, save/load, and the per-run vocabulary cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plprune.data import (
    SPECIAL_TOKENS,
    BpeTokenizer,
    Tokenizer,
    WordTokenizer,
    build_or_load_tokenizer,
    load_tokenizer,
    pydoc_corpus,
)
from plprune.errors import DataError, PlpruneError

TEXT = " = Title = \n b a a c c c <unk> d d \n\n a c <unk> \n"  # c:4, a:3, d:2, b:1


@pytest.fixture(scope="module")
def pydoc_train() -> str:
    return pydoc_corpus().train[:60_000]


def test_special_token_ids_are_fixed() -> None:
    assert SPECIAL_TOKENS == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    tok = WordTokenizer.build(TEXT)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.special_ids == frozenset(range(5))
    assert [tok.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert isinstance(tok, Tokenizer)


def test_word_ids_by_frequency_then_word() -> None:
    tok = WordTokenizer.build(TEXT)
    # c:4, a:3, =:2, d:2, Title:1, b:1 ("=" < "d" and "Title" < "b" in code-point order)
    assert [tok.id_to_token(i) for i in range(5, tok.vocab_size)] == ["c", "a", "=", "d", "Title", "b"]
    assert tok.vocab_size == 11
    assert tok.encode("c a b") == [5, 6, 10]


def test_word_unk_and_specials() -> None:
    tok = WordTokenizer.build(TEXT)
    assert "<unk>" not in [tok.id_to_token(i) for i in range(tok.vocab_size)]
    assert tok.encode("<unk> zebra [MASK] [PAD]") == [tok.unk_id, tok.unk_id, tok.mask_id, tok.pad_id]


def test_word_min_freq_and_max_size() -> None:
    tok = WordTokenizer.build(TEXT, min_freq=2)
    assert tok.vocab_size == 5 + 4  # c, a, =, d
    assert tok.encode("b Title d") == [tok.unk_id, tok.unk_id, 8]
    capped = WordTokenizer.build(TEXT, max_size=7)
    assert capped.vocab_size == 7
    assert capped.encode("c a d") == [5, 6, capped.unk_id]
    assert tok.settings == {"min_freq": 2, "max_size": None}


def test_word_build_is_deterministic() -> None:
    assert WordTokenizer.build(TEXT).to_dict() == WordTokenizer.build(TEXT).to_dict()


def test_word_decode() -> None:
    tok = WordTokenizer.build(TEXT)
    ids = tok.encode("a [MASK] c zebra")
    assert tok.decode(ids) == "a [MASK] c [UNK]"
    assert tok.decode(ids, skip_special_tokens=True) == "a c"
    with pytest.raises(DataError, match=r"token ids must lie in \[0, 11\)"):
        tok.decode([3, 99])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_freq": 0}, "min_freq must be a positive integer"),
        ({"min_freq": 1.5}, "min_freq must be a positive integer"),
        ({"max_size": 5}, "max_size must be >= 6"),
    ],
)
def test_word_build_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(PlpruneError, match=match):
        WordTokenizer.build(TEXT, **kwargs)


def test_word_build_no_word_frequent_enough() -> None:
    with pytest.raises(DataError, match="min_freq=10"):
        WordTokenizer.build(TEXT, min_freq=10)


def test_word_save_load_round_trip(tmp_path: Path) -> None:
    tok = WordTokenizer.build(TEXT, min_freq=2)
    path = tmp_path / "sub" / "tok.json"
    tok.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temp file left behind
    assert json.loads(path.read_text(encoding="utf-8"))["kind"] == "word"
    loaded = load_tokenizer(path)
    assert isinstance(loaded, WordTokenizer)
    assert loaded.to_dict() == tok.to_dict()
    assert loaded.encode(TEXT) == tok.encode(TEXT)


def test_save_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    WordTokenizer.build(TEXT).save(path)
    WordTokenizer.build(TEXT, min_freq=2).save(path)
    assert load_tokenizer(path).settings["min_freq"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="as JSON"):
        load_tokenizer(bad)
    bad.write_text(json.dumps({"vocab": []}), encoding="utf-8")
    with pytest.raises(DataError, match="no 'kind' field"):
        load_tokenizer(bad)
    bad.write_text(json.dumps({"kind": "char"}), encoding="utf-8")
    with pytest.raises(DataError, match="unknown kind 'char'; valid: word, bpe"):
        load_tokenizer(bad)
    data = WordTokenizer.build(TEXT).to_dict()
    del data["vocab"]
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match="malformed field"):
        load_tokenizer(bad)


def test_build_or_load_builds_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "run" / "tokenizer.json"
    first = build_or_load_tokenizer(path, TEXT, min_freq=2)
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    second = build_or_load_tokenizer(path, TEXT, min_freq=2)
    assert path.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert second.to_dict() == first.to_dict()
    # vocab_size is a BPE setting: it does not invalidate a word-level cache
    assert build_or_load_tokenizer(path, TEXT, min_freq=2, vocab_size=123).vocab_size == first.vocab_size


def test_build_or_load_refuses_mismatched_cache(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    build_or_load_tokenizer(path, TEXT, min_freq=1)
    with pytest.raises(DataError, match=r"settings .*'min_freq': 1.*asked for .*'min_freq': 2"):
        build_or_load_tokenizer(path, TEXT, min_freq=2)
    with pytest.raises(DataError, match="max_size"):
        build_or_load_tokenizer(path, TEXT, min_freq=1, max_size=8)
    with pytest.raises(DataError, match="kind 'word' \\(asked for 'bpe'\\)"):
        build_or_load_tokenizer(path, TEXT, kind="bpe", min_freq=1)
    with pytest.raises(DataError, match="different training text"):
        build_or_load_tokenizer(path, TEXT + " more", min_freq=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "char"}, "unknown tokenizer kind 'char'; valid: word, bpe"),
        ({"min_freq": 0}, "min_freq must be a positive integer"),
        ({"vocab_size": 5}, "vocab_size must be >= 6"),
        ({"max_size": 3}, "max_size must be >= 6"),
    ],
)
def test_build_or_load_validation(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(PlpruneError, match=match):
        build_or_load_tokenizer(tmp_path / "tok.json", TEXT, **kwargs)
    assert not (tmp_path / "tok.json").exists()


def test_bpe_train_encode_decode(pydoc_train: str) -> None:
    tok = BpeTokenizer.train(pydoc_train, vocab_size=500, min_frequency=2)
    assert 100 < tok.vocab_size <= 500
    assert [tok.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    ids = tok.encode("The assert statement is executed .")
    assert all(5 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == "The assert statement is executed ."
    masked = tok.encode("a <unk> b [MASK] c")
    assert tok.unk_id in masked and tok.mask_id in masked
    assert tok.decode(masked) == "a [UNK] b [MASK] c"
    assert tok.decode(masked, skip_special_tokens=True) == "a b c"
    assert tok.encode("") == []


def test_bpe_train_is_deterministic(pydoc_train: str) -> None:
    a = BpeTokenizer.train(pydoc_train, vocab_size=400)
    b = BpeTokenizer.train(pydoc_train, vocab_size=400)
    assert a.to_dict() == b.to_dict()


def test_bpe_save_load_round_trip(tmp_path: Path, pydoc_train: str) -> None:
    tok = BpeTokenizer.train(pydoc_train, vocab_size=400, min_frequency=2)
    path = tmp_path / "bpe.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert isinstance(loaded, BpeTokenizer)
    assert loaded.settings == {"vocab_size": 400, "min_frequency": 2}
    sample = pydoc_train[:5_000]
    assert loaded.encode(sample) == tok.encode(sample)
    assert loaded.vocab_size == tok.vocab_size


def test_bpe_validation() -> None:
    with pytest.raises(PlpruneError, match="vocab_size must be >= 6"):
        BpeTokenizer.train(TEXT, vocab_size=4)
    with pytest.raises(PlpruneError, match="min_frequency must be a positive integer"):
        BpeTokenizer.train(TEXT, min_frequency=0)
    with pytest.raises(DataError, match="empty"):
        BpeTokenizer.train(" \n ")


def test_build_or_load_bpe(tmp_path: Path, pydoc_train: str) -> None:
    path = tmp_path / "tok.json"
    built = build_or_load_tokenizer(path, pydoc_train, kind="bpe", min_freq=2, vocab_size=300)
    loaded = build_or_load_tokenizer(path, pydoc_train, kind="bpe", min_freq=2, vocab_size=300)
    assert loaded.to_dict() == built.to_dict()
    with pytest.raises(DataError, match="vocab_size"):
        build_or_load_tokenizer(path, pydoc_train, kind="bpe", min_freq=2, vocab_size=400)
