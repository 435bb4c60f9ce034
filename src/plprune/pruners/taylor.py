"""First-order Taylor importance of LLM-Pruner (Ma, Fang & Wang, NeurIPS 2023, "LLM-Pruner: On the Structural
Pruning of Large Language Models"), **vector-wise**.

LLM-Pruner estimates the loss change of removing a weight structure W_k by its first-order Taylor term
(Sec. 3.2, Eq. 3, "vector-wise importance"),

    I(W_k) = |ΔL| ≈ |∂L/∂W_kᵀ W_k| = |Σ_{j ∈ W_k} w_j · ∂L/∂w_j| ,

and a group's importance by aggregating over its coupled structures ("summation", the default of the paper's
Eq. 5 and of its code): ``I(G) = Σ_k I(W_k)``. The gradient is that of the loss summed over the calibration
batches (LLM-Pruner back-propagates its calibration samples and reads the accumulated ``.grad``); here
``score_batches`` batches of the task, model in eval mode, ``torch.autograd.grad`` (no ``.grad`` written).

What a vector W_k is, as in LLM-Pruner's code (``--taylor vectorize``: ``(W ⊙ ∇W).sum(1).abs()`` per output
channel, ``.sum(0).abs()`` per input channel): **one index of a slice along its sliced dimension** — one
output row of an input projection (a head's Q/K/V rows one by one, a neuron's gate and up rows), one input
column of the output projection (the head's W_O columns one by one, the neuron's ``down_proj`` column). A
row's bias entry belongs to the row's vector (same projection, same output index; LLM-Pruner's Llama has no
biases); likewise a conv filter's kernel with its bias, and a norm layer's γ_c with its β_c. Other slices (a
stacked expert's tensors) are vectors of their own per sliced index. So, for group i with vectors V_i,

    S_i = Σ_{v ∈ V_i} |Σ_{j ∈ v} w_j · Σ_b ∂L_b/∂w_j| .

Variant chosen: vector-wise. LLM-Pruner's **element-wise** first-order variant (``param_first``,
``Σ_j |w_j ∂L/∂w_j|``, Eq. 4 without the Hessian term) is exactly structured SNIP, already registered as
``snip`` (:mod:`plprune.pruners.snip`), so it is not registered twice.

Allocation: **per layer**, as LLM-Pruner prunes by default (local pruning, the same ratio in every layer;
its layer-range options that leave the first and last blocks untouched have no equivalent here);
``Pruner(allocation="global")`` ranks across layers (the scores are loss changes, comparable across layers).
Kinds: heads, neurons, experts and filters (the score reads only a group's weights and their gradients).
Higher = keep; a pruned group (zero weights) scores 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from plprune.gates import GroupSet
from plprune.groups import ParamSlice
from plprune.pruners.base import GroupScorer, PruneContext
from plprune.pruners.registration import register_method
from plprune.pruners.structured import ScoreBatchesConfig, check_batches, scoring_mode, summed_gradients
from plprune.sites.projections import out_dim
from plprune.validation import check_positive_int

TAYLOR_KINDS = ("head", "neuron", "expert", "filter")


def _vector_key(model: nn.Module, piece: ParamSlice) -> tuple:
    """Slices with the same key form one vector per index: a module's ``weight`` sliced along its output
    dimension (dim 0; a Hugging Face ``Conv1D``'s dim 1) shares the key of its ``bias`` entries (a
    projection's row and its bias, a conv filter and its bias, a norm layer's γ_c and β_c); every other slice
    is keyed by itself."""
    module_name, _, attr = piece.param_name.rpartition(".")
    if attr in ("weight", "bias"):
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        if module is not None and (attr == "bias" or piece.dim == out_dim(module)):
            return (module_name, "out", piece.start, piece.stop)
    return (piece.param_name, piece.dim, piece.start, piece.stop)


def taylor_vector_scores(groups: GroupSet, gradients: dict[str, Tensor]) -> Tensor:
    """``(p,)`` float64: ``Σ_{v ∈ V_i} |Σ_{j ∈ v} w_j g_j|`` for every group i (module docstring), with
    ``gradients`` the loss gradient of every group parameter."""
    params = dict(groups.model.named_parameters())
    per_index: dict[tuple[str, int], Tensor] = {}  # Σ of w·g over everything but the sliced dimension
    for group in groups.groups:
        for piece in group.slices:
            key = (piece.param_name, piece.dim)
            if key not in per_index:
                product = params[piece.param_name].detach().double() * gradients[piece.param_name].double()
                others = [d for d in range(product.dim()) if d != piece.dim]
                per_index[key] = (product.sum(dim=others) if others else product).cpu()
    scores = torch.zeros(len(groups), dtype=torch.float64)
    for i, group in enumerate(groups.groups):
        vectors: dict[tuple, Tensor] = {}
        for piece in group.slices:
            values = per_index[(piece.param_name, piece.dim)][piece.start : piece.stop]
            key = _vector_key(groups.model, piece)
            vectors[key] = vectors[key] + values if key in vectors else values
        scores[i] = sum(float(v.abs().sum()) for v in vectors.values())
    return scores


@register_method(
    "taylor",
    description="LLM-Pruner's first-order Taylor importance, vector-wise: sum over vectors of |sum w*dL/dw|",
    kinds=TAYLOR_KINDS,
    config=ScoreBatchesConfig,
)
class TaylorScorer(GroupScorer):
    """LLM-Pruner's vector-wise first-order Taylor importance with summation over a group's vectors, the
    gradient summed over ``batches`` calibration batches (module docstring); per-layer allocation."""

    name = "taylor"
    kinds = TAYLOR_KINDS
    allocation = "per_layer"

    def __init__(self, batches: int = 4) -> None:
        self.batches = check_positive_int("Taylor calibration batches", batches)

    @classmethod
    def from_config(cls, settings: ScoreBatchesConfig, info: object) -> TaylorScorer:
        return cls(batches=settings.score_batches)

    def scores(self, context: PruneContext) -> Tensor:
        groups = context.groups
        names = groups.param_names
        batches = check_batches([context.task.train_batch(context.step + b) for b in range(self.batches)])
        with scoring_mode(context.model):
            grads = summed_gradients(context.model, context.task.loss, batches, groups.parameters())
        scores = taylor_vector_scores(groups, dict(zip(names, grads, strict=True)))
        scores[~groups.mask] = 0.0
        context.log["score_batches"] = self.batches
        return scores
