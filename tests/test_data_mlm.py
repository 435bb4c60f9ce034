"""Blocks, BERT-style masking and MLM data preparation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plprune.data import (
    IGNORE_INDEX,
    MlmData,
    MlmMasker,
    WordTokenizer,
    fixed_masked_batches,
    make_blocks,
    prepare_mlm_data,
    read_wikitext_dir,
)
from plprune.errors import DataError, PlpruneError

VOCAB = 1000
SPECIALS = frozenset(range(5))
PAD, UNK, MASK = 0, 1, 4


def masker(**kwargs: float) -> MlmMasker:
    return MlmMasker(vocab_size=VOCAB, mask_id=MASK, special_ids=SPECIALS, **kwargs)


def token_grid(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Random non-special ids with PAD padding (last 20 columns of even rows) and an UNK column."""
    ids = torch.randint(5, VOCAB, (rows, cols), generator=torch.Generator().manual_seed(seed))
    ids[::2, -20:] = PAD
    ids[:, 0] = UNK
    return ids


# --- make_blocks -------------------------------------------------------------------------------


def test_make_blocks_from_list() -> None:
    blocks = make_blocks(list(range(11)), 3)
    assert blocks.dtype == torch.long
    assert blocks.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_make_blocks_from_tensor_is_a_copy() -> None:
    stream = torch.arange(8, dtype=torch.int32)
    blocks = make_blocks(stream, 4)
    assert blocks.shape == (2, 4) and blocks.dtype == torch.long
    stream[0] = 99
    assert blocks[0, 0] == 0
    assert make_blocks(torch.arange(6), 6).tolist() == [list(range(6))]


def test_make_blocks_too_small() -> None:
    with pytest.raises(DataError, match=r"has 5 tokens, fewer than one block of seq_len=8"):
        make_blocks(list(range(5)), 8)
    with pytest.raises(DataError, match="has 0 tokens"):
        make_blocks([], 1)


def test_make_blocks_validation() -> None:
    with pytest.raises(PlpruneError, match="seq_len must be a positive integer"):
        make_blocks([1, 2, 3], 0)
    with pytest.raises(DataError, match="1-D"):
        make_blocks(torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(DataError, match="integers"):
        make_blocks(torch.zeros(6), 2)


# --- MlmMasker ---------------------------------------------------------------------------------


def test_masking_statistics() -> None:
    ids = token_grid(1000, 220)  # 209,000 non-special tokens
    m = masker()
    masked, labels = m(ids, torch.Generator().manual_seed(0))
    assert masked.shape == labels.shape == ids.shape
    assert masked.dtype == labels.dtype == torch.long

    special = (ids == PAD) | (ids == UNK)
    selected = labels != IGNORE_INDEX
    n_selectable = int((~special).sum())
    assert n_selectable >= 200_000
    assert abs(int(selected.sum()) / n_selectable - 0.15) < 0.005
    assert not bool((selected & special).any()), "special tokens must never be selected"
    assert torch.equal(labels[selected], ids[selected])
    assert bool((labels[~selected] == IGNORE_INDEX).all())
    assert torch.equal(masked[~selected], ids[~selected])

    chosen_in, chosen_out = ids[selected], masked[selected]
    n = chosen_in.numel()
    as_mask = chosen_out == MASK
    unchanged = chosen_out == chosen_in
    as_random = ~as_mask & ~unchanged
    assert abs(int(as_mask.sum()) / n - 0.8) < 0.01
    assert abs(int(as_random.sum()) / n - 0.1) < 0.01
    assert abs(int(unchanged.sum()) / n - 0.1) < 0.01
    replacements = chosen_out[as_random]
    assert bool((replacements >= 5).all() & (replacements < VOCAB).all()), "random tokens must be non-special"
    # random replacements are spread over the whole non-special vocabulary
    assert replacements.unique().numel() > 0.9 * (VOCAB - 5)


def test_masking_is_determined_by_the_generator() -> None:
    ids = token_grid(64, 128)
    m = masker()
    state = torch.get_rng_state()
    a = m(ids, torch.Generator().manual_seed(7))
    b = m(ids, torch.Generator().manual_seed(7))
    c = m(ids, torch.Generator().manual_seed(8))
    assert torch.equal(state, torch.get_rng_state()), "the global RNG must not be touched"
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(ids, token_grid(64, 128)), "the input must not be modified"


def test_every_row_with_real_tokens_gets_a_target() -> None:
    ids = torch.full((4, 10), PAD)
    ids[1, 3] = 17
    ids[2, :] = torch.arange(10, 20)
    ids[3, 5:] = torch.arange(30, 35)
    _, labels = masker(mask_prob=0.0)(ids, torch.Generator().manual_seed(0))
    per_row = (labels != IGNORE_INDEX).sum(dim=1).tolist()
    assert per_row == [0, 1, 1, 1]  # the all-PAD row gets none
    assert labels[1, 3] == 17
    assert bool((labels[3, :5] == IGNORE_INDEX).all())
    low = masker(mask_prob=0.001)(token_grid(200, 32), torch.Generator().manual_seed(1))[1]
    assert bool(((low != IGNORE_INDEX).sum(dim=1) >= 1).all())


def test_mask_all_and_ratio_extremes() -> None:
    ids = token_grid(8, 50)
    masked, labels = masker(mask_prob=1.0, mask_token_ratio=1.0, random_token_ratio=0.0)(
        ids, torch.Generator().manual_seed(0)
    )
    real = (ids != PAD) & (ids != UNK)
    assert bool((masked[real] == MASK).all())
    assert torch.equal(labels[real], ids[real])
    masked, _ = masker(mask_prob=1.0, mask_token_ratio=0.0, random_token_ratio=0.0)(
        ids, torch.Generator().manual_seed(0)
    )
    assert torch.equal(masked, ids)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mask_prob": 1.5}, r"mask_prob must lie in \[0, 1\]"),
        ({"mask_prob": -0.1}, r"mask_prob must lie in \[0, 1\]"),
        ({"mask_token_ratio": 0.95}, "mask_token_ratio \\+ random_token_ratio must be <= 1"),
        ({"random_token_ratio": float("nan")}, "random_token_ratio must lie in"),
        ({"mask_id": 7}, "mask_id 7 must be one of special_ids"),
        ({"mask_id": VOCAB}, r"mask_id must be an integer in \[0, 1000\)"),
        ({"special_ids": frozenset({4, 1000})}, r"special id must be an integer in \[0, 1000\)"),
        ({"vocab_size": 5}, "leaves no non-special token"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer"),
    ],
)
def test_masker_validation(kwargs: dict, match: str) -> None:
    args = {"vocab_size": VOCAB, "mask_id": MASK, "special_ids": SPECIALS, **kwargs}
    with pytest.raises(PlpruneError, match=match):
        MlmMasker(**args)


def test_masker_rejects_bad_input() -> None:
    m, g = masker(), torch.Generator().manual_seed(0)
    with pytest.raises(PlpruneError, match=r"2-D torch\.long"):
        m(torch.arange(10), g)
    with pytest.raises(PlpruneError, match=r"2-D torch\.long"):
        m(torch.zeros(2, 3), g)
    with pytest.raises(PlpruneError, match=r"input_ids must lie in \[0, 1000\)"):
        m(torch.tensor([[5, 1000]]), g)


def test_masker_from_tokenizer() -> None:
    tok = WordTokenizer.build("a b c d e f")
    m = MlmMasker.from_tokenizer(tok, mask_prob=0.5)
    assert (m.vocab_size, m.mask_id, m.special_ids, m.mask_prob) == (11, 4, frozenset(range(5)), 0.5)


# --- prepare_mlm_data / fixed_masked_batches ---------------------------------------------------


def write_corpus(root: Path, n_train: int, n_test: int) -> Path:
    words = [f"w{i % 13}" for i in range(n_train)]
    words[3] = "<unk>"
    train = " = Heading = \n" + " ".join(words[3:]) + " \n"  # 3 heading tokens + n_train - 3 words
    test = " ".join(f"w{i % 7}" for i in range(n_test)) + "\n"
    (root / "valid.txt").write_text(train, encoding="utf-8")
    (root / "test.txt").write_text(test, encoding="utf-8")
    return root


def test_prepare_mlm_data(tmp_path: Path) -> None:
    corpus = read_wikitext_dir(write_corpus(tmp_path, n_train=50, n_test=30))
    tok = WordTokenizer.build(corpus.train)
    data = prepare_mlm_data(corpus, tok, seq_len=8)
    assert isinstance(data, MlmData)
    assert data.train_blocks.shape == (6, 8) and data.test_blocks.shape == (3, 8)
    assert data.train_blocks.flatten().tolist() == tok.encode(corpus.train)[:48]
    assert data.test_blocks.flatten().tolist() == tok.encode(corpus.test)[:24]
    assert tok.unk_id in data.train_blocks[0].tolist()
    assert data.tokenizer is tok and data.source == corpus.source


def test_prepare_mlm_data_names_the_small_split(tmp_path: Path) -> None:
    corpus = read_wikitext_dir(write_corpus(tmp_path, n_train=50, n_test=30))
    tok = WordTokenizer.build(corpus.train)
    with pytest.raises(
        DataError, match=r"the test split .* has 30 tokens, fewer than one block of seq_len=40"
    ):
        prepare_mlm_data(corpus, tok, seq_len=40)
    with pytest.raises(DataError, match=r"the train split .* has 50 tokens"):
        prepare_mlm_data(corpus, tok, seq_len=64)


def test_fixed_masked_batches_are_repeatable() -> None:
    blocks = token_grid(10, 16)
    m = masker()
    state = torch.get_rng_state()
    first = fixed_masked_batches(blocks, m, batch_size=4, seed=3)
    again = fixed_masked_batches(blocks, m, batch_size=4, seed=3)
    other = fixed_masked_batches(blocks, m, batch_size=4, seed=4)
    assert torch.equal(state, torch.get_rng_state())
    assert [x.shape[0] for x, _ in first] == [4, 4, 2]
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not all(torch.equal(y1, y2) for (_, y1), (_, y2) in zip(first, other, strict=True))
    labels = torch.cat([y for _, y in first])
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], blocks[selected])


def test_fixed_masked_batches_max_blocks() -> None:
    blocks = token_grid(10, 16)
    batches = fixed_masked_batches(blocks, masker(), batch_size=4, seed=0, max_blocks=5)
    assert [x.shape[0] for x, _ in batches] == [4, 1]
    labels = torch.cat([y for _, y in batches])
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], blocks[:5][selected])
    with pytest.raises(PlpruneError, match="max_blocks must be a positive integer"):
        fixed_masked_batches(blocks, masker(), batch_size=4, seed=0, max_blocks=0)
    with pytest.raises(PlpruneError, match="batch_size must be a positive integer"):
        fixed_masked_batches(blocks, masker(), batch_size=0, seed=0)
    with pytest.raises(PlpruneError, match="blocks must be a 2-D tensor"):
        fixed_masked_batches(blocks.flatten(), masker(), batch_size=4, seed=0)
