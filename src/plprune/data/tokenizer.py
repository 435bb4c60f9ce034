"""Tokenizers (word-level default, BPE alternative), loading them from JSON, and the per-run cache.

A run builds its vocabulary on the training text once and saves it beside the run
(:func:`build_or_load_tokenizer`); resuming or evaluating later loads the same file, and a cache
built with different settings or on a different training text is refused instead of silently used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from plprune.data.bpe_tokenizer import BpeTokenizer
from plprune.data.tokenizer_base import (
    SPECIAL_TOKENS,
    Tokenizer,
    check_special_tokens,
    check_vocab_limit,
    text_sha256,
)
from plprune.data.word_tokenizer import WordTokenizer
from plprune.errors import DataError
from plprune.validation import check_choice, check_positive_int

__all__ = [
    "DEFAULT_BPE_VOCAB_SIZE",
    "DEFAULT_MIN_FREQ",
    "SPECIAL_TOKENS",
    "TOKENIZER_KINDS",
    "BpeTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "build_or_load_tokenizer",
    "load_tokenizer",
]

TOKENIZER_KINDS: dict[str, type[WordTokenizer] | type[BpeTokenizer]] = {
    WordTokenizer.kind: WordTokenizer,
    BpeTokenizer.kind: BpeTokenizer,
}

DEFAULT_MIN_FREQ = 2
"""Default ``min_freq`` for :func:`build_or_load_tokenizer`: words seen once in training -> ``[UNK]``.

On WikiText-2 ``valid.txt`` (the training text by project convention) this gives 9,214 ids
(min_freq=1: 13,780); ``[UNK]`` is then 7.6% of training and 14.1% of test tokens (min_freq=1:
5.5% / 11.2%; WikiText's own ``<unk>`` alone is 6.3% of test). A word seen once is masked and
predicted about 0.15 times per epoch, too rarely to learn an embedding for it.
"""

DEFAULT_BPE_VOCAB_SIZE = 8000


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer saved by ``Tokenizer.save``, choosing the class from its ``"kind"`` field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"tokenizer file {str(path)!r} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read tokenizer file {str(path)!r} as JSON: {exc}") from exc
    if not isinstance(data, dict) or "kind" not in data:
        raise DataError(f"tokenizer file {str(path)!r} has no 'kind' field; is it a plprune tokenizer?")
    kind = data["kind"]
    if kind not in TOKENIZER_KINDS:
        raise DataError(
            f"tokenizer file {str(path)!r} has unknown kind {kind!r}; valid: {', '.join(TOKENIZER_KINDS)}"
        )
    check_special_tokens(data, str(path))
    try:
        return TOKENIZER_KINDS[kind].from_dict(data)
    except (KeyError, TypeError) as exc:
        raise DataError(f"tokenizer file {str(path)!r} is missing or has a malformed field: {exc}") from exc


def _requested_settings(kind: str, min_freq: int, vocab_size: int, max_size: int | None) -> dict[str, Any]:
    """The ``settings`` a tokenizer of ``kind`` built from these arguments would record."""
    if kind == WordTokenizer.kind:
        return {"min_freq": min_freq, "max_size": max_size}
    return {"vocab_size": vocab_size, "min_frequency": min_freq}


def build_or_load_tokenizer(
    cache_path: str | os.PathLike[str],
    train_text: str,
    kind: str = "word",
    min_freq: int = DEFAULT_MIN_FREQ,
    vocab_size: int = DEFAULT_BPE_VOCAB_SIZE,
    max_size: int | None = None,
) -> Tokenizer:
    """Load the tokenizer cached at ``cache_path``, or build it on ``train_text`` and save it there.

    ``kind="word"``: :meth:`WordTokenizer.build` with ``min_freq`` and ``max_size`` (``None``: no
    cap); ``vocab_size`` is ignored. ``kind="bpe"``: :meth:`BpeTokenizer.train` with ``vocab_size``
    and ``min_frequency=min_freq``; ``max_size`` is ignored. A cached file whose kind, settings or
    training text differ from this request raises :class:`DataError` rather than being used.
    """
    check_choice("tokenizer kind", kind, TOKENIZER_KINDS)
    check_positive_int("min_freq", min_freq)
    check_vocab_limit("vocab_size", vocab_size)
    if max_size is not None:
        check_vocab_limit("max_size", max_size)
    cache_path = Path(cache_path)
    requested = _requested_settings(kind, min_freq, vocab_size, max_size)
    if cache_path.exists():
        tokenizer = load_tokenizer(cache_path)
        problems = []
        if tokenizer.kind != kind:
            problems.append(f"kind {tokenizer.kind!r} (asked for {kind!r})")
        elif tokenizer.settings != requested:
            problems.append(f"settings {tokenizer.settings} (asked for {requested})")
        if tokenizer.train_sha256 != text_sha256(train_text):
            problems.append("a different training text (SHA-256 differs)")
        if problems:
            raise DataError(
                f"cached tokenizer {str(cache_path)!r} was built with {' and '.join(problems)}; "
                "delete it or use a fresh run directory to rebuild the vocabulary"
            )
        return tokenizer
    if kind == WordTokenizer.kind:
        tokenizer = WordTokenizer.build(train_text, min_freq=min_freq, max_size=max_size)
    else:
        tokenizer = BpeTokenizer.train(train_text, vocab_size=vocab_size, min_frequency=min_freq)
    tokenizer.save(cache_path)
    return tokenizer
