"""``plprune bench-latency``: what pruning buys at inference, dense vs masked vs compacted vs ONNX Runtime.

For one model family and prune ratio the same randomly initialised model is measured in up to five forms:

* ``dense`` — the model as built, no plprune;
* ``masked`` — a :class:`~plprune.gates.GroupSet` attached and a hard mask applied (the pruned groups are
  zero and gated, but still computed);
* ``compacted`` — :func:`plprune.compaction.compact`: the pruned groups physically removed;
* ``compacted+ort`` — the compacted model exported to ONNX by :func:`plprune.export.export` and run by ONNX
  Runtime (CPU provider);
* ``torch-pruning`` (CNNs only) — the same filter indices removed by Torch-Pruning itself
  (``DependencyGraph.get_pruning_group(conv, prune_conv_out_channels, idxs).prune()`` on a copy of the dense
  model), the reference for plprune's compacted model.

Measured, per form: CPU latency at batch 1 and batch 32 (median and interquartile range of ``repeats``
timed calls after ``warmup`` untimed ones, in the interleaved rounds of :func:`plprune.bench.harness.
time_rounds`, so that drift of a shared machine hits all forms alike), throughput (samples/s at batch 32),
parameter count, MACs per sample (``torch_pruning.utils.count_ops_and_params`` on the PyTorch model at
batch 1: it counts the modules' ops, e.g. ``nn.Linear``/``nn.Conv*``, not functional matmuls such as
attention's ``QKᵀ``), peak memory of one batch-32 forward pass in a fresh process per form
(:mod:`~plprune.bench.latency.memory`), weight file sizes (safetensors of the state dict; the ONNX file),
and for BERT the attention blocks alone (every layer's attention module called on a fixed hidden-state
tensor). Writes ``OUT/latency.json``, ``OUT/LATENCY.md`` and ``OUT/latency.png``.

Modules, one job each: :mod:`~.spec` (arguments), :mod:`~.families` (models and inputs), :mod:`~.variants`
(the forms), :mod:`~.torch_pruning_ref` (Torch-Pruning's copy), :mod:`~.onnx_runtime` (export and
sessions), :mod:`~.measures` (parameters, MACs, sizes), :mod:`~.memory` (fresh-process peak memory),
:mod:`~.run` (the run), :mod:`~.report` (JSON, markdown, plot).
"""

from __future__ import annotations

from plprune.bench.latency.run import run_latency_bench
from plprune.bench.latency.spec import MODELS, LatencySpec, parse_spec

__all__ = ["MODELS", "LatencySpec", "parse_spec", "run_latency_bench"]
