"""Our LayerNorm: same values as torch's, and correct derivatives up to third order (torch's are not)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from derivatives import hvp_through_layer
from plprune.models.layers import LayerNorm


def test_values_and_gradients_match_torch_layer_norm() -> None:
    torch.manual_seed(0)
    ours = LayerNorm(6, eps=1e-12).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    reference = F.layer_norm(x, (6,), ours.weight, ours.bias, 1e-12)
    torch.testing.assert_close(ours(x), reference)
    (g_ours,) = torch.autograd.grad(ours(x).pow(3).sum(), x)
    (g_ref,) = torch.autograd.grad(reference.pow(3).sum(), x)
    torch.testing.assert_close(g_ours, g_ref)


def test_third_derivative_is_exact() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, dtype=torch.float64)
    probe = torch.randint(0, 2, (3, 6)).double() * 2 - 1
    gate = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    ours = LayerNorm(6, eps=1e-12).double()
    assert torch.autograd.gradcheck(hvp_through_layer(ours, x, weights, probe), (gate,), eps=1e-6, atol=1e-7)
    # torch's own layer_norm fails the same check (why plprune ships its own)
    torch_norm = torch.nn.LayerNorm(6, eps=1e-12).double()
    assert not torch.autograd.gradcheck(
        hvp_through_layer(torch_norm, x, weights, probe), (gate,), eps=1e-6, atol=1e-7, raise_exception=False
    )
