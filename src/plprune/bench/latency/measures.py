"""Static facts of one model form: parameters, MACs (Torch-Pruning's op counter), file sizes, output gaps."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["count_macs", "max_abs_diff", "onnx_size", "parameter_count", "safetensors_size"]


def parameter_count(module: nn.Module) -> int:
    """Parameters of ``module`` (a tied tensor counted once, as ``nn.Module.parameters`` yields it)."""
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, example: Tensor) -> int | None:
    """MACs of one forward pass on ``example`` by ``torch_pruning.utils.count_ops_and_params`` (module ops:
    Linear, Conv, norms, embeddings; not functional matmuls); ``None`` where the counter fails."""
    import torch_pruning as tp

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, _ = tp.utils.count_ops_and_params(module, example)
    except Exception:  # the counter's own failure on a model it cannot trace: the column says "—"
        return None
    return int(macs)


def safetensors_size(model: nn.Module, path: Path) -> int:
    """Bytes of ``model``'s state dict written to ``path`` as safetensors (shared tensors stored once); the
    file stays for :mod:`plprune.bench.latency.memory` to load."""
    from safetensors.torch import save_model

    save_model(model, str(path))
    return path.stat().st_size


def onnx_size(path: Path) -> int:
    """Bytes of an ONNX file and its external-data file, if any."""
    extra = Path(str(path) + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def max_abs_diff(a: Any, b: Any) -> float:
    """``max |a - b|`` of two outputs (tensors or arrays); infinite when their shapes differ."""
    a = torch.as_tensor(a).float()
    b = torch.as_tensor(b).float()
    return float((a - b).abs().max()) if a.shape == b.shape else math.inf
