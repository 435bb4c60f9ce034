"""Refusing a model too large to train on this machine before any of it is allocated.

A model is first built on PyTorch's ``meta`` device (shapes only, no storage, no random numbers drawn), its
parameters counted, and training's footprint estimated as weights + gradients + two Adam moments: four
copies of every parameter (:data:`TRAINING_COPIES`), activations not counted. If that exceeds the machine's
physical memory the run stops with one message naming the sizes, instead of swapping or being killed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from plprune.errors import PlpruneError

TRAINING_COPIES = 4  # weights, gradients, Adam's first and second moments
GIB = 1024**3

M = TypeVar("M", bound=nn.Module)


def physical_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def training_bytes(model: nn.Module) -> int:
    """Estimated bytes to train ``model`` (any device, ``meta`` too): :data:`TRAINING_COPIES` × its
    parameters' bytes."""
    return TRAINING_COPIES * sum(p.numel() * p.element_size() for p in model.parameters())


def build_if_it_fits(build: Callable[[], M], what: str, limit_bytes: int | None = None) -> M:
    """``build()``, after checking on the meta device that training the model fits in ``limit_bytes``
    (default: physical memory). Raises :class:`PlpruneError` with the parameter count and both sizes."""
    limit = physical_memory_bytes() if limit_bytes is None else limit_bytes
    if limit is not None:
        with torch.device("meta"):
            shell = build()
        needed = training_bytes(shell)
        if needed > limit:
            count = sum(p.numel() for p in shell.parameters())
            raise PlpruneError(
                f"{what} has {count:,} parameters: training needs about {needed / GIB:.1f} GiB (weights, "
                f"gradients and Adam moments), more than this machine's {limit / GIB:.1f} GiB; choose "
                "smaller sizes (layers, hidden, ffn, experts, width_multiplier)"
            )
    return build()


def check_fits_on_device(model: nn.Module, device: torch.device, what: str = "the model") -> None:
    """Refuse to move ``model`` to a CUDA ``device`` whose memory is smaller than training's footprint
    (:func:`training_bytes`); other devices are checked when the model is built."""
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    limit = torch.cuda.get_device_properties(index).total_memory
    needed = training_bytes(model)
    if needed > limit:
        raise PlpruneError(
            f"{what} needs about {needed / GIB:.1f} GiB to train on {device} (weights, gradients and Adam "
            f"moments), more than its {limit / GIB:.1f} GiB; choose smaller sizes or another device"
        )
