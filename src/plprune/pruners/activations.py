"""Calibration activations of the projections that *read* a group: shared by FLAP and Wanda-sp.

Both criteria (An et al. 2024, FLAP; its structured Wanda baseline, Wanda-sp) look at the output projection
of a structure — the linear map that reads an attention head's context (``o_proj``, ``out_proj``,
``c_proj``, BERT's ``attention.output.dense``) or an FFN channel (``down_proj``, ``fc2``, ``c_proj``,
``output.dense``) — and at the calibration activations entering it. Nothing here is specific to a model
family: the projection and its columns are read off the group's own parameter slices.

* :func:`reader_slices` — for every group, its **reader slices**: the slices of a 2-d projection weight
  (``nn.Linear``, Hugging Face ``Conv1D``) taken along that projection's *input* dimension. A head's
  ``d`` columns of W_O and a neuron's column of ``down_proj`` are such slices; the Q/K/V rows and the
  up/gate rows are taken along the output dimension and are not.
* :func:`collect_input_stats` — per reading projection, per input channel, over every calibration token:
  count, mean and sum of squared deviations (float64; batches merged with Chan et al.'s pairwise update,
  which avoids the cancellation of ``Σx² − n·x̄²``), from forward pre-hooks that see the input exactly as the
  projection does (after the gate sites' own pre-hooks: a pruned group's channels read as 0).

Every token position of a batch counts (calibration text should be unpadded, as packed LM blocks are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import plprune.distributed as dist
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.pruners.base import PruneContext
from plprune.pruners.structured import scoring_mode
from plprune.sites.projections import in_dim, is_projection

__all__ = [
    "ChannelStats",
    "ReaderSlice",
    "calibration_input_stats",
    "collect_input_stats",
    "input_columns",
    "reader_modules",
    "reader_slices",
]


@dataclass(frozen=True)
class ReaderSlice:
    """Input channels ``start:stop`` of the projection called ``module`` (a group's columns of it)."""

    module: str
    start: int
    stop: int


def _module_of(model: nn.Module, param_name: str) -> tuple[str, nn.Module | None]:
    module_name, _, attr = param_name.rpartition(".")
    if attr != "weight":
        return module_name, None
    try:
        return module_name, model.get_submodule(module_name)
    except AttributeError:
        return module_name, None


def reader_slices(groups: GroupSet, method: str) -> list[tuple[ReaderSlice, ...]]:
    """Per group (in ``groups.groups`` order), its slices of projection weights along the projection's input
    dimension; raises :class:`PlpruneError` naming the first group that has none (e.g. an MoE expert, a
    conv filter: nothing reads them through a column of a linear projection)."""
    out: list[tuple[ReaderSlice, ...]] = []
    for group in groups.groups:
        found = []
        for piece in group.slices:
            name, module = _module_of(groups.model, piece.param_name)
            if module is None or not is_projection(module) or piece.dim != in_dim(module):
                continue
            found.append(ReaderSlice(name, piece.start, piece.stop))
        if not found:
            raise PlpruneError(
                f"{method} scores a group by the projection that reads it (an attention head's output "
                f"projection columns, an FFN channel's down-projection column), but group {group.name} has "
                f"no slice of a projection along its input dimension (its parameters: "
                f"{list(group.param_names)}); use it on kinds 'head' and 'neuron'"
            )
        out.append(tuple(found))
    return out


def reader_modules(groups: GroupSet, readers: Sequence[tuple[ReaderSlice, ...]]) -> dict[str, nn.Module]:
    """The projections named by ``readers``, in first-seen order."""
    names = dict.fromkeys(r.module for group in readers for r in group)
    return {name: groups.model.get_submodule(name) for name in names}


def input_columns(module: nn.Module, start: int, stop: int) -> Tensor:
    """The weight entries that multiply input channels ``start:stop`` of ``module``, as ``(out, stop −
    start)`` (``nn.Linear``: ``weight[:, start:stop]``; ``Conv1D``: ``weight[start:stop, :]ᵀ``)."""
    columns = module.weight.narrow(in_dim(module), start, stop - start)
    return columns if in_dim(module) == 1 else columns.t()


@dataclass
class ChannelStats:
    """Per input channel of one projection, over ``count`` calibration tokens: ``mean`` and ``m2`` (the sum
    of squared deviations from the mean), float64."""

    count: int
    mean: Tensor
    m2: Tensor

    @classmethod
    def of(cls, rows: Tensor) -> ChannelStats:
        """Statistics of ``rows`` ``(tokens, channels)``."""
        rows = rows.double()
        mean = rows.mean(dim=0)
        return cls(rows.shape[0], mean, ((rows - mean) ** 2).sum(dim=0))

    def merge(self, other: ChannelStats) -> ChannelStats:
        """Statistics of both token sets together (Chan, Golub & LeVeque 1979's pairwise update)."""
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return ChannelStats(n, mean, m2)

    @property
    def variance(self) -> Tensor:
        """Unbiased sample variance ``m2 / (count − 1)`` (needs two tokens or more)."""
        if self.count < 2:
            raise PlpruneError(f"a variance needs at least 2 calibration tokens, got {self.count}")
        return self.m2 / (self.count - 1)

    @property
    def sum_squares(self) -> Tensor:
        """``Σ_t x_t²`` per channel (``m2 + count·mean²``: both terms non-negative, no cancellation)."""
        return self.m2 + self.count * self.mean**2


@contextmanager
def _recording(modules: dict[str, nn.Module], stats: dict[str, ChannelStats]) -> Iterator[None]:
    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            rows = x.reshape(-1, x.shape[-1])
            if not bool(torch.isfinite(rows).all()):
                raise PlpruneError(f"the input of {name} holds NaN or Inf on the calibration data")
            batch = ChannelStats.of(rows)
            stats[name] = stats[name].merge(batch) if name in stats else batch

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pool_ranks(stats: dict[str, ChannelStats]) -> dict[str, ChannelStats]:
    """Every rank's statistics merged (the same on all ranks) when data-parallel ranks score together."""
    pooled = {}
    for name, local in stats.items():
        wire = torch.cat([torch.tensor([float(local.count)], dtype=torch.float64), local.mean, local.m2])
        parts = dist.all_gather(wire.to(local.mean.device))
        width = local.mean.numel()
        merged: ChannelStats | None = None
        for part in parts:
            part = part.cpu()
            rank_stats = ChannelStats(int(part[0]), part[1 : 1 + width], part[1 + width :])
            merged = rank_stats if merged is None else merged.merge(rank_stats)
        pooled[name] = merged
    return pooled


def collect_input_stats(
    modules: dict[str, nn.Module],
    run_batch: Callable[[int], object],
    batches: int,
    *,
    distributed: bool = False,
) -> dict[str, ChannelStats]:
    """Input statistics of every projection in ``modules`` over ``run_batch(b)`` for ``b < batches`` (each
    call runs one calibration forward pass; its result is ignored). Gradients are off. With
    ``distributed`` every rank's statistics are merged (all ranks get the same). Raises if a projection saw
    no input (the forward passes do not reach it)."""
    stats: dict[str, ChannelStats] = {}
    with torch.no_grad(), _recording(modules, stats):
        for b in range(batches):
            run_batch(b)
    silent = [name for name in modules if name not in stats]
    if silent:
        raise PlpruneError(f"the calibration forward passes never reached {silent}; no activations to score")
    stats = {name: ChannelStats(s.count, s.mean.cpu(), s.m2.cpu()) for name, s in stats.items()}
    return _pool_ranks(stats) if distributed else stats


def calibration_input_stats(
    context: PruneContext, modules: dict[str, nn.Module], batches: int
) -> dict[str, ChannelStats]:
    """:func:`collect_input_stats` over the task's batches ``context.step + b`` (``b < batches``), the
    model in eval mode (:func:`~plprune.pruners.structured.scoring_mode`), each batch run through the
    task's loss (the forward pass a scorer already knows how to make)."""
    task, model = context.task, context.model

    def run(b: int) -> None:
        task.loss(model, task.train_batch(context.step + b))

    with scoring_mode(model):
        return collect_input_stats(modules, run, batches, distributed=context.distributed)
