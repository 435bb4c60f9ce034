"""Trimmed ℓ1 (Yun, Lozano & Yang, "Trimming the ℓ1 regularizer", ICML 2019), for weights or groups.

The trimmed ℓ1 penalty leaves the ``h`` largest entries of ``θ ∈ R^p`` unpenalised and applies ℓ1 to the
rest. Written with weights ``w`` on the entries it is the joint problem

.. math::

    \\min_{θ, w}\\; L(θ) + λ \\sum_j w_j |θ_j| \\quad \\text{s.t.}\\quad
    w ∈ S := \\{w ∈ [0, 1]^p : 1^\\top w ≥ p − h\\},                                   \\tag{1}

whose minimiser over ``w`` for fixed ``θ`` puts ``w_j = 0`` on the ``h`` largest ``|θ_j|`` and 1 elsewhere.
:class:`TrimmedL1Method` solves (1) by block coordinate descent (Yun et al. 2019, Alg. 1), one round after
each optimizer step (which took the gradient step on ``L`` with learning rate η):

* (a) a projected gradient step on ``w`` (the penalty is linear in ``w``, gradient ``r_j(θ) = λ|θ_j|``)::

      w ← proj_S(w − τ r(θ) / max_j r_j(θ))                                              (2)

* (b) a proximal step on ``θ``, the weighted soft threshold (prox of ``ηλ Σ_j w_j |θ_j|``)::

      θ_j ← sign(θ_j) · max(|θ_j| − η λ w_j, 0).                                          (3)

The projection onto ``S`` (:func:`project_trimmed_weights`) is a clip to ``[0, 1]`` when that already
satisfies the sum constraint and otherwise the Euclidean projection onto the capped simplex
``{w ∈ [0, 1]^p : 1^\\top w = p − h}`` (:func:`project_capped_simplex`, Wang & Lu 2015, exact and
sort-based, ``O(p log p)``).

For structured groups the :class:`~plprune.sparsity.base.Units` report group norms ``‖θ_g‖₂`` as
magnitudes and scale whole groups, so the same code is the group trimmed lasso: (3) becomes the group soft
threshold ``θ_g ← θ_g · max(‖θ_g‖ − ηλw_g, 0)/‖θ_g‖``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from plprune.errors import PlpruneError
from plprune.keep import prune_count
from plprune.schedules import Schedule
from plprune.sparsity.base import SparsityMethod, Units
from plprune.validation import check_non_negative_float, check_non_negative_int

__all__ = [
    "TrimmedL1Method",
    "project_capped_simplex",
    "project_trimmed_weights",
    "weighted_soft_threshold",
]


def _check_vector(name: str, v: Any) -> Tensor:
    if not isinstance(v, Tensor):
        raise PlpruneError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if v.dim() != 1:
        raise PlpruneError(f"{name} must be a 1-D tensor (a vector), got shape {tuple(v.shape)}")
    if not v.is_floating_point():
        raise PlpruneError(f"{name} must be a floating-point tensor, got dtype {v.dtype}")
    if not bool(torch.isfinite(v).all()):
        raise PlpruneError(f"{name} contains NaN or Inf; only finite values can be projected")
    return v


def _clip_sums(xs: Tensor, prefix: Tensor, taus: Tensor) -> Tensor:
    """``f(τ) = Σ_i clip(x_i − τ, 0, 1)`` at every ``τ`` in ``taus`` (``xs`` sorted, ``prefix`` its cumsum
    with a leading 0): ``#{x_i ≥ τ + 1} + Σ_{τ < x_i < τ + 1} (x_i − τ)``, by binary search."""
    p = xs.numel()
    low = torch.searchsorted(xs, taus, right=True)  # x_i ≤ τ contribute 0
    high = torch.maximum(torch.searchsorted(xs, taus + 1.0, right=False), low)  # x_i ≥ τ + 1 contribute 1
    return (p - high) + (prefix[high] - prefix[low]) - taus * (high - low)


def project_capped_simplex(v: Tensor, total: float) -> Tensor:
    """Euclidean projection of ``v ∈ R^p`` onto the capped simplex ``{w ∈ [0, 1]^p : Σ_i w_i = total}``.

    Exact (Wang & Lu 2015, "Projection onto the capped simplex", arXiv:1503.01002). The KKT conditions of
    ``min ½‖w − v‖²`` give ``w_i = clip(v_i − τ, 0, 1)`` for the ``τ`` solving ``f(τ) = total`` with

    .. math:: f(τ) = \\sum_i \\operatorname{clip}(v_i − τ, 0, 1),

    a continuous, non-increasing, piecewise-linear function whose breakpoints are the ``v_i`` and
    ``v_i − 1``. After one sort, ``f`` at every breakpoint comes from prefix sums and binary search; the
    root lies on the piece between the last breakpoint with ``f ≥ total`` and the first with
    ``f < total``, where ``f`` is linear: with ``M`` the entries strictly between 0 and 1 there and ``C``
    the entries at 1, ``τ = (C + Σ_{i∈M} v_i − total) / |M|``. ``O(p log p)``; computed in float64,
    returned in ``v``'s dtype.

    Args:
        v: a 1-D floating tensor of finite values.
        total: the required sum, ``0 ≤ total ≤ p``.
    """
    _check_vector("v", v)
    p = v.numel()
    total = check_non_negative_float("capped-simplex total", total)
    if total > p:
        raise PlpruneError(
            f"capped-simplex total must lie in [0, p] = [0, {p}] (w ∈ [0, 1]^{p} sums to at most {p}), "
            f"got {total}"
        )
    if total == 0.0:
        return torch.zeros_like(v)
    if total == float(p):
        return torch.ones_like(v)
    x = v.detach().to(torch.float64)
    xs = torch.sort(x).values
    prefix = torch.cat([xs.new_zeros(1), torch.cumsum(xs, 0)])
    lower, upper = -math.inf, math.inf  # the largest breakpoint with f ≥ total, the smallest with f < total
    for breakpoints in (xs - 1.0, xs):
        values = _clip_sums(xs, prefix, breakpoints)
        above = values >= total
        if bool(above.any()):
            lower = max(lower, float(breakpoints[above].max()))
        if bool((~above).any()):
            upper = min(upper, float(breakpoints[~above].min()))
    # f(min v − 1) = p > total and f(max v) = 0 < total, so both are finite; on (lower, upper) no entry
    # changes regime: it is in the middle iff v_i ≥ upper and v_i − 1 ≤ lower, and at 1 iff v_i − 1 ≥ upper.
    middle = (x >= upper) & (x - 1.0 <= lower)
    count = int(middle.sum())
    if lower < upper and count > 0:
        ones = float((x - 1.0 >= upper).sum())
        tau = (ones + float(x[middle].sum()) - total) / count
    else:  # f is flat (= total) on the piece, every τ in it gives the same w (or rounding met two ties)
        tau = 0.5 * (lower + upper)
    w = torch.clamp(x - tau, 0.0, 1.0)
    # one Newton step on the directly summed f guards against rounding in the prefix sums
    residual = float(w.sum()) - total
    inner = int(((x - tau > 0) & (x - tau < 1)).sum())
    if residual != 0.0 and inner > 0:
        refined = torch.clamp(x - (tau + residual / inner), 0.0, 1.0)
        if abs(float(refined.sum()) - total) < abs(residual):
            w = refined
    return w.to(v.dtype)


def project_trimmed_weights(v: Tensor, h: int) -> Tensor:
    """Euclidean projection of ``v ∈ R^p`` onto ``S = {w ∈ [0, 1]^p : 1^\\top w ≥ p − h}`` (eq. 1).

    If ``clip(v, 0, 1)`` satisfies the sum constraint it is the projection (the box is the only active
    constraint); otherwise the sum constraint is active at the optimum and the projection is the
    capped-simplex projection with total ``p − h`` (:func:`project_capped_simplex`).

    Args:
        v: a 1-D floating tensor of finite values.
        h: the number of entries left unpenalised, ``0 ≤ h ≤ p``.
    """
    _check_vector("v", v)
    p = v.numel()
    check_non_negative_int("trimmed count h", h)
    if h > p:
        raise PlpruneError(
            f"trimmed count h = {h} exceeds the number of entries p = {p}; h must lie in [0, {p}]"
        )
    clipped = torch.clamp(v, 0.0, 1.0)
    if float(clipped.double().sum()) >= p - h:
        return clipped
    return project_capped_simplex(v, p - h)


def weighted_soft_threshold(t: Tensor, thresholds: Tensor | float) -> Tensor:
    """Weighted soft threshold ``sign(t_j) · max(|t_j| − thresholds_j, 0)`` elementwise (eq. 3): the prox
    of ``Σ_j thresholds_j |t_j|``. ``thresholds`` broadcasts against ``t`` and must be ``≥ 0``."""
    if not isinstance(t, Tensor):
        raise PlpruneError(f"t must be a torch.Tensor, got {type(t).__name__}")
    thresholds = torch.as_tensor(thresholds, dtype=t.dtype, device=t.device)
    if bool((thresholds < 0).any()) or not bool(torch.isfinite(thresholds).all()):
        raise PlpruneError("soft-threshold thresholds must be finite and ≥ 0 (they are η λ w_j)")
    return torch.sign(t) * torch.clamp(t.abs() - thresholds, min=0.0)


class TrimmedL1Method(SparsityMethod):
    """Trimmed ℓ1 by block coordinate descent on (1): after each optimizer step, (a) a projected gradient
    step on the penalty weights ``w`` (eq. 2), then (b) the weighted soft threshold on ``θ`` (eq. 3), until
    the schedule's last pruning event.

    Args:
        strength: λ ≥ 0, the ℓ1 strength on the penalised entries.
        trimmed: ``h``, the number of units left unpenalised (``0 ≤ h ≤ n``); ``None``: the number the
            schedule keeps at its final ratio, ``n − prune_count(n, target_ratio)``.
        weight_step: τ ≥ 0, the step on ``w``. The gradient ``r(θ) = λ|θ|`` is divided by its largest
            entry, so τ is scale-free: the most penalised unit's weight moves by τ before projection
            (τ = 1 can drive it from 1 to 0 in one step; λ then only sets the proximal threshold). The
            projected gradient steps on the linear objective ``Σ_j r_j w_j`` reach its minimiser over ``S``
            (``w = 0`` on the ``h`` largest units, 1 elsewhere) in finitely many rounds while the order of
            the magnitudes is stable. τ = 0 freezes ``w`` at 1: plain ℓ1.

    State (:meth:`state_dict`): ``w``. Pruned units (``alive()`` False) stay at 0.
    """

    name = "trimmed-l1"

    def __init__(self, strength: float = 1e-4, trimmed: int | None = None, weight_step: float = 1.0) -> None:
        self.strength = check_non_negative_float("trimmed-l1 strength λ", strength)
        if trimmed is not None:
            trimmed = check_non_negative_int("trimmed-l1 trimmed count h", trimmed)
        self.trimmed = trimmed
        self.weight_step = check_non_negative_float("trimmed-l1 weight step τ", weight_step)
        self.w: Tensor | None = None
        self.h = 0

    def bind(self, units: Units, schedule: Schedule, allocation: str = "global") -> None:
        super().bind(units, schedule, allocation)
        n = len(units)
        h = n - prune_count(n, self.target_ratio) if self.trimmed is None else self.trimmed
        if h > n:
            raise PlpruneError(
                f"trimmed-l1 trimmed count h = {h} exceeds the number of units n = {n}; "
                f"h must lie in [0, {n}]"
            )
        self.h = h
        magnitudes = units.magnitudes()
        w = torch.ones(n, dtype=magnitudes.dtype, device=magnitudes.device)
        self.w = project_trimmed_weights(w, h)

    def penalty(self) -> float:
        """The current value of ``λ Σ_j w_j |θ_j|``."""
        return self.strength * float((self._weights() * self.units.magnitudes()).double().sum())

    def _weights(self) -> Tensor:
        if self.w is None:
            raise PlpruneError("trimmed-l1 is not bound to any units yet; call bind(units, schedule) first")
        return self.w

    @torch.no_grad()
    def after_update(self, step: int, lr: float) -> None:
        """One round of block coordinate descent (module docstring), with η = ``lr``."""
        if step >= self.end_step:
            return
        w = self._weights()
        units = self.units
        alive = units.alive().to(w.device)
        old = units.magnitudes()
        # (a) w ← proj_S(w − τ r/max r), r = λ|θ| (eq. 2); r ≡ 0 (λ = 0 or θ = 0) leaves w in place
        r = self.strength * old
        largest = float(r.max()) if r.numel() else 0.0
        if self.weight_step > 0 and largest > 0:
            w = project_trimmed_weights(w - self.weight_step * (r / largest), self.h)
        self.w = w
        # (b) θ ← sign(θ) max(|θ| − ηλw, 0) (eq. 3), as factors on the magnitudes (0/0 → 0)
        new = torch.clamp(old - float(lr) * self.strength * w, min=0.0)
        positive = (old > 0) & alive
        factors = torch.where(positive, new / torch.where(positive, old, torch.ones_like(old)), 0.0)
        units.scale_(factors)

    def metrics(self) -> dict[str, Any]:
        metrics = super().metrics()
        w = self._weights()
        metrics[f"{self.name}_penalised_fraction"] = float(w.double().mean()) if w.numel() else 0.0
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"w": self._weights().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        w = self._weights()
        if not isinstance(state, dict) or not isinstance(state.get("w"), Tensor):
            raise PlpruneError("not a trimmed-l1 state: expected {'w': tensor}")
        saved = state["w"]
        if saved.shape != w.shape:
            raise PlpruneError(
                f"saved trimmed-l1 weights have shape {tuple(saved.shape)}, "
                f"but the units need {tuple(w.shape)}"
            )
        self.w = saved.detach().to(device=w.device, dtype=w.dtype).clone()
