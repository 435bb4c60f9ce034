"""Compacting whole layers: the removed blocks leave their ``nn.ModuleList``, the survivors are renumbered.

For a block list that keeps blocks K (in order): the list keeps its children K (``KeepChildren``); every
module of surviving block j whose ``layer_idx`` (Hugging Face's index into the key/value cache, the attention
module's and sometimes the block's own) equals its old number K[j] gets ``layer_idx = j``, so generation with
a cache fills the compacted model's j-th cache layer; the Hugging Face config of the model that owns the
list gets the new layer count and its per-layer lists (``layer_types``, ``mlp_layer_types``, ...) keep the
entries K (:func:`plprune.compaction.hf_config.drop_config_layers`); a plprune model's own config
(``num_layers``) follows too. A removed block was the identity in the masked model (its hook returned its
input), so the compacted model computes the same function.

Refused, with the reason: removing a block that computes something the other blocks read (T5's first block
holds the relative-position bias every later block reuses), and block lists whose attention scales by the
inverse layer index (GPT-2's ``scale_attn_by_inverse_layer_idx``: renumbering would change the surviving
blocks' scaling). The heads and neurons of a removed block need no plan (:func:`plprune.compaction.core.plan`
skips the sites inside removed modules); this planner's edits run after every other, since they renumber.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from plprune.compaction.core import register_planner
from plprune.compaction.hf_config import drop_config_layers
from plprune.compaction.ops import CallOnModule, KeepChildren, Op
from plprune.errors import PlpruneError
from plprune.sites.layers import LayerSite

#: attributes a plprune model's own config may keep of its block count (set when equal to the old count)
OWN_COUNT_ATTRIBUTES = ("num_layers", "num_hidden_layers", "n_layer")


def _check_removable(site: LayerSite, removed: list[int]) -> None:
    for i in removed:
        for name, module in site.module[i].named_modules():
            if getattr(module, "has_relative_attention_bias", False) is True:
                raise PlpruneError(
                    f"cannot compact away block {site.block_name(i)}: its {name or 'block'} computes the "
                    "relative-position bias that every later block of the list reuses (T5); keep the first "
                    "block (the masked model computes the same function)"
                )
    for name, module in site.module.named_modules():
        if getattr(module, "scale_attn_by_inverse_layer_idx", False) is True:
            raise PlpruneError(
                f"cannot compact layers of {site.module_name}: {name} scales its attention by "
                "1/(layer_idx + 1) (scale_attn_by_inverse_layer_idx), so renumbering the surviving blocks "
                "would change them; keep the model masked"
            )


def renumber_layers(blocks: nn.Module, kept: tuple[int, ...]) -> None:
    """Surviving block j (old number ``kept[j]``): every ``layer_idx`` equal to ``kept[j]`` becomes ``j``."""
    for j, block in enumerate(blocks):
        for module in block.modules():
            value = getattr(module, "layer_idx", None)
            if isinstance(value, int) and not isinstance(value, bool) and value == kept[j]:
                module.layer_idx = j


def _set_own_counts(model: nn.Module, argument: tuple[str, int, int]) -> None:
    """A plprune model's own config on the path to the list (not a Hugging Face one): its block count."""
    path, before, after = argument
    parts = path.split(".") if path else []
    for depth in range(len(parts)):
        owner = model.get_submodule(".".join(parts[:depth]))
        config = getattr(owner, "config", None)
        if config is None or (callable(getattr(config, "to_dict", None)) and hasattr(config, "model_type")):
            continue
        for attr in OWN_COUNT_ATTRIBUTES:
            value = getattr(config, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value == before:
                setattr(config, attr, after)


@register_planner(LayerSite)
def plan_layers(site: LayerSite, keep: Tensor, model: nn.Module, example_inputs: Any = None) -> list[Op]:
    kept = tuple(keep.nonzero().flatten().tolist())
    removed = [i for i in range(site.num_groups) if i not in kept]
    _check_removable(site, removed)
    ops: list[Op] = [
        KeepChildren(site.module_name, kept),
        CallOnModule(site.module_name, renumber_layers, kept),
        CallOnModule("", _set_own_counts, (site.module_name, site.num_groups, len(kept))),
    ]
    ops.append(CallOnModule("", drop_config_layers, (site.module_name, kept, site.num_groups)))
    return ops
