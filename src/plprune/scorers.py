"""Every pruning criterion under a short name, for :class:`plprune.Pruner`::

    plprune.scorers.PL(alpha=1.0)          # the paper's PL-regularised gating network (Alg. 2)
    plprune.scorers.Random()               # the sanity floor
    plprune.scorers.IMP(rewind_step=60)    # magnitude + weight rewinding (brings its rewinder)
    plprune.scorers.SNIP(batches=4)        # ... GradScore, GraSP, Magnitude, FPGM, CHIP, DPFPS
    plprune.scorers.Taylor(batches=4)      # LLM pruning (heads, neurons): LLM-Pruner's Taylor, FLAP (with
    plprune.scorers.FLAP(), WandaSP()      # bias compensation), Wanda-sp; Magnitude is Torch-Pruning's
    plprune.scorers.Proximal("scad", strength=0.05, a=3.7)   # the sparse-DNN course's methods on groups:
    plprune.scorers.TrimmedL1(), GSM(), L0Gates(), ContinuousSparsification()   # docs/sparsity.md

Each is the scorer class of :mod:`plprune.pruners`; ``PL`` takes :class:`~plprune.pruners.pl.PLConfig`'s
fields as keywords.
"""

from __future__ import annotations

from typing import Any

from plprune.pruners.chip import CHIPScorer as CHIP  # noqa: N814
from plprune.pruners.dpfps import DPFPSScorer as DPFPS  # noqa: N814
from plprune.pruners.flap import FLAPScorer as FLAP  # noqa: N814
from plprune.pruners.fpgm import FPGMScorer as FPGM  # noqa: N814
from plprune.pruners.grasp import GraspScorer as GraSP
from plprune.pruners.magnitude import MagnitudeScorer as Magnitude
from plprune.pruners.pl import PLConfig, PLScorer
from plprune.pruners.random import RandomScorer as Random
from plprune.pruners.rewind import IMPScorer as IMP  # noqa: N814
from plprune.pruners.sensitivity import GateSensitivityScorer as GradScore
from plprune.pruners.snip import SnipScorer as SNIP  # noqa: N814
from plprune.pruners.sparsity_methods import SparsityScorer
from plprune.pruners.taylor import TaylorScorer as Taylor
from plprune.pruners.wanda_sp import WandaSPScorer as WandaSP
from plprune.sparsity.continuous import ContinuousSparsificationMethod
from plprune.sparsity.gsm import GSMMethod
from plprune.sparsity.hard_concrete import HardConcreteMethod
from plprune.sparsity.prox import ProximalMethod
from plprune.sparsity.trimmed_l1 import TrimmedL1Method

__all__ = [
    "CHIP",
    "DPFPS",
    "FLAP",
    "FPGM",
    "GSM",
    "IMP",
    "PL",
    "SNIP",
    "ContinuousSparsification",
    "GraSP",
    "GradScore",
    "L0Gates",
    "Magnitude",
    "Proximal",
    "Random",
    "Taylor",
    "TrimmedL1",
    "WandaSP",
]


def PL(**settings: Any) -> PLScorer:  # noqa: N802 (a constructor, named like the other scorers)
    """The PL scorer; keywords are :class:`~plprune.pruners.pl.PLConfig` fields (``alpha``, ``gate_steps``,
    ``feature_samples``, ...), each validated."""
    import dataclasses

    allowed = {f.name for f in dataclasses.fields(PLConfig)}
    unknown = set(settings) - allowed
    if unknown:
        from plprune.errors import PlpruneError

        raise PlpruneError(f"unknown PL settings {sorted(unknown)}; allowed: {sorted(allowed)}")
    return PLScorer(PLConfig(**settings))


# -- the sparse-DNN course's methods on groups (for single weights: plprune.WeightPruner with the method) --
def Proximal(operator: str = "l1", strength: float = 5e-3, **params: Any) -> SparsityScorer:  # noqa: N802
    """Proximal gradient on group norms: ``θ_g ← θ_g · prox_{ηλR}(‖θ_g‖)/‖θ_g‖`` after each step until the
    schedule's last event (:class:`~plprune.sparsity.prox.ProximalMethod`; operators l1, lq, q-shrink, scad,
    mcp, firm, l0)."""
    return SparsityScorer(f"prox-{operator}", lambda: ProximalMethod(operator, strength, **params))


def TrimmedL1(strength: float = 5e-3, trimmed: int | None = None, weight_step: float = 1.0) -> SparsityScorer:  # noqa: N802
    """Trimmed group lasso (:class:`~plprune.sparsity.trimmed_l1.TrimmedL1Method`)."""
    return SparsityScorer("trimmed-l1", lambda: TrimmedL1Method(strength, trimmed, weight_step))


def GSM(keep_fraction: float | None = None) -> SparsityScorer:  # noqa: N802
    """Global sparse momentum on groups (:class:`~plprune.sparsity.gsm.GSMMethod`)."""
    return SparsityScorer("gsm", lambda: GSMMethod(keep_fraction))


def L0Gates(**settings: Any) -> SparsityScorer:  # noqa: N802
    """Hard-concrete ℓ0 gates on groups; keywords of
    :class:`~plprune.sparsity.hard_concrete.HardConcreteMethod`."""
    return SparsityScorer("l0-gates", lambda: HardConcreteMethod(**settings))


def ContinuousSparsification(**settings: Any) -> SparsityScorer:  # noqa: N802
    """Continuous sparsification of groups; keywords of
    :class:`~plprune.sparsity.continuous.ContinuousSparsificationMethod`."""
    return SparsityScorer("cont-sparse", lambda: ContinuousSparsificationMethod(**settings))
