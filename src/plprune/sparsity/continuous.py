"""Continuous sparsification (Savarese, Silva & Maire, "Winning the Lottery with Continuous
Sparsification", NeurIPS 2020).

Every unit ``j`` gets a mask parameter ``s_j`` and a soft mask ``m_j = σ(β s_j)`` that multiplies it in the
forward pass; the ℓ0 norm of the binary mask ``1[s > 0]`` is approximated by the deterministic penalty
``λ Σ_j σ(β s_j)`` (paper eq. 5-6). The temperature ``β`` is annealed from 1 upward, so the soft mask
approaches the binary ``1[s > 0]`` (``lim_{β→∞} σ(β s) = H(s)``, eq. 4). The paper multiplies ``β`` by a
constant each epoch, a geometric schedule reaching ``β_final`` (200 in the authors' code) at the end;
:func:`temperature` is that schedule per optimizer step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from plprune.errors import PlpruneError
from plprune.schedules import Schedule
from plprune.sparsity.base import SparsityMethod, Units
from plprune.validation import check_non_negative_float, check_non_negative_int, check_positive_float

__all__ = ["ContinuousSparsificationMethod", "temperature"]


def _check_beta_final(beta_final: Any) -> float:
    if (
        isinstance(beta_final, bool)
        or not isinstance(beta_final, (int, float))
        or not math.isfinite(beta_final)
    ):
        raise PlpruneError(
            f"continuous-sparsification beta_final must be a finite number >= 1, got {beta_final!r}"
        )
    if beta_final <= 0:
        raise PlpruneError(
            f"continuous-sparsification temperature beta_final must be > 0 (and >= 1, since beta is annealed "
            f"upward from 1), got {beta_final!r}"
        )
    if beta_final < 1:
        raise PlpruneError(
            "continuous-sparsification beta_final must be >= 1 (beta is annealed upward from 1 to "
            f"beta_final), got {beta_final!r}"
        )
    return float(beta_final)


def temperature(step: int, end_step: int, beta_final: float) -> float:
    """The temperature ``β(t) = β_final^{min(t, T)/T}`` at optimizer step ``t`` (``T = end_step``).

    Geometric, as in Savarese et al. (``β`` multiplied by the constant ``β_final^{1/T}`` each step instead of
    each epoch): ``β(0) = 1``, ``β(T) = β_final``, non-decreasing, constant after ``T``.
    """
    step = check_non_negative_int("continuous-sparsification step", step)
    end_step = check_non_negative_int("continuous-sparsification end_step", end_step)
    if end_step == 0:
        raise PlpruneError(
            "continuous-sparsification end_step must be a positive integer (the annealing length)"
        )
    beta_final = _check_beta_final(beta_final)
    return beta_final ** (min(step, end_step) / end_step)


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


class ContinuousSparsificationMethod(SparsityMethod):
    """Continuous sparsification (Savarese et al. 2020), one mask parameter ``s_j`` per unit.

    ``s`` starts at ``init_score`` (the paper's ``s_0``; it is the knob that sets how sparse the result gets:
    the authors' code defaults to ``s_0 = 0``, uses ``-0.1`` for high sparsity and ``+0.1`` for low) and is
    trained by the method's own ``torch.optim.Adam`` (learning rate ``gate_lr``; the authors use SGD with
    momentum at the weights' learning rate — Adam is used here because its steps do not depend on the scale
    of ``∂/∂s``, which grows with ``β`` and shrinks with the ``1/n`` normalisation below). While
    ``step < end_step`` (the schedule's last event, which is also the annealing length ``T``):

    * :meth:`on_step_start`: set the units' gates to ``m = σ(β(t) s)`` (:func:`temperature`);
    * :meth:`before_update`: the task loss's backward has already put ``∂L/∂s`` into ``s.grad`` through the
      gates; add the gradient of

          R(s) = strength · (1/n) Σ_{j alive} σ(β(t) s_j)   (paper eq. 6, normalised by n),

      ``∂R/∂s_j = strength · β σ(β s_j)(1 − σ(β s_j)) / n``: ``strength`` is per unit, independent of n (the
      paper's ``λ`` is ``strength/n``). Units removed by the driver's hard mask are left out;
    * :meth:`after_update`: step the mask optimizer, zero its gradient, and set the gates to
      ``σ(β(t + 1) s)`` (detached) for an evaluation before the next step. From :meth:`bind` (and
      :meth:`load_state_dict`) until :meth:`finish` such detached gates are on between steps, so the weights'
      parametrization (and the model's state-dict keys) is the same at every checkpoint.

    :meth:`scores` is ``s`` (higher = keep; the binary mask is ``1[s > 0]``). :meth:`finish` takes the gates
    off: the kept units get mask 1 (``σ(β_final s) ≈ 1`` for ``s`` well above 0) and the driver's hard mask
    has already zeroed the removed ones, so no weights need rescaling. The driver's mask has exactly the
    schedule's ratio, which may keep some units with ``s ≤ 0``; they are kept at mask 1.
    """

    name = "cont-sparse"

    def __init__(
        self,
        strength: float = 1e-2,
        beta_final: float = 200.0,
        init_score: float = 0.0,
        gate_lr: float = 1e-2,
    ) -> None:
        self.strength = check_non_negative_float("continuous-sparsification strength", strength)
        self.beta_final = _check_beta_final(beta_final)
        if (
            isinstance(init_score, bool)
            or not isinstance(init_score, (int, float))
            or not math.isfinite(init_score)
        ):
            raise PlpruneError(
                f"continuous-sparsification init_score must be a finite number, got {init_score!r}"
            )
        self.init_score = float(init_score)
        self.gate_lr = check_positive_float("continuous-sparsification gate_lr", gate_lr)
        self._finished = False

    # -- binding and state ---------------------------------------------------------------------------------
    def bind(self, units: Units, schedule: Schedule, allocation: str = "global") -> None:
        super().bind(units, schedule, allocation)
        self.s = torch.full((len(units),), self.init_score, device=units.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.s], lr=self.gate_lr)
        self._finished = False
        self._next_step = 0
        self._restore_gates()

    def _restore_gates(self) -> None:
        """While the method is active its gates are always on (between steps: ``σ(β(t) s)`` for the next
        step ``t``), so the model's state-dict keys are the same at every checkpoint and a resume can load
        them."""
        if not self._finished and self.end_step > 0:
            self.units.set_gates(self.soft_mask(self._next_step))

    def _bound(self) -> None:
        if not hasattr(self, "s"):
            raise PlpruneError(f"{self.name}: call bind(units, schedule) before using the method")

    def _active(self, step: int) -> bool:
        return not self._finished and step < self.end_step

    def state_dict(self) -> dict[str, Any]:
        self._bound()
        return {
            "s": self.s.detach().clone(),
            "optimizer": _clone_state(self.optimizer.state_dict()),
            "finished": self._finished,
            "next_step": self._next_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._bound()
        s = state["s"]
        if not isinstance(s, Tensor) or s.shape != self.s.shape:
            shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise PlpruneError(
                f"{self.name}: saved s has shape {shape}, the bound units need ({len(self.units)},)"
            )
        with torch.no_grad():
            self.s.copy_(s.to(self.s.device, self.s.dtype))
        self.s.grad = None
        self.optimizer.load_state_dict(_clone_state(state["optimizer"]))
        self._finished = bool(state.get("finished", False))
        self._next_step = int(state.get("next_step", 0))
        self._restore_gates()

    # -- the mask --------------------------------------------------------------------------------------------
    def beta(self, step: int) -> float:
        """The temperature ``β(step)`` of the bound schedule (1 when the schedule has no events)."""
        self._bound()
        return temperature(step, self.end_step, self.beta_final) if self.end_step > 0 else 1.0

    def soft_mask(self, step: int) -> Tensor:
        """``σ(β(step) s)``, detached."""
        return torch.sigmoid(self.beta(step) * self.s.detach())

    def binary_mask(self) -> Tensor:
        """``1[s > 0]`` as a float ``(n,)`` tensor (the ``β → ∞`` limit of the soft mask)."""
        self._bound()
        return (self.s.detach() > 0).to(self.s.dtype)

    def penalty(self, step: int) -> Tensor:
        """``strength · (1/n) Σ_{j alive} σ(β(step) s_j)``, differentiable in ``s``."""
        self._bound()
        alive = self.units.alive().to(self.s.device, self.s.dtype)
        mask = torch.sigmoid(self.beta(step) * self.s)
        return self.strength * (mask * alive).sum() / max(len(self.units), 1)

    # -- hooks -----------------------------------------------------------------------------------------------
    def on_step_start(self, step: int) -> None:
        self._bound()
        if not self._active(step):
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.units.set_gates(torch.sigmoid(self.beta(step) * self.s))

    def before_update(self, step: int) -> None:
        self._bound()
        if not self._active(step) or self.strength == 0:
            return
        self.penalty(step).backward()

    def after_update(self, step: int, lr: float) -> None:
        self._bound()
        if not self._active(step):
            return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._next_step = step + 1
        self.units.set_gates(self.soft_mask(step + 1))

    def scores(self) -> Tensor:
        self._bound()
        return self.s.detach().clone()

    def finish(self) -> None:
        self._bound()
        self.units.set_gates(None)
        self.optimizer.zero_grad(set_to_none=True)
        self._finished = True

    def metrics(self) -> dict[str, Any]:
        """Over the units alive under the hard mask (removed ones count as mask 0): the fraction whose binary
        mask ``1[s > 0]`` is 0 and the mean soft mask at ``β_final``."""
        self._bound()
        alive = self.units.alive().to(self.s.device, self.s.dtype)
        binary = self.binary_mask() * alive
        soft = torch.sigmoid(self.beta_final * self.s.detach()) * alive
        return {
            **super().metrics(),
            f"{self.name}_mask_zero_fraction": float((binary == 0).float().mean()),
            f"{self.name}_mean_soft_mask": float(soft.mean()),
        }
