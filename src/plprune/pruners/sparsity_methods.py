"""The optimisation-based sparsity methods (:mod:`plprune.sparsity`) as pruning methods of ``plprune train``.

Each method is a :class:`SparsityScorer`: a :class:`~plprune.pruners.base.GroupScorer` whose
:class:`SparsityPlugin` runs the method's training-time hooks on the pruner's groups
(:class:`~plprune.sparsity.group_units.GroupUnits`: filters, heads, experts), and whose
:meth:`SparsityScorer.weight_method` gives the same method for single weights
(:class:`plprune.weight_pruner.WeightPruner`, ``--kinds weight``). The regulariser acts from the first step
until the schedule's last pruning event; at every event the keep rule removes exactly the schedule's ratio by
the method's own scores (magnitudes after proximal steps, gate parameters), so methods are compared at equal
sparsity; after the last event the mask alone stays and training fine-tunes.

Registered names: ``prox-l1``, ``prox-lq``, ``prox-q-shrink``, ``prox-scad``, ``prox-mcp``, ``prox-firm``,
``prox-l0`` (proximal gradient), ``trimmed-l1``, ``gsm``, ``l0-gates`` (hard concrete), ``cont-sparse``
(continuous sparsification). Their settings are ``[prune.METHOD]`` tables and CLI flags (``--strength``,
``--q``, ...). docs/sparsity.md says how to choose λ so that the regulariser itself reaches the ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from plprune.errors import PlpruneError
from plprune.pruners.base import GroupScorer, PruneContext, PrunerPlugin
from plprune.pruners.registration import ALL_KINDS, register_method
from plprune.sparsity.base import SparsityMethod
from plprune.sparsity.continuous import ContinuousSparsificationMethod
from plprune.sparsity.group_units import GroupUnits
from plprune.sparsity.gsm import GSMMethod
from plprune.sparsity.hard_concrete import HardConcreteMethod
from plprune.sparsity.prox import ProximalMethod
from plprune.sparsity.trimmed_l1 import TrimmedL1Method
from plprune.validation import check_non_negative_float

__all__ = ["SparsityPlugin", "SparsityScorer"]

WEIGHT_AND_GROUP_KINDS = (*ALL_KINDS, "weight")


class SparsityPlugin(PrunerPlugin):
    """Runs a :class:`~plprune.sparsity.base.SparsityMethod` on the pruner's groups around each optimizer
    step, until the schedule's last event; then the method's ``finish``."""

    def __init__(self, method: SparsityMethod) -> None:
        self.method = method
        self.finished = False

    def bind(self, pruner: Any) -> None:
        self.pruner = pruner
        self.method.bind(GroupUnits(pruner.groups), pruner.schedule, pruner.allocation)

    def on_step_start(self, pruner: Any, step: int) -> None:
        if self.finished:
            return
        if pruner.finished:
            self.method.finish()
            self.finished = True
        else:
            self.method.on_step_start(step)

    def before_update(self, pruner: Any, step: int) -> None:
        if not self.finished:
            self.method.before_update(step)

    def after_update(self, pruner: Any, step: int) -> None:
        if not self.finished:
            optimizer = pruner.optimizer
            lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else 0.0
            self.method.after_update(step, lr)
            pruner.groups.enforce()

    def metrics(self) -> dict[str, Any]:
        return {} if self.finished else self.method.metrics()

    def state_dict(self) -> dict[str, Any]:
        return {"finished": self.finished, "method": self.method.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.finished = bool(state.get("finished", False))
        if self.finished:
            self.method.units.set_gates(None)
        else:
            self.method.load_state_dict(state.get("method", {}))


class SparsityScorer(GroupScorer):
    """A sparsity method as a scorer: the scores are the method's (higher = keep); the plugin regularises."""

    needs_data = False
    allocation = "global"

    def __init__(self, name: str, make_method: Callable[[], SparsityMethod]) -> None:
        self.name = name
        self.make_method = make_method
        self.method = make_method()

    def plugins(self) -> list[PrunerPlugin]:
        return [SparsityPlugin(self.method)]

    def weight_method(self) -> SparsityMethod:
        """A fresh instance of the method for single weights (:class:`plprune.weight_pruner.WeightPruner`)."""
        return self.make_method()

    def scores(self, context: PruneContext) -> Tensor:
        scores = torch.as_tensor(self.method.scores()).detach().double().cpu()
        if scores.shape != (len(context.groups),):
            raise PlpruneError(f"{self.name}: the method's scores do not match the pruner's groups")
        return scores


def _strength(default: float) -> Any:
    return field(
        default=default,
        metadata={"help": "regulariser strength lambda (prox-*, trimmed-l1, l0-gates, cont-sparse)"},
    )


# -- proximal gradient ---------------------------------------------------------------------------------
@dataclass
class ProxL1Settings:
    strength: float = _strength(5e-3)

    def __post_init__(self) -> None:
        ProximalMethod("l1", self.strength)


@dataclass
class ProxLqSettings:
    strength: float = _strength(5e-3)
    q: float = field(default=0.5, metadata={"help": "exponent q in (0, 1) of the lq penalty / q-shrinkage"})

    def __post_init__(self) -> None:
        ProximalMethod("lq", self.strength, q=self.q)


@dataclass
class ProxQShrinkSettings(ProxLqSettings):
    def __post_init__(self) -> None:
        ProximalMethod("q-shrink", self.strength, q=self.q)


@dataclass
class ProxSCADSettings:
    strength: float = _strength(5e-3)
    scad_a: float = field(default=3.7, metadata={"help": "SCAD shape a > 2 (3.7)"})

    def __post_init__(self) -> None:
        ProximalMethod("scad", self.strength, a=self.scad_a)


@dataclass
class ProxMCPSettings:
    strength: float = _strength(5e-3)
    mcp_gamma: float = field(default=3.0, metadata={"help": "MCP concavity gamma > 1 (3.0)"})

    def __post_init__(self) -> None:
        ProximalMethod("mcp", self.strength, gamma=self.mcp_gamma)


@dataclass
class ProxFirmSettings:
    strength: float = _strength(2e-2)
    firm_mu: float | None = field(
        default=None,
        metadata={
            "type": float,
            "help": "firm thresholding's upper threshold mu > strength (default 2*strength)",
        },
    )

    def __post_init__(self) -> None:
        ProximalMethod("firm", self.strength, **self.params())

    def params(self) -> dict[str, float]:
        return {} if self.firm_mu is None else {"mu": self.firm_mu}


_PROX = {
    "l1": (ProxL1Settings, "l1 soft threshold", lambda s: {}),
    "lq": (ProxLqSettings, "lq (0<q<1) thresholding", lambda s: {"q": s.q}),
    "q-shrink": (ProxQShrinkSettings, "q-shrinkage (Chartrand)", lambda s: {"q": s.q}),
    "scad": (ProxSCADSettings, "SCAD thresholding", lambda s: {"a": s.scad_a}),
    "mcp": (ProxMCPSettings, "MCP thresholding", lambda s: {"gamma": s.mcp_gamma}),
    "firm": (ProxFirmSettings, "firm thresholding", lambda s: s.params()),
}


def _register_prox(operator: str, settings: type, text: str, params: Callable[[Any], dict]) -> None:
    def build(values: Any, info: Any) -> SparsityScorer:
        return SparsityScorer(
            f"prox-{operator}", lambda: ProximalMethod(operator, values.strength, **params(values))
        )

    register_method(
        f"prox-{operator}",
        description=f"proximal gradient, {text} after each step (weights or group norms)",
        kinds=WEIGHT_AND_GROUP_KINDS,
        config=settings,
        training_time=True,
    )(build)


for _operator, (_settings, _text, _params) in _PROX.items():
    _register_prox(_operator, _settings, _text, _params)


@register_method(
    "prox-l0",
    description="projection onto ||theta||_0 <= n after each step, n ramped to the target (iterative hard "
    "thresholding)",
    kinds=WEIGHT_AND_GROUP_KINDS,
    training_time=True,
)
def _build_prox_l0(settings: Any, info: Any) -> SparsityScorer:
    return SparsityScorer("prox-l0", lambda: ProximalMethod("l0"))


# -- trimmed l1 -------------------------------------------------------------------------------------------
@dataclass
class TrimmedL1Settings:
    strength: float = _strength(5e-3)
    trimmed: int | None = field(
        default=None,
        metadata={
            "type": int,
            "help": "trimmed-l1: units h free of penalty (default: those the ratio keeps)",
        },
    )
    weight_step: float = field(default=1.0, metadata={"help": "trimmed-l1: step tau of the w update"})

    def __post_init__(self) -> None:
        TrimmedL1Method(self.strength, self.trimmed, self.weight_step)


@register_method(
    "trimmed-l1",
    description="trimmed l1 (Yun et al. 2019): the h largest units go unpenalised (block coordinate descent)",
    kinds=WEIGHT_AND_GROUP_KINDS,
    config=TrimmedL1Settings,
    training_time=True,
)
def _build_trimmed(settings: TrimmedL1Settings, info: Any) -> SparsityScorer:
    return SparsityScorer(
        "trimmed-l1", lambda: TrimmedL1Method(settings.strength, settings.trimmed, settings.weight_step)
    )


# -- GSM ----------------------------------------------------------------------------------------------------
@dataclass
class GSMSettings:
    keep_fraction: float | None = field(
        default=None,
        metadata={"type": float, "help": "gsm: fraction of units that receive gradient (default: 1 - ratio)"},
    )

    def __post_init__(self) -> None:
        GSMMethod(self.keep_fraction)


@register_method(
    "gsm",
    description="global sparse momentum (Ding et al. 2019): only the top-Q units by |g*theta| get gradient",
    kinds=WEIGHT_AND_GROUP_KINDS,
    config=GSMSettings,
    training_time=True,
)
def _build_gsm(settings: GSMSettings, info: Any) -> SparsityScorer:
    return SparsityScorer("gsm", lambda: GSMMethod(settings.keep_fraction))


# -- gates ------------------------------------------------------------------------------------------------
@dataclass
class HardConcreteSettings:
    strength: float = _strength(5e-2)
    gate_temperature: float = field(
        default=2 / 3, metadata={"help": "l0-gates: hard-concrete temperature beta"}
    )
    mask_lr: float = field(
        default=1e-2, metadata={"help": "l0-gates/cont-sparse: Adam step of the gate parameters"}
    )
    init_keep: float = field(
        default=0.9, metadata={"help": "l0-gates: initial keep probability of every gate"}
    )

    def __post_init__(self) -> None:
        check_non_negative_float("mask_lr", self.mask_lr)
        HardConcreteMethod(
            self.strength, beta=self.gate_temperature, init_keep=self.init_keep, gate_lr=self.mask_lr
        )


@register_method(
    "l0-gates",
    description="hard-concrete l0 gates (Louizos et al. 2018) on weights or groups, expected-l0 penalty",
    kinds=WEIGHT_AND_GROUP_KINDS,
    config=HardConcreteSettings,
    training_time=True,
)
def _build_l0_gates(settings: HardConcreteSettings, info: Any) -> SparsityScorer:
    return SparsityScorer(
        "l0-gates",
        lambda: HardConcreteMethod(
            settings.strength,
            beta=settings.gate_temperature,
            init_keep=settings.init_keep,
            gate_lr=settings.mask_lr,
        ),
    )


@dataclass
class ContinuousSettings:
    strength: float = _strength(5e-2)
    beta_final: float = field(default=200.0, metadata={"help": "cont-sparse: final temperature beta (>= 1)"})
    mask_lr: float = field(
        default=1e-2, metadata={"help": "l0-gates/cont-sparse: Adam step of the gate parameters"}
    )

    def __post_init__(self) -> None:
        ContinuousSparsificationMethod(self.strength, beta_final=self.beta_final, gate_lr=self.mask_lr)


@register_method(
    "cont-sparse",
    description="continuous sparsification (Savarese et al. 2020): mask sigmoid(beta*s), beta annealed up",
    kinds=WEIGHT_AND_GROUP_KINDS,
    config=ContinuousSettings,
    training_time=True,
)
def _build_continuous(settings: ContinuousSettings, info: Any) -> SparsityScorer:
    return SparsityScorer(
        "cont-sparse",
        lambda: ContinuousSparsificationMethod(
            settings.strength, beta_final=settings.beta_final, gate_lr=settings.mask_lr
        ),
    )
