"""The :class:`Tokenizer` interface shared by the word and BPE tokenizers, and their special tokens.

Both tokenizers put the same five special tokens at the same ids (``[PAD]``=0, ``[UNK]``=1,
``[CLS]``=2, ``[SEP]``=3, ``[MASK]``=4), save to one JSON file with a ``"kind"`` field, and record
the settings and a SHA-256 of the training text they were built from, so a cached vocabulary can be
checked against what a run asks for (:func:`plprune.data.tokenizer.build_or_load_tokenizer`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from plprune.errors import DataError, PlpruneError
from plprune.validation import check_positive_int

PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
"""Special tokens in id order: ``SPECIAL_TOKENS[i]`` has id ``i`` in every tokenizer."""

WIKITEXT_UNK = "<unk>"
"""WikiText's own out-of-vocabulary marker; both tokenizers map it to ``[UNK]``."""

FORMAT_VERSION = 1


def text_sha256(text: str) -> str:
    """Hex SHA-256 of ``text`` encoded as UTF-8 (identifies the text a vocabulary was built on)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same directory, then ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def check_vocab_limit(name: str, value: Any) -> int:
    """Return ``value`` if it is an int large enough for the specials plus one real token."""
    check_positive_int(name, value)
    if value < len(SPECIAL_TOKENS) + 1:
        raise PlpruneError(
            f"{name} must be >= {len(SPECIAL_TOKENS) + 1} (the {len(SPECIAL_TOKENS)} special tokens "
            f"{', '.join(SPECIAL_TOKENS)} plus at least one real token), got {value!r}"
        )
    return value


class Tokenizer(ABC):
    """Text <-> token ids. Special tokens have the same ids in every implementation (see module doc)."""

    kind: ClassVar[str]
    """Name stored in the saved JSON's ``"kind"`` field ("word" or "bpe")."""

    pad_id: ClassVar[int] = SPECIAL_TOKENS.index(PAD_TOKEN)
    unk_id: ClassVar[int] = SPECIAL_TOKENS.index(UNK_TOKEN)
    cls_id: ClassVar[int] = SPECIAL_TOKENS.index(CLS_TOKEN)
    sep_id: ClassVar[int] = SPECIAL_TOKENS.index(SEP_TOKEN)
    mask_id: ClassVar[int] = SPECIAL_TOKENS.index(MASK_TOKEN)
    special_ids: ClassVar[frozenset[int]] = frozenset(range(len(SPECIAL_TOKENS)))

    def __init__(self, settings: dict[str, Any], train_sha256: str) -> None:
        self._settings = dict(settings)
        self._train_sha256 = train_sha256

    @property
    def settings(self) -> dict[str, Any]:
        """The build settings (e.g. ``min_freq``), as stored in the saved JSON."""
        return dict(self._settings)

    @property
    def train_sha256(self) -> str:
        """SHA-256 of the training text this tokenizer was built on."""
        return self._train_sha256

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, specials included; every id is in ``range(vocab_size)``."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no ``[CLS]``/``[SEP]`` added); unknown pieces become ``unk_id``."""

    @abstractmethod
    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (tokens joined by spaces; subword pieces re-joined)."""

    @abstractmethod
    def id_to_token(self, token_id: int) -> str:
        """The token string of one id."""

    @abstractmethod
    def _payload(self) -> dict[str, Any]:
        """Kind-specific JSON fields (the vocabulary); merged into :meth:`to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; :func:`plprune.data.tokenizer.load_tokenizer` reads it back."""
        return {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "settings": self.settings,
            "train_sha256": self.train_sha256,
            "special_tokens": list(SPECIAL_TOKENS),
            **self._payload(),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON to ``path`` atomically (temporary file + ``os.replace``)."""
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False) + "\n")

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        """``ids`` as a list of ints, each checked to lie in ``range(vocab_size)``."""
        out = [int(i) for i in ids]
        bad = [i for i in out if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"token ids must lie in [0, {self.vocab_size}), got {bad[:5]}")
        return out

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self._settings.items())
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, {settings})"


def check_special_tokens(data: dict[str, Any], path: str) -> None:
    """Raise :class:`DataError` unless saved tokenizer ``data`` uses this version's special tokens."""
    if data.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"tokenizer file {path!r} has format_version {data.get('format_version')!r}; "
            f"this plprune reads version {FORMAT_VERSION}"
        )
    if data.get("special_tokens") != list(SPECIAL_TOKENS):
        raise DataError(
            f"tokenizer file {path!r} has special tokens {data.get('special_tokens')!r}; "
            f"expected {list(SPECIAL_TOKENS)}"
        )
