"""Whitespace word-level tokenizer: the default for WikiText-2.

WikiText-2 is already word-tokenised (punctuation split off, rare words replaced by ``<unk>``), and
the paper reports word-level perplexities; a fixed word vocabulary built on the training text makes
perplexities comparable between runs (the prediction unit is the same word in every run), which a
BPE vocabulary trained with different settings would not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from plprune.data.tokenizer_base import (
    SPECIAL_TOKENS,
    WIKITEXT_UNK,
    Tokenizer,
    check_vocab_limit,
    text_sha256,
)
from plprune.errors import DataError
from plprune.validation import check_positive_int


class WordTokenizer(Tokenizer):
    """Maps each whitespace-separated word to an id; words outside the vocabulary map to ``[UNK]``.

    Ids: the special tokens first (see :data:`~plprune.data.tokenizer_base.SPECIAL_TOKENS`), then
    training words by frequency (descending), ties by the word (ascending), so a given training text
    and settings always give the same ids. WikiText's ``<unk>`` maps to ``[UNK]``; a special token
    written literally in the text (``[MASK]``) maps to its special id.
    """

    kind: ClassVar[str] = "word"

    def __init__(self, vocab: Sequence[str], settings: dict[str, Any], train_sha256: str) -> None:
        super().__init__(settings, train_sha256)
        vocab = list(vocab)
        if vocab[: len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS):
            raise DataError(f"a word vocabulary must start with the special tokens {list(SPECIAL_TOKENS)}")
        if len(set(vocab)) != len(vocab):
            raise DataError("a word vocabulary must not contain duplicate tokens")
        self._itos = vocab
        self._stoi = {token: i for i, token in enumerate(vocab)}

    @classmethod
    def build(cls, text: str, min_freq: int = 1, max_size: int | None = None) -> WordTokenizer:
        """Build the vocabulary from the *training* ``text`` only.

        Words seen fewer than ``min_freq`` times are left out (they encode to ``[UNK]``). ``max_size``
        caps the total vocabulary size, specials included, keeping the most frequent words.
        """
        check_positive_int("min_freq", min_freq)
        if max_size is not None:
            check_vocab_limit("max_size", max_size)
        counts = Counter(text.split())
        for token in (WIKITEXT_UNK, *SPECIAL_TOKENS):
            counts.pop(token, None)
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - len(SPECIAL_TOKENS)]
        if not words:
            raise DataError(
                f"no word occurs at least min_freq={min_freq} times in the training text "
                f"({sum(counts.values())} words); lower min_freq or use a larger text"
            )
        settings = {"min_freq": min_freq, "max_size": max_size}
        return cls([*SPECIAL_TOKENS, *words], settings, text_sha256(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordTokenizer:
        """Inverse of :meth:`to_dict` (the JSON written by :meth:`save`)."""
        return cls(data["vocab"], data["settings"], data["train_sha256"])

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def encode(self, text: str) -> list[int]:
        stoi, unk = self._stoi, self.unk_id
        return [stoi.get(word, unk) for word in text.split()]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        ids = self._check_ids(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return " ".join(self._itos[i] for i in ids)

    def id_to_token(self, token_id: int) -> str:
        return self._itos[self._check_ids([token_id])[0]]

    def token_to_id(self, token: str) -> int:
        """The id of ``token`` (``unk_id`` when it is not in the vocabulary)."""
        return self._stoi.get(token, self.unk_id)

    def _payload(self) -> dict[str, Any]:
        return {"vocab": list(self._itos)}
