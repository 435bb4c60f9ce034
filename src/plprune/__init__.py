"""plprune: structured pruning during training with the Polyak-Łojasiewicz condition.

The public API, in a user's own training loop::

    import plprune

    pruner = plprune.Pruner(model, plprune.scorers.PL(), plprune.OneShot(800, 0.75),
                            kinds=("head",), loss_fn=loss_fn, batches=batches)
    pruner.attach(optimizer)
    for step, batch in enumerate(loader):
        pruner.step(step)
        ...

See README.md and docs/byom.md.
"""

__version__ = "0.1.0"

from plprune import scorers
from plprune.errors import PlpruneError
from plprune.export import export, load
from plprune.gates import GroupSet
from plprune.integrations.huggingface import HFPruningCallback
from plprune.pruner import Pruner
from plprune.pruners.base import Diagnostics, GroupScorer, PruneContext, PrunerPlugin
from plprune.pruners.registration import register_method
from plprune.schedules import AtInit, Iterative, Linear, OneShot, Schedule
from plprune.sites import (
    AttentionAdapter,
    FusedMoEAdapter,
    MoEAdapter,
    find_sites,
    register_attention,
    register_moe,
)
from plprune.task import FunctionTask, Task

__all__ = [
    "AtInit",
    "AttentionAdapter",
    "Diagnostics",
    "FunctionTask",
    "FusedMoEAdapter",
    "GroupScorer",
    "GroupSet",
    "HFPruningCallback",
    "Iterative",
    "Linear",
    "MoEAdapter",
    "OneShot",
    "PlpruneError",
    "PruneContext",
    "Pruner",
    "PrunerPlugin",
    "Schedule",
    "Task",
    "__version__",
    "export",
    "find_sites",
    "load",
    "register_attention",
    "register_method",
    "register_moe",
    "scorers",
]
