"""Layers written with plain tensor ops so that every derivative order is exact.

``torch.nn.functional.layer_norm`` has a wrong third derivative in torch 2.13 (its double-backward
formula is not itself differentiated correctly: ``torch.autograd.gradcheck`` of a Hessian-vector
product through it fails; see tests/test_model_layers.py). The PL regulariser differentiates a
Hessian-vector product w.r.t. the gates (third order), so our models use this LayerNorm instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerNorm(nn.Module):
    """``(x − mean) / sqrt(var + eps) · weight + bias`` over the last dimension (Ba et al., 2016).

    Same parameters and state-dict names as ``nn.LayerNorm``; biased variance, as ``nn.LayerNorm``.
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.normalized_shape = (normalized_shape,)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        centred = x - mean
        variance = (centred * centred).mean(dim=-1, keepdim=True)
        return centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"
