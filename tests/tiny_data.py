"""A tiny WikiText-shaped text directory shared by the fixtures that train on generated text."""

from __future__ import annotations

from pathlib import Path

import torch

SENTENCES = (
    "the cat sat on the mat and looked at the dog .",
    "a dog ran to the park with a red ball .",
    "= heading = it was a sunny day in the town of <unk> .",
    "the old man read a book by the warm fire .",
    "she wrote a letter to her friend in the city .",
)


def write_tiny_wikitext(directory: Path) -> Path:
    """Write ``valid.txt`` (120 lines) and ``test.txt`` (40 lines) of seeded sentence triples into
    ``directory`` (created); enough text for a few blocks of length 16."""
    rng = torch.Generator().manual_seed(1)

    def text(n_lines: int) -> str:
        picks = torch.randint(len(SENTENCES), (n_lines, 3), generator=rng).tolist()
        return "".join(" " + " ".join(SENTENCES[i] for i in row) + " \n" for row in picks)

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "valid.txt").write_text(text(120))
    (directory / "test.txt").write_text(text(40))
    return directory


def bump_sequences(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Length-16 noisy sequences with a 3-step bump somewhere: upward for class 1, downward for class 0
    (the early-exit and dynamic-inference tests' classification data)."""
    gen = torch.Generator().manual_seed(11)
    y = torch.arange(n) % 2
    x = 0.3 * torch.randn(n, 1, 16, generator=gen)
    for i in range(n):
        start = int(torch.randint(0, 14, (1,), generator=gen))
        x[i, 0, start : start + 3] += 2.0 if int(y[i]) else -2.0
    return x, y
