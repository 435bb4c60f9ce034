"""A plain PyTorch training loop with callbacks, JSONL metrics, atomic checkpoints and exact resume.

Exact resume: the data order and masking of step s depend only on (seed, s) (see ``Task``), and a
checkpoint stores model, optimizer, LR schedule, every global RNG (Python, NumPy, torch CPU and CUDA; torch's
drives dropout), the data position (seed, next step), the running loss accumulators and every callback's
state (a pruner's: masks, schedule position, scorer and plugin state). Resuming from step s therefore
replays steps s+1, ... with bit-identical numbers on CPU. Checkpoints are crash-safe (atomic, sha256-checked,
the last two kept: :mod:`plprune.train.checkpoint`).

Under ``torchrun`` (docs/distributed.md) every rank runs this loop on its shard of each batch, through
``train_model`` (the runner sets a ``DistributedDataParallel`` wrapper there); rank 0 alone evaluates,
writes metrics and checkpoints, and hands its evaluation record to the other ranks.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import plprune.distributed as dist
from plprune.errors import RunDirError, TrainingDivergedError
from plprune.faults import kill_point
from plprune.seeding import rng_state, set_rng_state
from plprune.task import Task
from plprune.train.callbacks import Callback
from plprune.train.checkpoint import load_latest_checkpoint, previous_path, save_checkpoint
from plprune.train.config import TrainConfig
from plprune.train.lr_schedule import step_decay, warmup_linear_decay
from plprune.train.metrics import JsonlWriter, perplexity

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def build_lr_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    if config.optimizer == "adamw":

        def factor(step: int) -> float:
            return warmup_linear_decay(step, config.warmup_steps, config.steps)
    else:

        def factor(step: int) -> float:
            return step_decay(step, config.steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    """Train ``model`` on ``task`` for ``config.steps`` optimizer steps, writing into ``run_dir``.

    ``run_dir`` receives ``metrics.jsonl`` (one record per evaluation) and ``checkpoint.pt``.
    Callbacks see the trainer (``model``, ``optimizer``, ``task``, ``config``, ``step``) at each hook.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        config: TrainConfig,
        run_dir: Path,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
    ) -> None:
        self.model = model
        self.train_model: nn.Module = model  # what training steps call: a DDP wrapper under torchrun
        self.task = task
        self.config = config
        self.run_dir = Path(run_dir)
        self.callbacks = list(callbacks)
        self.progress = progress
        self.optimizer = build_optimizer(model, config)
        self.lr_schedule = build_lr_schedule(self.optimizer, config)
        self.metrics = JsonlWriter(self.run_dir / METRICS_NAME)
        self.step = 0
        self.elapsed = 0.0  # training wall time (s), carried across resumes
        self._loss_sum = 0.0
        self._loss_count = 0
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint_step: int | None = None  # step of the newest checkpoint written or resumed from
        self.resume_notes: list[str] = []  # why resume skipped a checkpoint (damaged, incomplete), if it did
        self.resumed_from: Path | None = None  # the checkpoint file resume loaded

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "rng": rng_state(),
            "data": {"seed": self.config.seed, "next_step": self.step},
            "loss_sum": self._loss_sum,
            "loss_count": self._loss_count,
            "callbacks": {key: cb.state_dict() for key, cb in self._callback_keys()},
        }

    def save(self) -> Path:
        """Write ``run_dir/checkpoint.pt`` (the one it replaces becomes ``checkpoint.prev.pt``). A failed
        write (disk full, directory not writable) raises :class:`RunDirError` and leaves earlier ones."""
        path = self.run_dir / CHECKPOINT_NAME
        bad = [name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:  # never let a diverged model replace a good checkpoint
            raise TrainingDivergedError(
                f"parameters became NaN or infinite by step {self.step} ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}); not checkpointed: {self._kept_checkpoint()}"
            )
        # the running loss is the one per-rank number: store the ranks' mean (later sums add to it linearly)
        self._loss_sum = dist.mean_over_ranks(self._loss_sum)
        if dist.is_main():  # every rank holds the same state: rank 0 writes it, once
            try:
                save_checkpoint(path, self.state_dict(), keep_previous=True)
            except OSError as error:
                raise self._write_error(f"cannot write checkpoint {path}", error) from error
        self.last_checkpoint_step = self.step
        return path

    def _write_error(self, what: str, error: OSError) -> RunDirError:
        """One clear message for an OS error while writing run state: what failed, at which step, and which
        checkpoint is left to resume from."""
        advice = "" if self.last_checkpoint_step is None else "; free space or fix permissions, then --resume"
        reason = error.strerror or str(error)
        return RunDirError(f"{what} at step {self.step}: {reason}; {self._kept_checkpoint()}{advice}")

    def _kept_checkpoint(self) -> str:
        if self.last_checkpoint_step is None:
            return "no checkpoint was written before it"
        latest = self.run_dir / CHECKPOINT_NAME
        return (
            f"the checkpoint of step {self.last_checkpoint_step} is intact ({latest}, "
            f"{previous_path(latest).name})"
        )

    def resume(self) -> None:
        """Restore everything from the newest good checkpoint in ``run_dir`` (``checkpoint.pt``, else
        ``checkpoint.prev.pt``, saying why on stderr) and drop metrics logged after it."""
        state, used, notes = load_latest_checkpoint(self.run_dir / CHECKPOINT_NAME)
        self.resume_notes = notes
        self.resumed_from = used
        for note in notes if dist.is_main() else ():  # one warning, not one per rank
            print(f"plprune: warning: {note}", file=sys.stderr)
        # callbacks first: a compacting pruner reshapes the model (and the optimizer's parameter lists) to
        # the checkpoint's shapes before the weights are loaded
        self._emit("on_resume_start")
        saved = state["callbacks"]
        for key, callback in self._callback_keys():
            if key in saved:
                callback.load_state_dict(saved[key])
            elif callback.state_dict():
                raise RunDirError(f"the checkpoint has no state for callback {key}; cannot resume it exactly")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        torch.set_rng_state(state["torch_rng"])
        set_rng_state(state.get("rng", {}))  # absent in checkpoints written before it was added
        self.step = int(state["step"])
        self.last_checkpoint_step = self.step
        self.elapsed = float(state["elapsed"])
        self._loss_sum = float(state["loss_sum"])
        self._loss_count = int(state["loss_count"])
        if dist.is_main():
            self.metrics.truncate_after(self.step)

    def _callback_keys(self) -> list[tuple[str, Callback]]:
        """Stable names for callback states: class name plus occurrence number."""
        seen: dict[str, int] = {}
        keys = []
        for callback in self.callbacks:
            name = type(callback).__name__
            keys.append((f"{name}#{seen.get(name, 0)}", callback))
            seen[name] = seen.get(name, 0) + 1
        return keys

    # -- training ------------------------------------------------------------------------------
    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def evaluate(self, *, full: bool = False) -> dict[str, Any]:
        """Evaluate now and log a record (step, epoch, train loss/PPL, test PPL, ΔPPL, lr, wall time).
        Under torchrun rank 0 evaluates and logs; the other ranks receive its record."""
        self._loss_sum = dist.mean_over_ranks(self._loss_sum)  # the ranks' shard losses: the global batch's
        record = dist.broadcast_object(self._evaluate_and_log(full) if dist.is_main() else None)
        self.history.append(record)
        if not full:  # the final evaluation keeps them: the final checkpoint then holds the running loss,
            self._loss_sum, self._loss_count = 0.0, 0  # and a run resumed from it reports the same record
        return record

    def _evaluate_and_log(self, full: bool) -> dict[str, Any]:
        """Rank 0's part of :meth:`evaluate`: the record, the callbacks' ``on_evaluate``, the metrics line."""
        train_loss = self._loss_sum / self._loss_count if self._loss_count else float("nan")
        record: dict[str, Any] = {
            "step": self.step,
            "epoch": self.step / self.task.steps_per_epoch,
            "train_loss": train_loss,
            "train_loss_ppl": perplexity(train_loss) if self._loss_count else float("nan"),
        }
        record.update(self.task.evaluate(self.model, full=full))
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record["wall_time"] = self.elapsed
        record["final"] = full
        self._emit("on_evaluate", record)
        try:
            self.metrics.write(record)
        except OSError as error:
            raise self._write_error(f"cannot append to {self.metrics.path}", error) from error
        return record

    def _train_step(self) -> float:
        self.model.train()
        batch = self.task.train_batch(self.step)
        loss = self.task.loss(self.train_model, batch)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"training loss became {float(loss.detach())} at step {self.step + 1}; lower --lr or use "
                f"--grad-clip ({self._kept_checkpoint()})"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._emit("on_after_backward", self.step)
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.lr_schedule.step()
        return float(loss.detach())

    def fit(self) -> dict[str, Any]:
        """Run the remaining steps; return the final full evaluation record."""
        config = self.config
        self._emit("on_train_start")
        progress = None
        if self.progress:
            from tqdm.auto import tqdm

            progress = tqdm(  # disable=None: no bar when stderr is not a terminal (logs, CI)
                total=config.steps, initial=self.step, desc="train", unit="step", leave=False, disable=None
            )
        try:
            while self.step < config.steps:
                started = time.perf_counter()
                self._emit("on_step_start", self.step)
                loss = self._train_step()
                self.step += 1
                self._emit("on_step_end", self.step)
                kill_point("step-end")
                self.elapsed += time.perf_counter() - started
                self._loss_sum += loss
                self._loss_count += 1
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.3f}")
                if self.step % config.eval_every == 0 and self.step < config.steps:
                    self.evaluate()
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save()
        except OSError as error:  # e.g. a pruner's log append on a full disk: one clear message, not a trace
            raise self._write_error("I/O error while training", error) from error
        finally:
            if progress is not None:
                progress.close()
        final = self.evaluate(full=True)
        self.save()
        self._emit("on_train_end")
        if not math.isfinite(final.get("test_loss", 0.0)):
            raise TrainingDivergedError(f"final test loss is {final['test_loss']}")
        return final
