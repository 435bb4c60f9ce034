"""Masked-language-modelling data: fixed-length blocks of the token stream and BERT-style masking.

* :func:`make_blocks` cuts a corpus's token stream into consecutive, non-overlapping blocks.
* :class:`MlmMasker` applies the BERT recipe (Devlin et al., 2019): each non-special token is
  selected with probability ``mask_prob``; of the selected, 80% become ``[MASK]``, 10% a random
  non-special token, 10% stay unchanged. All randomness comes from the ``torch.Generator`` passed in.
* :func:`prepare_mlm_data` encodes a :class:`~plprune.data.corpus.CorpusText` into blocks, and
  :func:`fixed_masked_batches` gives evaluation batches whose masking is the same on every call.
* :func:`static_masking` masks every training block once (BERT's original data pipeline fixed the masks
  when it wrote its training files, Devlin et al. 2019, App. A.2 with dupe factor 1): the model then sees
  the same masked positions of a block in every epoch, so a small training set can be memorised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from plprune.data.corpus import CorpusText
from plprune.data.tokenizer_base import Tokenizer
from plprune.errors import DataError, PlpruneError
from plprune.validation import check_positive_int, check_probability

IGNORE_INDEX = -100
"""Label of positions that are not predicted (the ``ignore_index`` of ``F.cross_entropy``)."""


def make_blocks(token_ids: Sequence[int] | Tensor, seq_len: int) -> Tensor:
    """Cut a token stream into consecutive non-overlapping blocks: a ``(n_blocks, seq_len)`` LongTensor.

    The ``len % seq_len`` trailing tokens that do not fill a block are dropped. Raises
    :class:`DataError` when the stream is shorter than one block.
    """
    check_positive_int("seq_len", seq_len)
    ids = torch.as_tensor(token_ids, dtype=torch.long) if not isinstance(token_ids, Tensor) else token_ids
    if ids.dim() != 1:
        raise DataError(f"token_ids must be a 1-D token stream, got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dtype.is_complex:
        raise DataError(f"token_ids must be integers, got dtype {ids.dtype}")
    n_blocks = ids.numel() // seq_len
    if n_blocks == 0:
        raise DataError(
            f"the corpus has {ids.numel()} tokens, fewer than one block of seq_len={seq_len}; "
            "use a larger text or a smaller seq_len"
        )
    return ids[: n_blocks * seq_len].to(torch.long).reshape(n_blocks, seq_len).clone()


@dataclass
class MlmMasker:
    """BERT-style dynamic masking driven only by an explicit ``torch.Generator``.

    Special ids are never selected and never used as random replacements. With
    :meth:`from_tokenizer` these are all five specials, ``[UNK]`` included: positions holding
    ``[UNK]`` (WikiText's ``<unk>`` and out-of-vocabulary words) are never prediction targets, so
    masked-LM loss and perplexity are over in-vocabulary words only.

    Guarantee: every row that has at least one non-special token gets at least one selected
    position (if the Bernoulli draws selected none, the non-special position with the smallest
    draw is selected), so each row contributes to the loss. For ``mask_prob=0.15`` and
    rows of 128 tokens this changes the selection rate by ~1e-9; with ``mask_prob=0`` exactly one
    position per row is selected.
    """

    vocab_size: int
    mask_id: int
    special_ids: frozenset[int]
    mask_prob: float = 0.15
    mask_token_ratio: float = 0.8
    random_token_ratio: float = 0.1

    def __post_init__(self) -> None:
        check_positive_int("vocab_size", self.vocab_size)
        self.special_ids = frozenset(int(i) for i in self.special_ids)
        for name, token_id in [("mask_id", self.mask_id), *(("special id", i) for i in self.special_ids)]:
            is_int = isinstance(token_id, int) and not isinstance(token_id, bool)
            if not is_int or not 0 <= token_id < self.vocab_size:
                raise PlpruneError(f"{name} must be an integer in [0, {self.vocab_size}), got {token_id!r}")
        if self.mask_id not in self.special_ids:
            raise PlpruneError(
                f"mask_id {self.mask_id} must be one of special_ids {sorted(self.special_ids)}"
            )
        if len(self.special_ids) >= self.vocab_size:
            raise PlpruneError(
                f"vocab_size={self.vocab_size} leaves no non-special token "
                f"besides the {len(self.special_ids)} special ids"
            )
        check_probability("mask_prob", self.mask_prob, inclusive_high=True)
        check_probability("mask_token_ratio", self.mask_token_ratio, inclusive_high=True)
        check_probability("random_token_ratio", self.random_token_ratio, inclusive_high=True)
        if self.mask_token_ratio + self.random_token_ratio > 1 + 1e-12:
            raise PlpruneError(
                f"mask_token_ratio + random_token_ratio must be <= 1 (the rest stay unchanged), got "
                f"{self.mask_token_ratio} + {self.random_token_ratio}"
            )
        special = torch.tensor(sorted(self.special_ids), dtype=torch.long)
        everything = torch.arange(self.vocab_size, dtype=torch.long)
        self._special = special
        self._replacements = everything[~torch.isin(everything, special)]

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, **kwargs: float) -> MlmMasker:
        """A masker for ``tokenizer``'s vocabulary, ``[MASK]`` id and special ids."""
        return cls(tokenizer.vocab_size, tokenizer.mask_id, tokenizer.special_ids, **kwargs)

    def __call__(self, input_ids: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Mask a ``(B, T)`` LongTensor; returns ``(masked_inputs, labels)``, both ``(B, T)``.

        ``labels`` holds the original id at selected positions and ``IGNORE_INDEX`` (-100) elsewhere.
        The draws are made on ``generator``'s device and moved to ``input_ids``'s device, so a given
        generator state gives the same masking on any device; the global RNG is never touched.
        """
        self._check_input(input_ids)
        shape, device = input_ids.shape, input_ids.device
        draw_device = generator.device
        select_draw = torch.rand(shape, generator=generator, device=draw_device).to(device)
        action_draw = torch.rand(shape, generator=generator, device=draw_device).to(device)
        random_index = torch.randint(
            len(self._replacements), shape, generator=generator, device=draw_device
        ).to(device)

        special = torch.isin(input_ids, self._special.to(device))
        selected = (select_draw < self.mask_prob) & ~special
        needs_one = ~selected.any(dim=1) & ~special.all(dim=1)
        if bool(needs_one.any()):
            first_choice = select_draw.masked_fill(special, math.inf).argmin(dim=1)
            rows = needs_one.nonzero(as_tuple=True)[0]
            selected[rows, first_choice[rows]] = True

        use_mask = selected & (action_draw < self.mask_token_ratio)
        use_random = (
            selected
            & (action_draw >= self.mask_token_ratio)
            & (action_draw < self.mask_token_ratio + self.random_token_ratio)
        )
        masked = input_ids.masked_fill(use_mask, self.mask_id)
        masked = torch.where(use_random, self._replacements.to(device)[random_index], masked)
        labels = input_ids.masked_fill(~selected, IGNORE_INDEX)
        return masked, labels

    def _check_input(self, input_ids: Tensor) -> None:
        """Raise :class:`PlpruneError` unless ``input_ids`` is a 2-D integer tensor of valid ids."""
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            dtype, shape = getattr(input_ids, "dtype", ""), tuple(getattr(input_ids, "shape", ()))
            got = f"{type(input_ids).__name__} {dtype} {shape}"
            raise PlpruneError(f"input_ids must be a 2-D torch.long tensor (batch, seq_len), got {got}")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size):
            raise PlpruneError(
                f"input_ids must lie in [0, {self.vocab_size}), got values in "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]"
            )


@dataclass
class MlmData:
    """A corpus encoded into ``(n_blocks, seq_len)`` train and test blocks, with its tokenizer."""

    train_blocks: Tensor
    test_blocks: Tensor
    tokenizer: Tokenizer
    source: str


def prepare_mlm_data(corpus: CorpusText, tokenizer: Tokenizer, seq_len: int) -> MlmData:
    """Encode ``corpus``'s train and test text with ``tokenizer`` and cut each into blocks of ``seq_len``.

    Raises :class:`DataError` naming the split whose text is shorter than one block.
    """
    check_positive_int("seq_len", seq_len)
    blocks = {}
    for split, text in (("train", corpus.train), ("test", corpus.test)):
        ids = tokenizer.encode(text)
        if len(ids) < seq_len:
            raise DataError(
                f"the {split} split of {corpus.source} has {len(ids)} tokens, fewer than one block "
                f"of seq_len={seq_len}; use a larger text or a smaller seq_len"
            )
        blocks[split] = make_blocks(ids, seq_len)
    return MlmData(blocks["train"], blocks["test"], tokenizer, corpus.source)


def fixed_masked_batches(
    blocks: Tensor, masker: MlmMasker, batch_size: int, seed: int, max_blocks: int | None = None
) -> list[tuple[Tensor, Tensor]]:
    """Deterministic evaluation batches ``(masked_inputs, labels)`` over the first ``max_blocks`` blocks.

    A fresh CPU generator seeded with ``seed`` masks the batches in order, so the same arguments
    give the same masking on every call (and the global RNG is untouched). ``max_blocks=None``
    uses all blocks; the last batch may be smaller than ``batch_size``.
    """
    if not isinstance(blocks, Tensor) or blocks.dim() != 2:
        raise PlpruneError(f"blocks must be a 2-D tensor (n_blocks, seq_len), got {type(blocks).__name__}")
    check_positive_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PlpruneError(f"seed must be an integer, got {seed!r}")
    if max_blocks is not None:
        check_positive_int("max_blocks", max_blocks)
        blocks = blocks[:max_blocks]
    if blocks.shape[0] == 0:
        raise DataError("no blocks to evaluate on: the block tensor is empty")
    generator = torch.Generator().manual_seed(seed)
    return [masker(batch, generator) for batch in blocks.split(batch_size)]


def static_masking(blocks: Tensor, masker: MlmMasker, seed: int) -> tuple[Tensor, Tensor]:
    """Mask every block of ``blocks`` once: ``(masked_inputs, labels)``, both ``(n_blocks, seq_len)``.

    Block i's masking is a function of ``(seed, i)`` only (one seeded generator per block), so it does not
    depend on the batch size or the order in which blocks are drawn.
    """
    if not isinstance(blocks, Tensor) or blocks.dim() != 2:
        raise PlpruneError(f"blocks must be a 2-D tensor (n_blocks, seq_len), got {type(blocks).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PlpruneError(f"seed must be an integer, got {seed!r}")
    if blocks.shape[0] == 0:
        raise DataError("no blocks to mask: the block tensor is empty")
    masked, labels = [], []
    for i in range(blocks.shape[0]):
        m, lab = masker(blocks[i : i + 1], torch.Generator().manual_seed(seed * 1_000_003 + i))
        masked.append(m)
        labels.append(lab)
    return torch.cat(masked), torch.cat(labels)
