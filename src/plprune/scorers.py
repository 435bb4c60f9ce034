"""Every pruning criterion under a short name, for :class:`plprune.Pruner`::

    plprune.scorers.PL(alpha=1.0)          # the paper's PL-regularised gating network (Alg. 2)
    plprune.scorers.Random()               # the sanity floor
    plprune.scorers.IMP(rewind_step=60)    # magnitude + weight rewinding (brings its rewinder)
    plprune.scorers.SNIP(batches=4)        # ... GradScore, GraSP, Magnitude, FPGM, CHIP, DPFPS

Each is the scorer class of :mod:`plprune.pruners`; ``PL`` takes :class:`~plprune.pruners.pl.PLConfig`'s
fields as keywords.
"""

from __future__ import annotations

from typing import Any

from plprune.pruners.chip import CHIPScorer as CHIP  # noqa: N814
from plprune.pruners.dpfps import DPFPSScorer as DPFPS  # noqa: N814
from plprune.pruners.fpgm import FPGMScorer as FPGM  # noqa: N814
from plprune.pruners.grasp import GraspScorer as GraSP
from plprune.pruners.magnitude import MagnitudeScorer as Magnitude
from plprune.pruners.pl import PLConfig, PLScorer
from plprune.pruners.random import RandomScorer as Random
from plprune.pruners.rewind import IMPScorer as IMP  # noqa: N814
from plprune.pruners.sensitivity import GateSensitivityScorer as GradScore
from plprune.pruners.snip import SnipScorer as SNIP  # noqa: N814

__all__ = ["CHIP", "DPFPS", "FPGM", "IMP", "PL", "SNIP", "GraSP", "GradScore", "Magnitude", "Random"]


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
