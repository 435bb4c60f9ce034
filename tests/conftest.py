"""Shared fixtures: deterministic torch, tiny configs, paths to the shared data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny_data import write_tiny_wikitext

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
    return write_tiny_wikitext(tmp_path / "wikitext")
