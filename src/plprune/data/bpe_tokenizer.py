"""Byte-pair-encoding subword tokenizer backed by the Hugging Face ``tokenizers`` library.

An alternative to :class:`~plprune.data.word_tokenizer.WordTokenizer` for raw (non-``<unk>``) text:
a BPE model with a whitespace pre-tokenizer (words and punctuation runs), each word then marked with
a leading ``▁`` (SentencePiece's metaspace) so :meth:`BpeTokenizer.decode` can re-join pieces into
words, and the shared special tokens at ids 0..4. The ``tokenizers`` JSON is embedded in our JSON
under ``"tokenizer"``.

Why ``▁`` rather than WordPiece-style ``##`` continuation pieces: ``tokenizers``' BPE trainer assigns
``##`` pieces ids in hash-map order, so training twice on the same text gives different vocabularies
and even different merges (huggingface/tokenizers#1794); with the metaspace marker it is deterministic.

Perplexities under a BPE vocabulary are per subword piece, so they are only comparable between runs
that use the same vocabulary (same text, ``vocab_size`` and ``min_frequency``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, ClassVar

from tokenizers import Tokenizer as HfTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from plprune.data.tokenizer_base import (
    SPECIAL_TOKENS,
    UNK_TOKEN,
    WIKITEXT_UNK,
    Tokenizer,
    check_vocab_limit,
    text_sha256,
)
from plprune.errors import DataError
from plprune.validation import check_positive_int

WORD_START = "\u2581"  # "▁", SentencePiece's word-start marker


def _lines(text: str) -> list[str]:
    """Non-blank lines of ``text`` with WikiText's ``<unk>`` turned into the ``[UNK]`` special token."""
    return [line for line in text.replace(WIKITEXT_UNK, UNK_TOKEN).splitlines() if line.strip()]


class BpeTokenizer(Tokenizer):
    """Subword tokenizer trained with BPE on the training text (see the module docstring)."""

    kind: ClassVar[str] = "bpe"

    def __init__(self, hf_tokenizer: HfTokenizer, settings: dict[str, Any], train_sha256: str) -> None:
        super().__init__(settings, train_sha256)
        for i, token in enumerate(SPECIAL_TOKENS):
            if hf_tokenizer.token_to_id(token) != i:
                raise DataError(f"BPE tokenizer must map special token {token} to id {i}")
        self._hf = hf_tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int = 8000, min_frequency: int = 2) -> BpeTokenizer:
        """Train a BPE vocabulary of at most ``vocab_size`` ids (specials included) on ``text``.

        Merges seen fewer than ``min_frequency`` times are not learned, so a small text can give a
        smaller vocabulary than asked for.
        """
        check_vocab_limit("vocab_size", vocab_size)
        check_positive_int("min_frequency", min_frequency)
        lines = _lines(text)
        if not lines:
            raise DataError("cannot train a BPE tokenizer on an empty or whitespace-only text")
        hf = HfTokenizer(models.BPE(unk_token=UNK_TOKEN))
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Whitespace(),
                pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always"),
            ]
        )
        hf.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            show_progress=False,
        )
        hf.train_from_iterator(lines, trainer=trainer)
        settings = {"vocab_size": vocab_size, "min_frequency": min_frequency}
        return cls(hf, settings, text_sha256(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BpeTokenizer:
        """Inverse of :meth:`to_dict` (the JSON written by :meth:`save`)."""
        try:
            hf = HfTokenizer.from_str(json.dumps(data["tokenizer"]))
        except Exception as exc:  # tokenizers raises its own exception type for malformed JSON
            raise DataError(f"invalid embedded 'tokenizers' JSON: {exc}") from exc
        return cls(hf, data["settings"], data["train_sha256"])

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for encoding in self._hf.encode_batch(_lines(text), add_special_tokens=False):
            ids.extend(encoding.ids)
        return ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        pieces = []
        for i in self._check_ids(ids):
            if i in self.special_ids:
                if not skip_special_tokens:
                    pieces.append(" " + SPECIAL_TOKENS[i])
            else:
                pieces.append(self.id_to_token(i).replace(WORD_START, " "))
        return "".join(pieces).strip()

    def id_to_token(self, token_id: int) -> str:
        token = self._hf.id_to_token(self._check_ids([token_id])[0])
        assert token is not None  # ids in range always have a token
        return token

    def _payload(self) -> dict[str, Any]:
        return {"tokenizer": json.loads(self._hf.to_str())}
