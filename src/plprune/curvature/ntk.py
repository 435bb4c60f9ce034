"""Per-group empirical tangent kernels and their spectral features (paper Sec. 3.2.2, Eq. 7).

For a batch of n samples and a scalar output per sample f(x_j; w) (``output_fn``; e.g. the per-sample
MLM loss), group i's Jacobian is ``J_i[j] = ∂f(x_j; w)/∂w_[i]`` (an (n, P_i) matrix, P_i = number of
weights in group i) and its empirical tangent kernel is ``K_i = J_i J_iᵀ`` (n × n, PSD). The gating
network (Sec. 3.2.3) reads two features of each K_i: its smallest eigenvalue λ_min (a local PL
constant) and the entropy of its normalised spectrum (Eq. 7). The whole-model kernel's condition number
λ_max/λ_min is a diagnostic (App. D footnote, Fig. 1d, Fig. 2).

Per-sample gradients come from ``torch.func``: ``vmap(grad(f))`` over single samples (each passed with
a leading batch dimension of 1), with the model's parameters swapped in by ``functional_call``; only
the parameters the groups touch are differentiated, every other parameter and buffer is held fixed.
``chunk_size`` bounds how many samples one vmap call holds; ``chunk_size=1`` is a plain per-sample loop
with ``torch.autograd.grad`` (no vmap) and is also the automatic fallback when vmap fails (a model that
is not vmap-compatible, or out of memory), with a warning. The model is in eval mode (dropout off)
during the computation and every submodule's mode is restored after.

Degenerate kernels (all documented on :func:`kernel_features`): eigenvalues are clamped at 0; a dead
group (K_i = 0, e.g. a pruned head) has λ_min = λ_max = 0, entropy 0 and condition number
``1/eps`` (= 1e12 by default), the same cap a rank-deficient kernel gets. Nothing is NaN or inf.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from plprune.curvature._functional import (
    OutputFn,
    OutputFnModule,
    check_batch,
    check_callable,
    check_chunk_size,
    check_model,
    check_output,
    eval_mode,
    resolve_param_names,
)
from plprune.errors import PlpruneError
from plprune.groups import Group

#: Relative floor of λ_min in the condition number: κ = λ_max / max(λ_min, eps·λ_max) ≤ 1/eps.
CONDITION_EPS = 1e-12

__all__ = [
    "CONDITION_EPS",
    "KernelFeatures",
    "batched_group_kernels",
    "compute_group_features",
    "condition_numbers",
    "group_jacobians",
    "group_kernels",
    "kernel_features",
    "model_condition_number",
    "per_sample_gradients",
    "per_sample_loss_output",
]


# ----------------------------------------------------------------------------------------------------
# Per-sample gradients
# ----------------------------------------------------------------------------------------------------


def per_sample_loss_output(model: nn.Module, batch: Sequence[Tensor | None]) -> Tensor:
    """A ready-made ``output_fn`` for Sec. 3.2.2 on a masked-LM: ``model.per_sample_loss(*batch)``, the
    mean masked-token cross-entropy of each sample, shape (n,). The paper does not say which scalar the
    kernel uses; the per-sample loss is the one whose Jacobian drives training (L_S is its mean)."""
    if not hasattr(model, "per_sample_loss"):
        raise PlpruneError(
            f"{type(model).__name__} has no per_sample_loss(...); pass an output_fn(model, batch) -> (n,)"
        )
    return model.per_sample_loss(*batch)


def per_sample_gradients(
    model: nn.Module,
    output_fn: OutputFn,
    batch: Sequence[Tensor | None],
    params: Iterable[str | Tensor] | None = None,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """Per-sample gradients ``∂f(x_j; w)/∂w`` of the scalar output, one ``(n, *param.shape)`` tensor per
    parameter (the rows of the Jacobian J of Sec. 3.2.2, before slicing into groups).

    Args:
        model: the network; put in eval mode during the call, each submodule's mode restored after.
        output_fn: ``output_fn(model, batch) -> Tensor (n,)``, one scalar per sample, e.g.
            ``lambda m, b: m.per_sample_loss(*b)``. It is called on single samples (leading dim 1) and
            must treat samples independently (no batch statistics).
        batch: tuple of tensors whose first dimension is the sample dimension n (``None`` entries are
            passed through unchanged).
        params: names or tensors of the parameters to differentiate; ``None`` = all with requires_grad.
            Every other parameter and buffer is held fixed.
        chunk_size: ``None`` = all n samples in one ``vmap``; ``k > 1`` = k samples per ``vmap`` call;
            ``1`` = per-sample loop with ``torch.autograd.grad`` (no vmap). If vmap raises (model not
            vmap-compatible, out of memory) the loop is used instead, with a ``RuntimeWarning``.

    Returns:
        ``{name: gradient (n, *param.shape)}``, detached, in the parameters' dtype, in ``params`` order.
    """
    check_model(model)
    check_callable("output_fn", output_fn)
    batch, n = check_batch(batch)
    chunk_size = check_chunk_size(chunk_size)
    names = resolve_param_names(model, params)
    named = dict(model.named_parameters())
    values = {name: named[name].detach() for name in names}
    wrapper = OutputFnModule(model, output_fn)
    with eval_mode(model):
        if chunk_size != 1:
            try:
                return _vmap_gradients(wrapper, values, batch, n, chunk_size or n)
            except (RuntimeError, NotImplementedError) as error:
                warnings.warn(
                    f"vmap per-sample gradients failed ({type(error).__name__}: {str(error)[:300]}); "
                    "falling back to a per-sample loop (chunk_size=1), which is slower",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return _loop_gradients(wrapper, values, batch, n)


def _vmap_gradients(
    wrapper: OutputFnModule,
    values: dict[str, Tensor],
    batch: tuple[Tensor | None, ...],
    n: int,
    chunk: int,
) -> dict[str, Tensor]:
    present = [i for i, t in enumerate(batch) if t is not None]

    def sample_output(params: dict[str, Tensor], tensors: tuple[Tensor, ...]) -> Tensor:
        full: list[Tensor | None] = list(batch)
        for i, t in zip(present, tensors, strict=True):
            full[i] = t.unsqueeze(0)
        out = check_output(wrapper.call_with(params, tuple(full)), 1, "output_fn")
        return out.sum()

    per_sample_grad = torch.func.vmap(torch.func.grad(sample_output), in_dims=(None, 0))
    chunks: list[dict[str, Tensor]] = []
    # torch.func.grad ignores an outer no_grad; no_grad only stops a graph to closure tensors
    # (e.g. gates computed by a gating network) from being recorded around the transform.
    with torch.no_grad():
        for start in range(0, n, chunk):
            tensors = tuple(batch[i][start : start + chunk] for i in present)  # type: ignore[index]
            chunks.append(per_sample_grad(values, tensors))
    return {name: torch.cat([c[name] for c in chunks]).detach() for name in values}


def _loop_gradients(
    wrapper: OutputFnModule,
    values: dict[str, Tensor],
    batch: tuple[Tensor | None, ...],
    n: int,
) -> dict[str, Tensor]:
    leaves = {name: v.detach().requires_grad_(True) for name, v in values.items()}
    result = {name: torch.zeros((n, *v.shape), dtype=v.dtype, device=v.device) for name, v in values.items()}
    with torch.enable_grad():
        for j in range(n):
            sample = tuple(None if t is None else t[j : j + 1] for t in batch)
            out = check_output(wrapper.call_with(leaves, sample), 1, "output_fn").sum()
            if not out.requires_grad:
                continue  # the output does not depend on these parameters: zero gradient
            grads = torch.autograd.grad(out, list(leaves.values()), allow_unused=True)
            for name, g in zip(leaves, grads, strict=True):
                if g is not None:
                    result[name][j] = g
    return result


# ----------------------------------------------------------------------------------------------------
# Group Jacobians and kernels
# ----------------------------------------------------------------------------------------------------


def _check_groups(model: nn.Module, groups: Any) -> list[Group]:
    if isinstance(groups, Group) or not isinstance(groups, Iterable):
        raise PlpruneError(f"groups must be a sequence of Group, got {type(groups).__name__}")
    groups = list(groups)
    if not groups:
        raise PlpruneError("groups must contain at least one Group, got an empty sequence")
    named = dict(model.named_parameters())
    for g in groups:
        if not isinstance(g, Group):
            raise PlpruneError(f"groups must contain only Group objects, got {type(g).__name__}")
        if not g.slices:
            raise PlpruneError(f"group {g.name} has no parameter slices")
        for s in g.slices:
            if s.param_name not in named:
                raise PlpruneError(
                    f"group {g.name} refers to parameter {s.param_name!r}, which the model does not have"
                )
            shape = named[s.param_name].shape
            if not 0 <= s.dim < len(shape):
                raise PlpruneError(
                    f"group {g.name}: slice dim {s.dim} is invalid for {s.param_name} of shape "
                    f"{tuple(shape)}; allowed: 0..{len(shape) - 1}"
                )
            if not 0 <= s.start < s.stop <= shape[s.dim]:
                raise PlpruneError(
                    f"group {g.name}: slice [{s.start}, {s.stop}) of {s.param_name} dim {s.dim} is invalid; "
                    f"need 0 <= start < stop <= {shape[s.dim]}"
                )
    return groups


def group_jacobians(
    model: nn.Module,
    groups: Sequence[Group],
    output_fn: OutputFn,
    batch: Sequence[Tensor | None],
    chunk_size: int | None = None,
) -> list[Tensor]:
    """Group Jacobians J_i (Sec. 3.2.2): per-sample gradients of the scalar output restricted to group
    i's parameter slices, flattened and concatenated in slice order.

    Only the parameters the groups touch are differentiated. See :func:`per_sample_gradients` for
    ``output_fn``, ``batch`` and ``chunk_size``.

    Returns:
        one ``(n, P_i)`` tensor per group (P_i = weights in group i), in the parameters' dtype.
    """
    check_model(model)
    groups = _check_groups(model, groups)
    names = list(dict.fromkeys(s.param_name for g in groups for s in g.slices))
    grads = per_sample_gradients(model, output_fn, batch, params=names, chunk_size=chunk_size)
    n = next(iter(grads.values())).shape[0]
    return [
        torch.cat([s.select_batched(grads[s.param_name]).reshape(n, -1) for s in g.slices], dim=1)
        for g in groups
    ]


def group_kernels(
    model: nn.Module,
    groups: Sequence[Group],
    output_fn: OutputFn,
    batch: Sequence[Tensor | None],
    chunk_size: int | None = None,
) -> Tensor:
    """Empirical tangent kernels ``K_i = J_i J_iᵀ`` of every group (Sec. 3.2.2), in float64.

    Arguments as for :func:`group_jacobians`. Returns a ``(p, n, n)`` float64 tensor (p = len(groups)).

    Computed without forming the J_i one by one: since J_i is the concatenation of group i's slices,
    ``K_i = Σ_s S_s S_sᵀ`` over its slices S_s (:func:`batched_group_kernels`), and the slices of one
    parameter of one width (e.g. every neuron's row of W_in) are gathered at once and multiplied in one
    batched product. The same matrices as stacking ``J_i J_iᵀ`` of :func:`group_jacobians` (up to float64
    summation order; tests compare the two on heads, filters and neurons).
    """
    check_model(model)
    groups = _check_groups(model, groups)
    names = list(dict.fromkeys(s.param_name for g in groups for s in g.slices))
    grads = per_sample_gradients(model, output_fn, batch, params=names, chunk_size=chunk_size)
    return batched_group_kernels(grads, groups)


#: elements (float64) one gathered block of :func:`batched_group_kernels` may hold (2 MiB: blocks that stay
#: in cache and reuse the allocator's memory; VGG-16's kernels on CIFAR-10 shapes take 0.17-0.18 s instead
#: of 0.51-0.60 s with 128 MiB blocks, 8,192 neurons' 71 ms instead of 101-117 ms; the same, bit for bit)
KERNEL_BLOCK_ELEMENTS = 2**18


def batched_group_kernels(
    grads: dict[str, Tensor], groups: Sequence[Group], block_elements: int = KERNEL_BLOCK_ELEMENTS
) -> Tensor:
    """``K_i = J_i J_iᵀ`` (float64, ``(p, n, n)``) of every group from per-sample gradients ``grads``
    (``{name: (n, *param.shape)}``, as :func:`per_sample_gradients` returns them).

    Slices are bucketed by (parameter, dim, width). A bucket's m slices are m·width rows x_r (each
    ``(n, rest)``) of the gradient with the sliced dim moved first: a view when they are a run of that dim in
    order (heads, neurons), else gathered; cast to float64 in one copy, at most ``block_elements`` elements
    at a time. Slice s's kernel ``S_s S_sᵀ = Σ_{r ∈ s} x_r x_rᵀ`` comes from one batched product over all
    rows and a sum over each slice's ``width`` rows, and is added into its group's kernel with
    ``index_put_(accumulate=True)`` (a group with several slices in a bucket, e.g. both halves of a fused
    gate/up projection, gets each; ``index_add_`` over dim 0 is ~1000x slower here on CPU). Equal to the
    per-group ``J_i J_iᵀ`` up to the order of the float64 sums.
    """
    groups = list(groups)
    if not grads:
        raise PlpruneError("batched_group_kernels needs per-sample gradients, got none")
    first = next(iter(grads.values()))
    n, device = first.shape[0], first.device
    buckets: dict[tuple[str, int, int], tuple[list[int], list[int]]] = {}
    for i, g in enumerate(groups):
        for s in g.slices:
            if s.param_name not in grads:
                raise PlpruneError(f"group {g.name} refers to {s.param_name!r}, which has no gradient here")
            owners, starts = buckets.setdefault((s.param_name, s.dim, s.stop - s.start), ([], []))
            owners.append(i)
            starts.append(s.start)
    kernels = torch.zeros((len(groups), n, n), dtype=torch.float64, device=device)
    for (name, dim, width), (owners, starts) in buckets.items():
        rows = grads[name].movedim(dim + 1, 0)  # (D, n, *rest): one row per index of the sliced dim
        rows = rows.reshape(rows.shape[0], n, -1)
        step = max(1, block_elements // (n * width * max(rows.shape[2], n)))  # rows and their kernels
        owner_index = torch.tensor(owners, dtype=torch.long, device=device)
        start_index = torch.tensor(starts, dtype=torch.long, device=device)
        offsets = torch.arange(width, device=device)
        for a in range(0, len(owners), step):
            index = (start_index[a : a + step, None] + offsets).reshape(-1)  # the m slices' rows, in order
            first = int(index[0])
            if bool((index == torch.arange(first, first + len(index), device=device)).all()):
                block = rows.narrow(0, first, len(index))  # slices tiling the dim in order: a view
            else:
                block = rows.index_select(0, index)
            block = block.to(torch.float64, memory_format=torch.contiguous_format)  # (m·width, n, rest)
            per_row = torch.bmm(block, block.transpose(1, 2))  # x_r x_rᵀ of every row r
            per_slice = per_row.view(-1, width, n, n).sum(dim=1) if width > 1 else per_row
            kernels.index_put_((owner_index[a : a + step],), per_slice, accumulate=True)
    return kernels


# ----------------------------------------------------------------------------------------------------
# Spectral features
# ----------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class KernelFeatures:
    """Spectral features of p group kernels (Sec. 3.2.2); every field is a float64 tensor of shape (p,).

    * ``min_eigenvalue`` — λ_min(K_i) ≥ 0 (eigenvalues clamped at 0), gating feature 1.
    * ``max_eigenvalue`` — λ_max(K_i) ≥ 0.
    * ``condition_number`` — λ_max / max(λ_min, eps·λ_max), in [1, 1/eps]; ``1/eps`` for a dead group.
    * ``entropy`` — ρ = −Σ λ̄ log λ̄, λ̄ = λ/Σλ (Eq. 7), in [0, log n]; 0 for a dead group. Feature 2.
    * ``eigenvalues`` — optional (p, n) clamped spectra, ascending.
    """

    min_eigenvalue: Tensor
    max_eigenvalue: Tensor
    condition_number: Tensor
    entropy: Tensor
    eigenvalues: Tensor | None = None

    def __post_init__(self) -> None:
        fields = {
            "min_eigenvalue": self.min_eigenvalue,
            "max_eigenvalue": self.max_eigenvalue,
            "condition_number": self.condition_number,
            "entropy": self.entropy,
        }
        shapes = set()
        for name, value in fields.items():
            if not isinstance(value, Tensor) or value.dim() != 1:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise PlpruneError(f"KernelFeatures.{name} must be a 1-d tensor (p,), got {got}")
            shapes.add(value.shape[0])
        if len(shapes) != 1:
            raise PlpruneError(f"KernelFeatures fields must all have the same length p, got {sorted(shapes)}")
        p = shapes.pop()
        if self.eigenvalues is not None and (self.eigenvalues.dim() != 2 or self.eigenvalues.shape[0] != p):
            raise PlpruneError(
                f"KernelFeatures.eigenvalues must have shape ({p}, n), got {tuple(self.eigenvalues.shape)}"
            )

    @property
    def num_groups(self) -> int:
        return int(self.min_eigenvalue.shape[0])

    def __len__(self) -> int:
        return self.num_groups

    @property
    def dead(self) -> Tensor:
        """Boolean (p,): groups whose kernel is exactly zero (λ_max = 0), e.g. already-pruned ones."""
        return self.max_eigenvalue == 0

    def as_matrix(self) -> Tensor:
        """The gating network's input d_w (Sec. 3.2.3): a (p, 2) float64 matrix [λ_min, entropy]."""
        return torch.stack([self.min_eigenvalue, self.entropy], dim=1)


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise PlpruneError(f"eps must be a number in (0, 1), got {eps!r}")
    return float(eps)


def condition_numbers(min_eigenvalue: Tensor, max_eigenvalue: Tensor, eps: float = CONDITION_EPS) -> Tensor:
    """κ = λ_max / max(λ_min, eps·λ_max), capped at 1/eps; a zero kernel (λ_max = 0) gets 1/eps.

    Always finite and in [1, 1/eps] for non-negative inputs: a rank-deficient kernel (λ_min ≈ 0) hits the
    cap, and a dead one is treated as the extreme rank-deficient case.
    """
    eps = _check_eps(eps)
    lmin = min_eigenvalue.to(torch.float64).clamp_min(0)
    lmax = max_eigenvalue.to(torch.float64).clamp_min(0)
    tiny = torch.finfo(torch.float64).tiny
    denom = torch.maximum(lmin, eps * lmax).clamp_min(tiny)
    cap = torch.full_like(lmax, 1.0 / eps)
    kappa = torch.minimum(lmax / denom, cap).clamp_min(1.0)
    return torch.where(lmax > 0, kappa, cap)


def kernel_features(kernels: Tensor, eps: float = CONDITION_EPS) -> KernelFeatures:
    """λ_min, λ_max, condition number and spectral entropy (Eq. 7) of each kernel, via
    ``torch.linalg.eigvalsh`` in float64.

    Conventions (all values finite, never NaN):

    * Eigenvalues are clamped at 0 (a PSD kernel's numerical eigenvalues can be tiny negatives).
    * ``condition_number = λ_max / max(λ_min, eps·λ_max)``, capped at ``1/eps`` (eps = 1e-12 by
      default): a rank-deficient kernel gets at most 1/eps.
    * A dead group (K_i = 0, all-zero Jacobian): λ_min = λ_max = 0, entropy = 0 and condition number
      = ``1/eps`` — the most ill-conditioned value, as for any rank-deficient kernel.
    * Entropy ρ = −Σ_j λ̄_j log λ̄_j with λ̄ = λ / Σλ and 0·log 0 = 0; in [0, log n].

    Args:
        kernels: (p, n, n) symmetric PSD matrices (e.g. from :func:`group_kernels`); symmetrised
            as (K + Kᵀ)/2 before the eigendecomposition.
        eps: relative floor of λ_min in the condition number, in (0, 1).
    """
    eps = _check_eps(eps)
    if not isinstance(kernels, Tensor):
        raise PlpruneError(f"kernels must be a Tensor of shape (p, n, n), got {type(kernels).__name__}")
    if kernels.dim() != 3 or kernels.shape[1] != kernels.shape[2] or 0 in kernels.shape:
        raise PlpruneError(
            f"kernels must have shape (p, n, n) with p, n >= 1, got {tuple(kernels.shape)}; "
            "stack single kernels with kernels.unsqueeze(0)"
        )
    k64 = kernels.detach().to(torch.float64)
    if not torch.isfinite(k64).all():
        raise PlpruneError("kernels contain NaN or inf; check the model's outputs and gradients")
    k64 = 0.5 * (k64 + k64.transpose(1, 2))
    eigenvalues = torch.linalg.eigvalsh(k64).clamp_min(0)  # (p, n) ascending
    lmin, lmax = eigenvalues[:, 0], eigenvalues[:, -1]
    total = eigenvalues.sum(dim=1, keepdim=True)
    normalised = torch.where(total > 0, eigenvalues / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    entropy = -torch.special.xlogy(normalised, normalised).sum(dim=1)
    return KernelFeatures(
        min_eigenvalue=lmin,
        max_eigenvalue=lmax,
        condition_number=condition_numbers(lmin, lmax, eps),
        entropy=entropy.clamp_min(0),
        eigenvalues=eigenvalues,
    )


def compute_group_features(
    model: nn.Module,
    groups: Sequence[Group],
    output_fn: OutputFn,
    batch: Sequence[Tensor | None],
    chunk_size: int | None = None,
    eps: float = CONDITION_EPS,
) -> KernelFeatures:
    """Features d_w of every group (Sec. 3.2.2): ``kernel_features(group_kernels(...))``."""
    return kernel_features(group_kernels(model, groups, output_fn, batch, chunk_size=chunk_size), eps=eps)


def model_condition_number(
    model: nn.Module,
    output_fn: OutputFn,
    batch: Sequence[Tensor | None],
    params: Iterable[str | Tensor] | None = None,
    chunk_size: int | None = None,
    eps: float = CONDITION_EPS,
) -> float:
    """Condition number λ_max(K)/λ_min(K) of the whole-model empirical NTK K = J Jᵀ (App. D footnote),
    J = per-sample gradients w.r.t. all parameters with requires_grad (or ``params``: names or tensors).

    A diagnostic. Same conventions as :func:`kernel_features`: λ_min is floored at eps·λ_max, so the
    result lies in [1, 1/eps], and a zero kernel gives 1/eps. With more samples than parameters K is
    rank-deficient and the result is 1/eps.
    """
    eps = _check_eps(eps)
    grads = per_sample_gradients(model, output_fn, batch, params=params, chunk_size=chunk_size)
    n = next(iter(grads.values())).shape[0]
    first = next(iter(grads.values()))
    kernel = torch.zeros((n, n), dtype=torch.float64, device=first.device)
    for g in grads.values():
        flat = g.reshape(n, -1).to(torch.float64)
        kernel += flat @ flat.T
    features = kernel_features(kernel.unsqueeze(0), eps=eps)
    return float(features.condition_number[0])
