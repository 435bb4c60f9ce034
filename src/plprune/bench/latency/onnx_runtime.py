"""The compacted model in ONNX Runtime: exported by :func:`plprune.export.export`, run on the CPU provider."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from plprune.quiet import quiet

__all__ = ["export_onnx", "ort_call", "ort_session"]


def export_onnx(
    model: nn.Module, groups: Any, examples: dict[int, Tensor], directory: Path, stem: str
) -> dict[str, Any]:
    """``model`` compacted by ``groups`` (or, with ``groups=None``, as it is) as ONNX, for every batch size
    of ``examples``, by the library's deployment path :func:`plprune.export.export` (``format="onnx"``,
    checked against PyTorch with onnxruntime). One file serves every batch size when its batch axis is
    dynamic; the TorchScript exporter, which plprune's export falls back to for data-dependent models such
    as the Switch layer's routing, has static shapes, so then one file per batch size is exported.

    Returns ``{"paths": {batch: path}, "exporter": str, "dynamic_batch": bool, "onnx_check_max_abs_diff":
    float}``."""
    from plprune.export import export

    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[int, Path] = {}
    info: dict[str, Any] = {}
    for batch in sorted(examples, reverse=True):  # the largest batch first: it reaches every expert
        if batch in paths:
            continue
        target = directory / f"{stem}.b{batch}"
        with quiet():
            manifest = export(model, groups, target, format="onnx", example_inputs=(examples[batch],))
        onnx = manifest["onnx"]
        dynamic = 0 in onnx["inputs"][0]["dynamic_axes"]
        for other in examples if dynamic else [batch]:
            paths.setdefault(other, target / onnx["file"])
        info.setdefault("exporter", f"plprune.export(format='onnx'): {onnx['exporter']}")
        info.setdefault("dynamic_batch", dynamic)
        info["onnx_check_max_abs_diff"] = max(info.get("onnx_check_max_abs_diff", 0.0), onnx["max_abs_diff"])
    return {"paths": paths, **info}


def ort_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads, no spinning between calls."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_call(session: Any, x: Tensor) -> Callable[[], Any]:
    """One inference of ``session`` on ``x`` as a no-argument call (for the timing rounds)."""
    feeds = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feeds)
