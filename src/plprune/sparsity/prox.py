"""Proximal operators for sparsity penalties, and proximal-gradient training.

Every operator here is element-wise on a float tensor ``t`` and is the proximal map with unit step,

    prox_{λR}(t) = argmin_z  λR(z) + ½(z − t)²,

of a penalty ``R`` (for SCAD and MCP, whose ``λ`` sits inside the penalty, of ``p_λ``):

* :func:`soft_threshold` — ℓ1, ``R = |z|``;
* :func:`lq_prox` — ℓq, ``R = |z|^q``, 0 < q < 1 (Marjanovic & Solo 2012);
* :func:`q_shrinkage` — Chartrand's p-shrinkage (Chartrand 2012), whose penalty has no closed form;
* :func:`scad_prox` — SCAD (Fan & Li 2001), ``a > 2``;
* :func:`mcp_prox` — MCP (Zhang 2010), ``γ > 1``;
* :func:`firm_threshold` — firm shrinkage (Gao & Bruce 1997), ``0 ≤ λ < μ``: MCP's prox with ``γ = μ/λ``;
* :func:`hard_threshold` — ℓ0, ``R = 1[z ≠ 0]``;
* :func:`l0_projection` — the Euclidean projection onto ``{‖z‖₀ ≤ n}`` (not element-wise: keeps the ``n``
  largest entries; the training method applies the keep rule's per-layer protection and allocation on top).

The penalties (``l1_penalty`` ... ``l0_penalty``, ``λ`` included) let a caller check optimality.
:data:`PROX_OPERATORS` names them for the training method: ``"l1"``, ``"lq"``, ``"q-shrink"``, ``"scad"``,
``"mcp"``, ``"firm"``, ``"l0"`` (the projection). :func:`group_prox` applies an operator to group norms
(``θ_g ← θ_g · prox(‖θ_g‖)/‖θ_g‖``), and :class:`ProximalMethod` runs proximal gradient descent on the
units of a model (single weights or structured groups): after each optimizer step with learning rate η,
``θ ← prox_{ηλR}(θ)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from plprune.errors import PlpruneError
from plprune.keep import kind_allocation, kind_mask
from plprune.schedules import Schedule
from plprune.sparsity.base import SparsityMethod, Units
from plprune.validation import check_choice, check_non_negative_float, check_non_negative_int

__all__ = [
    "PROX_OPERATORS",
    "ProxOperator",
    "ProxParam",
    "ProximalMethod",
    "firm_penalty",
    "firm_threshold",
    "get_operator",
    "group_prox",
    "hard_threshold",
    "l0_penalty",
    "l0_projection",
    "l1_penalty",
    "lq_penalty",
    "lq_prox",
    "lq_threshold",
    "mcp_penalty",
    "mcp_prox",
    "q_shrinkage",
    "scad_penalty",
    "scad_prox",
    "soft_threshold",
]

_NEWTON_MAX_ITERATIONS = 100


# -- input checks --------------------------------------------------------------------------------------
def _check_tensor(name: str, t: Any) -> Tensor:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        kind = f"a {t.dtype} tensor" if isinstance(t, Tensor) else type(t).__name__
        raise PlpruneError(f"{name} must be a floating-point torch.Tensor, got {kind}")
    return t


def _check_lam(lam: Any) -> float:
    return check_non_negative_float("lam (the threshold λ)", lam)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_q(q: Any) -> float:
    if not _is_number(q) or not 0 < q < 1:
        raise PlpruneError(f"q must lie in the open interval (0, 1), got {q!r}")
    return float(q)


def _check_a(a: Any) -> float:
    if not _is_number(a) or not a > 2:
        raise PlpruneError(f"SCAD's a must be a finite number > 2 (Fan & Li suggest 3.7), got {a!r}")
    return float(a)


def _check_gamma(gamma: Any) -> float:
    if not _is_number(gamma) or not gamma > 1:
        raise PlpruneError(f"MCP's gamma must be a finite number > 1, got {gamma!r}")
    return float(gamma)


def _check_mu(lam: float, mu: Any) -> float:
    if not _is_number(mu) or not mu > lam:
        raise PlpruneError(
            f"firm threshold needs a finite mu > lam (0 <= lam < mu), got lam={lam!r}, mu={mu!r}"
        )
    return float(mu)


def _check_n(n: Any) -> int:
    return check_non_negative_int("n (the number of entries the l0 projection keeps)", n)


# -- proximal operators --------------------------------------------------------------------------------
def soft_threshold(t: Tensor, lam: float) -> Tensor:
    """ℓ1 prox (soft threshold): ``sign(t)·max(|t| − λ, 0)`` = argmin_z λ|z| + ½(z − t)²."""
    t = _check_tensor("t", t)
    lam = _check_lam(lam)
    return torch.sign(t) * torch.clamp_min(t.abs() - lam, 0.0)


def lq_threshold(lam: float, q: float) -> tuple[float, float]:
    """``(β, τ)`` of the ℓq prox (Marjanovic & Solo 2012): ``β = [2λ(1 − q)]^{1/(2−q)}`` is the smallest
    non-zero output, ``τ = β + λqβ^{q−1}`` the threshold (``|t| ≤ τ → 0``). ``(0, 0)`` when λ = 0."""
    lam = _check_lam(lam)
    q = _check_q(q)
    if lam == 0:
        return 0.0, 0.0
    beta = (2.0 * lam * (1.0 - q)) ** (1.0 / (2.0 - q))
    return beta, beta + lam * q * beta ** (q - 1.0)


def lq_prox(t: Tensor, lam: float, q: float = 0.5) -> Tensor:
    """ℓq prox, 0 < q < 1: argmin_z λ|z|^q + ½(z − t)² (Marjanovic & Solo 2012).

    With ``β = [2λ(1 − q)]^{1/(2−q)}`` and ``τ = β + λqβ^{q−1}`` (:func:`lq_threshold`): ``|t| ≤ τ → 0``
    (at ``|t| = τ`` 0 and β tie; 0 is returned), else ``sign(t)·y`` with ``y`` the root in ``[β, |t|]`` of
    the stationarity equation ``λq y^{q−1} + y − |t| = 0``. Its left side is convex and increasing on
    ``[β, ∞)``, so Newton's method started at ``y = |t|`` decreases monotonically to the root; iterates are
    also clamped to ``[β, |t|]``. Computed in float64 to full precision, returned in ``t``'s dtype.
    """
    t = _check_tensor("t", t)
    beta, tau = lq_threshold(lam, q)
    lam, q = float(lam), float(q)
    if lam == 0:
        return t.clone()
    x = t.to(torch.float64)
    a = x.abs()
    active = a > tau
    target = torch.where(active, a, torch.full_like(a, tau))  # inactive entries solve g(y) = τ: y = β
    upper = torch.where(active, a, torch.full_like(a, beta))
    y = upper.clone()
    eps = torch.finfo(torch.float64).eps
    for _ in range(_NEWTON_MAX_ITERATIONS):
        g = lam * q * y.pow(q - 1.0) + y - target
        dg = 1.0 - lam * q * (1.0 - q) * y.pow(q - 2.0)
        new = torch.minimum(torch.clamp_min(y - g / dg, beta), upper)
        converged = bool(((new - y).abs() <= 4.0 * eps * new).all()) if new.numel() else True
        y = new
        if converged:
            break
    return torch.where(active, torch.sign(x) * y, torch.zeros_like(x)).to(t.dtype)


def q_shrinkage(t: Tensor, lam: float, q: float = 0.5) -> Tensor:
    """Chartrand's q-shrinkage (p-shrinkage; Chartrand 2012, "Nonconvex splitting for regularized
    low-rank + sparse decomposition"): ``sign(t)·max(|t| − λ^{2−q}|t|^{q−1}, 0)``, 0 at ``t = 0``.

    It is the prox of a penalty that has no closed form (Chartrand constructs it through its Legendre
    transform), so no ``penalty`` is given for it. It is 0 for ``|t| ≤ λ`` and tends to the soft threshold
    as ``q → 1``.
    """
    t = _check_tensor("t", t)
    lam = _check_lam(lam)
    q = _check_q(q)
    a = t.abs()
    nonzero = a > 0
    safe = torch.where(nonzero, a, torch.ones_like(a))
    shrunk = torch.clamp_min(safe - lam ** (2.0 - q) * safe.pow(q - 1.0), 0.0)
    return torch.where(nonzero, torch.sign(t) * shrunk, torch.zeros_like(t))


def scad_prox(t: Tensor, lam: float, a: float = 3.7) -> Tensor:
    """SCAD prox with unit step, a > 2 (Fan & Li 2001, eq. 2.8): argmin_z p_λ(z) + ½(z − t)² =

    * ``sign(t)·max(|t| − λ, 0)`` for ``|t| ≤ 2λ``,
    * ``((a − 1)t − sign(t)aλ)/(a − 2)`` for ``2λ < |t| ≤ aλ``,
    * ``t`` for ``|t| > aλ``.
    """
    t = _check_tensor("t", t)
    lam = _check_lam(lam)
    a = _check_a(a)
    mag, sign = t.abs(), torch.sign(t)
    soft = sign * torch.clamp_min(mag - lam, 0.0)
    middle = ((a - 1.0) * t - sign * (a * lam)) / (a - 2.0)
    return torch.where(mag <= 2.0 * lam, soft, torch.where(mag <= a * lam, middle, t))


def mcp_prox(t: Tensor, lam: float, gamma: float = 3.0) -> Tensor:
    """MCP prox with unit step, γ > 1 (Zhang 2010; the firm threshold): argmin_z p_{λ,γ}(z) + ½(z − t)² =

    * ``0`` for ``|t| ≤ λ``,
    * ``sign(t)(|t| − λ)/(1 − 1/γ)`` for ``λ < |t| ≤ γλ``,
    * ``t`` for ``|t| > γλ``.
    """
    t = _check_tensor("t", t)
    lam = _check_lam(lam)
    gamma = _check_gamma(gamma)
    mag = t.abs()
    middle = torch.sign(t) * (mag - lam) / (1.0 - 1.0 / gamma)
    return torch.where(mag <= lam, torch.zeros_like(t), torch.where(mag <= gamma * lam, middle, t))


def firm_threshold(t: Tensor, lam: float, mu: float) -> Tensor:
    """Firm shrinkage, 0 ≤ λ < μ (Gao & Bruce 1997, "WaveShrink with firm shrinkage"):

    * ``0`` for ``|t| ≤ λ``,
    * ``sign(t)·μ(|t| − λ)/(μ − λ)`` for ``λ < |t| ≤ μ``,
    * ``t`` for ``|t| > μ``.

    It is :func:`mcp_prox` with ``γ = μ/λ`` (the prox of :func:`firm_penalty`).
    """
    t = _check_tensor("t", t)
    lam = _check_lam(lam)
    mu = _check_mu(lam, mu)
    mag = t.abs()
    middle = torch.sign(t) * (mu * (mag - lam) / (mu - lam))
    return torch.where(mag <= lam, torch.zeros_like(t), torch.where(mag <= mu, middle, t))


def hard_threshold(t: Tensor, lam: float) -> Tensor:
    """ℓ0 prox (hard threshold): argmin_z λ·1[z ≠ 0] + ½(z − t)² = ``t`` where ``|t| > √(2λ)``, else 0
    (at ``|t| = √(2λ)`` both tie; 0 is returned)."""
    t = _check_tensor("t", t)
    lam = _check_lam(lam)
    return torch.where(t.abs() > math.sqrt(2.0 * lam), t, torch.zeros_like(t))


def l0_projection(t: Tensor, n: int) -> Tensor:
    """Euclidean projection onto ``{z : ‖z‖₀ ≤ n}`` (over all entries of ``t``, any shape): keep the ``n``
    entries of largest ``|t|`` and zero the rest. Ties are broken by flat index: the lower one is kept
    first. ``n ≥ t.numel()`` returns a copy of ``t``."""
    t = _check_tensor("t", t)
    n = _check_n(n)
    flat = t.reshape(-1)
    if n >= flat.numel():
        return t.clone()
    order = torch.sort(flat.abs(), descending=True, stable=True).indices
    keep = torch.zeros(flat.shape, dtype=torch.bool, device=t.device)
    keep[order[:n]] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).view_as(t)


# -- penalties (element-wise values, λ included) -------------------------------------------------------
def l1_penalty(z: Tensor, lam: float) -> Tensor:
    """``λ|z|``, the penalty of :func:`soft_threshold`."""
    z = _check_tensor("z", z)
    return _check_lam(lam) * z.abs()


def lq_penalty(z: Tensor, lam: float, q: float = 0.5) -> Tensor:
    """``λ|z|^q`` (0 at z = 0), the penalty of :func:`lq_prox`."""
    z = _check_tensor("z", z)
    return _check_lam(lam) * z.abs().pow(_check_q(q))


def scad_penalty(z: Tensor, lam: float, a: float = 3.7) -> Tensor:
    """SCAD (Fan & Li 2001, eq. 2.7 integrated): ``λ|z|`` for ``|z| ≤ λ``;
    ``(2aλ|z| − z² − λ²)/(2(a − 1))`` for ``λ < |z| ≤ aλ``; ``(a + 1)λ²/2`` beyond."""
    z = _check_tensor("z", z)
    lam = _check_lam(lam)
    a = _check_a(a)
    mag = z.abs()
    middle = (2.0 * a * lam * mag - mag * mag - lam * lam) / (2.0 * (a - 1.0))
    flat = torch.full_like(z, (a + 1.0) * lam * lam / 2.0)
    return torch.where(mag <= lam, lam * mag, torch.where(mag <= a * lam, middle, flat))


def mcp_penalty(z: Tensor, lam: float, gamma: float = 3.0) -> Tensor:
    """MCP (Zhang 2010, eq. 2.3): ``λ|z| − z²/(2γ)`` for ``|z| ≤ γλ``; ``γλ²/2`` beyond."""
    z = _check_tensor("z", z)
    lam = _check_lam(lam)
    gamma = _check_gamma(gamma)
    mag = z.abs()
    flat = torch.full_like(z, gamma * lam * lam / 2.0)
    return torch.where(mag <= gamma * lam, lam * mag - mag * mag / (2.0 * gamma), flat)


def firm_penalty(z: Tensor, lam: float, mu: float) -> Tensor:
    """MCP with ``γ = μ/λ``: ``λ(|z| − z²/(2μ))`` for ``|z| ≤ μ``; ``λμ/2`` beyond (0 when λ = 0)."""
    z = _check_tensor("z", z)
    lam = _check_lam(lam)
    mu = _check_mu(lam, mu)
    mag = z.abs()
    flat = torch.full_like(z, lam * mu / 2.0)
    return torch.where(mag <= mu, lam * (mag - mag * mag / (2.0 * mu)), flat)


def l0_penalty(z: Tensor, lam: float) -> Tensor:
    """``λ·1[z ≠ 0]``, the penalty of :func:`hard_threshold`."""
    z = _check_tensor("z", z)
    return _check_lam(lam) * (z != 0).to(z.dtype)


# -- the registry --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProxParam:
    """A shape parameter of an operator: its name and default (``None``: required). With ``times_lam``
    the default is ``default·λ`` (firm's μ = 2λ)."""

    name: str
    default: float | None
    times_lam: bool = False

    def default_for(self, lam: float) -> float | None:
        if self.default is None:
            return None
        return self.default * lam if self.times_lam else self.default


_PARAM_CHECKS: dict[str, Callable[[float, Any], Any]] = {
    "q": lambda lam, v: _check_q(v),
    "a": lambda lam, v: _check_a(v),
    "gamma": lambda lam, v: _check_gamma(v),
    "mu": _check_mu,
    "n": lambda lam, v: _check_n(v),
}


@dataclass(frozen=True)
class ProxOperator:
    """One named proximal operator.

    ``function(t, lam, **params)`` is the prox (for the projection, ``function(t, n)``: ``takes_lam``
    False), ``penalty(z, lam, **params)`` its element-wise penalty (None: no closed form, or a constraint),
    ``params`` its shape parameters with defaults. Call the operator (``op(t, lam, **params)``) to fill in
    defaults and check the parameters first.
    """

    name: str
    function: Callable[..., Tensor]
    penalty: Callable[..., Tensor] | None
    params: tuple[ProxParam, ...] = ()
    takes_lam: bool = True

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def resolve(self, lam: float, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` with defaults filled in, checked (unknown names, missing required ones, ranges)."""
        lam = _check_lam(lam)
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            allowed = ", ".join(self.param_names) or "none"
            raise PlpruneError(
                f"proximal operator {self.name!r} has no parameter(s) {', '.join(unknown)}; "
                f"allowed: {allowed}"
            )
        resolved: dict[str, Any] = {}
        for param in self.params:
            value = params.get(param.name, param.default_for(lam))
            if value is None:
                raise PlpruneError(f"proximal operator {self.name!r} needs the parameter {param.name}")
            resolved[param.name] = _PARAM_CHECKS[param.name](lam, value)
        return resolved

    def __call__(self, t: Tensor, lam: float, **params: Any) -> Tensor:
        resolved = self.resolve(lam, params)
        if self.takes_lam:
            return self.function(t, lam, **resolved)
        return self.function(t, **resolved)


PROX_OPERATORS: dict[str, ProxOperator] = {
    op.name: op
    for op in (
        ProxOperator("l1", soft_threshold, l1_penalty),
        ProxOperator("lq", lq_prox, lq_penalty, (ProxParam("q", 0.5),)),
        ProxOperator("q-shrink", q_shrinkage, None, (ProxParam("q", 0.5),)),
        ProxOperator("scad", scad_prox, scad_penalty, (ProxParam("a", 3.7),)),
        ProxOperator("mcp", mcp_prox, mcp_penalty, (ProxParam("gamma", 3.0),)),
        ProxOperator("firm", firm_threshold, firm_penalty, (ProxParam("mu", 2.0, times_lam=True),)),
        ProxOperator("l0", l0_projection, None, (ProxParam("n", None),), takes_lam=False),
    )
}
"""The operators by name. Defaults: ``q = 0.5`` (ℓ1/2, the usual choice; also for q-shrinkage),
``a = 3.7`` (Fan & Li's Bayes-risk choice), ``γ = 3`` (a common MCP choice, e.g. R's ncvreg), ``μ = 2λ``
(firm: the linear part spans ``[λ, 2λ]``); ``"l0"`` is :func:`l0_projection` and needs ``n``."""


def get_operator(name: str | ProxOperator) -> ProxOperator:
    """The operator called ``name`` (or ``name`` itself if it already is one); raises listing the names."""
    if isinstance(name, ProxOperator):
        return name
    return PROX_OPERATORS[check_choice("proximal operator", name, PROX_OPERATORS)]


def group_prox(norms: Tensor, operator: str | ProxOperator, lam: float, **params: Any) -> Tensor:
    """Factors of the group version of ``operator``: the prox acts on each group's ℓ2 norm,
    ``θ_g ← θ_g · prox(‖θ_g‖)/‖θ_g‖``, which is the prox of ``z ↦ λR(‖z‖₂)`` (the optimum is parallel to
    ``θ_g``). Returns ``prox(norms)/norms``, 0 where the norm is 0."""
    op = get_operator(operator)
    norms = _check_tensor("norms", norms)
    if bool((norms < 0).any()) or not bool(torch.isfinite(norms).all()):
        raise PlpruneError("group norms must be finite and >= 0")
    new = op(norms, lam, **params)
    positive = norms > 0
    safe = torch.where(positive, norms, torch.ones_like(norms))
    return torch.where(positive, new / safe, torch.zeros_like(norms))


# -- proximal gradient training ------------------------------------------------------------------------
class ProximalMethod(SparsityMethod):
    """Proximal gradient descent on the units: after each optimizer step with learning rate η, while
    ``step < end_step`` (the schedule's last pruning event), ``θ ← prox(θ)`` on the units' magnitudes
    (``|θ_j|`` for weights, ``‖θ_g‖₂`` for groups: the group version of the operator).

    ``strength`` is λ. The step is the prox of ``ηλR`` for ℓ1, ℓq, ℓ0, q-shrink; for SCAD/MCP/firm the
    same family's prox at threshold ``ηλ`` with the shape parameter unchanged (``a``, ``γ``; for firm both
    λ and μ are scaled by η, so ``μ/λ`` is the shape). Operator ``"l0"`` ignores ``strength`` and projects
    the magnitudes onto ``‖θ‖₀ ≤ n`` under the driver's keep rule (:func:`plprune.keep.kind_mask`, each kind
    of units separately): it keeps the units the rule keeps at ratio ``r(t) = target_ratio·min(1,
    (t + 1)/end_step)``, a linear ramp to the schedule's final ratio (iterative pruning's projection step),
    and zeroes the rest. With ``allocation="global"`` it keeps ``n = total − round-half-up(r(t)·total)``
    units: the largest magnitude of every layer (a GroupSet layer; for weights, a tensor), so the projection
    never empties a layer, then the largest of the rest; with ``"per_layer"`` every layer of ``c`` units is
    projected onto its own ``max(1, c − round-half-up(r(t)·c))`` largest. Pruned units have magnitude 0,
    so they count among the zeros. Scores at pruning events are the magnitudes. Pruned units
    (``units.alive()`` False) are set to (kept at) 0.
    """

    def __init__(self, operator: str = "l1", strength: float = 1e-4, **params: Any) -> None:
        self.operator = get_operator(operator)
        self.strength = check_non_negative_float("strength (the penalty weight λ)", strength)
        if self.operator.name == "l0":
            if params:
                raise PlpruneError(
                    "prox-l0 takes no parameters: n (the entries kept) follows the pruning schedule"
                )
            self.params: dict[str, Any] = {}
        else:
            self.params = self.operator.resolve(self.strength, params)
        self.name = f"prox-{self.operator.name}"
        self.threshold = 0.0

    def bind(self, units: Units, schedule: Schedule, allocation: str = "global") -> None:
        super().bind(units, schedule, allocation)
        self.threshold = 0.0

    def ramp_ratio(self, step: int) -> float:
        """``r(step) = target_ratio·min(1, (step + 1)/end_step)``, the ℓ0 projection's ratio at ``step``."""
        return self.target_ratio * min(1.0, (step + 1) / self.end_step) if self.end_step > 0 else 0.0

    def kept_count(self, step: int) -> int:
        """``n`` of the ℓ0 projection at ``step`` over all units, ``total − round-half-up(r·total)`` capped
        at the alive units (the class docstring; per-kind and per-layer shares are :meth:`l0_keep`'s)."""
        alive = int(self.units.alive().sum())
        total = len(self.units)
        return max(0, min(alive, total - math.floor(self.ramp_ratio(step) * total + 0.5)))

    def l0_keep(self, magnitudes: Tensor, step: int) -> Tensor:
        """``(n,)`` bool: the units the ℓ0 projection keeps at ``step``: the driver's keep rule
        (:func:`plprune.keep.kind_mask`) at ratio ``r(step)`` on ``magnitudes`` (pruned units at 0), for
        each kind of units separately, with the bound allocation."""
        scores = magnitudes.detach().double().cpu()
        layers = self.units.layer_index().cpu()
        ratio = self.ramp_ratio(step)
        keep = torch.zeros(len(scores), dtype=torch.bool)
        for index, kind in zip(self.units.kind_indices(), self.units.kind_names(), strict=True):
            allocation = kind_allocation(self.allocation, kind)
            keep[index] = kind_mask(scores[index], ratio, layers[index], allocation=allocation)
        return keep

    @torch.no_grad()
    def after_update(self, step: int, lr: float) -> None:
        if not hasattr(self, "units"):
            raise PlpruneError(f"{self.name}: bind(units, schedule) must be called before training")
        step = check_non_negative_int("step", step)
        if isinstance(lr, Tensor):
            lr = float(lr)
        lr = check_non_negative_float("learning rate", lr)
        if step >= self.end_step:
            return
        magnitudes = self.units.magnitudes()
        dtype = torch.promote_types(magnitudes.dtype, torch.float32)
        alive = self.units.alive().to(magnitudes.device)
        m = torch.where(alive, magnitudes.to(dtype), torch.zeros((), dtype=dtype, device=magnitudes.device))
        if self.operator.name == "l0":
            new = torch.where(self.l0_keep(m, step).to(m.device), m, torch.zeros_like(m))
            dropped = m[(new == 0) & (m > 0)]
            self.threshold = float(dropped.max()) if dropped.numel() else 0.0
        else:
            lam = lr * self.strength
            self.threshold = lam
            if lam == 0:
                return
            params = dict(self.params)
            if self.operator.name == "firm":
                params["mu"] = lr * params["mu"]
            new = self.operator(m, lam, **params)
        positive = m > 0
        safe = torch.where(positive, m, torch.ones_like(m))
        self.units.scale_(torch.where(positive, new / safe, torch.zeros_like(m)))

    def metrics(self) -> dict[str, Any]:
        """The fraction of units at exactly 0 and the threshold of the last proximal step (``ηλ``; for
        ``"l0"`` the largest magnitude the projection zeroed; 0 before any step)."""
        out = super().metrics()
        out[f"{self.name}_threshold"] = self.threshold
        return out
