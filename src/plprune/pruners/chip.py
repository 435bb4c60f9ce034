"""CHIP: CHannel Independence-based Pruning (Sui et al., NeurIPS 2021).

A filter whose feature map is (nearly) a linear combination of the other feature maps of its layer adds
little: removing it barely lowers the rank of the layer's output. CHIP measures this with the nuclear norm.
For one input sample, let A ∈ R^{C × (spatial)} be the layer's C feature maps, each flattened to a row, and
M_c ⊙ A the same matrix with row c zeroed. The **channel independence** of channel c (paper Sec. 3, the CI
definition via the change of nuclear norm, Eq. 3) is

    CI_c = ‖A‖_* − ‖M_c ⊙ A‖_*          (≥ 0: zeroing a row never raises the nuclear norm),

averaged over the input samples, as the official code does (mean over each batch's samples and over the
repeated batches; the paper reports CI is insensitive to which input batches are used). Channels of low CI
are pruned first; CI is compared **within a layer** only (``allocation = "per_layer"``: the same fraction
from every layer, as in the paper, whose per-layer ratios are set by hand).

Feature maps here: the output of each filter site's ``feature_module`` (:class:`~plprune.sites.FilterSite`),
captured by forward hooks while ``batches`` training batches (their first ``samples`` samples) run through
the model in eval mode. For a conv wrapped alone in a block (plprune's
:class:`~plprune.models.filters.GatedConvBN`, a ``Sequential(conv, bn, relu)``) that is the block's output,
after conv → BN → gate → ReLU (the post-activation maps the official code hooks); for other convs it is
the gated output of the conv's BN, *before* the activation (a functional ReLU has no module to hook), and
for convs coupled by residual additions it is the first coupled conv's gated BN output. Already
pruned channels (all-zero rows) score 0. Departures from the official code (github.com/Eclipsess/
CHIP_NeurIPS2021, which also hooks the post-ReLU maps in eval mode): it uses 5 batches of 128 samples and
rounds the maps to 4 decimals before the SVDs; the defaults here are 1 batch of 32 samples (raise
``batches``/``samples`` for the paper's setting), and the maps are used as they are, in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError, TrainingDivergedError
from plprune.pruners.base import GroupScorer, PruneContext
from plprune.pruners.fpgm import filter_site_ranges
from plprune.pruners.registration import register_method
from plprune.pruners.structured import ScoreBatchesConfig
from plprune.validation import check_positive_int

__all__ = ["CHIPScorer", "channel_independence"]

# rows zeroed per batched SVD call: bounds the (chunk, C, spatial) float64 copy of A
_CHUNK_ELEMENTS = 1 << 22


def channel_independence(maps: Tensor) -> Tensor:
    """``(C,)`` float64: CI_c = ‖A‖_* − ‖A with row c zeroed‖_* for one sample's maps A = ``maps``
    reshaped to ``(C, -1)`` (Sui et al. 2021, Eq. 3).

    With more positions than channels (S > C), A is first reduced exactly to the C × C matrix Rᵀ of the
    QR factorisation Aᵀ = Q R: A = Rᵀ Qᵀ with orthonormal columns of Q, so A and Rᵀ have the same singular
    values, and so do A and Rᵀ with the same row zeroed (row c of A is row c of Rᵀ times Qᵀ). This cuts
    the C singular-value decompositions from C × S to C × C matrices.
    """
    a = maps.reshape(maps.shape[0], -1).double()
    channels = a.shape[0]
    if a.shape[1] > channels:
        a = torch.linalg.qr(a.T, mode="r").R.T
    full = torch.linalg.svdvals(a).sum()
    ci = torch.empty(channels, dtype=torch.float64)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, a.numel()))
    for start in range(0, channels, chunk):
        rows = torch.arange(start, min(channels, start + chunk))
        masked = a.unsqueeze(0).repeat(len(rows), 1, 1)
        masked[torch.arange(len(rows), device=a.device), rows.to(a.device)] = 0.0
        ci[rows] = (full - torch.linalg.svdvals(masked).sum(dim=1)).cpu()
    return ci


@register_method(
    "chip",
    description="CHIP: channel independence of feature maps (filters)",
    kinds=("filter",),
    config=ScoreBatchesConfig,
)
class CHIPScorer(GroupScorer):
    """Channel independence (nuclear-norm drop when a feature map is zeroed), averaged over the first
    ``samples`` samples of ``batches`` training batches (Sui et al. 2021, Eq. 3); per-layer allocation."""

    name = "chip"
    allocation = "per_layer"

    def __init__(self, batches: int = 1, samples: int = 32) -> None:
        self.batches = check_positive_int("CHIP batches", batches)
        self.samples = check_positive_int("CHIP samples", samples)

    @torch.no_grad()
    @classmethod
    def from_config(cls, settings: ScoreBatchesConfig, info: object) -> CHIPScorer:
        return cls(batches=settings.score_batches)

    def scores(self, context: PruneContext) -> Tensor:
        groups = context.groups
        ranges = filter_site_ranges(groups, "CHIP")
        model = context.model
        captured: dict[int, Tensor] = {}

        def hook_for(index: int, channels: int) -> Callable[[nn.Module, Any, Tensor], None]:
            def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
                if not isinstance(output, Tensor) or output.dim() < 3 or output.shape[1] != channels:
                    shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                    raise PlpruneError(
                        f"CHIP expects each filter site to output feature maps (N, {channels}, *spatial), "
                        f"got {shape}"
                    )
                captured[index] = output.detach()

            return hook

        totals = torch.zeros(len(groups), dtype=torch.float64)
        count = 0
        was_training = model.training
        handles = [
            getattr(site, "feature_module", site.module).register_forward_hook(hook_for(i, stop - start))
            for i, (site, start, stop) in enumerate(ranges)
        ]
        model.eval()
        try:
            for b in range(self.batches):
                batch = context.task.train_batch(context.step + b)
                batch = tuple(t[: self.samples] for t in batch)
                captured.clear()
                context.task.loss(model, batch)
                missing = [ranges[i][0].module_name for i in range(len(ranges)) if i not in captured]
                if missing:
                    raise PlpruneError(f"CHIP: the forward pass did not reach the filter sites {missing}")
                n = captured[0].shape[0]
                for i, (_, start, stop) in enumerate(ranges):
                    maps = captured[i]
                    if not bool(torch.isfinite(maps).all()):
                        raise TrainingDivergedError("CHIP: the feature maps contain NaN or Inf")
                    for sample in range(maps.shape[0]):
                        totals[start:stop] += channel_independence(maps[sample])
                count += n
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        scores = totals / max(count, 1)
        scores[~groups.mask] = 0.0
        context.log["chip_samples"] = count
        return scores
