"""Learning-rate schedules as multipliers of the peak LR."""

from __future__ import annotations


def warmup_linear_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 0 to 1 over ``warmup_steps``, then linear decay to 0 at ``total_steps``
    (BERT's schedule, Devlin et al. 2019)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = total_steps - step
    return max(0.0, remaining / max(1, total_steps - warmup_steps))


def step_decay(
    step: int, total_steps: int, milestones: tuple[float, ...] = (0.5, 0.75), factor: float = 0.1
) -> float:
    """×``factor`` at each milestone fraction of training (paper E.4: ×0.1 at 1/2 and 3/4)."""
    return factor ** sum(step >= round(m * total_steps) for m in milestones)
