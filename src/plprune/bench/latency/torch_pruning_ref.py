"""The Torch-Pruning reference for conv filters: the same filter indices removed by Torch-Pruning itself.

``tp.DependencyGraph().build_dependency(copy of the dense model)``, then for each plprune filter site
``get_pruning_group(first conv, tp.prune_conv_out_channels, pruned indices).prune()`` (Fang et al., 2023,
"DepGraph: Towards Any Structural Pruning"): what plprune's compacted model is compared with.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["torch_pruning_copy"]


class _TpBatchNormPruner:
    """Torch-Pruning pruning function for plprune's BatchNorm (channel-wise, in = out), which tp's own
    ``BatchnormPruner`` does not recognise (it checks for torch's ``_BatchNorm``)."""

    @staticmethod
    def build() -> Any:
        from torch_pruning.pruner.function import BasePruningFunc

        from plprune.models.layers import BatchNorm

        class BatchNormPruner(BasePruningFunc):
            TARGET_MODULES = BatchNorm

            def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
                keep = torch.tensor(sorted(set(range(layer.num_features)) - set(idxs)), dtype=torch.long)
                layer.num_features = len(keep)
                for name in ("weight", "bias"):
                    param = getattr(layer, name, None)
                    if param is not None:
                        setattr(layer, name, nn.Parameter(param.data.index_select(0, keep)))
                for name in ("running_mean", "running_var"):
                    buffer = getattr(layer, name, None)
                    if buffer is not None:
                        layer._buffers[name] = buffer.index_select(0, keep)
                return layer

            prune_in_channels = prune_out_channels

            def get_out_channels(self, layer: nn.Module) -> int:
                return int(layer.num_features)

            get_in_channels = get_out_channels

        return BatchNormPruner()


def torch_pruning_copy(dense: nn.Module, groups: Any, mask: Tensor, example: Tensor) -> nn.Module:
    """A copy of ``dense`` with the pruned filters of ``mask`` removed by Torch-Pruning itself: for each
    filter site, ``get_pruning_group(first conv, prune_conv_out_channels, pruned indices).prune()``."""
    import torch_pruning as tp

    from plprune.models.layers import BatchNorm

    model = copy.deepcopy(dense).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example, customized_pruners={BatchNorm: _TpBatchNormPruner.build()}
        )
        for site, start, stop in groups.site_ranges():
            pruned = (~mask[start:stop]).nonzero().flatten().tolist()
            if pruned:
                conv = model.get_submodule(site.members[0].conv_name)
                graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=pruned).prune()
    return model.eval()
