"""A third-order test quantity: a Hessian-vector product through a layer, as a function of a gate."""

from __future__ import annotations

from collections.abc import Callable

import torch


def hvp_through_layer(
    layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, weights: torch.Tensor, probe: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``gate ↦ probeᵀ ∇²_x y(gate) probe`` with ``y = (Σ layer(x · gate) · weights)²``; its gradient w.r.t.
    the gate is third order in the layer (what the PL gate training differentiates)."""

    def fn(gate: torch.Tensor) -> torch.Tensor:
        y = (layer(x * gate) * weights).sum() ** 2
        (g,) = torch.autograd.grad(y, x, create_graph=True)
        (hv,) = torch.autograd.grad((g * probe).sum(), x, create_graph=True)
        return (hv * probe).sum()

    return fn
