"""Dynamic (input-dependent) inference: channel gating and dynamic convolution for 1-D CNNs.

(About 600 lines: two model families — channel-gated and dynamic-convolution CNNs — that share their block
structure, MAC accounting and gate statistics; split, each half would import the other.)

**Channel gating** (feature boosting and suppression, Gao et al. 2019; batch-shaping channel gating,
Bejnordi et al. 2020) with hard-concrete gates (Louizos et al. 2018, :mod:`plprune.sparsity.hard_concrete`):
:class:`ChannelGatedConv` is ``conv → BN → ReLU`` whose output channel ``c`` is multiplied by a per-input
gate ``z_c(x)``. A gate module reads the block's input, ``log α = FC(GAP(x))`` (one ``log α`` per output
channel), and turns it into gates: in training a stochastic hard-concrete sample (differentiable in
``log α``), in eval the deterministic hard-concrete gate ``clamp(σ(log α)(ζ − γ) + γ, 0, 1)``, which is
exactly 0 for ``log α ≤ log(−γ / ζ)``. :meth:`ChannelGatedConv.gate_penalty` is the expected ℓ0 of the last
forward pass's gates (``hard_concrete_l0`` averaged over samples and channels); train with
``task + λ · penalty`` (:meth:`ChannelGatedCNN.penalized_loss`).

:meth:`ChannelGatedCNN.infer` really skips the work of closed channels: sample by sample it computes only
the active output channels of each conv (the conv weight indexed by the active output *and* active input
channels, with BN folded in), so the next block reads only the channels that are open, and returns the
logits (equal to the gated eval forward) with the multiply-accumulates it executed per sample.

**Dynamic convolution** (Chen et al., CVPR 2020): :class:`DynamicConv1d` holds ``K`` kernels and biases
mixed per sample by attention ``π(x) = softmax(FC(ReLU(FC(GAP(x)))) / T)``; the forward pass aggregates
``W(x) = Σ_k π_k(x) W_k`` and applies it with one grouped convolution over the batch. Since convolution is
linear in the kernel this equals ``Σ_k π_k(x) conv(x, W_k)`` (:meth:`DynamicConv1d.mixture_forward`).

**MAC convention** (all ``macs*`` methods and :class:`GatedInference`): multiply-accumulates of the
convolutions and fully-connected layers (gate/attention FCs and the classifier), plus for dynamic
convolution the kernel aggregation ``K·|W|`` (and ``K·out`` for biases). Element-wise work (BN, ReLU,
gates, pooling, GAP, softmax) is not counted; BN in eval mode folds into the conv. A conv with ``a_out``
active output and ``a_in`` active input channels of kernel ``k`` at output length ``L`` costs
``a_out · a_in · k · L``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.filters import check_input_shape, global_average_pool
from plprune.models.layers import BatchNorm
from plprune.models.vgg import MaxPoolIfLarger
from plprune.sparsity.hard_concrete import hard_concrete_gate, hard_concrete_l0, hard_concrete_sample
from plprune.validation import check_non_negative_float, check_positive_float, check_positive_int

__all__ = [
    "ChannelGatedCNN",
    "ChannelGatedConv",
    "ChannelSkippingRunner",
    "DynamicConv1d",
    "DynamicConvCNN",
    "GatedInference",
    "pooled_length",
]

#: Hard-concrete stretch and temperature of Louizos et al. (2018).
DEFAULT_BETA = 2.0 / 3.0
DEFAULT_GAMMA = -0.1
DEFAULT_ZETA = 1.1


# -- shared checks ------------------------------------------------------------------------------------------
def _check_kernel_size(kernel_size: object) -> int:
    check_positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise PlpruneError(
            f"kernel_size must be a positive odd integer (padding kernel_size // 2 keeps the length), "
            f"got {kernel_size!r}"
        )
    return kernel_size


def _check_hard_concrete(beta: object, gamma: object, zeta: object) -> tuple[float, float, float]:
    beta = check_positive_float("beta", beta)
    for name, value in (("gamma", gamma), ("zeta", zeta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PlpruneError(f"{name} must be a finite number, got {value!r}")
    if not gamma < 0 or not zeta > 1:
        raise PlpruneError(
            f"the hard-concrete stretch needs gamma < 0 and zeta > 1 (so gates reach exactly 0 and 1), "
            f"got gamma={gamma!r}, zeta={zeta!r}; the usual values are -0.1 and 1.1"
        )
    return beta, float(gamma), float(zeta)


def _check_channels(channels: object) -> tuple[int, ...]:
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
        raise PlpruneError(f"channels must be a non-empty sequence of positive integers, got {channels!r}")
    for i, width in enumerate(channels):
        check_positive_int(f"channels[{i}]", width)
    return tuple(channels)


def _check_length(x: Tensor, model: str) -> None:
    if x.shape[0] == 0 or x.shape[2] == 0:
        raise PlpruneError(
            f"{model} needs at least one sample of length >= 1, got input shape {tuple(x.shape)}"
        )


def pooled_length(length: int) -> int:
    """Length after :class:`~plprune.models.vgg.MaxPoolIfLarger` (kernel 2, stride 2; identity below 2)."""
    return length if length < 2 else length // 2


def _init_conv_weight(weight: Tensor) -> None:
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")


# -- channel gating -----------------------------------------------------------------------------------------
class ChannelGatedConv(nn.Module):
    """``conv (no bias) → BN → ReLU`` with input-dependent hard-concrete gates on its output channels.

    ``forward(x)`` returns ``relu(bn(conv(x))) · z(x)`` with ``z(x) = gates(log α)``, ``log α =
    FC(GAP(x))`` (``gate`` is an ``nn.Linear(in_channels, out_channels)``, its bias initialised to
    ``gate_bias_init`` so that gates start open). In training the gates are stochastic hard-concrete
    samples, in eval the deterministic hard-concrete gate. ``last_gates`` / ``last_log_alpha`` keep the last
    forward pass's values; :meth:`gate_penalty` is their expected ℓ0.

    Args:
        in_channels, out_channels: channels of the conv.
        kernel_size: odd kernel size (padding ``kernel_size // 2``, stride 1: the length is kept).
        beta, gamma, zeta: hard-concrete temperature and stretch (``beta > 0``, ``gamma < 0 < 1 < zeta``).
        gate_bias_init: initial bias of the gate FC (``log α`` of a zero input); 3 gives gates ≈ 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        beta: float = DEFAULT_BETA,
        gamma: float = DEFAULT_GAMMA,
        zeta: float = DEFAULT_ZETA,
        gate_bias_init: float = 3.0,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.kernel_size = _check_kernel_size(kernel_size)
        self.beta, self.gamma, self.zeta = _check_hard_concrete(beta, gamma, zeta)
        if (
            isinstance(gate_bias_init, bool)
            or not isinstance(gate_bias_init, (int, float))
            or not math.isfinite(gate_bias_init)
        ):
            raise PlpruneError(f"gate_bias_init must be a finite number, got {gate_bias_init!r}")
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        _init_conv_weight(self.conv.weight)
        self.bn = BatchNorm(out_channels)
        self.gate = nn.Linear(in_channels, out_channels)
        nn.init.constant_(self.gate.bias, float(gate_bias_init))
        self.last_log_alpha: Tensor | None = None
        self.last_gates: Tensor | None = None

    def log_alpha(self, x: Tensor) -> Tensor:
        """``(N, out_channels)`` gate logits ``FC(GAP(x))`` of inputs ``(N, in_channels, L)``."""
        return self.gate(global_average_pool(x))

    def gates(self, log_alpha: Tensor) -> Tensor:
        """Stochastic hard-concrete samples in training mode, deterministic gates in eval mode."""
        if self.training:
            return hard_concrete_sample(log_alpha, self.beta, self.gamma, self.zeta)
        return hard_concrete_gate(log_alpha, self.gamma, self.zeta)

    def forward(self, x: Tensor) -> Tensor:
        check_input_shape(x, self.in_channels, 1, "ChannelGatedConv")
        _check_length(x, "ChannelGatedConv")
        log_alpha = self.log_alpha(x)
        z = self.gates(log_alpha)
        self.last_log_alpha, self.last_gates = log_alpha, z
        return F.relu(self.bn(self.conv(x))) * z.unsqueeze(-1)

    def gate_penalty(self) -> Tensor:
        """Expected ℓ0 of the last forward pass's gates: ``mean_{n,c} P(z_{n,c} ≠ 0)`` (differentiable)."""
        if self.last_log_alpha is None:
            raise PlpruneError("gate_penalty() needs a forward pass first; call the block on a batch")
        return hard_concrete_l0(self.last_log_alpha, self.beta, self.gamma, self.zeta).mean()

    def extra_repr(self) -> str:
        return f"beta={self.beta:.4g}, gamma={self.gamma}, zeta={self.zeta}"


@dataclass
class GatedInference:
    """What :meth:`ChannelGatedCNN.infer` returns for ``N`` samples.

    ``logits``: ``(N, num_classes)``; ``macs``: ``(N,)`` int64, the MACs executed for each sample (module
    docstring's convention); ``active_channels``: ``(N, num_blocks)`` int64, the open output channels of each
    block.
    """

    logits: Tensor
    macs: Tensor
    active_channels: Tensor

    @property
    def mean_macs(self) -> float:
        return float(self.macs.double().mean())


@dataclass(frozen=True)
class _FoldedBlock:
    weight: Tensor  # (out, in, k): conv weight × BN scale
    bias: Tensor  # (out,): BN shift
    gate_weight: Tensor  # (out, in)
    gate_bias: Tensor  # (out,)
    padding: int
    gamma: float
    zeta: float


class ChannelSkippingRunner:
    """Eval-mode inference of a :class:`ChannelGatedCNN` that computes only open channels, one sample at a
    time. Built from the model's current parameters (BN folded into the convs); rebuild it after changing
    them. ``runner(x)`` returns a :class:`GatedInference`."""

    def __init__(self, model: ChannelGatedCNN) -> None:
        if not isinstance(model, ChannelGatedCNN):
            raise PlpruneError(f"ChannelSkippingRunner needs a ChannelGatedCNN, got {type(model).__name__}")
        self.in_channels = model.in_channels
        self.num_classes = model.num_classes
        self.pool = model.pool
        blocks = []
        with torch.no_grad():
            for block in model.blocks:
                bn = block.bn
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                blocks.append(
                    _FoldedBlock(
                        weight=(block.conv.weight * scale[:, None, None]).detach().clone(),
                        bias=(bn.bias - bn.running_mean * scale).detach().clone(),
                        gate_weight=block.gate.weight.detach().clone(),
                        gate_bias=block.gate.bias.detach().clone(),
                        padding=block.kernel_size // 2,
                        gamma=block.gamma,
                        zeta=block.zeta,
                    )
                )
        self.blocks = blocks
        self.classifier_weight = model.classifier.weight.detach().clone()
        self.classifier_bias = model.classifier.bias.detach().clone()

    def run_one(self, x: Tensor) -> tuple[Tensor, int, list[int]]:
        """One sample ``(1, in_channels, L)`` → ``(logits (1, num_classes), MACs, open channels per
        block)``."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[0] != 1 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise PlpruneError(
                f"run_one takes one sample of shape (1, {self.in_channels}, L), got {shape}; use the runner "
                "itself (or ChannelGatedCNN.infer) for a batch"
            )
        h = x
        n_in = self.in_channels
        active_in: Tensor | None = None  # indices of the open input channels; None: all of them
        macs, counts = 0, []
        for block in self.blocks:
            out_channels, length = block.weight.shape[0], h.shape[2]
            gate_weight = (
                block.gate_weight if active_in is None else block.gate_weight.index_select(1, active_in)
            )
            log_alpha = F.linear(h.mean(dim=2), gate_weight, block.gate_bias)  # (1, out)
            z = hard_concrete_gate(log_alpha[0], block.gamma, block.zeta)
            macs += out_channels * n_in
            active_out: Tensor | None = torch.nonzero(z > 0).flatten()
            n_out = int(active_out.numel())
            if n_out == out_channels:  # every channel open: no indexing
                active_out, weight, bias, z_out = None, block.weight, block.bias, z
            elif n_out:
                weight = block.weight.index_select(0, active_out)
                bias, z_out = block.bias.index_select(0, active_out), z.index_select(0, active_out)
            if n_out == 0:
                h = h.new_zeros(1, 0, pooled_length(length) if self.pool else length)
            else:
                if n_in == 0:  # the conv sees only zeros: BN(0) is the shift alone
                    y = bias.view(1, n_out, 1).expand(1, n_out, length)
                else:
                    if active_in is not None:
                        weight = weight.index_select(1, active_in)
                    y = F.conv1d(h, weight, bias, padding=block.padding)
                    macs += n_out * n_in * weight.shape[2] * y.shape[2]
                h = F.relu(y) * z_out.view(1, n_out, 1)
                if self.pool and length >= 2:
                    h = F.max_pool1d(h, 2)
            counts.append(n_out)
            active_in, n_in = active_out, n_out
        if n_in == 0:
            return self.classifier_bias.unsqueeze(0).clone(), macs, counts
        weight = (
            self.classifier_weight if active_in is None else self.classifier_weight.index_select(1, active_in)
        )
        macs += self.num_classes * n_in
        return F.linear(h.mean(dim=2), weight, self.classifier_bias), macs, counts

    def __call__(self, x: Tensor) -> GatedInference:
        check_input_shape(x, self.in_channels, 1, "ChannelGatedCNN.infer")
        _check_length(x, "ChannelGatedCNN.infer")
        logits, macs, counts = [], [], []
        with torch.no_grad():
            for i in range(x.shape[0]):
                sample_logits, sample_macs, sample_counts = self.run_one(x[i : i + 1])
                logits.append(sample_logits)
                macs.append(sample_macs)
                counts.append(sample_counts)
        return GatedInference(
            logits=torch.cat(logits),
            macs=torch.tensor(macs, dtype=torch.long),
            active_channels=torch.tensor(counts, dtype=torch.long),
        )


class ChannelGatedCNN(nn.Module):
    """A 1-D CNN of :class:`ChannelGatedConv` blocks (each followed by a 2× max-pool, skipped below length
    2), global average pooling and a linear classifier — for MNIST-1D ``(N, 1, 40)`` by default.

    With every gate fixed at 1 it is the static ``VGG(cfg=(c1, "M", c2, "M", ...), dims=1)`` of
    :mod:`plprune.models.vgg` (:meth:`static_cfg`), which is the reference it is compared with.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64, 64, 128),
        kernel_size: int = 3,
        pool: bool = True,
        beta: float = DEFAULT_BETA,
        gamma: float = DEFAULT_GAMMA,
        zeta: float = DEFAULT_ZETA,
        gate_bias_init: float = 3.0,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.channels = _check_channels(channels)
        self.kernel_size = _check_kernel_size(kernel_size)
        if not isinstance(pool, bool):
            raise PlpruneError(f"pool must be True or False, got {pool!r}")
        self.pool = pool
        blocks, width = [], in_channels
        for out in self.channels:
            blocks.append(ChannelGatedConv(width, out, kernel_size, beta, gamma, zeta, gate_bias_init))
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.pooling = MaxPoolIfLarger(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``; closed channels are computed, then multiplied by 0 (:meth:`infer`
        skips them)."""
        check_input_shape(x, self.in_channels, 1, "ChannelGatedCNN")
        _check_length(x, "ChannelGatedCNN")
        for block in self.blocks:
            x = block(x)
            if self.pool:
                x = self.pooling(x)
        return self.classifier(global_average_pool(x))

    def gate_penalty(self) -> Tensor:
        """Expected ℓ0 of the last forward pass's gates, mean over samples and all channels of all blocks
        (the expected fraction of open gates, in [0, 1])."""
        if any(block.last_log_alpha is None for block in self.blocks):
            raise PlpruneError("gate_penalty() needs a forward pass first; call the model on a batch")
        total = sum(block.gate_penalty() * block.out_channels for block in self.blocks)
        return total / sum(self.channels)

    def penalized_loss(self, task_loss: Tensor, lam: float) -> Tensor:
        """``task_loss + lam · gate_penalty()`` with ``lam >= 0``."""
        lam = check_non_negative_float("lam (the weight λ of the gate penalty)", lam)
        return task_loss + lam * self.gate_penalty()

    def last_gates(self) -> list[Tensor]:
        """The gates ``(N, out_channels)`` of each block in the last forward pass."""
        if any(block.last_gates is None for block in self.blocks):
            raise PlpruneError("last_gates() needs a forward pass first; call the model on a batch")
        return [block.last_gates for block in self.blocks]

    def infer(self, x: Tensor) -> GatedInference:
        """Eval-mode inference that computes only the open channels of each sample (see
        :class:`ChannelSkippingRunner`); BN uses its running statistics whatever the module's mode."""
        return ChannelSkippingRunner(self)(x)

    def runner(self) -> ChannelSkippingRunner:
        """A :class:`ChannelSkippingRunner` of the current parameters (reuse it to time inference)."""
        return ChannelSkippingRunner(self)

    def block_lengths(self, length: int) -> list[int]:
        """The conv output length of each block for inputs of ``length``."""
        check_positive_int("length", length)
        lengths = []
        for _ in self.channels:
            lengths.append(length)
            length = pooled_length(length) if self.pool else length
        return lengths

    def macs_for_counts(self, active: Sequence[int], length: int) -> int:
        """MACs of one sample whose blocks have ``active[b]`` open output channels: per block the gate FC
        (``out_channels · a_in``) and the conv (``a_out · a_in · k · L``), then the classifier."""
        if len(active) != len(self.channels):
            raise PlpruneError(f"active needs one count per block ({len(self.channels)}), got {len(active)}")
        macs, a_in = 0, self.in_channels
        for a_out, out, conv_length in zip(active, self.channels, self.block_lengths(length), strict=True):
            if isinstance(a_out, bool) or not isinstance(a_out, int) or not 0 <= a_out <= out:
                raise PlpruneError(f"an active channel count must be an int in [0, {out}], got {a_out!r}")
            macs += out * a_in + a_out * a_in * self.kernel_size * conv_length
            a_in = a_out
        return macs + self.num_classes * a_in

    def max_macs(self, length: int) -> int:
        """MACs with every gate open (the static network plus the gate FCs)."""
        return self.macs_for_counts(list(self.channels), length)

    def min_macs(self, length: int) -> int:
        """MACs with every gate closed: only the first block's gate FC runs."""
        return self.macs_for_counts([0] * len(self.channels), length)

    def static_macs(self, length: int) -> int:
        """MACs of the static network of the same shape (no gates)."""
        gates = sum(
            out * c_in
            for out, c_in in zip(self.channels, (self.in_channels, *self.channels[:-1]), strict=True)
        )
        return self.max_macs(length) - gates

    def static_cfg(self) -> tuple[int | str, ...]:
        """The ``cfg`` of the static :class:`~plprune.models.vgg.VGG` of the same shape."""
        cfg: list[int | str] = []
        for width in self.channels:
            cfg += [width, "M"] if self.pool else [width]
        return tuple(cfg)


# -- dynamic convolution ------------------------------------------------------------------------------------
class DynamicConv1d(nn.Module):
    """Dynamic convolution (Chen et al., CVPR 2020) over sequences ``(N, in_channels, L)``.

    ``K = num_kernels`` kernels ``W_k`` (``(out, in, kernel_size)``) and biases ``b_k`` are mixed per sample
    by the attention ``π(x) = softmax(FC₂(ReLU(FC₁(GAP(x)))) / T)`` (``FC₁``: ``in → attention_hidden``,
    ``FC₂``: ``→ K``). ``forward`` aggregates ``W(x) = Σ_k π_k W_k``, ``b(x) = Σ_k π_k b_k`` and applies the
    per-sample kernel with one grouped convolution (the batch folded into the channels, ``groups = N``).
    ``temperature`` can be changed during training (Chen et al. anneal it from 30 to 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_kernels: int = 4,
        temperature: float = 1.0,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = True,
        attention_hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.num_kernels = check_positive_int("num_kernels (K, the number of mixed kernels)", num_kernels)
        self.temperature = temperature
        self.stride = check_positive_int("stride", stride)
        if padding is None:
            padding = kernel_size // 2
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise PlpruneError(
                f"padding must be an integer >= 0 (or None for kernel_size // 2), got {padding!r}"
            )
        self.padding = padding
        if not isinstance(bias, bool):
            raise PlpruneError(f"bias must be True or False, got {bias!r}")
        if attention_hidden is None:
            attention_hidden = max(4, in_channels // 4)
        self.attention_hidden = check_positive_int("attention_hidden", attention_hidden)
        self.weight = nn.Parameter(torch.empty(num_kernels, out_channels, in_channels, kernel_size))
        for k in range(num_kernels):
            _init_conv_weight(self.weight.data[k])
        self.bias = nn.Parameter(torch.zeros(num_kernels, out_channels)) if bias else None
        self.attention_fc1 = nn.Linear(in_channels, self.attention_hidden)
        self.attention_fc2 = nn.Linear(self.attention_hidden, num_kernels)

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_positive_float("temperature (the softmax temperature T)", value)

    def _check(self, x: Tensor) -> None:
        check_input_shape(x, self.in_channels, 1, "DynamicConv1d")
        _check_length(x, "DynamicConv1d")
        if x.shape[2] + 2 * self.padding < self.kernel_size:
            raise PlpruneError(
                f"DynamicConv1d input length {x.shape[2]} with padding {self.padding} is shorter than "
                f"kernel_size {self.kernel_size}"
            )

    def attention(self, x: Tensor) -> Tensor:
        """``(N, K)`` mixing weights ``π(x)`` (each row sums to 1)."""
        self._check(x)
        scores = self.attention_fc2(F.relu(self.attention_fc1(global_average_pool(x))))
        return torch.softmax(scores / self.temperature, dim=1)

    def _aggregate(self, pi: Tensor) -> tuple[Tensor, Tensor | None]:
        weight = torch.einsum("nk,koic->noic", pi, self.weight)
        bias = pi @ self.bias if self.bias is not None else None
        return weight, bias

    def collapsed_kernel(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-sample aggregated kernel ``(N, out, in, kernel_size)`` and bias ``(N, out)`` (None without
        bias)."""
        return self._aggregate(self.attention(x))

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.collapsed_kernel(x)
        n = x.shape[0]
        y = F.conv1d(
            x.reshape(1, n * self.in_channels, x.shape[2]),
            weight.reshape(n * self.out_channels, self.in_channels, self.kernel_size),
            bias.reshape(n * self.out_channels) if bias is not None else None,
            stride=self.stride,
            padding=self.padding,
            groups=n,
        )
        return y.view(n, self.out_channels, y.shape[2])

    def mixture_forward(self, x: Tensor) -> Tensor:
        """``Σ_k π_k(x) conv(x, W_k, b_k)`` computed directly (K convolutions; for checks)."""
        pi = self.attention(x)
        out = 0
        for k in range(self.num_kernels):
            bias = self.bias[k] if self.bias is not None else None
            y = F.conv1d(x, self.weight[k], bias, stride=self.stride, padding=self.padding)
            out = out + pi[:, k, None, None] * y
        return out

    def output_length(self, length: int) -> int:
        check_positive_int("length", length)
        return (length + 2 * self.padding - self.kernel_size) // self.stride + 1

    def macs_per_sample(self, length: int) -> int:
        """Attention FCs + kernel (and bias) aggregation ``K·|W|`` + one conv with the collapsed kernel."""
        attention = self.in_channels * self.attention_hidden + self.attention_hidden * self.num_kernels
        kernel = self.out_channels * self.in_channels * self.kernel_size
        aggregation = self.num_kernels * (kernel + (self.out_channels if self.bias is not None else 0))
        return attention + aggregation + kernel * self.output_length(length)


class DynamicConvCNN(nn.Module):
    """The 1-D CNN of :class:`ChannelGatedCNN`'s shape with every conv a :class:`DynamicConv1d` (no bias;
    BN follows): ``DynamicConv1d → BN → ReLU → 2× max-pool`` per block, GAP, linear classifier."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64, 64, 128),
        kernel_size: int = 3,
        num_kernels: int = 4,
        temperature: float = 1.0,
        pool: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.channels = _check_channels(channels)
        self.kernel_size = _check_kernel_size(kernel_size)
        if not isinstance(pool, bool):
            raise PlpruneError(f"pool must be True or False, got {pool!r}")
        self.pool = pool
        convs, norms, width = [], [], in_channels
        for out in self.channels:
            convs.append(DynamicConv1d(width, out, kernel_size, num_kernels, temperature, bias=False))
            norms.append(BatchNorm(out))
            width = out
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.pooling = MaxPoolIfLarger(1)
        self.classifier = nn.Linear(width, num_classes)

    def set_temperature(self, temperature: float) -> None:
        """Set the attention temperature ``T > 0`` of every layer."""
        temperature = check_positive_float("temperature (the softmax temperature T)", temperature)
        for conv in self.convs:
            conv.temperature = temperature

    def forward(self, x: Tensor) -> Tensor:
        check_input_shape(x, self.in_channels, 1, "DynamicConvCNN")
        _check_length(x, "DynamicConvCNN")
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(x)))
            if self.pool:
                x = self.pooling(x)
        return self.classifier(global_average_pool(x))

    def macs_per_sample(self, length: int) -> int:
        """Every layer's :meth:`DynamicConv1d.macs_per_sample` plus the classifier."""
        macs = 0
        for conv in self.convs:
            macs += conv.macs_per_sample(length)
            length = conv.output_length(length)
            length = pooled_length(length) if self.pool else length
        return macs + self.num_classes * self.channels[-1]
