"""Replaced-word detection on WikiText-2: a binary text-classification task built from a word stream.

Each example is ``[CLS]`` followed by a ``window``-token slice of the text. Label 1: the original text;
label 0: the window is corrupted, either with ``corrupt_min..corrupt_max`` words (distinct positions)
replaced by other, uniformly random vocabulary words (``corruption="replace"``), or with one span of
``corrupt_min..corrupt_max`` consecutive tokens permuted (``corruption="shuffle"``). The difficulty varies
with the number of words replaced, which is returned with every window (0 for original windows).

:func:`build_replaced_word_task` reads WikiText-2 (``valid.txt`` for training, ``test.txt`` for test, the
project's convention as the train split is not available), builds a word vocabulary on the training text,
and fixes ``test_windows`` non-overlapping test windows with balanced labels; :func:`training_batch` draws
windows at random positions of the training stream with fresh labels and corruptions. Every random choice
goes through an explicit ``torch.Generator``, so the task is reproducible from the generators' seeds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from plprune.data.corpus import read_wikitext_dir
from plprune.data.tokenizer import SPECIAL_TOKENS, WordTokenizer
from plprune.errors import DataError
from plprune.validation import check_choice, check_positive_int

__all__ = [
    "CORRUPTIONS",
    "ReplacedWordTask",
    "WindowSpec",
    "build_replaced_word_task",
    "make_windows",
    "replace_tokens",
    "shuffle_span",
    "training_batch",
]

CLS_ID = SPECIAL_TOKENS.index("[CLS]")
FIRST_WORD_ID = len(SPECIAL_TOKENS)  # ids below are the special tokens
CORRUPTIONS = ("replace", "shuffle")


@dataclass(frozen=True)
class WindowSpec:
    """How examples are cut and corrupted: ``window`` tokens after ``[CLS]``; label-0 windows get
    ``corrupt_min..corrupt_max`` replaced words (``"replace"``) or one permuted span of that length
    (``"shuffle"``)."""

    window: int = 32
    corruption: str = "replace"
    corrupt_min: int = 1
    corrupt_max: int = 8

    def __post_init__(self) -> None:
        check_positive_int("window", self.window)
        check_choice("corruption", self.corruption, CORRUPTIONS)
        check_positive_int("corrupt_min", self.corrupt_min)
        check_positive_int("corrupt_max", self.corrupt_max)
        if not self.corrupt_min <= self.corrupt_max <= self.window:
            raise DataError(
                "corrupt_min <= corrupt_max <= window is needed, got "
                f"{self.corrupt_min}, {self.corrupt_max}, {self.window}"
            )
        if self.corruption == "shuffle" and self.corrupt_max < 2:
            raise DataError(f"a shuffled span needs corrupt_max >= 2 tokens, got {self.corrupt_max}")


def shuffle_span(
    window: Tensor, gen: torch.Generator, span_min: int, span_max: int
) -> tuple[Tensor | None, int]:
    """A copy of ``window`` with one span of ``span_min..span_max`` tokens permuted, and the span length;
    ``(None, 0)`` if 20 draws all left the window unchanged (e.g. a span of equal tokens)."""
    for _ in range(20):
        span = int(torch.randint(span_min, span_max + 1, (1,), generator=gen))
        start = int(torch.randint(0, window.numel() - span + 1, (1,), generator=gen))
        out = window.clone()
        out[start : start + span] = window[start : start + span][torch.randperm(span, generator=gen)]
        if not torch.equal(out, window):
            return out, span
    return None, 0


def replace_tokens(
    window: Tensor, gen: torch.Generator, k_min: int, k_max: int, vocab_size: int
) -> tuple[Tensor, int]:
    """A copy of ``window`` with ``k`` (``k_min..k_max``) distinct positions replaced by other words, and
    ``k``. The new id is uniform over the real words (ids ``>= FIRST_WORD_ID``) other than the old one:
    a shift by ``1..W-1`` modulo the ``W`` word ids never maps a word to itself (a special token at the
    position is treated as the first word)."""
    words = vocab_size - FIRST_WORD_ID
    if words < 2:
        raise DataError(f"replacing words needs at least 2 real words in the vocabulary, got {words}")
    k = int(torch.randint(k_min, k_max + 1, (1,), generator=gen))
    positions = torch.randperm(window.numel(), generator=gen)[:k]
    out = window.clone()
    offset = torch.randint(1, words, (k,), generator=gen)
    out[positions] = (
        window[positions].clamp_min(FIRST_WORD_ID) - FIRST_WORD_ID + offset
    ) % words + FIRST_WORD_ID
    return out, k


def make_windows(
    stream: Tensor, starts: Tensor, labels: Tensor, spec: WindowSpec, gen: torch.Generator, vocab_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``([CLS] + window ids (N, 1 + window), labels (N,), corruption sizes (N,))`` for the windows of
    ``stream`` at ``starts``; those with label 0 are corrupted as ``spec`` says (a shuffle that cannot change
    its window drops that window, so ``N`` may be below ``len(starts)``)."""
    rows, kept, sizes = [], [], []
    for start, label in zip(starts.tolist(), labels.tolist(), strict=True):
        window, size = stream[start : start + spec.window], 0
        if window.numel() != spec.window:
            raise DataError(f"a window at {start} runs past the stream's end ({stream.numel()} tokens)")
        if label == 0 and spec.corruption == "shuffle":
            window, size = shuffle_span(window, gen, spec.corrupt_min, spec.corrupt_max)
            if window is None:
                continue
        elif label == 0:
            window, size = replace_tokens(window, gen, spec.corrupt_min, spec.corrupt_max, vocab_size)
        rows.append(torch.cat([torch.tensor([CLS_ID]), window]))
        kept.append(label)
        sizes.append(size)
    if not rows:
        raise DataError("no window could be made (every shuffle left its window unchanged)")
    return torch.stack(rows), torch.tensor(kept), torch.tensor(sizes)


@dataclass
class ReplacedWordTask:
    """The task's data: the tokenizer, the training stream, and the fixed test windows."""

    spec: WindowSpec
    source: str
    tokenizer: WordTokenizer
    train_stream: Tensor
    test_ids: Tensor  # (N, 1 + window) int64
    test_y: Tensor  # (N,) int64, 1 = original
    test_sizes: Tensor  # (N,) int64, corruption size (0 for original windows)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def build_replaced_word_task(
    data_dir: str | os.PathLike[str],
    spec: WindowSpec,
    test_windows: int,
    test_generator: torch.Generator,
    min_freq: int = 2,
    max_vocab: int | None = 2000,
) -> ReplacedWordTask:
    """Read WikiText-2 from ``data_dir`` (train ``valid.txt``, test ``test.txt``), build a word vocabulary
    on the training text (``min_freq``, at most ``max_vocab`` ids), and fix ``min(test_windows, available)``
    non-overlapping test windows with balanced labels (an alternating 1/0 column permuted by
    ``test_generator``, which then draws their corruptions)."""
    if not isinstance(spec, WindowSpec):
        raise DataError(f"spec must be a WindowSpec, got {type(spec).__name__}")
    check_positive_int("test_windows", test_windows)
    corpus = read_wikitext_dir(data_dir)
    tokenizer = WordTokenizer.build(corpus.train, min_freq=min_freq, max_size=max_vocab)
    train_stream = torch.tensor(tokenizer.encode(corpus.train))
    test_stream = torch.tensor(tokenizer.encode(corpus.test))
    if train_stream.numel() <= spec.window:
        raise DataError(f"the training text has {train_stream.numel()} tokens, not more than a window")
    n_test = min(test_windows, (test_stream.numel() - 1) // spec.window)
    if n_test < 1:
        raise DataError(f"the test text has {test_stream.numel()} tokens, fewer than a window")
    labels = torch.arange(n_test) % 2
    labels = labels[torch.randperm(n_test, generator=test_generator)]
    test_ids, test_y, test_sizes = make_windows(
        test_stream, torch.arange(n_test) * spec.window, labels, spec, test_generator, tokenizer.vocab_size
    )
    return ReplacedWordTask(spec, corpus.source, tokenizer, train_stream, test_ids, test_y, test_sizes)


def training_batch(task: ReplacedWordTask, batch_size: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch_size`` training windows at random positions of the training stream with random labels and
    fresh corruptions, all drawn from ``gen``: ``(ids (B, 1 + window), labels (B,))``."""
    check_positive_int("batch_size", batch_size)
    stream, window = task.train_stream, task.spec.window
    starts = torch.randint(0, stream.numel() - window, (batch_size,), generator=gen)
    labels = torch.randint(0, 2, (batch_size,), generator=gen)
    ids, y, _ = make_windows(stream, starts, labels, task.spec, gen, task.vocab_size)
    return ids, y
