"""Data-parallel training and pruning across processes (``torchrun``; ``torch.distributed``).

Everything here is a no-op in a single process (no process group, or a world of one), so callers use it
unconditionally. Under ``torchrun`` every rank runs the same program on its own shard of each batch:

* :func:`init_from_env` joins the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): gloo for plprune's CPU training, NCCL only on request.
* :class:`ShardedTask` gives rank r the rows ``r::W`` of the global batch ``task.train_batch(step)`` (the
  layout of ``torch.utils.data.DistributedSampler``), so the global batch keeps the configured size, and
  weights the shard's loss so that the ranks' mean is the global batch's loss (``loss_units``).
* :func:`gather_samples` is how scorers see every rank's samples: the first n samples of the global batch,
  reassembled in global order (sample j comes from rank ``j % W``, its local row ``j // W``); every rank
  gets the same tensors, so a tangent kernel (paper Sec. 3.2.2) computed from them is identical on all
  ranks and equals the single-process kernel of the same samples.
* :func:`all_reduce_mean` averages gradients (the gating network's, Alg. 2 line 6), :func:`broadcast`
  makes rank 0's decision (scores, mask) everyone's, :func:`all_equal` checks bit-identity.
* :func:`run_on_main`/:func:`main_first` run a step (creating the run directory, writing the tokenizer)
  on rank 0 first and hand its answer, or its error, to the other ranks.

NCCL needs CUDA tensors: collectives here move their tensors to the current CUDA device (``init_from_env``
sets it to ``LOCAL_RANK``) when the backend is NCCL and back to the caller's device after (not exercised
here: no GPU was available; docs/distributed.md).
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from plprune.errors import PlpruneError

T = TypeVar("T")

#: seconds a rank waits in a collective before giving up (env ``PLPRUNE_DIST_TIMEOUT`` overrides)
DEFAULT_TIMEOUT_S = 600

__all__ = [
    "ShardedTask",
    "active",
    "all_equal",
    "all_reduce_mean",
    "barrier",
    "broadcast",
    "broadcast_object",
    "gather_samples",
    "init_from_env",
    "is_main",
    "main_first",
    "mean_over_ranks",
    "rank",
    "run_on_main",
    "unwrap",
    "world_size",
    "wrap_ddp",
]


# ----------------------------------------------------------------------------------------------------
# Where am I
# ----------------------------------------------------------------------------------------------------


def world_size() -> int:
    """Processes in the default group; 1 without one."""
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group; 0 without one."""
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def active() -> bool:
    """A process group of more than one rank is running."""
    return world_size() > 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and logs."""
    return rank() == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it (1 when unset)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        raise PlpruneError(f"WORLD_SIZE must be a positive integer, got {value!r}") from None
    if size < 1:
        raise PlpruneError(f"WORLD_SIZE must be a positive integer, got {value!r}")
    return size


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes, if there is one to join.

    Returns ``True`` if this call initialised the group (it is destroyed at exit), ``False`` when there is
    nothing to do (no ``torchrun``, a world of 1, or a group already running). ``backend``: ``"gloo"``
    (default; CPU tensors, what plprune's trainer uses) or ``"nccl"`` (CUDA tensors).
    """
    if not tdist.is_available():
        if env_world_size() > 1:
            raise PlpruneError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        return False
    if tdist.is_initialized() or env_world_size() == 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise PlpruneError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with torchrun "
            "(e.g. torchrun --nproc_per_node=2 -m plprune.cli train ...)"
        )
    backend = backend or "gloo"
    if backend not in ("gloo", "nccl"):
        raise PlpruneError(f"backend must be gloo or nccl, got {backend!r}")
    if backend == "gloo" and not tdist.is_gloo_available():
        raise PlpruneError("torch.distributed has no gloo backend in this build")
    if backend == "nccl":
        if not (tdist.is_nccl_available() and torch.cuda.is_available()):
            raise PlpruneError("backend nccl needs CUDA and an NCCL build of torch; use gloo on CPU")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = float(os.environ.get("PLPRUNE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    tdist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    atexit.register(_shutdown)
    return True


def _shutdown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if active():
        tdist.barrier()


# ----------------------------------------------------------------------------------------------------
# Collectives (each a no-op alone)
# ----------------------------------------------------------------------------------------------------


def _comm_device(tensor: Tensor) -> torch.device:
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def broadcast(tensor: Tensor, src: int = 0) -> Tensor:
    """Rank ``src``'s ``tensor`` on every rank (a new tensor, same dtype and device as the input)."""
    if not active():
        return tensor
    wire = tensor.detach().to(_comm_device(tensor))
    wire = wire.to(torch.uint8) if tensor.dtype == torch.bool else wire.clone()
    tdist.broadcast(wire, src=src)
    return wire.to(device=tensor.device, dtype=tensor.dtype)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The mean over ranks of each tensor (one collective for all of them; float64 on the wire)."""
    tensors = list(tensors)
    if not active() or not tensors:
        return tensors
    device = _comm_device(tensors[0])
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=torch.float64) for t in tensors])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat /= world_size()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape).to(device=t.device, dtype=t.dtype))
        start += t.numel()
    return out


def mean_over_ranks(value: float) -> float:
    """The mean of a float over ranks."""
    if not active():
        return value
    return float(all_reduce_mean([torch.tensor([value], dtype=torch.float64)])[0])


def all_true(flag: bool) -> bool:
    """``flag`` holds on every rank."""
    if not active():
        return bool(flag)
    wire = torch.tensor([0 if flag else 1], dtype=torch.int64)
    wire = wire.to(_comm_device(wire))
    tdist.all_reduce(wire, op=tdist.ReduceOp.SUM)
    return int(wire) == 0


def all_gather(tensor: Tensor) -> list[Tensor]:
    """Every rank's ``tensor`` (same shape and dtype on all ranks), in rank order."""
    if not active():
        return [tensor]
    wire = tensor.detach().to(_comm_device(tensor))
    wire = wire.to(torch.uint8) if tensor.dtype == torch.bool else wire.contiguous()
    out = [torch.empty_like(wire) for _ in range(world_size())]
    tdist.all_gather(out, wire)
    return [o.to(device=tensor.device, dtype=tensor.dtype) for o in out]


def all_equal(tensor: Tensor) -> bool:
    """``tensor`` is bit-identical on every rank (compared as raw bytes, so NaNs and -0.0 count)."""
    if not active():
        return True
    raw = tensor.detach().contiguous().reshape(-1)
    raw = raw.to(torch.uint8) if raw.dtype == torch.bool else raw.view(torch.uint8)
    shapes = [None] * world_size()
    tdist.all_gather_object(shapes, (tuple(tensor.shape), str(tensor.dtype)))
    if len(set(shapes)) != 1:
        return False
    parts = all_gather(raw)
    return all(torch.equal(part, parts[0]) for part in parts)


def gather_samples(batch: Sequence[Tensor | None], n: int) -> tuple[Tensor | None, ...]:
    """The first ``n`` samples of the *global* batch, on every rank, from each rank's local shard.

    Rank r's local batch is assumed to hold the global rows ``r::W`` (``DistributedSampler``'s layout,
    :class:`ShardedTask`'s too): global sample j is local row ``j // W`` of rank ``j % W``. Each rank sends
    its first ``ceil(n / W)`` rows (fewer if some rank has fewer); the result is in global order. Alone:
    ``t[:n]``. Every tensor needs the same trailing shape and dtype on all ranks; ``None`` passes through.
    """
    if n < 1:
        raise PlpruneError(f"gather_samples needs n >= 1, got {n}")
    tensors = [t for t in batch if t is not None]
    sizes = {t.shape[0] for t in tensors if t.dim() > 0}
    if len(sizes) != 1:
        raise PlpruneError(f"a batch's tensors must share their sample dimension, got {sorted(sizes)}")
    local = sizes.pop()
    if not active():
        return tuple(None if t is None else t[:n] for t in batch)
    world = world_size()
    per_rank = min(-(-n // world), local)
    layouts = [None if t is None else (tuple(t.shape[1:]), str(t.dtype)) for t in batch]
    everyone = [None] * world
    tdist.all_gather_object(everyone, (per_rank, layouts))
    if any(other[1] != layouts for other in everyone):
        raise PlpruneError(
            "the ranks' batches differ in structure (trailing shapes / dtypes): "
            + "; ".join(f"rank {r}: {other[1]}" for r, other in enumerate(everyone))
        )
    per_rank = min(other[0] for other in everyone)
    if per_rank < 1:
        raise PlpruneError("some rank has an empty batch; every rank needs at least one sample")
    out: list[Tensor | None] = []
    for t in batch:
        if t is None:
            out.append(None)
            continue
        parts = all_gather(t[:per_rank].contiguous())
        merged = torch.stack(parts, dim=1)  # (per_rank, W, ...): row-major = global order
        out.append(merged.reshape(per_rank * world, *t.shape[1:])[:n])
    return tuple(out)


# ----------------------------------------------------------------------------------------------------
# Rank 0 first
# ----------------------------------------------------------------------------------------------------


def _share_outcome(fn: Callable[[], T], others_run: bool) -> T | None:
    if not active():
        return fn()
    if is_main():
        try:
            result = fn()
        except BaseException as error:
            broadcast_object(("error", f"{type(error).__name__}: {error}", isinstance(error, PlpruneError)))
            raise
        broadcast_object(("ok", None if others_run else result, False))
        return result
    status, payload, _ = broadcast_object(None)
    if status == "error":
        relayed = PlpruneError(f"rank 0 failed: {payload}")
        relayed.relayed = True  # type: ignore[attr-defined]  # rank 0 reports it; the CLI stays quiet here
        raise relayed
    return fn() if others_run else payload


def run_on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; the other ranks receive its (picklable) result, or raise its error."""
    return _share_outcome(fn, others_run=False)  # type: ignore[return-value]


def main_first(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then on the others (e.g. rank 0 writes a tokenizer file, the others read it);
    an error on rank 0 is raised on every rank."""
    return _share_outcome(fn, others_run=True)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# Models and tasks
# ----------------------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper; else ``model``."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def wrap_ddp(model: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` in a ``DistributedDataParallel`` (gradients averaged over ranks during backward); the
    model itself alone. ``find_unused_parameters``: some parameters may get no gradient in a step (a
    mixture of experts that routes no token to an expert)."""
    if not active():
        return model
    device_ids = [torch.cuda.current_device()] if tdist.get_backend() == "nccl" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


class ShardedTask:
    """Rank r's view of a :class:`~plprune.task.Task`: rows ``r::W`` of every global training batch.

    ``loss`` weights the shard's loss by ``W · units(shard) / units(global batch)``, where ``units`` is the
    task's ``loss_units(batch)`` (masked tokens for MLM; the number of samples when the task has none), so
    that the mean of the ranks' losses, and of their gradients (what DDP averages), is the loss of the
    whole global batch. The weight applies to the batch object ``train_batch`` returned last (the trainer
    and the PL scorer call ``loss`` right after ``train_batch``); any other batch gets weight 1.
    Evaluation and everything else is the wrapped task's.
    """

    def __init__(self, task: Any, shard: int | None = None, shards: int | None = None) -> None:
        self.task = task
        self.shard = rank() if shard is None else shard
        self.shards = world_size() if shards is None else shards
        if not 0 <= self.shard < self.shards:
            raise PlpruneError(f"shard {self.shard} is not in [0, {self.shards})")
        self._last: tuple[tuple[Tensor | None, ...], float] | None = None

    def __getattr__(self, name: str) -> Any:  # name, steps_per_epoch, evaluate, logits, ...
        if name == "task":
            raise AttributeError(name)
        return getattr(self.task, name)

    def _units(self, batch: tuple[Tensor | None, ...]) -> float:
        count = getattr(self.task, "loss_units", None)
        if count is not None:
            return float(count(batch))
        return float(next(t.shape[0] for t in batch if t is not None))

    def train_batch(self, step: int) -> tuple[Tensor | None, ...]:
        full = tuple(self.task.train_batch(step))
        size = next(t.shape[0] for t in full if t is not None)
        if size % self.shards:
            raise PlpruneError(
                f"the global batch of {size} samples does not split over {self.shards} ranks; "
                f"use a batch size divisible by {self.shards}"
            )
        shard = tuple(None if t is None else t[self.shard :: self.shards].contiguous() for t in full)
        total = self._units(full)
        weight = self.shards * self._units(shard) / total if total > 0 else 1.0
        self._last = (shard, weight)
        return shard

    def loss(self, model: nn.Module, batch: tuple[Tensor | None, ...]) -> Tensor:
        loss = self.task.loss(model, batch)
        if self._last is not None and batch is self._last[0] and self._last[1] != 1.0:
            return loss * self._last[1]
        return loss

    def per_sample_output(self, model: nn.Module, batch: tuple[Tensor, ...], kind: str = "loss") -> Tensor:
        return self.task.per_sample_output(model, batch, kind=kind)

    def evaluate(self, model: nn.Module, *, full: bool = False) -> dict[str, Any]:
        return self.task.evaluate(model, full=full)


def shard_task(task: Any) -> Any:
    """``task`` as this rank's :class:`ShardedTask` under a process group; ``task`` itself alone."""
    return ShardedTask(task) if active() else task
