"""Prune inside a Hugging Face ``transformers.Trainer`` with one line::

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[plprune.HFPruningCallback(pruner)])

The callback attaches the :class:`~plprune.pruner.Pruner` to the Trainer's optimizer when training begins,
calls ``pruner.step(global_step)`` at the start of every optimizer step, saves the pruner's state into each
``checkpoint-N`` folder the Trainer writes (``plprune_pruner.pt``, written atomically with a sha256 beside it,
loaded with ``weights_only=True`` after the checksum is checked) and restores it when the Trainer resumes
from such a checkpoint; a damaged state file is refused, naming the newest earlier checkpoint folder whose
state is intact. ``transformers`` is imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plprune.errors import PlpruneError, RunDirError
from plprune.pruner import Pruner
from plprune.train.checkpoint import load_checkpoint, save_checkpoint, verify_checkpoint

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
            try:
                state_dict = load_checkpoint(saved)  # checked against its sha256 when one was written
            except RunDirError as error:
                raise PlpruneError(
                    f"{error}. Resume the Trainer from an earlier checkpoint instead"
                    + (
                        f" (e.g. resume_from_checkpoint={str(earlier)!r})"
                        if (earlier := _earlier(saved))
                        else ""
                    )
                ) from error
            self.pruner.load_state_dict(state_dict)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.pruner.step(state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        # atomic, with a sha256 beside it (plprune_pruner.pt.sha256), as plprune's own checkpoints; the
        # Trainer keeps several checkpoint folders, so a damaged one leaves the earlier ones to resume from
        save_checkpoint(folder / STATE_FILE, self.pruner.state_dict())

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs is not None:
            logs.update({f"plprune/{k}": v for k, v in self.pruner.metrics().items()})


def _earlier(saved: Path) -> Path | None:
    """The newest ``checkpoint-M`` folder before ``saved``'s whose pruner state matches its checksum."""
    folder = saved.parent
    steps = []
    for other in folder.parent.glob("checkpoint-*"):
        suffix = other.name.rpartition("-")[2]
        if suffix.isdigit() and other != folder and int(suffix) < int(folder.name.rpartition("-")[2]):
            steps.append((int(suffix), other))
    for _, other in sorted(steps, reverse=True):
        try:
            verify_checkpoint(other / STATE_FILE)
        except RunDirError:
            continue
        return other
    return None
