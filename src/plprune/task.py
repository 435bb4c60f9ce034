"""What a pruner needs from training: batches, a loss and a per-sample scalar.

:class:`Task` is the protocol the built-in trainer and every scorer use (plprune's own tasks live in
:mod:`plprune.tasks`). :class:`FunctionTask` makes one from a user's ``loss_fn(model, batch)`` and batches,
so a model trained in the user's own loop needs no plprune task class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from plprune.devices import model_device, to_device
from plprune.errors import PlpruneError


class Task(Protocol):
    """A supervised objective over a fixed dataset with a deterministic data order.

    ``train_batch(step)`` depends only on the run seed and ``step`` (so resuming from a checkpoint
    replays exactly the same batches); ``per_sample_output`` is the scalar per sample whose gradients
    define the tangent kernel (paper Sec. 3.2.2); ``evaluate`` returns the metrics logged at each
    evaluation.
    """

    name: str
    steps_per_epoch: int

    def train_batch(self, step: int) -> tuple[Tensor, ...]: ...

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor: ...

    def per_sample_output(self, model: nn.Module, batch: tuple[Tensor, ...], kind: str = "loss") -> Tensor:
        """``(n,)`` scalars: ``kind="loss"`` the per-sample loss, ``"logit"`` the true-token/class logit."""

    def evaluate(self, model: nn.Module, *, full: bool = False) -> dict[str, Any]: ...


LossFn = Callable[[nn.Module, Any], Tensor]


class _BatchLayout:
    """A user batch (tensor, tuple/list or dict of tensors) ⇄ the flat tuple of tensors plprune passes
    around (the curvature code slices samples out of a tuple)."""

    def __init__(self, batch: Any) -> None:
        if isinstance(batch, Tensor):
            self.kind, self.keys = "tensor", ()
        elif isinstance(batch, Mapping):
            self.kind, self.keys = "dict", tuple(batch)
        elif isinstance(batch, (tuple, list)):
            self.kind, self.keys = type(batch).__name__, tuple(range(len(batch)))
        else:
            raise PlpruneError(
                "a batch must be a Tensor, a tuple/list of Tensors or a dict of Tensors, got "
                f"{type(batch).__name__}"
            )

    def flatten(self, batch: Any) -> tuple[Tensor, ...]:
        values = (batch,) if self.kind == "tensor" else tuple(batch[k] for k in self.keys)
        bad = [type(v).__name__ for v in values if not isinstance(v, Tensor) and v is not None]
        if bad:
            raise PlpruneError(f"every entry of a batch must be a Tensor (or None), got {bad}")
        return values

    def unflatten(self, values: tuple[Tensor, ...]) -> Any:
        if self.kind == "tensor":
            return values[0]
        if self.kind == "dict":
            return dict(zip(self.keys, values, strict=True))
        return list(values) if self.kind == "list" else tuple(values)


class FunctionTask:
    """A :class:`Task` from ``loss_fn(model, batch) -> scalar`` and ``batches``.

    ``batches`` is one of: a callable ``batches(step) -> batch`` (exactly reproducible, the best choice for
    resuming), a sequence (``batches[step % len]``) or any iterable (a DataLoader: each request takes the
    next batch, restarting the iterable when it ends). A batch is a Tensor, a tuple/list of Tensors or a
    dict of Tensors (e.g. a Hugging Face batch); ``loss_fn`` receives it in that form, on the model's
    device (a CPU DataLoader with a GPU model works as in the user's own loop).

    The per-sample output (tangent kernels, paper Sec. 3.2.2) is ``loss_fn`` on each sample alone (every
    tensor sliced to ``[j:j+1]`` on its first dimension), unless ``per_sample_output(model, batch) -> (n,)``
    is given.
    """

    name = "user"
    steps_per_epoch = 1

    def __init__(
        self,
        loss_fn: LossFn,
        batches: Callable[[int], Any] | Sequence[Any] | Iterable[Any],
        per_sample_output: Callable[[nn.Module, Any], Tensor] | None = None,
    ) -> None:
        if not callable(loss_fn):
            raise PlpruneError(
                f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}"
            )
        if per_sample_output is not None and not callable(per_sample_output):
            raise PlpruneError("per_sample_output must be callable: per_sample_output(model, batch) -> (n,)")
        if isinstance(batches, (Tensor, str, bytes)) or not (
            callable(batches) or isinstance(batches, (Sequence, Iterable))
        ):
            raise PlpruneError(
                "batches must be a callable batches(step) -> batch, a sequence of batches or an iterable "
                f"(e.g. a DataLoader), got {type(batches).__name__}"
            )
        if isinstance(batches, Sequence) and len(batches) == 0:
            raise PlpruneError("batches is an empty sequence; give at least one batch")
        self.loss_fn = loss_fn
        self.batches = batches
        self._user_per_sample = per_sample_output
        self._iterator: Iterator[Any] | None = None
        self._layout: _BatchLayout | None = None

    def _raw_batch(self, step: int) -> Any:
        if callable(self.batches) and not isinstance(self.batches, (Sequence, nn.Module)):
            return self.batches(step)
        if isinstance(self.batches, Sequence):
            return self.batches[step % len(self.batches)]
        for attempt in range(2):
            if self._iterator is None:
                self._iterator = iter(self.batches)
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None
                if attempt:
                    break
        raise PlpruneError("batches is an empty iterable; it yielded no batch")

    def train_batch(self, step: int) -> tuple[Tensor, ...]:
        """The batch for ``step`` as a flat tuple of tensors."""
        raw = self._raw_batch(step)
        layout = _BatchLayout(raw)
        if self._layout is not None and (layout.kind, layout.keys) != (self._layout.kind, self._layout.keys):
            raise PlpruneError(
                f"batches changed structure: first {self._layout.kind} {self._layout.keys}, now "
                f"{layout.kind} {layout.keys}"
            )
        self._layout = layout
        return layout.flatten(raw)

    def user_batch(self, batch: tuple[Tensor, ...]) -> Any:
        """A flat batch back in the form ``loss_fn`` expects."""
        if self._layout is None:
            raise PlpruneError("no batch has been drawn yet")
        return self._layout.unflatten(tuple(batch))

    def model_inputs(self, step: int = 0) -> Any:
        """What to show the model to trace it (conv filter discovery): the batch's first tensor, or the
        whole dict for a dict batch."""
        raw = self._raw_batch(step)
        if isinstance(raw, Tensor):
            return raw
        if isinstance(raw, Mapping):
            return dict(raw)
        return raw[0]

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        batch = to_device(batch, model_device(model))  # e.g. a CPU DataLoader's batch, a GPU model
        loss = self.loss_fn(model, self.user_batch(batch))
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise PlpruneError(
                f"loss_fn must return a scalar Tensor, got {type(loss).__name__}"
                + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
            )
        return loss.reshape(())

    def per_sample_output(self, model: nn.Module, batch: tuple[Tensor, ...], kind: str = "loss") -> Tensor:
        if kind != "loss":
            raise PlpruneError(
                f"a loss_fn task gives per-sample losses only, not {kind!r}; use kernel_output='loss' and "
                "hessian_scalar='loss', or pass per_sample_output"
            )
        batch = to_device(batch, model_device(model))
        if self._user_per_sample is not None:
            return self._user_per_sample(model, self.user_batch(batch))
        sizes = {t.shape[0] for t in batch if t is not None and t.dim() > 0}
        if len(sizes) != 1:
            raise PlpruneError(
                f"cannot split the batch into samples: its tensors have first dimensions {sorted(sizes)}; "
                "pass per_sample_output(model, batch) -> (n,)"
            )
        n = sizes.pop()
        outputs = [
            self.loss(model, tuple(None if t is None else t[j : j + 1] for t in batch)) for j in range(n)
        ]
        return torch.stack(outputs)

    def evaluate(self, model: nn.Module, *, full: bool = False) -> dict[str, Any]:
        return {}
