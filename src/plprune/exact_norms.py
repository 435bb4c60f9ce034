"""Exact higher derivatives for models plprune did not build: :func:`exact_norms`.

The PL regulariser differentiates a Hessian-vector product w.r.t. the gates (third order). Three things
in a typical foreign model (e.g. a Hugging Face BERT or ViT, or a torchvision-style CNN) get that wrong
on CPU in torch 2.13:

* ``nn.LayerNorm`` (``F.layer_norm``): its double backward is not itself differentiated correctly, so
  third derivatives are wrong (no error; tests/test_model_layers.py, tests/test_exact_norms.py);
* training-mode ``nn.BatchNorm1d/2d`` (``F.batch_norm`` with batch statistics): the same
  (pytorch/pytorch#186256; eval mode, with running statistics, is exact);
* ``F.scaled_dot_product_attention`` (Hugging Face's default ``"sdpa"`` attention): the CPU flash kernel
  it dispatches to has no double backward at all — the Hessian-vector product itself raises
  "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented".

Inside ``with exact_norms(model):``

* every ``nn.LayerNorm`` is replaced by :class:`ExactLayerNorm` and every ``nn.BatchNorm1d/2d`` by
  :class:`ExactBatchNorm` — plprune's plain-op layers (:mod:`plprune.models.layers`) that hold the *same*
  Parameter and buffer objects and the same hook dictionaries as the module they stand in for, so
  gradients and running-statistics updates land on the user's tensors, gate hooks (e.g. a filter site's
  hook on a BatchNorm) keep firing, and nothing is copied;
* every Hugging Face config reachable from the model (``module.config`` and its ``sub_configs``) is
  switched to ``"eager"`` attention (plain ``matmul``/``softmax``) and ``"eager"`` experts (the default
  ``grouped_mm`` of fused-expert MoEs such as Mixtral refuses float64);
* any ``scaled_dot_product_attention`` call left (e.g. ``nn.MultiheadAttention``) runs on its math
  backend, which is made of differentiable ops.

Everything is restored on exit, also when the body raises. Outputs are unchanged up to rounding (the
plain-op layers compute the same formulas; tests check 1e-12 relative in float64).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from torch import nn

from plprune.errors import PlpruneError
from plprune.models.layers import BatchNorm, LayerNorm

__all__ = ["ExactBatchNorm", "ExactLayerNorm", "exact_norms"]

# hook dictionaries a module consults in __call__; shared so that hooks added or removed while swapped
# apply to the original module too
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _share_state(new: nn.Module, old: nn.Module) -> None:
    """Make ``new`` use ``old``'s Parameter/buffer objects, hook dictionaries and train/eval flag."""
    for name, param in old._parameters.items():  # None entries too (no affine, no bias)
        new.register_parameter(name, param)
    for name, buffer in old._buffers.items():  # None entries too (no running statistics)
        new.register_buffer(name, buffer, persistent=name not in old._non_persistent_buffers_set)
    for attr in _HOOK_DICTS:
        if hasattr(old, attr):
            setattr(new, attr, getattr(old, attr))
    new._is_full_backward_hook = getattr(old, "_is_full_backward_hook", None)
    new.training = old.training


class ExactLayerNorm(LayerNorm):
    """:class:`plprune.models.layers.LayerNorm` standing in for an ``nn.LayerNorm``, sharing its tensors.

    Its forward (plprune's) also covers what ``nn.LayerNorm`` allows beyond plprune's own models: a
    multi-dimensional ``normalized_shape`` and no weight and/or bias.
    """

    def __init__(self, source: nn.LayerNorm) -> None:
        nn.Module.__init__(self)
        self.normalized_shape = tuple(source.normalized_shape)
        self.eps = source.eps
        _share_state(self, source)


class ExactBatchNorm(BatchNorm):
    """:class:`plprune.models.layers.BatchNorm` standing in for an ``nn.BatchNorm1d``/``nn.BatchNorm2d``,
    sharing its parameters and running-statistics buffers (updated in place, as torch does).

    Semantics are torch's in every mode it offers: batch statistics in training (and in eval without
    running statistics), running statistics in eval; running mean/variance (unbiased) updated with
    ``momentum``, or with the cumulative average ``1/num_batches_tracked`` when ``momentum`` is ``None``;
    ``num_batches_tracked`` counted; ``affine=False`` (no weight/bias); ``(N, C)`` inputs of
    ``BatchNorm1d``.
    """

    def __init__(self, source: nn.modules.batchnorm._BatchNorm) -> None:
        nn.Module.__init__(self)
        self.num_features = source.num_features
        self.eps = source.eps
        self.momentum = source.momentum
        self.track_running_stats = source.track_running_stats
        _share_state(self, source)


def _exact_replacement(module: nn.Module) -> nn.Module | None:
    if type(module) is nn.LayerNorm:
        return ExactLayerNorm(module)
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return ExactBatchNorm(module)
    return None


def _hf_configs(model: nn.Module) -> list[Any]:
    """Every distinct Hugging Face config (one with ``_attn_implementation_internal``) the model's modules
    hold, with their sub-configs."""
    found: dict[int, Any] = {}
    pending = [getattr(m, "config", None) for m in model.modules()]
    while pending:
        config = pending.pop()
        if config is None or id(config) in found or not hasattr(config, "_attn_implementation_internal"):
            continue
        found[id(config)] = config
        pending.extend(getattr(config, key, None) for key in getattr(config, "sub_configs", {}) or {})
    return list(found.values())


@contextmanager
def _eager_hf(model: nn.Module) -> Iterator[int]:
    saved: list[tuple[Any, str, Any]] = []
    try:
        for config in _hf_configs(model):
            for attr in ("_attn_implementation_internal", "_experts_implementation_internal"):
                value = getattr(config, attr, None)
                if value is not None and value != "eager":
                    saved.append((config, attr, value))
                    setattr(config, attr, "eager")
        yield len(saved)
    finally:
        for config, attr, value in reversed(saved):
            setattr(config, attr, value)


@contextmanager
def _swapped_norms(model: nn.Module) -> Iterator[list[str]]:
    replacements: dict[int, nn.Module] = {}  # a module used at several places gets one stand-in
    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
    names: list[str] = []
    try:
        for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
            for child_name, child in list(parent._modules.items()):
                if child is None:
                    continue
                new = replacements.get(id(child))
                if new is None:
                    new = _exact_replacement(child)
                    if new is None:
                        continue
                    replacements[id(child)] = new
                    names.append(f"{parent_name}.{child_name}" if parent_name else child_name)
                parent._modules[child_name] = new
                swaps.append((parent, child_name, child, new))
        yield names
    finally:
        for parent, child_name, old, new in reversed(swaps):
            parent._modules[child_name] = old
            old.training = new.training


@contextmanager
def exact_norms(model: nn.Module) -> Iterator[list[str]]:
    """Run the body with exactly differentiable norms and attention (module docstring); yields the names of
    the swapped norm modules. Restores the model on exit, also on exceptions. The root module itself is
    never replaced (a bare ``nn.LayerNorm`` passed as ``model`` is left as it is)."""
    if not isinstance(model, nn.Module):
        raise PlpruneError(f"exact_norms needs a torch.nn.Module, got {type(model).__name__}")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with ExitStack() as stack:
        names = stack.enter_context(_swapped_norms(model))
        stack.enter_context(_eager_hf(model))
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield names
