"""The README's own-loop example runs as it stands, and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    """The first ```python block after the HTML comment ``marker`` in the README."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"<!-- {marker}")
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block after {marker}"
    return match.group(1)


def test_own_loop_example_prunes_three_quarters_of_the_heads_and_keeps_them_zero(capsys) -> None:
    pytest.importorskip("transformers")
    namespace: dict = {}
    exec(compile(readme_block("own-loop-example"), "README.md", "exec"), namespace)
    pruner, model = namespace["pruner"], namespace["model"]
    assert pruner.events_done == 1 and pruner.pruned_ratio("head") == 0.75
    assert pruner.mask.view(2, 4).any(dim=1).all()  # every layer keeps a head
    params = dict(model.named_parameters())
    for index in (~pruner.mask).nonzero().flatten().tolist():
        for piece in pruner.groups.groups[index].slices:  # 50 AdamW steps after the event
            assert torch.count_nonzero(piece.select(params[piece.param_name])) == 0
    assert "tensor(" in capsys.readouterr().out
