"""Causal (next-token) language-modelling data: contiguous blocks of the token stream and their next tokens.

:func:`make_lm_blocks` cuts a token stream of N ids into ``n = (N - 1) // seq_len`` consecutive,
non-overlapping input blocks ``ids[i·T : (i+1)·T]`` and their labels ``ids[i·T + 1 : (i+1)·T + 1]`` (the
next token of every position; the last block's final label is the first token after it), so every token
but the first is a target exactly once and the ``(N - 1) % seq_len`` trailing ids are dropped. Targets that
are special ids (``[UNK]``: WikiText's ``<unk>`` and out-of-vocabulary words) get the label -100 and are not
predicted, as in the masked-LM data (:mod:`plprune.data.mlm`), so perplexities are over in-vocabulary
words; they still appear as inputs. :func:`prepare_causal_lm_data` does this for a corpus's two splits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from plprune.data.corpus import CorpusText
from plprune.data.tokenizer_base import Tokenizer
from plprune.errors import DataError
from plprune.validation import check_positive_int

__all__ = ["IGNORE_INDEX", "CausalLmData", "make_lm_blocks", "prepare_causal_lm_data"]

IGNORE_INDEX = -100
"""Label of positions that are not predicted (the ``ignore_index`` of ``F.cross_entropy``)."""


def make_lm_blocks(
    token_ids: Sequence[int] | Tensor, seq_len: int, ignore_ids: Iterable[int] = ()
) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)``, both ``(n_blocks, seq_len)`` LongTensors, from a token stream (module
    docstring); labels equal to one of ``ignore_ids`` become :data:`IGNORE_INDEX`. Raises
    :class:`DataError` when the stream has fewer than ``seq_len + 1`` tokens."""
    check_positive_int("seq_len", seq_len)
    ids = token_ids if isinstance(token_ids, Tensor) else torch.as_tensor(list(token_ids), dtype=torch.long)
    if ids.dim() != 1:
        raise DataError(f"token_ids must be a 1-D token stream, got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
        raise DataError(f"token_ids must be integers, got dtype {ids.dtype}")
    ids = ids.to(torch.long)
    n_blocks = (ids.numel() - 1) // seq_len
    if n_blocks <= 0:
        raise DataError(
            f"the token stream has {ids.numel()} tokens, fewer than one block of seq_len={seq_len} plus "
            "its next token; use a larger text or a smaller seq_len"
        )
    used = n_blocks * seq_len
    inputs = ids[:used].reshape(n_blocks, seq_len).clone()
    labels = ids[1 : used + 1].reshape(n_blocks, seq_len).clone()
    ignore = torch.as_tensor(sorted({int(i) for i in ignore_ids}), dtype=torch.long)
    if ignore.numel():
        labels[torch.isin(labels, ignore)] = IGNORE_INDEX
    return inputs, labels


@dataclass
class CausalLmData:
    """A corpus as next-token blocks: ``(n_blocks, seq_len)`` inputs and labels per split, its tokenizer."""

    train_inputs: Tensor
    train_labels: Tensor
    test_inputs: Tensor
    test_labels: Tensor
    tokenizer: Tokenizer
    source: str

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            inputs, labels = getattr(self, f"{split}_inputs"), getattr(self, f"{split}_labels")
            same = isinstance(labels, Tensor) and getattr(inputs, "shape", None) == labels.shape
            if not isinstance(inputs, Tensor) or inputs.dim() != 2 or not same:
                raise DataError(
                    f"{split}_inputs and {split}_labels must be 2-D tensors of one shape "
                    f"(n_blocks, seq_len), got {tuple(getattr(inputs, 'shape', ()))} and "
                    f"{tuple(getattr(labels, 'shape', ()))}"
                )
            if inputs.shape[0] == 0:
                raise DataError(f"the {split} split has no blocks")
        if self.train_inputs.shape[1] != self.test_inputs.shape[1]:
            raise DataError(
                f"train and test blocks differ in length: {self.train_inputs.shape[1]} vs "
                f"{self.test_inputs.shape[1]}"
            )

    @property
    def seq_len(self) -> int:
        return int(self.train_inputs.shape[1])


def prepare_causal_lm_data(corpus: CorpusText, tokenizer: Tokenizer, seq_len: int) -> CausalLmData:
    """Encode ``corpus``'s train and test text with ``tokenizer`` and cut each into next-token blocks of
    ``seq_len``; special ids (``[UNK]`` among them) are never targets. Raises :class:`DataError` naming the
    split whose text is shorter than one block plus one token."""
    check_positive_int("seq_len", seq_len)
    blocks = {}
    for split, text in (("train", corpus.train), ("test", corpus.test)):
        ids = tokenizer.encode(text)
        if len(ids) < seq_len + 1:
            raise DataError(
                f"the {split} split of {corpus.source} has {len(ids)} tokens, fewer than one block of "
                f"seq_len={seq_len} plus its next token; use a larger text or a smaller seq_len"
            )
        blocks[split] = make_lm_blocks(ids, seq_len, tokenizer.special_ids)
    return CausalLmData(*blocks["train"], *blocks["test"], tokenizer=tokenizer, source=corpus.source)
