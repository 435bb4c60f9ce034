"""plprune: structured pruning during training with the Polyak-Łojasiewicz condition.

The public API, in a user's own training loop::

    import plprune

    pruner = plprune.Pruner(model, plprune.scorers.PL(), plprune.OneShot(800, 0.75),
                            kinds=("head",), loss_fn=loss_fn, batches=batches)
    pruner.attach(optimizer)
    for step, batch in enumerate(loader):
        pruner.step(step)
        ...

Unstructured sparsity with the sparse-DNN course's methods (:mod:`plprune.sparsity`)::

    pruner = plprune.WeightPruner(model, ProximalMethod("l1", 5e-3), plprune.Linear(100, 600, 100, 0.9))

See README.md, docs/byom.md and docs/sparsity.md.
"""

__version__ = "0.1.0"

from plprune import scorers, sparsity
from plprune.errors import PlpruneError
from plprune.export import export, load
from plprune.gates import GroupSet
from plprune.integrations.hf_save import save_pretrained
from plprune.integrations.huggingface import HFPruningCallback
from plprune.pruner import Pruner
from plprune.pruners.base import Diagnostics, GroupScorer, PruneContext, PrunerPlugin
from plprune.pruners.registration import register_method
from plprune.schedules import AtInit, Iterative, Linear, OneShot, Schedule
from plprune.sites import (
    AttentionAdapter,
    FFNAdapter,
    FusedMoEAdapter,
    LayerAdapter,
    LayerSite,
    MoEAdapter,
    NeuronSite,
    find_sites,
    register_attention,
    register_ffn,
    register_layers,
    register_moe,
)
from plprune.task import FunctionTask, Task
from plprune.weight_pruner import WeightPruner

__all__ = [
    "AtInit",
    "AttentionAdapter",
    "Diagnostics",
    "FFNAdapter",
    "FunctionTask",
    "FusedMoEAdapter",
    "GroupScorer",
    "GroupSet",
    "HFPruningCallback",
    "Iterative",
    "LayerAdapter",
    "LayerSite",
    "Linear",
    "MoEAdapter",
    "NeuronSite",
    "OneShot",
    "PlpruneError",
    "PruneContext",
    "Pruner",
    "PrunerPlugin",
    "Schedule",
    "Task",
    "WeightPruner",
    "__version__",
    "export",
    "find_sites",
    "load",
    "register_attention",
    "register_ffn",
    "register_layers",
    "register_method",
    "register_moe",
    "save_pretrained",
    "scorers",
    "sparsity",
]
