"""Prune inside a Hugging Face ``transformers.Trainer`` with one line::

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[plprune.HFPruningCallback(pruner)])

The callback attaches the :class:`~plprune.pruner.Pruner` to the Trainer's optimizer when training begins,
calls ``pruner.step(global_step)`` at the start of every optimizer step, saves the pruner's state into each
``checkpoint-N`` folder the Trainer writes (``plprune_pruner.pt``, loaded with ``weights_only=True``) and
restores it when the Trainer resumes from such a checkpoint. ``transformers`` is imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from plprune.errors import PlpruneError
from plprune.pruner import Pruner

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - transformers is optional
    TrainerCallback = object  # type: ignore[assignment,misc]

STATE_FILE = "plprune_pruner.pt"


class HFPruningCallback(TrainerCallback):  # type: ignore[misc,valid-type]
    """A ``transformers.TrainerCallback`` driving a :class:`~plprune.pruner.Pruner`."""

    def __init__(self, pruner: Pruner) -> None:
        if TrainerCallback is object:
            raise PlpruneError("HFPruningCallback needs transformers: pip install transformers accelerate")
        if not isinstance(pruner, Pruner):
            raise PlpruneError(f"HFPruningCallback takes a plprune.Pruner, got {type(pruner).__name__}")
        self.pruner = pruner

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        optimizer = kwargs.get("optimizer")
        if optimizer is None:
            raise PlpruneError("the Trainer gave its callbacks no optimizer; pruned weights cannot be kept 0")
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        if self.pruner.optimizer is not optimizer:
            if self.pruner.optimizer is not None:
                self.pruner.detach()
            self.pruner.attach(optimizer)
        if state.global_step > 0:  # resuming: the pruner's state lies beside the Trainer's checkpoint
            saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
            if not saved.is_file():
                raise PlpruneError(
                    f"resuming at step {state.global_step} but {saved} is missing: the checkpoint was not "
                    "written with HFPruningCallback, so the pruning state (mask, schedule) cannot be restored"
                )
            self.pruner.load_state_dict(torch.load(saved, weights_only=True))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.pruner.step(state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{STATE_FILE}.tmp"
        torch.save(self.pruner.state_dict(), temporary)
        temporary.replace(folder / STATE_FILE)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs is not None:
            logs.update({f"plprune/{k}": v for k, v in self.pruner.metrics().items()})
