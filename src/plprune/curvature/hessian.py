"""Hessian trace: Hutchinson's stochastic estimator (paper Alg. 1) and an exact trace for tiny models.

The PL regulariser (Eq. 5, 36) penalises Tr(H_f(g ⊙ w)), realised with Hutchinson's estimator

    Tr(H) ≈ (1/m) Σ_k z_kᵀ H z_k,   H z = ∂(∇_w f · z)/∂w,   E[z zᵀ] = I,

with Rademacher or Gaussian probes z (Alg. 1 uses a ~ N(0, I)). ``H z`` is a Hessian-vector product by
double backward, so it never forms H. To train the gating network on Eq. 36 the estimate must stay
differentiable w.r.t. everything f depends on (soft gates g(d_w; v)): ``create_graph=True`` keeps the
graph of the HVP, and its backward is a third-order derivative.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from plprune.curvature._functional import (
    LossFn,
    OutputFnModule,
    check_callable,
    check_model,
    resolve_param_names,
)
from plprune.curvature._functional import eval_mode as _eval_mode
from plprune.errors import PlpruneError
from plprune.validation import check_choice, check_positive_int

PROBE_DISTRIBUTIONS = ("rademacher", "gaussian")
#: Default cap on the number of weights :func:`exact_hessian_trace` accepts (the Hessian is P × P).
EXACT_MAX_PARAMS = 4096

__all__ = [
    "EXACT_MAX_PARAMS",
    "PROBE_DISTRIBUTIONS",
    "HutchinsonEstimate",
    "exact_hessian_trace",
    "hutchinson_trace",
    "model_exact_hessian_trace",
    "model_hessian_trace",
]


@dataclass(eq=False)
class HutchinsonEstimate:
    """Result of :func:`hutchinson_trace` (Alg. 1).

    * ``mean`` — 0-d tensor, (1/m) Σ_k z_kᵀ H z_k; differentiable when made with ``create_graph=True``.
    * ``per_probe`` — (m,) tensor of the m probe values z_kᵀ H z_k (differentiable likewise).
    * ``standard_error`` — std(per_probe, unbiased) / √m as a float; 0.0 for a single probe.
    """

    mean: Tensor
    per_probe: Tensor
    standard_error: float

    @property
    def num_probes(self) -> int:
        return int(self.per_probe.shape[0])


def _draw_probe(like: Tensor, distribution: str, generator: torch.Generator | None) -> Tensor:
    """One probe shaped like ``like``: Rademacher ±1 or standard normal, drawn from ``generator`` (on the
    generator's device, then moved) or from the global RNG when ``generator`` is None."""
    device = generator.device if generator is not None else like.device
    if distribution == "rademacher":
        z = torch.randint(0, 2, like.shape, generator=generator, device=device, dtype=like.dtype)
        z = z.mul_(2).sub_(1)
    else:
        z = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
    return z.to(like.device)


def _check_params(params: Any) -> list[Tensor]:
    if isinstance(params, Tensor) or not isinstance(params, Iterable):
        raise PlpruneError(
            "params must be a sequence of tensors (e.g. list(model.parameters())), "
            f"got {type(params).__name__}"
        )
    params = list(params)
    if not params:
        raise PlpruneError("params must contain at least one tensor, got an empty sequence")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise PlpruneError(f"params[{i}] must be a Tensor, got {type(p).__name__}")
        if not p.is_floating_point():
            raise PlpruneError(f"params[{i}] must be floating point, got dtype {p.dtype}")
        if not p.requires_grad:
            raise PlpruneError(
                f"params[{i}] (shape {tuple(p.shape)}) does not require grad; the Hessian is taken w.r.t. "
                "tensors with requires_grad=True"
            )
    return params


def hutchinson_trace(
    scalar: Tensor,
    params: Sequence[Tensor],
    num_probes: int = 1,
    distribution: str = "rademacher",
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> HutchinsonEstimate:
    """Hutchinson's estimate of Tr(∇²_w scalar) over the weights ``params`` (paper Alg. 1).

    For each of ``num_probes`` probes z (one tensor per parameter): g = ∇_w scalar (computed once, with
    ``create_graph=True`` as the HVP needs it), Hz = ∂(g · z)/∂w by double backward, value = zᵀ H z.

    Args:
        scalar: 0-d floating tensor that depends on ``params`` (e.g. a loss or a summed model output).
        params: the weights w, each with ``requires_grad=True``. A weight the scalar does not use
            contributes 0.
        num_probes: m ≥ 1.
        distribution: ``"rademacher"`` (±1, lower variance) or ``"gaussian"`` (N(0, I), as in Alg. 1).
        generator: a ``torch.Generator`` for the probes (reproducible; probes are drawn on its device
            and moved); ``None`` draws from the global RNG.
        create_graph: keep the graph of the HVP so ``mean`` is differentiable w.r.t. anything the scalar
            depends on (weights, soft gates, a gating network's parameters): third-order autograd.
            With ``False`` the result is detached.

    The graph of ``scalar`` is retained, so the caller can still backpropagate through it.
    """
    if not isinstance(scalar, Tensor):
        raise PlpruneError(f"scalar must be a 0-d Tensor, got {type(scalar).__name__}")
    if scalar.dim() != 0:
        raise PlpruneError(
            f"scalar must be a 0-d tensor (e.g. loss.mean() or output.sum()), got shape {tuple(scalar.shape)}"
        )
    if not scalar.is_floating_point():
        raise PlpruneError(f"scalar must be floating point, got dtype {scalar.dtype}")
    if not scalar.requires_grad:
        raise PlpruneError(
            "scalar does not require grad: compute it from params with autograd enabled (not under no_grad)"
        )
    params = _check_params(params)
    num_probes = check_positive_int("num_probes", num_probes)
    check_choice("distribution", distribution, PROBE_DISTRIBUTIONS)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise PlpruneError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if not isinstance(create_graph, bool):
        raise PlpruneError(f"create_graph must be a bool, got {create_graph!r}")

    grads = torch.autograd.grad(scalar, params, create_graph=True, retain_graph=True, allow_unused=True)
    live = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None and g.requires_grad]
    values: list[Tensor] = []
    for _ in range(num_probes):
        probes = [_draw_probe(p, distribution, generator) for p in params]
        live_probes = [z for z, g in zip(probes, grads, strict=True) if g is not None and g.requires_grad]
        if not live:
            values.append(scalar.new_zeros(()))  # gradient constant in w: zero Hessian
            continue
        g_dot_z = sum((g * z).sum() for (_, g), z in zip(live, live_probes, strict=True))
        hvps = torch.autograd.grad(
            g_dot_z, [p for p, _ in live], retain_graph=True, create_graph=create_graph, allow_unused=True
        )
        value = sum((hz * z).sum() for hz, z in zip(hvps, live_probes, strict=True) if hz is not None)
        values.append(value if isinstance(value, Tensor) else scalar.new_zeros(()))
    per_probe = torch.stack(values)
    if not create_graph:
        per_probe = per_probe.detach()
    std_err = 0.0
    if num_probes > 1:
        std_err = float(per_probe.detach().std(unbiased=True)) / math.sqrt(num_probes)
    return HutchinsonEstimate(mean=per_probe.mean(), per_probe=per_probe, standard_error=std_err)


def exact_hessian_trace(
    fn: Callable[[list[Tensor]], Tensor],
    params: Sequence[Tensor],
    max_params: int = EXACT_MAX_PARAMS,
) -> float:
    """Exact Tr(∇²_w fn) via ``torch.func.hessian`` on the flattened weight vector — a reference for
    Alg. 1 on tiny models (tests, diagnostics). Cost O(P²) memory, P = total number of weights.

    Args:
        fn: maps a list of tensors shaped like ``params`` to a 0-d tensor; it must be a pure function
            of that list (e.g. built with ``torch.func.functional_call``), not read the live params.
        params: the point w at which to evaluate the Hessian (values only; requires_grad not needed).
            All must share one floating dtype.
        max_params: refuse P > max_params (the Hessian would be too large).
    """
    check_callable("fn", fn)
    if isinstance(params, Tensor) or not isinstance(params, Iterable):
        raise PlpruneError(f"params must be a sequence of tensors, got {type(params).__name__}")
    params = list(params)
    if not params or not all(isinstance(p, Tensor) and p.is_floating_point() for p in params):
        raise PlpruneError("params must be a non-empty sequence of floating-point tensors")
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        raise PlpruneError(f"params must share one dtype, got {sorted(str(d) for d in dtypes)}")
    max_params = check_positive_int("max_params", max_params)
    total = sum(p.numel() for p in params)
    if total > max_params:
        raise PlpruneError(
            f"exact Hessian of {total} weights needs a {total}x{total} matrix; allowed at most "
            f"max_params={max_params}; use hutchinson_trace for larger models"
        )
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def flat_fn(vector: Tensor) -> Tensor:
        pieces = [piece.view(shape) for piece, shape in zip(vector.split(sizes), shapes, strict=True)]
        out = fn(pieces)
        if not isinstance(out, Tensor) or out.dim() != 0:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise PlpruneError(f"fn must return a 0-d tensor, got {got}")
        return out

    # torch.func.hessian differentiates w.r.t. ``flat`` regardless of the outer no_grad, which only stops
    # a graph to other live tensors (e.g. parameters not in ``params``) from being recorded.
    with torch.no_grad():
        hessian = torch.func.hessian(flat_fn)(flat)
    return float(torch.diagonal(hessian).sum().detach())


def _model_params(model: nn.Module, params: Iterable[str | Tensor] | None) -> tuple[list[str], list[Tensor]]:
    names = resolve_param_names(model, params)
    named = dict(model.named_parameters())
    return names, [named[name] for name in names]


def model_hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    params: Iterable[str | Tensor] | None = None,
    num_probes: int = 1,
    distribution: str = "rademacher",
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    eval_mode: bool = True,
) -> HutchinsonEstimate:
    """Hutchinson estimate (Alg. 1) of Tr(∇²_w loss_fn(model, batch)) over ``params`` (names or
    tensors; ``None`` = all parameters with requires_grad).

    ``loss_fn(model, batch) -> 0-d Tensor``. With ``eval_mode`` (default) dropout is off during the
    forward pass so the estimate is deterministic for a fixed ``generator``; every submodule's mode is
    restored after. Other arguments as for :func:`hutchinson_trace`.
    """
    check_model(model)
    check_callable("loss_fn", loss_fn)
    _, tensors = _model_params(model, params)
    with torch.enable_grad():
        if eval_mode:
            with _eval_mode(model):
                scalar = loss_fn(model, batch)
        else:
            scalar = loss_fn(model, batch)
        return hutchinson_trace(
            scalar,
            tensors,
            num_probes=num_probes,
            distribution=distribution,
            generator=generator,
            create_graph=create_graph,
        )


def model_exact_hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    params: Iterable[str | Tensor] | None = None,
    max_params: int = EXACT_MAX_PARAMS,
) -> float:
    """Exact Tr(∇²_w loss_fn(model, batch)) over ``params`` via :func:`exact_hessian_trace` (tiny models
    only), in eval mode; the reference for :func:`model_hessian_trace`."""
    check_model(model)
    check_callable("loss_fn", loss_fn)
    names, tensors = _model_params(model, params)
    wrapper = OutputFnModule(model, loss_fn)

    def fn(values: list[Tensor]) -> Tensor:
        return wrapper.call_with(dict(zip(names, values, strict=True)), batch)

    with _eval_mode(model):
        return exact_hessian_trace(fn, tensors, max_params=max_params)
