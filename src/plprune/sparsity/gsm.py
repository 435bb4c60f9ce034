"""Global Sparse Momentum SGD (Ding, Ding, Zhou, Han, Liu & Guo, NeurIPS 2019).

GSM trains with momentum SGD but lets only the ``Q`` most important parameters receive the gradient of
the loss; every parameter receives weight decay, so the others decay towards 0 and can be removed at the
end without loss. With momentum buffer ``z``, learning rate α, momentum β and weight decay η_wd
(Ding et al. 2019, eq. 7–8)::

    z ← β z + η_wd θ + B(∂L/∂θ),     θ ← θ − α z,                                         (1)

where ``B`` keeps the gradient of the top-``Q`` elements by the first-order saliency
``T(θ_i) = |∂L/∂θ_i · θ_i|`` (eq. 5), ranked globally across all layers, and zeroes the rest.

* :class:`GSM` is the optimizer of (1).
* :class:`GSMMethod` is the same rule as a :class:`~plprune.sparsity.base.SparsityMethod`: it masks the
  gradients of all but the top-``Q`` units (weights, or structured groups by their saliency
  ``|Σ_{i∈g} θ_i ∂L/∂θ_i|``) and leaves momentum and weight decay to the caller's optimizer. With
  ``torch.optim.SGD(params, lr=α, momentum=β, weight_decay=η_wd)`` (no dampening, no Nesterov) SGD's step
  ``d = g + η_wd θ; z ← β z + d; θ ← θ − α z`` on the masked gradient ``g = B(∂L/∂θ)`` is exactly (1).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from plprune.errors import PlpruneError
from plprune.keep import prune_count
from plprune.sparsity.base import SparsityMethod
from plprune.validation import check_non_negative_float, check_positive_float, check_probability

if TYPE_CHECKING:  # annotations only
    from collections.abc import Callable, Iterable

__all__ = ["GSM", "GSMMethod", "top_q_mask"]


def top_q_mask(saliency: Tensor, q: int) -> Tensor:
    """Bool mask of the ``q`` largest entries of the 1-D ``saliency`` (ties: the lower index first),
    ``0 ≤ q ≤ len(saliency)``: the selection ``B`` of GSM's eq. (1)."""
    if not isinstance(saliency, Tensor) or saliency.dim() != 1:
        shape = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise PlpruneError(f"saliency must be a 1-D tensor, got {shape}")
    n = saliency.numel()
    if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= n:
        raise PlpruneError(f"Q (the number of entries kept) must be an integer in [0, {n}], got {q!r}")
    if bool(torch.isnan(saliency).any()):
        raise PlpruneError("saliency contains NaN; it cannot be ranked")
    order = torch.sort(saliency.detach(), descending=True, stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool, device=saliency.device)
    mask[order[:q]] = True
    return mask


def _check_keep(keep: Any, total: int) -> int | float:
    """``keep`` as an int count in [0, total] or a float fraction in (0, 1]."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise PlpruneError(
            f"keep must be an int Q (elements kept, 0 ≤ Q ≤ {total}) or a float fraction in (0, 1], "
            f"got {keep!r}"
        )
    if isinstance(keep, int):
        if not 0 <= keep <= total:
            raise PlpruneError(
                f"keep Q = {keep} is outside [0, {total}] (the parameters have {total} elements); "
                "pass a float in (0, 1] for a fraction"
            )
        return keep
    if not math.isfinite(keep) or not 0 < keep <= 1:
        raise PlpruneError(
            f"keep fraction must lie in (0, 1], got {keep!r}; pass an int for a count of elements"
        )
    return float(keep)


def _fraction_count(fraction: float, total: int) -> int:
    """``round(fraction · total)`` (half up), at least 1 when there is anything to keep."""
    return min(total, max(1, math.floor(fraction * total + 0.5))) if total else 0


class GSM(torch.optim.Optimizer):
    """Global Sparse Momentum SGD, the update (1) of the module docstring.

    Args:
        params: parameters or parameter groups (each group may set ``lr``, ``momentum``, ``weight_decay``).
        lr: α > 0.
        momentum: β in [0, 1).
        weight_decay: η_wd ≥ 0, applied to every element.
        keep: ``Q``, keyword only: an int (elements whose gradient is kept, counted over all elements of
            all parameters, ``0 ≤ Q ≤`` that total) or a float fraction in (0, 1] of the elements
            (``round(fraction · total)``, at least 1).

    The ranking is global over all parameter groups; parameters without a gradient are skipped (no
    decay, no momentum, as in ``torch.optim.SGD``) and do not compete for the ``Q`` places. The momentum
    buffer is ``self.state[p]["momentum_buffer"]``, starting from 0.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        *,
        keep: int | float,
    ) -> None:
        check_positive_float("GSM learning rate", lr)
        check_probability("GSM momentum", momentum)
        check_non_negative_float("GSM weight decay", weight_decay)
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        for group in self.param_groups:
            check_positive_float("GSM learning rate", group["lr"])
            check_probability("GSM momentum", group["momentum"])
            check_non_negative_float("GSM weight decay", group["weight_decay"])
        self.keep = _check_keep(keep, self._total())

    def _total(self) -> int:
        return sum(p.numel() for group in self.param_groups for p in group["params"])

    def keep_count(self) -> int:
        """``Q`` over the current parameters."""
        if isinstance(self.keep, int):
            return self.keep
        return _fraction_count(self.keep, self._total())

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One GSM update (1): rank ``|g ⊙ θ|`` over all elements with a gradient, keep the top ``Q``
        gradients, then ``z ← β z + η_wd θ + B(g)``, ``θ ← θ − α z`` per parameter group."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return loss
        for p in params:
            if p.grad.is_sparse:
                raise PlpruneError("GSM does not support sparse gradients")
        saliency = torch.cat([(p.grad * p).abs().flatten() for p in params])
        q = min(self.keep_count(), saliency.numel())
        keep = top_q_mask(saliency, q)
        masks: dict[int, Tensor] = {}
        offset = 0
        for p in params:
            masks[id(p)] = keep[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        for group in self.param_groups:
            beta, decay, lr = group["momentum"], group["weight_decay"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.mul(masks[id(p)].to(p.grad.dtype))  # B(∂L/∂θ)
                if decay != 0:
                    d = d.add(p, alpha=decay)  # + η_wd θ
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(p)
                buf.mul_(beta).add_(d)  # z ← β z + η_wd θ + B(g)
                p.add_(buf, alpha=-lr)  # θ ← θ − α z
        return loss


class GSMMethod(SparsityMethod):
    """GSM as a sparsity method: before each optimizer step, until the schedule's last pruning event, only
    the top-``Q`` alive units by saliency (:meth:`~plprune.sparsity.base.Units.saliency`) keep their
    gradient; the rest are moved by the caller's weight decay and momentum only (module docstring: with
    ``torch.optim.SGD(momentum=β, weight_decay=η_wd)`` this is exactly GSM's update (1)).

    Args:
        keep_fraction: ``Q = round(keep_fraction · n)`` (at least 1), in (0, 1]. ``None`` (default): the
            number of units the schedule keeps at its final ratio, ``n − prune_count(n, target_ratio)``.
            ``Q`` never exceeds the number of alive units.

    The scores at pruning events are the magnitudes (the units outside the top ``Q`` have decayed).
    """

    name = "gsm"

    def __init__(self, keep_fraction: float | None = None) -> None:
        if keep_fraction is not None:
            ok = isinstance(keep_fraction, (int, float)) and not isinstance(keep_fraction, bool)
            if not ok or not math.isfinite(keep_fraction) or not 0 < keep_fraction <= 1:
                raise PlpruneError(
                    f"GSM keep_fraction must be a number in (0, 1] (the fraction of units whose gradient is "
                    f"kept) or None (the schedule's final keep count), got {keep_fraction!r}"
                )
            keep_fraction = float(keep_fraction)
        self.keep_fraction = keep_fraction

    def keep_count(self) -> int:
        """``Q``: the number of alive units whose gradient is kept."""
        n = len(self.units)
        alive = int(self.units.alive().sum())
        if self.keep_fraction is None:
            q = n - prune_count(n, self.target_ratio)
        else:
            q = _fraction_count(self.keep_fraction, n)
        return min(q, alive)

    @torch.no_grad()
    def before_update(self, step: int) -> None:
        """Zero the gradients of all but the top-``Q`` alive units by saliency (while ``step < end_step``)."""
        if step >= self.end_step:
            return
        units = self.units
        saliency = units.saliency()
        alive = units.alive().to(saliency.device)
        index = alive.nonzero().flatten()
        chosen = top_q_mask(saliency[index], self.keep_count())
        keep = torch.zeros_like(alive)
        keep[index[chosen]] = True
        units.mask_gradients_(keep)

    def metrics(self) -> dict[str, Any]:
        metrics = super().metrics()
        metrics[f"{self.name}_q"] = self.keep_count()
        return metrics
