"""Hard-concrete ℓ0 gates (Louizos, Welling & Kingma, "Learning Sparse Neural Networks through L0
Regularization", ICLR 2018).

Every unit ``j`` gets a gate ``z_j ∈ [0, 1]`` drawn from the *hard-concrete* distribution with location
``log α_j``, temperature ``β`` and stretch interval ``(γ, ζ)``, ``γ < 0 < 1 < ζ`` (paper eqs. 9-10 and §4):

* ``u ~ U(0, 1)``,  ``s = σ((log u − log(1 − u) + log α) / β)``  (binary concrete),
* ``s̄ = s (ζ − γ) + γ``  (stretch),  ``z = min(1, max(0, s̄))``  (hard sigmoid).

The stretch puts finite probability mass on exactly 0 and exactly 1, so the expected ℓ0 norm is smooth in
``log α`` (paper eq. 12):

    P(z_j ≠ 0) = 1 − Q_s(0) = σ(log α_j − β log(−γ/ζ)),

and the test-time gate is the deterministic ``ẑ = min(1, max(0, σ(log α)(ζ − γ) + γ))`` (paper eq. 13).
Defaults ``β = 2/3, γ = −0.1, ζ = 1.1`` are the paper's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from plprune.errors import PlpruneError
from plprune.schedules import Schedule
from plprune.seeding import derive_seed
from plprune.sparsity.base import SparsityMethod, Units
from plprune.validation import check_non_negative_float, check_non_negative_int, check_positive_float

__all__ = [
    "HardConcreteMethod",
    "hard_concrete_gate",
    "hard_concrete_l0",
    "hard_concrete_prob_one",
    "hard_concrete_prob_zero",
    "hard_concrete_sample",
]


def _check_tensor(log_alpha: Any) -> Tensor:
    if not isinstance(log_alpha, Tensor) or not log_alpha.is_floating_point():
        kind = f"a {log_alpha.dtype} tensor" if isinstance(log_alpha, Tensor) else type(log_alpha).__name__
        raise PlpruneError(f"log_alpha must be a floating-point torch.Tensor, got {kind}")
    return log_alpha


def _check_stretch(gamma: Any, zeta: Any) -> tuple[float, float]:
    for name, value in (("gamma", gamma), ("zeta", zeta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PlpruneError(f"hard-concrete {name} must be a finite number, got {value!r}")
    if not gamma < 0:
        raise PlpruneError(
            f"hard-concrete stretch needs gamma < 0 < 1 < zeta (e.g. gamma=-0.1), got gamma={gamma!r}"
        )
    if not zeta > 1:
        raise PlpruneError(
            f"hard-concrete stretch needs gamma < 0 < 1 < zeta (e.g. zeta=1.1), got zeta={zeta!r}"
        )
    return float(gamma), float(zeta)


def _check_beta(beta: Any) -> float:
    return check_positive_float("hard-concrete temperature beta", beta)


def hard_concrete_sample(
    log_alpha: Tensor,
    beta: float = 2 / 3,
    gamma: float = -0.1,
    zeta: float = 1.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One hard-concrete gate per entry of ``log_alpha`` (Louizos et al. 2018, eqs. 9-10), differentiable
    in ``log_alpha`` (reparametrisation: the noise ``u`` carries no gradient):

        u ~ U(0, 1),  s = σ((log u − log(1 − u) + log α)/β),  s̄ = s(ζ − γ) + γ,  z = min(1, max(0, s̄)).

    ``u`` is drawn from ``generator`` (on the generator's device, then moved to ``log_alpha``'s), or from
    torch's global generator when None. ``u`` is clamped to ``[eps, 1 − eps]`` (``eps`` the dtype's machine
    epsilon) so the logistic noise stays finite.
    """
    log_alpha = _check_tensor(log_alpha)
    beta = _check_beta(beta)
    gamma, zeta = _check_stretch(gamma, zeta)
    if generator is None:
        u = torch.rand(log_alpha.shape, dtype=log_alpha.dtype, device=log_alpha.device)
    else:
        u = torch.rand(log_alpha.shape, dtype=log_alpha.dtype, device=generator.device, generator=generator)
        u = u.to(log_alpha.device)
    eps = torch.finfo(log_alpha.dtype).eps
    u = u.clamp(eps, 1.0 - eps)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def hard_concrete_l0(
    log_alpha: Tensor, beta: float = 2 / 3, gamma: float = -0.1, zeta: float = 1.1
) -> Tensor:
    """Elementwise ``P(z ≠ 0) = σ(log α − β log(−γ/ζ))`` (Louizos et al. 2018, eq. 12); the expected ℓ0
    norm of the gates is its sum. Differentiable in ``log_alpha``."""
    log_alpha = _check_tensor(log_alpha)
    beta = _check_beta(beta)
    gamma, zeta = _check_stretch(gamma, zeta)
    return torch.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


def hard_concrete_gate(log_alpha: Tensor, gamma: float = -0.1, zeta: float = 1.1) -> Tensor:
    """The deterministic test-time gate ``ẑ = min(1, max(0, σ(log α)(ζ − γ) + γ))`` (Louizos et al. 2018,
    eq. 13): exactly 0 when ``σ(log α) ≤ −γ/(ζ − γ)``, exactly 1 when ``σ(log α) ≥ (1 − γ)/(ζ − γ)``."""
    log_alpha = _check_tensor(log_alpha)
    gamma, zeta = _check_stretch(gamma, zeta)
    return (torch.sigmoid(log_alpha) * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def hard_concrete_prob_zero(
    log_alpha: Tensor, beta: float = 2 / 3, gamma: float = -0.1, zeta: float = 1.1
) -> Tensor:
    """Elementwise ``P(z = 0)`` exactly.

    ``z = 0 ⇔ s̄ ≤ 0 ⇔ s ≤ p`` with ``p = −γ/(ζ − γ)``; since ``s = σ((L + log α)/β)`` with logistic
    noise ``L = logit(u)`` (CDF σ), ``s ≤ p ⇔ L ≤ β logit(p) − log α``, so

        P(z = 0) = σ(β logit(−γ/(ζ − γ)) − log α) = σ(β log(−γ/ζ) − log α),

    because ``logit(−γ/(ζ − γ)) = log(−γ/ζ)``. This is ``1 −`` :func:`hard_concrete_l0`.
    """
    log_alpha = _check_tensor(log_alpha)
    beta = _check_beta(beta)
    gamma, zeta = _check_stretch(gamma, zeta)
    return torch.sigmoid(beta * math.log(-gamma / zeta) - log_alpha)


def hard_concrete_prob_one(
    log_alpha: Tensor, beta: float = 2 / 3, gamma: float = -0.1, zeta: float = 1.1
) -> Tensor:
    """Elementwise ``P(z = 1)`` exactly: ``z = 1 ⇔ s ≥ q = (1 − γ)/(ζ − γ) ⇔ L ≥ β logit(q) − log α``, so

    P(z = 1) = σ(log α − β logit((1 − γ)/(ζ − γ))) = σ(log α − β log((1 − γ)/(ζ − 1))).
    """
    log_alpha = _check_tensor(log_alpha)
    beta = _check_beta(beta)
    gamma, zeta = _check_stretch(gamma, zeta)
    return torch.sigmoid(log_alpha - beta * math.log((1.0 - gamma) / (zeta - 1.0)))


def _clone_state(value: Any) -> Any:
    """A deep copy of an optimizer state dict's tensors (so saved and live state never share storage)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _clone_state(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clone_state(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_clone_state(item) for item in value)
    return value


class HardConcreteMethod(SparsityMethod):
    """ℓ0 regularisation with hard-concrete gates (Louizos et al. 2018), one gate per unit.

    Each unit ``j`` has a location ``log α_j``, initialised to ``logit(init_keep) = log(init_keep/(1 −
    init_keep))`` (so ``σ(log α_j) = init_keep``; the paper's code draws ``log α ~ N(logit(1 − droprate),
    0.01²)``, here without the noise). ``log α`` is trained by the method's own ``torch.optim.Adam`` (learning
    rate ``gate_lr``); the caller's optimizer never sees it. While ``step < end_step`` (the schedule's last
    event), the hooks do:

    * :meth:`on_step_start`: draw ``z ~ HC(log α, β, γ, ζ)`` (:func:`hard_concrete_sample`, generator seeded
      from ``(seed, step)`` so a resumed run draws the same gates) and set them as the units' gates;
    * :meth:`before_update`: the task loss's backward has already put ``∂L/∂log α`` into ``log α.grad``
      through the gates; add the penalty's gradient, ``∂/∂log α`` of

          R(log α) = strength · (1/n) Σ_{j alive} P(z_j ≠ 0)   (paper eq. 12, normalised by n),

      i.e. ``strength`` is the price of one unit's expected ℓ0 *relative to the n units*, independent of n
      (the paper's ``λ`` is ``strength/n``). Units already removed by the driver's hard mask are left out
      (their gates are held at 0, so their ``log α`` stays where it was);
    * :meth:`after_update`: step the gate optimizer, zero its gradient, then set the deterministic test-time
      gates ``ẑ = hard_concrete_gate(log α)`` (detached, paper eq. 13) so an evaluation between steps sees
      the test-time network. From :meth:`bind` (and :meth:`load_state_dict`) until :meth:`finish` the
      deterministic gates are on between steps, so the weights' parametrization (and the model's state-dict
      keys) is the same at every checkpoint.

    :meth:`scores` is ``log α`` (higher = keep). :meth:`finish` takes the gates off: for single weights the
    deterministic gate is first baked into the weights (``θ ← ẑ θ``, so the model computes exactly the
    deterministically gated function); for structured groups the gates are removed without baking (a
    group's output loses its fractional gate ``ẑ_g ∈ (0, 1)``; training goes on and adapts).
    """

    name = "l0-gates"

    def __init__(
        self,
        strength: float = 1e-2,
        beta: float = 2 / 3,
        gamma: float = -0.1,
        zeta: float = 1.1,
        init_keep: float = 0.9,
        gate_lr: float = 1e-2,
        seed: int = 0,
    ) -> None:
        self.strength = check_non_negative_float("hard-concrete strength", strength)
        self.beta = _check_beta(beta)
        self.gamma, self.zeta = _check_stretch(gamma, zeta)
        if (
            isinstance(init_keep, bool)
            or not isinstance(init_keep, (int, float))
            or not math.isfinite(init_keep)
            or not 0 < init_keep < 1
        ):
            raise PlpruneError(
                f"hard-concrete init_keep must lie in the open interval (0, 1), got {init_keep!r}"
            )
        self.init_keep = float(init_keep)
        self.gate_lr = check_positive_float("hard-concrete gate_lr", gate_lr)
        self.seed = check_non_negative_int("hard-concrete seed", seed)
        self._finished = False

    # -- binding and state ---------------------------------------------------------------------------------
    def bind(self, units: Units, schedule: Schedule, allocation: str = "global") -> None:
        super().bind(units, schedule, allocation)
        init = math.log(self.init_keep / (1.0 - self.init_keep))
        self.log_alpha = torch.full((len(units),), init, device=units.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.log_alpha], lr=self.gate_lr)
        self._finished = False
        self._restore_gates()

    def _restore_gates(self) -> None:
        """While the method is active its gates are always on (between steps: the deterministic ones), so
        the model's state-dict keys are the same at every checkpoint and a resumed run can load them."""
        if not self._finished and self.end_step > 0:
            self.units.set_gates(self.deterministic_gates())

    def _bound(self) -> None:
        if not hasattr(self, "log_alpha"):
            raise PlpruneError(f"{self.name}: call bind(units, schedule) before using the method")

    def _active(self, step: int) -> bool:
        return not self._finished and step < self.end_step

    def state_dict(self) -> dict[str, Any]:
        self._bound()
        return {
            "log_alpha": self.log_alpha.detach().clone(),
            "optimizer": _clone_state(self.optimizer.state_dict()),
            "finished": self._finished,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._bound()
        log_alpha = state["log_alpha"]
        if not isinstance(log_alpha, Tensor) or log_alpha.shape != self.log_alpha.shape:
            shape = tuple(log_alpha.shape) if isinstance(log_alpha, Tensor) else type(log_alpha).__name__
            raise PlpruneError(
                f"{self.name}: saved log_alpha has shape {shape}, the bound units need ({len(self.units)},)"
            )
        with torch.no_grad():
            self.log_alpha.copy_(log_alpha.to(self.log_alpha.device, self.log_alpha.dtype))
        self.log_alpha.grad = None
        self.optimizer.load_state_dict(_clone_state(state["optimizer"]))
        self._finished = bool(state.get("finished", False))
        self._restore_gates()

    # -- hooks -----------------------------------------------------------------------------------------------
    def _generator(self, step: int) -> torch.Generator:
        device = self.log_alpha.device
        return torch.Generator(device=device).manual_seed(derive_seed("hard-concrete", self.seed, step))

    def on_step_start(self, step: int) -> None:
        self._bound()
        if not self._active(step):
            return
        self.optimizer.zero_grad(set_to_none=True)
        z = hard_concrete_sample(
            self.log_alpha, self.beta, self.gamma, self.zeta, generator=self._generator(step)
        )
        self.units.set_gates(z)

    def penalty(self) -> Tensor:
        """``strength · (1/n) Σ_{j alive} P(z_j ≠ 0)``, differentiable in ``log α``."""
        self._bound()
        l0 = hard_concrete_l0(self.log_alpha, self.beta, self.gamma, self.zeta)
        alive = self.units.alive().to(l0.device, l0.dtype)
        return self.strength * (l0 * alive).sum() / max(len(self.units), 1)

    def before_update(self, step: int) -> None:
        self._bound()
        if not self._active(step) or self.strength == 0:
            return
        self.penalty().backward()

    def deterministic_gates(self) -> Tensor:
        """The test-time gates ``ẑ = min(1, max(0, σ(log α)(ζ − γ) + γ))``, detached."""
        self._bound()
        return hard_concrete_gate(self.log_alpha.detach(), self.gamma, self.zeta)

    def after_update(self, step: int, lr: float) -> None:
        self._bound()
        if not self._active(step):
            return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.units.set_gates(self.deterministic_gates())

    def scores(self) -> Tensor:
        self._bound()
        return self.log_alpha.detach().clone()

    def finish(self) -> None:
        self._bound()
        if self.units.kind == "weight":
            self.units.scale_(self.deterministic_gates())
        self.units.set_gates(None)
        self.optimizer.zero_grad(set_to_none=True)
        self._finished = True

    def metrics(self) -> dict[str, Any]:
        """Over the units alive under the hard mask (removed ones count as gate 0): the expected ℓ0
        fraction ``(1/n) Σ P(z_j ≠ 0)`` and the fraction of deterministic gates exactly 0."""
        self._bound()
        alive = self.units.alive().to(self.log_alpha.device)
        with torch.no_grad():
            l0 = hard_concrete_l0(self.log_alpha, self.beta, self.gamma, self.zeta) * alive
            gate = self.deterministic_gates() * alive
        return {
            **super().metrics(),
            f"{self.name}_expected_l0_fraction": float(l0.mean()),
            f"{self.name}_gate_zero_fraction": float((gate == 0).float().mean()),
        }
