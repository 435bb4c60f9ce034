"""Shared plumbing for the curvature code: validated batches, parameter names, eval mode and a
``functional_call``-able wrapper around "``output_fn(model, batch)``".

Private to :mod:`plprune.curvature`; the public entry points validate their inputs through here so
that every failure is a :class:`~plprune.errors.PlpruneError` saying what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.validation import check_positive_int

#: ``output_fn(model, batch) -> Tensor (n,)``: one scalar per sample (e.g. the per-sample loss).
OutputFn = Callable[[nn.Module, tuple[Any, ...]], Tensor]
#: ``loss_fn(model, batch) -> Tensor ()``: one scalar for the whole batch.
LossFn = Callable[[nn.Module, tuple[Any, ...]], Tensor]


class OutputFnModule(nn.Module):
    """``forward(batch) = output_fn(model, batch)``, so that :func:`torch.func.functional_call` can swap
    the parameters of ``model`` (registered as the submodule ``model``; names get a ``model.`` prefix)
    while ``output_fn`` calls any method of it (e.g. ``per_sample_loss``), not only ``forward``."""

    PREFIX = "model."

    def __init__(self, model: nn.Module, output_fn: Callable[[nn.Module, tuple[Any, ...]], Tensor]) -> None:
        super().__init__()
        self.model = model
        self._output_fn = output_fn

    def forward(self, batch: tuple[Any, ...]) -> Tensor:
        return self._output_fn(self.model, batch)

    def call_with(self, params: dict[str, Tensor], batch: tuple[Any, ...]) -> Tensor:
        """``output_fn(model, batch)`` with ``model``'s parameters ``params`` (by model-relative name)
        replaced; every other parameter and buffer is the model's own."""
        prefixed = {self.PREFIX + name: value for name, value in params.items()}
        return torch.func.functional_call(self, prefixed, (batch,))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule of ``model`` in eval mode (dropout off) and restore each one's own flag after,
    so a model with mixed train/eval submodules comes back exactly as it was."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise PlpruneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_callable(name: str, fn: Any) -> Callable[..., Any]:
    if not callable(fn):
        raise PlpruneError(f"{name} must be a callable (model, batch) -> Tensor, got {type(fn).__name__}")
    return fn


def check_chunk_size(chunk_size: Any) -> int | None:
    """``None`` (whole batch in one vmap) or a positive int (``1`` = per-sample loop without vmap)."""
    if chunk_size is None:
        return None
    return check_positive_int("chunk_size", chunk_size)


def check_batch(batch: Any) -> tuple[tuple[Tensor | None, ...], int]:
    """A batch is a tuple/list of tensors (``None`` entries allowed, e.g. a missing attention mask) whose
    first dimensions all equal the number of samples n ≥ 1. Returns the batch as a tuple and n."""
    if isinstance(batch, Tensor) or not isinstance(batch, (tuple, list)):
        raise PlpruneError(
            f"batch must be a tuple of tensors with the sample dimension first (e.g. (input_ids, labels)), "
            f"got {type(batch).__name__}; wrap a single tensor as (tensor,)"
        )
    tensors = [t for t in batch if t is not None]
    if not tensors:
        raise PlpruneError("batch must contain at least one tensor, got only None entries or nothing")
    for i, t in enumerate(batch):
        if t is not None and not isinstance(t, Tensor):
            raise PlpruneError(f"batch entry {i} must be a Tensor or None, got {type(t).__name__}")
        if t is not None and t.dim() == 0:
            raise PlpruneError(f"batch entry {i} is 0-d; every tensor needs a leading sample dimension")
    sizes = {int(t.shape[0]) for t in tensors}
    if len(sizes) != 1:
        raise PlpruneError(
            f"all batch tensors must have the same first (sample) dimension, got sizes {sorted(sizes)}"
        )
    n = sizes.pop()
    if n == 0:
        raise PlpruneError("batch must hold at least one sample, got a sample dimension of 0")
    return tuple(batch), n


def resolve_param_names(model: nn.Module, params: Iterable[str | Tensor] | None) -> list[str]:
    """Names (as in ``model.named_parameters()``) of ``params``, given as names or as the parameter
    tensors themselves; ``None`` means every parameter with ``requires_grad``. Order is preserved,
    duplicates dropped."""
    named = dict(model.named_parameters())
    if params is None:
        names = [name for name, p in named.items() if p.requires_grad]
        if not names:
            raise PlpruneError("model has no parameter with requires_grad=True; pass params explicitly")
        return names
    if isinstance(params, (str, Tensor)):
        raise PlpruneError("params must be a sequence of parameter names or tensors, not a single one")
    by_id = {id(p): name for name, p in named.items()}
    names: list[str] = []
    for item in params:
        if isinstance(item, str):
            if item not in named:
                raise PlpruneError(f"unknown parameter name {item!r}; valid: {_some(named)}")
            name = item
        elif isinstance(item, Tensor):
            if id(item) not in by_id:
                raise PlpruneError(
                    f"a params tensor of shape {tuple(item.shape)} is not a parameter of the model; "
                    "pass the model's own parameters or their names"
                )
            name = by_id[id(item)]
        else:
            raise PlpruneError(f"params entries must be names or tensors, got {type(item).__name__}")
        if name not in names:
            names.append(name)
    if not names:
        raise PlpruneError("params must name at least one parameter, got an empty sequence")
    return names


def _some(names: Sequence[str] | dict[str, Any], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_output(out: Any, n: int, what: str) -> Tensor:
    """``out`` must be a floating tensor of shape ``(n,)`` (one scalar per sample)."""
    if not isinstance(out, Tensor):
        raise PlpruneError(f"{what} must return a Tensor of shape ({n},), got {type(out).__name__}")
    if tuple(out.shape) != (n,):
        raise PlpruneError(
            f"{what} must return one scalar per sample, shape ({n},), got shape {tuple(out.shape)}"
        )
    if not out.is_floating_point():
        raise PlpruneError(f"{what} must return a floating-point tensor, got dtype {out.dtype}")
    return out
