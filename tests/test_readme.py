"""The README's own-loop examples (and docs/byom.md's CNN example) run as they stand and do what they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_block(marker: str, path: Path = README) -> str:
    """The first ```python block after the HTML comment ``marker`` in ``path`` (default: the README)."""
    text = path.read_text(encoding="utf-8")
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


def test_gqa_example_prunes_heads_and_neurons_and_reloads_without_plprune(capsys) -> None:
    pytest.importorskip("transformers")
    namespace: dict = {}
    exec(compile(readme_block("gqa-example"), "README.md", "exec"), namespace)
    model = namespace["model"]
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 2
    assert model.config.intermediate_size == 64
    for layer in model.model.layers:
        assert layer.self_attn.q_proj.out_features == 4 * 8 and layer.self_attn.k_proj.out_features == 2 * 8
        assert layer.mlp.up_proj.out_features == 64
    assert capsys.readouterr().out.strip() == "True"


def test_own_cnn_example_prunes_coupled_residual_channels_together_and_keeps_them_zero(capsys) -> None:
    namespace: dict = {}
    exec(compile(readme_block("own-cnn-example", ROOT / "docs" / "byom.md"), "README.md", "exec"), namespace)
    pruner, model = namespace["pruner"], namespace["model"]
    sites = {site.module_name: site for site in pruner.groups.sites}
    assert len(sites) == 2 and pruner.events_done == 3
    coupled = next(site for site in sites.values() if len(site.members) == 2)
    assert {m.conv_name for m in coupled.members} == {"stem.0", "conv2"}  # the residual ties them
    assert pruner.pruned_ratio("filter") == 0.5
    params = dict(model.named_parameters())
    for index in (~pruner.mask).nonzero().flatten().tolist():  # 40 AdamW steps after the last event
        for piece in pruner.groups.groups[index].slices:
            assert torch.count_nonzero(piece.select(params[piece.param_name])) == 0
    # a pruned residual channel is exactly zero on both paths of the sum, so in the block's output too
    start = sum(site.num_groups for site in pruner.groups.sites[: pruner.groups.sites.index(coupled)])
    pruned = (~pruner.mask[start : start + coupled.num_groups]).nonzero().flatten()
    assert len(pruned) == 8
    outputs = {}
    hooks = [
        module.register_forward_hook(lambda m, a, out, key=key: outputs.__setitem__(key, out))
        for key, module in (("stem", model.stem), ("bn2", model.bn2))
    ]
    with torch.no_grad():
        model.eval()(namespace["images"][:4])
    for hook in hooks:
        hook.remove()
    for key in ("stem", "bn2"):
        assert torch.count_nonzero(outputs[key][:, pruned]) == 0, key
        assert torch.count_nonzero(outputs[key]) > 0, key
    assert "0.5" in capsys.readouterr().out
