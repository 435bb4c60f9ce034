"""Shared fixtures: deterministic torch, tiny configs, paths to the shared data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_WIKITEXT = REPO_ROOT.parent / "shared" / "data" / "wikitext-2"


# Tests use tiny models: one thread avoids OpenMP over-subscription when other jobs share the cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture
def tiny_wikitext_dir(tmp_path: Path) -> Path:
    """A WikiText-shaped directory with enough text for a few blocks of length 16."""
    sentences = [
        "the cat sat on the mat and looked at the dog .",
        "a dog ran to the park with a red ball .",
        "= heading = it was a sunny day in the town of <unk> .",
        "the old man read a book by the warm fire .",
        "she wrote a letter to her friend in the city .",
    ]
    rng = torch.Generator().manual_seed(1)

    def text(n_lines: int) -> str:
        picks = torch.randint(len(sentences), (n_lines, 3), generator=rng).tolist()
        return "".join(" " + " ".join(sentences[i] for i in row) + " \n" for row in picks)

    directory = tmp_path / "wikitext"
    directory.mkdir()
    (directory / "valid.txt").write_text(text(120))
    (directory / "test.txt").write_text(text(40))
    return directory
