"""From unstructured (per-weight) saliencies to structured (per-group) scores, and shared scorer helpers.

Connection-sensitivity criteria such as SNIP (Lee et al. 2019) and GraSP (Wang et al. 2020) are defined
per weight. Their structured versions score a group ``w_[i]`` (a head, an expert, a filter: a set of
:class:`~plprune.groups.ParamSlice`) by the **sum of the per-weight scores over the group's weights**,

    S_i = Σ_{s ∈ slices(i)} Σ_{j ∈ s} S_j,

i.e. the first-order (Taylor) estimate of the effect of removing the whole group, since the per-weight
scores of these criteria are themselves first-order effects of removing single weights, and first-order
effects add. (SNIP's scores are non-negative, so its group sum is also the L1 norm over the group.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.validation import check_positive_int

LossFn = Callable[[nn.Module, tuple[Tensor, ...]], Tensor]


def group_sums(groups: GroupSet, weight_scores: Mapping[str, Tensor]) -> Tensor:
    """``(p,)`` float64: for each group, the sum of ``weight_scores`` over the group's parameter slices.

    ``weight_scores`` maps parameter names to per-weight scores of the parameter's shape; it must cover
    every parameter a group touches (extra names are ignored). Raises :class:`PlpruneError` on a missing
    name, a shape mismatch or a non-finite score.
    """
    params = dict(groups.model.named_parameters())
    missing = [name for name in groups.param_names if name not in weight_scores]
    if missing:
        raise PlpruneError(f"weight scores are missing for the group parameters {missing}")
    for name in groups.param_names:
        score = weight_scores[name]
        if not isinstance(score, Tensor):
            raise PlpruneError(f"weight scores for {name} must be a Tensor, got {type(score).__name__}")
        if score.shape != params[name].shape:
            raise PlpruneError(
                f"weight scores for {name} have shape {tuple(score.shape)}, but the parameter has shape "
                f"{tuple(params[name].shape)}"
            )
        if not bool(torch.isfinite(score).all()):
            raise PlpruneError(f"weight scores for {name} contain NaN or Inf")
    sums = torch.zeros(len(groups), dtype=torch.float64)
    for i, group in enumerate(groups.groups):
        total = torch.zeros((), dtype=torch.float64)
        for piece in group.slices:
            total = total + piece.select(weight_scores[piece.param_name].detach()).double().sum()
        sums[i] = total.item()
    return sums


def named_parameters(model: nn.Module, param_names: Sequence[str]) -> list[nn.Parameter]:
    """The parameters of ``model`` called ``param_names`` (in that order); raises on an unknown or
    repeated name or an empty list."""
    names = list(param_names)
    if not names:
        raise PlpruneError("param_names must name at least one parameter")
    if len(set(names)) != len(names):
        raise PlpruneError(f"param_names must not repeat a name, got {names}")
    params = dict(model.named_parameters())
    unknown = [name for name in names if name not in params]
    if unknown:
        raise PlpruneError(f"the model has no parameters named {unknown}")
    return [params[name] for name in names]


def check_batches(batches: Sequence[tuple[Tensor, ...]]) -> list[tuple[Tensor, ...]]:
    """``batches`` as a non-empty list."""
    batches = list(batches)
    if not batches:
        raise PlpruneError("at least one batch is needed to compute gradient-based scores")
    return batches


def loss_gradients(loss: Tensor, params: Sequence[Tensor], *, create_graph: bool = False) -> list[Tensor]:
    """``∂loss/∂p`` for each ``p`` (zeros for a parameter the loss does not use, e.g. an expert that no
    token reached), via ``torch.autograd.grad``: no ``.grad`` attribute is written."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise PlpruneError(f"the loss is {float(loss.detach())} while scoring; cannot compute gradients")
    if not loss.requires_grad:
        return [torch.zeros_like(p) for p in params]
    grads = torch.autograd.grad(loss, list(params), create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


@dataclass
class ScoreBatchesConfig:
    """Settings of the data-driven baselines (grad-score, SNIP, GraSP, CHIP): batches a score averages."""

    score_batches: int = field(
        default=4, metadata={"help": "training batches a data-driven baseline's score averages (default 4)"}
    )

    def __post_init__(self) -> None:
        check_positive_int("score_batches", self.score_batches)


# IMP and Att/Exp-Score prune in rounds in the paper (App. E.3); here 3 rounds one epoch apart
ITERATIVE = {"schedule": "iterative", "rounds": 3, "prune_every": "1e"}


@contextmanager
def scoring_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode while scoring (no dropout; BatchNorm uses its running statistics, which it does not
    update), with gradients enabled; then every submodule's previous mode back."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def summed_gradients(
    model: nn.Module, loss_fn: LossFn, batches: Sequence[tuple[Tensor, ...]], params: Sequence[Tensor]
) -> list[Tensor]:
    """``∇ Σ_b loss_fn(model, batch_b)`` w.r.t. ``params``, one batch at a time, detached."""
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        for acc, grad in zip(total, loss_gradients(loss_fn(model, batch), params), strict=True):
            acc.add_(grad.detach())
    return total
