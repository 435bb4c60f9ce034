"""Where a run computes: validating a device name, and moving batches there.

The rule the library follows: the model, its batches and everything computed from them (losses, kernels,
Hessian-vector products) live on the run's device; bookkeeping of one number per group (scores, masks,
gating-network inputs and gates) lives on the CPU, and gates are moved to the activations' device where a
gate hook multiplies them in (:mod:`plprune.sites`). Data are prepared (tokenised, masked, permuted) on the
CPU from seeded CPU generators, so a run sees the same batches on every device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError

DEVICE_TYPES = ("cpu", "cuda", "mps")

T = TypeVar("T", bound=Sequence[Tensor | None])


def check_device_name(name: str) -> str:
    """``name`` if it is a device torch can parse and plprune runs on (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``); availability is checked when the run starts (:func:`resolve_device`)."""
    if not isinstance(name, str) or not name.strip():
        raise PlpruneError(f"device must be a name such as 'cpu', 'cuda' or 'cuda:1', got {name!r}")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise PlpruneError(
            f"device {name!r} is not a device name; use one of cpu, cuda, cuda:N, mps"
        ) from error
    if device.type not in DEVICE_TYPES:
        raise PlpruneError(f"device {name!r}: plprune runs on {', '.join(DEVICE_TYPES)}, not {device.type}")
    return name


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` for ``name``, refusing (with what is available) one this machine lacks."""
    device = torch.device(check_device_name(name))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PlpruneError(
                f"device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; use "
                "--device cpu (the default)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise PlpruneError(
                f"device {name!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PlpruneError(f"device {name!r} asked for, but MPS is not available here; use --device cpu")
    return device


def describe_device(device: torch.device) -> str:
    """``"cpu"``, or the device with its product name (``"cuda:0 (NVIDIA H200)"``), for reports."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(batch: T, device: torch.device) -> T:
    """``batch`` (a tuple or list of tensors, ``None`` entries kept) with every tensor on ``device``; the
    same object when all already are (the CPU path costs nothing)."""
    if all(t is None or t.device == device for t in batch):
        return batch
    moved = [None if t is None else t.to(device, non_blocking=True) for t in batch]
    return type(batch)(moved)  # type: ignore[call-arg]


def nested_to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor inside (tensors, tuples, lists, dicts of them) on ``device``; anything
    else unchanged. For a user's example inputs, which may be any of these."""
    if isinstance(value, Tensor):
        return value if value.device == device else value.to(device)
    if isinstance(value, Mapping):
        return {key: nested_to_device(item, device) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(nested_to_device(item, device) for item in value)
    return value
