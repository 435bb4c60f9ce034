"""Layers written with plain tensor ops so that every derivative order is exact.

``torch.nn.functional.layer_norm`` has a wrong third derivative in torch 2.13 (its double-backward
formula is not itself differentiated correctly: ``torch.autograd.gradcheck`` of a Hessian-vector
product through it fails; see tests/test_model_layers.py). The PL regulariser differentiates a
Hessian-vector product w.r.t. the gates (third order), so our models use this LayerNorm instead.
The same holds for training-mode ``F.batch_norm`` (pytorch/pytorch#186256), hence :class:`BatchNorm`
for the CNNs (see tests/test_cnn_batchnorm.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.validation import check_positive_float, check_positive_int, check_probability


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
        # over the last len(normalized_shape) dimensions; weight/bias may be None (an nn.LayerNorm without
        # them, see plprune.exact_norms): the same ops in the same order either way
        dims = -1 if len(self.normalized_shape) == 1 else tuple(range(-len(self.normalized_shape), 0))
        mean = x.mean(dim=dims, keepdim=True)
        centred = x - mean
        variance = (centred * centred).mean(dim=dims, keepdim=True)
        out = centred * torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            out = out * self.weight
        if self.bias is not None:
            out = out + self.bias
        return out

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class BatchNorm(nn.Module):
    """Batch normalisation (Ioffe & Szegedy, 2015) over the channel dimension of ``(N, C, L)`` or
    ``(N, C, H, W)`` inputs, written with plain ops.

    torch's training-mode ``batch_norm`` has a wrong third derivative (pytorch/pytorch#186256; the
    gradcheck in tests/test_cnn_batchnorm.py shows it), and the PL regulariser (paper Eq. 36) differentiates
    a Hessian-vector product w.r.t. the filter gates, so the CNNs (paper Tables 3 and 5) use this layer.

    Same semantics and state-dict names as ``nn.BatchNorm1d``/``nn.BatchNorm2d`` with
    ``affine=True, track_running_stats=True``: in training mode it normalises with the batch mean and
    biased variance over all dimensions but the channel and updates
    ``running = (1 − momentum)·running + momentum·batch`` with the *unbiased* variance (as torch does);
    in eval mode it uses ``running_mean``/``running_var``. ``num_batches_tracked`` counts updates.
    The forward pass also covers what torch allows beyond that, for :mod:`plprune.exact_norms` (which
    stands this layer in for a user's ``nn.BatchNorm1d/2d``): ``(N, C)`` inputs, no weight/bias
    (``affine=False``), no running statistics (batch statistics in eval too), and ``momentum=None``
    (cumulative average ``1/num_batches_tracked``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = check_positive_int("num_features", num_features)
        self.eps = check_positive_float("eps", eps)
        self.momentum = check_probability("momentum", momentum, inclusive_high=True)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in (2, 3, 4) or x.shape[1] != self.num_features:
            raise PlpruneError(
                f"BatchNorm({self.num_features}) expects input (N, {self.num_features}), "
                f"(N, {self.num_features}, L) or (N, {self.num_features}, H, W), got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        if self.training or self.running_mean is None:
            count = x.numel() // self.num_features
            if count < 2 and self.training:
                raise PlpruneError(
                    f"BatchNorm in training mode needs more than 1 value per channel, got input shape "
                    f"{tuple(x.shape)}; use a batch of at least 2 samples or call model.eval()"
                )
            mean = x.mean(dim=dims, keepdim=True)
            centred = x - mean
            variance = (centred * centred).mean(dim=dims, keepdim=True)
            if self.training and self.running_mean is not None:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                    unbiased = variance.detach().flatten() * (count / (count - 1))
                    self.running_mean.mul_(1 - factor).add_(factor * mean.detach().flatten())
                    self.running_var.mul_(1 - factor).add_(factor * unbiased)
        else:
            centred = x - self.running_mean.view(shape)
            variance = self.running_var.view(shape)
        out = centred * torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
