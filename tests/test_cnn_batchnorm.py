"""Our BatchNorm: same values, running statistics and gradients as torch's, exact third derivative."""

from __future__ import annotations

import pytest
import torch

from derivatives import hvp_through_layer
from plprune.errors import PlpruneError
from plprune.models.layers import BatchNorm


def _pair(shape: tuple[int, ...]) -> tuple[BatchNorm, torch.nn.Module]:
    channels = shape[1]
    ours = BatchNorm(channels, eps=1e-5, momentum=0.2).double()
    reference = (torch.nn.BatchNorm1d if len(shape) == 3 else torch.nn.BatchNorm2d)(
        channels, eps=1e-5, momentum=0.2
    ).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
    reference.load_state_dict(ours.state_dict())
    return ours, reference


@pytest.mark.parametrize("shape", [(5, 3, 7), (4, 3, 5, 6)])
def test_values_running_stats_and_gradients_match_torch(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    ours, reference = _pair(shape)
    assert list(ours.state_dict()) == list(reference.state_dict())
    for step in range(3):  # training mode: batch statistics, running-stat updates
        x = (torch.randn(shape, dtype=torch.float64) * 2 + step).requires_grad_()
        out, ref = ours(x), reference(x)
        torch.testing.assert_close(out, ref)
        (g_ours, *gp_ours) = torch.autograd.grad(out.pow(3).sum(), [x, ours.weight, ours.bias])
        (g_ref, *gp_ref) = torch.autograd.grad(ref.pow(3).sum(), [x, reference.weight, reference.bias])
        torch.testing.assert_close(g_ours, g_ref)
        torch.testing.assert_close(gp_ours, gp_ref)
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(getattr(ours, name), buffer, msg=name)
    assert int(ours.num_batches_tracked) == 3
    ours.eval()
    reference.eval()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ours(x), reference(x))
    (g_ours,) = torch.autograd.grad(ours(x).pow(2).sum(), x)
    (g_ref,) = torch.autograd.grad(reference(x).pow(2).sum(), x)
    torch.testing.assert_close(g_ours, g_ref)
    assert int(ours.num_batches_tracked) == 3  # eval mode does not update


def test_third_derivative_is_exact_in_training_mode() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, dtype=torch.float64)
    probe = torch.randint(0, 2, (4, 2, 3)).double() * 2 - 1
    gate = (torch.rand(2, 3, dtype=torch.float64) + 0.5).requires_grad_()  # per channel and position
    ours = BatchNorm(2, eps=1e-12).double()
    assert torch.autograd.gradcheck(hvp_through_layer(ours, x, weights, probe), (gate,), eps=1e-6, atol=1e-7)
    # torch's own training-mode batch_norm fails the same check (why plprune ships its own)
    torch_norm = torch.nn.BatchNorm1d(2, eps=1e-12).double()
    assert not torch.autograd.gradcheck(
        hvp_through_layer(torch_norm, x, weights, probe), (gate,), eps=1e-6, atol=1e-7, raise_exception=False
    )


def test_bad_inputs_are_rejected() -> None:
    norm = BatchNorm(3)
    with pytest.raises(PlpruneError, match=r"expects input \(N, 3\), \(N, 3, L\) or \(N, 3, H, W\)"):
        norm(torch.randn(2, 4, 5))
    with pytest.raises(PlpruneError, match=r"expects input"):
        norm(torch.randn(2, 3, 4, 4, 4))
    with pytest.raises(PlpruneError, match="more than 1 value per channel"):
        norm(torch.randn(1, 3))
    with pytest.raises(PlpruneError, match="more than 1 value per channel"):
        norm(torch.randn(1, 3, 1))
    with pytest.raises(PlpruneError, match="num_features"):
        BatchNorm(0)
    with pytest.raises(PlpruneError, match="momentum"):
        BatchNorm(3, momentum=1.5)
