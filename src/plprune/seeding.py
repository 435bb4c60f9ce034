"""Deterministic seeds and generators derived from a run seed (data order, masking, probes); the global RNG
state a checkpoint holds; the determinism switch (``--deterministic``)."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends only on ``parts`` (stable across processes and Python versions)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


# -- global RNG state (checkpoints) and the determinism switch ----------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every global RNG stream, as tensors and plain containers (loadable with ``weights_only=True``):
    Python's ``random``, NumPy's legacy global generator, torch's CPU generator and, if CUDA is initialised,
    each device's generator."""
    version, internal, gauss_next = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss_next,
        },
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (streams missing from ``state`` are left as they are)."""
    if "python" in state:
        python = state["python"]
        random.setstate((python["version"], tuple(int(x) for x in python["state"].tolist()), python["gauss"]))
    if "numpy" in state:
        numpy = state["numpy"]
        keys = numpy["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (numpy["name"], keys, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"])
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


@contextmanager
def deterministic_mode(enabled: bool, seed: int) -> Iterator[None]:
    """While active (``enabled``), every determinism knob torch offers is on, and all global RNGs are seeded
    with ``seed``; the previous settings come back on exit.

    Knobs: ``torch.use_deterministic_algorithms(True)`` (an op without a deterministic implementation
    raises instead of running nondeterministically), ``torch.backends.cudnn.deterministic = True``,
    ``torch.backends.cudnn.benchmark = False`` (no timing-based algorithm choice),
    ``torch.utils.deterministic.fill_uninitialized_memory = True``, and on CUDA machines
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (required by deterministic cuBLAS; it must be set before the first
    cuBLAS call, so an already-set value is kept).
    """
    if not enabled:
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.utils.deterministic.fill_uninitialized_memory = True
    seed_everything(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic = previous[2]
        torch.backends.cudnn.benchmark = previous[3]
        torch.utils.deterministic.fill_uninitialized_memory = previous[4]
