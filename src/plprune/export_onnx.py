"""The ONNX half of :func:`plprune.export`: write a model as ONNX and check the file against PyTorch.

:func:`onnx_export` writes ``(inputs) -> logits`` with the ``torch.export``-based exporter (batch and token
axes dynamic where the model allows), else with static shapes, else with the TorchScript exporter (data-
dependent control flow such as MoE routing; the families' trace checks run first,
:func:`plprune.models.architecture.check_trace_inputs`). :func:`onnx_check` runs the file with onnxruntime on
the example inputs and on batches of other sizes along the dynamic axes and reports the largest absolute
difference to PyTorch (``export`` refuses more than :data:`ONNX_TOLERANCE`). See docs/deploy.md,
"The ONNX check".
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.architecture import check_trace_inputs
from plprune.quiet import quiet

__all__ = ["CHECK_BATCHES", "ONNX_TOLERANCE", "dtype_name", "onnx_check", "onnx_export"]

ONNX_TOLERANCE = 1e-4
CHECK_BATCHES = 4  # the ONNX check runs the example inputs and 3 random batches (other sizes on dynamic axes)


def dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` for ``torch.float32``: the dtype's name as ``plprune.json`` records it."""
    return str(dtype).removeprefix("torch.")


class _Logits(nn.Module):
    """``model(*inputs)`` reduced to one tensor: the output itself, its ``.logits``, or its first item."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> Tensor:
        return _logits(self.model(*inputs))


def _logits(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise PlpruneError(f"cannot export a model whose output is a {type(output).__name__} (no logits tensor)")


def _input_names(model: nn.Module, count: int) -> list[str]:
    try:
        params = [
            p.name
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"input_{i}" for i in range(count)]


def onnx_export(model: nn.Module, inputs: tuple[Tensor, ...], path: Path) -> str:
    """Write ``path``: ``torch.export``-based exporter (batch, and the token axis of integer inputs,
    dynamic where the model allows), else with static shapes, else the TorchScript exporter (models with
    data-dependent control flow, e.g. MoE routing); returns which one worked."""
    names = _input_names(model, len(inputs))
    wrapper = _Logits(model).eval()
    auto = torch.export.Dim.AUTO
    dynamic = tuple(
        {0: auto, **({1: auto} if not x.is_floating_point() and x.dim() > 1 else {})} for x in inputs
    )
    errors = []
    # one entry per forward argument: the wrapper takes *inputs, a single (tuple) argument
    attempts = [("torch.onnx.export(dynamo=True)", (dynamic,)), ("torch.onnx.export(dynamo=True)", None)]
    for exporter, shapes in attempts:
        try:
            with quiet():
                program = torch.onnx.export(
                    wrapper,
                    inputs,
                    dynamo=True,
                    input_names=names,
                    output_names=["logits"],
                    dynamic_shapes=shapes,
                )
                program.save(str(path))
            return exporter + (" with dynamic axes" if shapes else "")
        except Exception as error:
            text = str(error)
            errors.append(f"{exporter}: {type(error).__name__}: {text.splitlines()[0][:300]}")
            if "DataDependent" in text or "data-dependent" in text:
                break  # control flow on tensor values: static shapes would not help either
    check_trace_inputs(model, inputs)  # e.g. MoE routing: every expert must see a token
    try:
        with quiet():
            torch.onnx.export(
                wrapper, inputs, str(path), dynamo=False, input_names=names, output_names=["logits"]
            )
        return "torch.onnx.export(dynamo=False)"
    except Exception as error:
        errors.append(f"torch.onnx.export(dynamo=False): {type(error).__name__}: {error}")
    raise PlpruneError("ONNX export failed:\n  " + "\n  ".join(errors))


def onnx_check(model: nn.Module, inputs: tuple[Tensor, ...], path: Path) -> dict[str, Any]:
    """Run the ONNX file with onnxruntime on the example inputs and on a second, different batch (other
    sizes along the dynamic axes); return the inputs' ONNX shapes and the largest difference to PyTorch."""
    import onnx
    import onnxruntime

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    graph_inputs = [i for i in graph.input if i.name not in initializers]
    shapes = [
        [d.dim_param or int(d.dim_value) for d in item.type.tensor_type.shape.dim] for item in graph_inputs
    ]
    generator = torch.Generator().manual_seed(1)
    batches = [inputs]
    for k in range(1, CHECK_BATCHES):
        batch = []
        for x, shape in zip(inputs, shapes, strict=True):
            size = [
                (n + k if axis == 0 else max(1, n - k)) if isinstance(dim, str) else n
                for axis, (n, dim) in enumerate(zip(x.shape, shape, strict=True))
            ]
            if x.is_floating_point():
                batch.append(torch.randn(size, generator=generator, dtype=x.dtype))
            else:
                low, high = int(x.min()), int(x.max()) + 1
                batch.append(torch.randint(low, max(high, low + 1), size, generator=generator, dtype=x.dtype))
        batches.append(tuple(batch))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    checked = []
    for batch in batches:
        with torch.no_grad():
            expected = _logits(model(*batch)).float()
        feed = {name: x.numpy() for name, x in zip(names, batch, strict=True)}
        got = torch.from_numpy(session.run(None, feed)[0]).float()
        if got.shape != expected.shape:
            raise PlpruneError(
                f"ONNX check: onnxruntime returned shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}"
            )
        worst = max(worst, float((got - expected).abs().max()) if got.numel() else 0.0)
        checked.append([list(x.shape) for x in batch])
    return {
        "inputs": [
            {
                "name": name,
                "shape": shape,
                "dtype": dtype_name(x.dtype),
                "dynamic_axes": [axis for axis, dim in enumerate(shape) if isinstance(dim, str)],
            }
            for name, shape, x in zip(names, shapes, inputs, strict=True)
        ],
        "output": "logits",
        "checked_input_shapes": checked,
        "max_abs_diff": worst,
        "tolerance": ONNX_TOLERANCE,
    }
