"""Block influence: ShortGPT's layer-removal criterion (Men et al., "ShortGPT: Layers in Large Language Models
are More Redundant Than You Expect", 2024, Sec. 3.2), for the ``"layer"`` kind.

A block that barely turns its input hidden state is redundant. ShortGPT scores block i by

    BI_i = 1 − E_{X, t} [ x_{i,t} · x_{i+1,t} / (‖x_{i,t}‖ ‖x_{i+1,t}‖) ],

x_{i,t} the hidden state of token t entering block i and x_{i+1,t} the one leaving it, the expectation over
every token of the calibration sequences, and removes the blocks of lowest BI. Here: the hidden states are
read by forward hooks on the blocks (:class:`~plprune.sites.layers.LayerSite`) while the task's loss is
computed on ``score_batches`` training batches (eval mode, no gradients); the mean is over every token
position of every batch (padding included: the score sees no attention mask), accumulated in float64. The
score is BI itself (higher = keep), ranked with one TopK over all blocks (``allocation="global"``). A block
already removed is the identity (BI = 0) and stays removed. Adaptation: ShortGPT removes the lowest-BI
blocks in one shot from BI measured once; an iterative schedule here re-measures BI on the pruned model at
every event (the blocks after a removed one see its input).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.pruners.base import GroupScorer, PruneContext
from plprune.pruners.registration import register_method
from plprune.pruners.structured import ScoreBatchesConfig, scoring_mode
from plprune.sites.layers import LayerSite, block_hidden_states
from plprune.validation import check_positive_int


class _CosineSums:
    """Per block: the sum of cos(x_in, x_out) over tokens, and the number of tokens."""

    def __init__(self, size: int) -> None:
        self.sums = torch.zeros(size, dtype=torch.float64)
        self.tokens = torch.zeros(size, dtype=torch.float64)

    def hook(self, position: int, where: str) -> Any:
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x, y = block_hidden_states(args, kwargs, output, where)
            cosine = torch.nn.functional.cosine_similarity(x.detach().double(), y.detach().double(), dim=-1)
            self.sums[position] += float(cosine.sum())
            self.tokens[position] += cosine.numel()

        return record


def block_influence(
    model: nn.Module, sites: list[LayerSite], forward: Any, batches: list[Any]
) -> Tensor:
    """``BI_i = 1 − mean over tokens of cos(x_i, x_{i+1})`` for every block of ``sites`` (in site order),
    from running ``forward(model, batch)`` on each batch; float64."""
    sizes = [site.num_groups for site in sites]
    stats = _CosineSums(sum(sizes))
    handles = []
    position = 0
    for site in sites:
        for i, block in enumerate(site.module):
            hook = stats.hook(position, site.block_name(i))
            handles.append(block.register_forward_hook(hook, with_kwargs=True))
            position += 1
    try:
        with scoring_mode(model), torch.no_grad():
            for batch in batches:
                forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    if bool((stats.tokens == 0).any()):
        missing = int((stats.tokens == 0).nonzero()[0])
        raise PlpruneError(
            f"block influence: block {missing} never ran on the scoring batches (is it used by the forward?)"
        )
    return 1.0 - stats.sums / stats.tokens


@register_method(
    "block-influence",
    description="ShortGPT block influence (Men et al. 2024): 1 - mean cos(block input, block output); layers",
    kinds=("layer",),
    config=ScoreBatchesConfig,
)
class BlockInfluenceScorer(GroupScorer):
    """``BI_i = 1 − E_t cos(x_i, x_{i+1})`` per block on ``batches`` training batches (module docstring)."""

    name = "block-influence"
    kinds = ("layer",)

    def __init__(self, batches: int = 4) -> None:
        self.batches = check_positive_int("block-influence batches", batches)

    @classmethod
    def from_config(cls, settings: ScoreBatchesConfig, info: object) -> BlockInfluenceScorer:
        return cls(batches=settings.score_batches)

    def scores(self, context: PruneContext) -> Tensor:
        groups = context.groups
        others = [k for k in groups.kinds if k != "layer"]
        if others:
            raise PlpruneError(
                f"block-influence scores whole layers only, but the groups include {'/'.join(others)}; "
                "prune those with another criterion (e.g. a second Pruner), or use kinds=('layer',)"
            )
        sites = [site for site, _, _ in groups.site_ranges()]
        if not all(isinstance(site, LayerSite) for site in sites):
            raise PlpruneError("block-influence needs the layer sites of plprune.sites.layers")
        batches = [context.task.train_batch(context.step + b) for b in range(self.batches)]
        scores = block_influence(context.model, sites, context.task.loss, batches)
        scores[~groups.mask] = 0.0
        context.log.update(score_batches=self.batches, block_influence=scores.tolist())
        return scores
