"""One ``plprune bench-latency`` run: build the forms, measure them, write the report.

The steps, each a function below: build the forms (:mod:`~plprune.bench.latency.variants`), export the
compacted one to ONNX (:mod:`~plprune.bench.latency.onnx_runtime`), count parameters, MACs and file sizes
(:mod:`~plprune.bench.latency.measures`), measure peak memory in fresh processes
(:mod:`~plprune.bench.latency.memory`), time every form in interleaved rounds per thread count
(:func:`plprune.bench.harness.time_rounds`), and report (:mod:`~plprune.bench.latency.report`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plprune.bench import harness
from plprune.bench.latency.families import AttentionStack, Family, unwrap
from plprune.bench.latency.measures import (
    count_macs,
    max_abs_diff,
    onnx_size,
    parameter_count,
    safetensors_size,
)
from plprune.bench.latency.memory import measure_memory, start_memory_server
from plprune.bench.latency.onnx_runtime import export_onnx, ort_call, ort_session
from plprune.bench.latency.report import family_notes, ratios, write_outputs
from plprune.bench.latency.spec import ALLOCATION, BATCHES, KIND, VARIANT_ORDER, LatencySpec
from plprune.bench.latency.variants import Variants, build_variants, group_parameter_count

__all__ = ["run_latency_bench"]


@dataclass
class _Variant:
    name: str
    module: nn.Module | None = None  # torch forms (wrapped: input -> Tensor)
    onnx: dict[str, Any] | None = None  # compacted+ort: export info
    info: dict[str, Any] = field(default_factory=dict)


def _torch_call(module: nn.Module, x: Tensor) -> Callable[[], Any]:
    return lambda: module(x)


def _wrapped(built: Variants) -> dict[str, _Variant]:
    """Each built form as ``input -> Tensor`` (the transformers' logits; Torch-Pruning's CNN as it is)."""
    wrap = built.family.wrap
    variants = {name: _Variant(name, wrap(model).eval()) for name, model in built.models().items()}
    if built.torch_pruning is not None:
        variants["torch-pruning"] = _Variant("torch-pruning", built.torch_pruning)
    return variants


def _export(
    built: Variants,
    variants: dict[str, _Variant],
    inputs: dict[int, Tensor],
    scratch: Path,
    spec: LatencySpec,
) -> dict[str, str]:
    """The compacted model exported to ONNX as the ``compacted+ort`` form; what could not be, and why."""
    if not spec.onnx:
        return {"compacted+ort": "skipped (--no-onnx)"}
    if "compacted" not in variants:
        return {}
    try:
        exported = export_onnx(built.masked, built.groups, inputs, scratch / "onnx", "model")
    except Exception as error:  # reported; the other forms are still measured
        return {"compacted+ort": f"{type(error).__name__}: {error}".replace("\n", " ")}
    variants["compacted+ort"] = _Variant("compacted+ort", None, exported)
    return {}


def _static_facts(
    variants: dict[str, _Variant], inputs: dict[int, Tensor], scratch: Path, threads: int
) -> list[str]:
    """Parameters, MACs per sample and file sizes of every form (its safetensors file stays in
    ``scratch`` for the memory jobs); the ONNX form's file, exporter and output gap; notes on the export."""
    notes: list[str] = []
    for name, variant in variants.items():
        if variant.module is None:
            continue
        inner = unwrap(variant.module)
        variant.info["parameters"] = parameter_count(inner)
        variant.info["macs_per_sample"] = count_macs(variant.module, inputs[1])
        variant.info["safetensors_bytes"] = safetensors_size(inner, scratch / f"{name}.safetensors")
    if "compacted+ort" not in variants:
        return notes
    onnx_info = variants["compacted+ort"].onnx or {}
    paths = onnx_info["paths"]
    compacted_info = variants["compacted"].info
    info = variants["compacted+ort"].info
    info["parameters"] = compacted_info["parameters"]
    info["macs_per_sample"] = compacted_info["macs_per_sample"]
    info["onnx_bytes"] = onnx_size(paths[BATCHES[-1]])
    info["exporter"] = onnx_info["exporter"]
    info["dynamic_batch"] = onnx_info["dynamic_batch"]
    if not onnx_info["dynamic_batch"]:
        notes.append(
            f"The ONNX export ({onnx_info['exporter']}) has a static batch size: one file per batch "
            "size was exported and timed."
        )
    if "dynamo=False" in onnx_info["exporter"] and info["onnx_bytes"] > 1.5 * compacted_info.get(
        "safetensors_bytes", math.inf
    ):
        notes.append(
            f"The ONNX file is {info['onnx_bytes'] / compacted_info['safetensors_bytes']:.1f}x the "
            "compacted safetensors file: the TorchScript exporter (static shapes) stores the tied "
            "embedding a second time (transposed, for the decoder) and bakes batch-shaped tensors "
            "(e.g. the zeros a Switch layer scatters its expert outputs into) into the graph as "
            "constants."
        )
    check = inputs[BATCHES[-1]]
    session = ort_session(paths[BATCHES[-1]], threads)
    out = session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]
    with torch.inference_mode():
        info["max_abs_diff_vs_compacted"] = max_abs_diff(out, variants["compacted"].module(check))
    return notes


def _attention(
    family: Family, built: Variants, variants: dict[str, _Variant], scratch: Path
) -> tuple[dict[str, nn.Module], dict[int, Tensor], dict[str, Any] | None, list[str]]:
    """BERT: every form's chain of attention modules, their hidden-state inputs, and the compacted chain
    exported to ONNX (``None`` when not), with a note if the export failed."""
    if family.attentions is None or family.hidden is None:
        return {}, {}, None, []
    stacks = {
        "dense": AttentionStack(family.attentions(built.dense)).eval(),
        "masked": AttentionStack(family.attentions(built.masked)).eval(),
    }
    if built.compacted is not None:
        stacks["compacted"] = AttentionStack(family.attentions(built.compacted)).eval()
    hidden = {batch: family.hidden(batch) for batch in BATCHES}
    if "compacted+ort" not in variants:
        return stacks, hidden, None, []
    try:
        return (
            stacks,
            hidden,
            export_onnx(stacks["compacted"], None, hidden, scratch / "onnx", "attention"),
            [],
        )
    except Exception as error:
        return stacks, hidden, None, [f"The attention blocks could not be exported to ONNX: {error}"]


def _memory(
    spec: LatencySpec,
    built: Variants,
    variants: dict[str, _Variant],
    inputs: dict[int, Tensor],
    scratch: Path,
    server: subprocess.Popen,
) -> dict[str, dict[str, Any]]:
    """Peak memory per form, each in a fresh process that rebuilds the form and loads its safetensors."""
    big, small = inputs[BATCHES[-1]], inputs[BATCHES[0]]
    jobs: dict[str, dict[str, Any]] = {}
    for name in ("dense", "masked", "compacted", "torch-pruning"):
        if name in variants:
            jobs[name] = {
                "kind": "torch",
                "spec": spec,
                "variant": name,
                "mask": built.mask.clone(),
                "weights": str(scratch / f"{name}.safetensors"),
                "input": big,
                "warmup": small,
            }
    if "compacted+ort" in variants:
        paths = variants["compacted+ort"].onnx["paths"]  # type: ignore[index]
        static = paths[BATCHES[0]] != paths[BATCHES[-1]]  # static batch: no batch-1 warm-up possible
        jobs["compacted+ort"] = {
            "kind": "ort",
            "path": str(paths[BATCHES[-1]]),
            "input": big,
            "warmup": None if static else small,
        }
    for job in jobs.values():
        job["threads"] = spec.threads[0]
    return measure_memory(jobs, server=server)


def _latency(
    spec: LatencySpec,
    variants: dict[str, _Variant],
    inputs: dict[int, Tensor],
    stacks: dict[str, nn.Module],
    hidden: dict[int, Tensor],
    attention_ort: dict[str, Any] | None,
    say: Callable[[str], None],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per thread count and batch size, every form timed in interleaved rounds (and the attention blocks)."""
    latency: dict[str, dict[str, dict[str, Any]]] = {}
    for threads in spec.threads:
        torch.set_num_threads(threads)
        sessions = {}
        if "compacted+ort" in variants:
            paths = variants["compacted+ort"].onnx["paths"]  # type: ignore[index]
            sessions = {batch: ort_session(paths[batch], threads) for batch in BATCHES}
        attention_sessions = {}
        if attention_ort is not None:
            attention_sessions = {
                batch: ort_session(attention_ort["paths"][batch], threads) for batch in BATCHES
            }
        per_thread: dict[str, dict[str, Any]] = {}
        for batch in BATCHES:
            calls: dict[str, Callable[[], Any]] = {}
            for name in VARIANT_ORDER:
                if name == "compacted+ort" and sessions:
                    calls[name] = ort_call(sessions[batch], inputs[batch])
                elif name in variants and variants[name].module is not None:
                    calls[name] = _torch_call(variants[name].module, inputs[batch])  # type: ignore[arg-type]
            label = f"{threads} thread(s), batch {batch}"
            times = harness.time_rounds(
                calls, spec.repeats, spec.warmup, lambda text, label=label: say(f"{label}: {text}")
            )
            per_thread[f"batch{batch}"] = harness.summarize_rounds(times)
            if stacks:
                calls = {name: _torch_call(stack, hidden[batch]) for name, stack in stacks.items()}
                if attention_sessions:
                    calls["compacted+ort"] = ort_call(attention_sessions[batch], hidden[batch])
                label = f"{threads} thread(s), attention blocks, batch {batch}"
                times = harness.time_rounds(
                    calls, spec.repeats, spec.warmup, lambda text, label=label: say(f"{label}: {text}")
                )
                per_thread[f"attention_batch{batch}"] = harness.summarize_rounds(times)
        latency[str(threads)] = per_thread
        del sessions, attention_sessions
    return latency


def _torch_pruning_summary(variants: dict[str, _Variant], check: Tensor) -> dict[str, Any] | None:
    """Torch-Pruning's copy against plprune's compacted model: parameters, MACs, shapes, outputs."""
    if "torch-pruning" not in variants:
        return None
    tp_model = variants["torch-pruning"].module
    tp_info = variants["torch-pruning"].info
    summary: dict[str, Any] = {
        "method": "tp.DependencyGraph().build_dependency(dense copy); for each plprune filter site, "
        "get_pruning_group(first conv, tp.prune_conv_out_channels, idxs=the pruned filter "
        "indices).prune()",
        "parameters": tp_info["parameters"],
        "macs_per_sample": tp_info["macs_per_sample"],
    }
    if "compacted" in variants:
        info, compacted = variants["compacted"].info, variants["compacted"].module
        with torch.inference_mode():
            diff = max_abs_diff(tp_model(check), compacted(check))  # type: ignore[misc]
        summary.update(
            {
                "parameters_match": tp_info["parameters"] == info["parameters"],
                "macs_match": tp_info["macs_per_sample"] == info["macs_per_sample"],
                "max_abs_diff_vs_compacted": diff,
                "shapes_match": [tuple(p.shape) for p in tp_model.parameters()]  # type: ignore[union-attr]
                == [tuple(p.shape) for p in compacted.parameters()],  # type: ignore[union-attr]
            }
        )
    return summary


def _model_record(spec: LatencySpec, built: Variants, inputs: dict[int, Tensor]) -> dict[str, Any]:
    kind = KIND[spec.model]
    mask, layer_ids = built.mask, built.groups.layer_ids
    layers = torch.unique(layer_ids)
    group_params = group_parameter_count(built.groups)
    return {
        "family": spec.model,
        "description": built.family.description,
        "group_kind": kind,
        "ratio": spec.ratio,
        "allocation": ALLOCATION[kind],
        "mask": f"random protected mask: plprune.keep.select_mask on uniform scores (seed {spec.seed}), "
        + (
            f"ranked globally over all {kind}s (layers may keep different numbers)"
            if ALLOCATION[kind] == "global"
            else "ranked within each layer (every layer keeps the same fraction)"
        )
        + f"; which {kind}s are pruned does not matter for speed, only how many per layer",
        "groups": len(built.groups),
        "groups_kept": int(mask.sum()),
        "kept_per_layer": [int(mask[layer_ids == layer].sum()) for layer in layers],
        "groups_per_layer": [int((layer_ids == layer).sum()) for layer in layers],
        "group_parameters": group_params,
        "group_parameter_fraction": group_params / parameter_count(built.dense),
        "input_shape_batch1": list(inputs[1].shape),
    }


def _meta(spec: LatencySpec, machine: dict[str, Any], started: float) -> dict[str, Any]:
    modules = ["torch_pruning", "onnx", "onnxruntime", "onnxscript", "safetensors"]
    if spec.model == "hf-bert":
        modules.insert(4, "transformers")
    return {
        "command": spec.command,
        "spec": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(spec).items()},
        "versions": harness.versions(*modules),
        "machine": machine,
        "threads": list(spec.threads),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "batch_sizes": list(BATCHES),
        "timing": f"median and interquartile range of {spec.repeats} timed calls per variant after "
        f"{spec.warmup} warm-up calls, in interleaved rounds (each round calls every variant once, the "
        "starting variant rotating); torch.inference_mode(); ONNX Runtime CPU provider with the same "
        "intra-op thread count, sequential execution, no spinning",
        "memory": "peak RSS of one batch-32 forward pass in a fresh process per variant (rebuilt, its "
        "state dict loaded), after one batch-1 warm-up pass (plprune.bench.latency.memory)"
        if spec.memory
        else "not measured (--no-memory)",
        "seconds": round(time.time() - started, 1),
    }


def run_latency_bench(spec: LatencySpec, progress: bool | None = None) -> dict[str, Any]:
    """Run the benchmark of ``spec`` and write latency.json, LATENCY.md and latency.png into ``spec.out``."""
    if progress is None:
        progress = sys.stderr.isatty()
    say = harness.progress_printer("bench-latency", progress)
    started = time.time()
    torch.set_num_threads(spec.threads[0])
    machine = harness.machine()

    say("building the variants")
    built = build_variants(spec)
    family = built.family
    variants = _wrapped(built)
    unavailable = dict(built.unavailable)
    inputs = {batch: family.example(batch) for batch in BATCHES}
    check = inputs[BATCHES[-1]]
    with torch.inference_mode():
        reference = variants["masked"].module(check)  # type: ignore[misc]
        for variant in variants.values():
            if variant.name not in ("dense", "masked"):
                variant.info["max_abs_diff_vs_masked"] = max_abs_diff(variant.module(check), reference)  # type: ignore[misc]

    scratch = Path(tempfile.mkdtemp(prefix="plprune-latency-"))
    server = None
    if spec.memory:  # started now: its imports overlap with the exports below
        preload = ["onnxruntime"] if spec.onnx else []
        if spec.model == "hf-bert":
            preload.append("transformers.models.bert.modeling_bert")
        if KIND[spec.model] == "filter":
            preload.append("torch_pruning")
        server = start_memory_server(preload)
    try:
        say("exporting the compacted model to ONNX")
        unavailable.update(_export(built, variants, inputs, scratch, spec))
        say("counting parameters and MACs")
        notes = _static_facts(variants, inputs, scratch, spec.threads[0])
        stacks, hidden, attention_ort, attention_notes = _attention(family, built, variants, scratch)
        notes += attention_notes
        memory: dict[str, dict[str, Any]] = {}
        if server is not None:
            say("measuring peak memory (one fresh process per variant)")
            memory = _memory(spec, built, variants, inputs, scratch, server)
            server = None  # stopped by measure_memory
        latency = _latency(spec, variants, inputs, stacks, hidden, attention_ort, say)
    finally:
        if server is not None:  # not used: an error came first
            server.kill()
            server.wait()
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)
    say("writing the report")
    machine["load_average_at_end"] = harness.load_average()
    if progress:
        print(file=sys.stderr)

    result: dict[str, Any] = {
        "meta": _meta(spec, machine, started),
        "model": _model_record(spec, built, inputs),
        "variants": {
            name: {**variants[name].info, "memory": memory.get(name)}
            for name in VARIANT_ORDER
            if name in variants
        },
        "unavailable": unavailable,
        "latency": latency,
        "torch_pruning": _torch_pruning_summary(variants, check),
        "notes": notes + family_notes(spec, KIND[spec.model]),
    }
    result["ratios"] = ratios(result)
    write_outputs(result, spec.out)
    return result
