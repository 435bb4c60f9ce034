"""The report of a ``plprune bench-latency`` run: latency.json, LATENCY.md (tables and notes), latency.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from plprune.bench.harness import markdown_table
from plprune.bench.latency.spec import LatencySpec

__all__ = ["family_notes", "plot_latency", "ratios", "render_markdown", "speedup_cell", "write_outputs"]


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (Path, torch.Size)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def family_notes(spec: LatencySpec, kind: str) -> list[str]:
    """What a reader needs to know to read the numbers of this family and kind (fixed text per case)."""
    notes = []
    if kind == "head":
        notes.append(
            "Only the attention blocks shrink when heads are removed: embeddings, the FFNs and the masked-LM "
            "head (whose vocabulary projection dominates the full forward pass) stay; the attention-block "
            "rows time every layer's attention module alone (Q/K/V projections, softmax attention, output "
            "projection"
            + (
                "; Hugging Face's block also includes its output LayerNorm and residual"
                if spec.model == "hf-bert"
                else ""
            )
            + ")."
        )
    if kind == "expert":
        notes.append(
            "Top-1 routing sends every token through exactly one expert, dense or pruned, so removing "
            "experts does not reduce the MACs per token; it removes parameters and memory. The masked "
            "model already "
            "routes no token to a pruned expert (its router logit is -inf), so masked and compacted do the "
            "same work. With fewer experts each has a larger capacity (capacity factor x tokens / experts), "
            "so fewer tokens are dropped."
        )
    if kind == "filter":
        notes.append(
            "Filters are removed per layer (every pruned conv keeps the same fraction); removing a conv's "
            "output channels also removes the next layer's input channels, so MACs fall roughly with the "
            "square of the kept fraction where consecutive convs are both pruned."
        )
        if spec.model == "resnet56":
            notes.append(
                "In plprune's ResNet only each block's first conv has prunable filters (the stem and the "
                "second convs are tied by the residual sums), so the MACs fall by less than in VGG."
            )
    notes.append(
        "MACs are counted by torch_pruning.utils.count_ops_and_params (module ops: Linear, Conv, norms, "
        "embeddings); functional matmuls (attention QK^T and attention x V) and element-wise ops are not "
        "in it."
        + (
            " plprune's BERT and Switch compute the vocabulary projection with F.linear on the tied token "
            "embedding, so their count also leaves out hidden x vocabulary MACs per token, which the Hugging "
            "Face model's nn.Linear decoder has in its count."
            if spec.model in ("bert", "switch")
            else ""
        )
    )
    if spec.memory and spec.onnx:
        notes.append(
            "ONNX Runtime's memory includes its CPU arena allocator (on by default), which grows in "
            "chunks and keeps what it has reserved, so its peak is not comparable byte for byte with "
            "PyTorch's."
        )
    return notes


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """dense / variant latency (speed-up) per thread count and measure; dense / variant parameters."""
    out: dict[str, Any] = {"speedup_vs_dense": {}, "paired_speedup_vs_dense": {}, "parameters_vs_dense": {}}
    for threads, measures in result["latency"].items():
        out["speedup_vs_dense"][threads] = {
            measure: {name: rows["dense"]["median_ms"] / row["median_ms"] for name, row in rows.items()}
            for measure, rows in measures.items()
        }
        out["paired_speedup_vs_dense"][threads] = {
            measure: {name: row["paired_speedup"] for name, row in rows.items()}
            for measure, rows in measures.items()
        }
    dense = result["variants"]["dense"].get("parameters")
    for name, info in result["variants"].items():
        if dense and info.get("parameters"):
            out["parameters_vs_dense"][name] = info["parameters"] / dense
    return out


# -- LATENCY.md ------------------------------------------------------------------------------------------
def _mb(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"


def _count(value: Any) -> str:
    if value is None:
        return "—"
    if value >= 1e9:
        return f"{value / 1e9:.3f} G"
    if value >= 1e6:
        return f"{value / 1e6:.3f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return str(value)


def _latency_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    return f"{row['median_ms']:.2f} ({row['q1_ms']:.2f}–{row['q3_ms']:.2f})"


def speedup_cell(rows: dict[str, Any], name: str) -> str:
    """``dense median / name's median× (paired speed-up×)`` of one measure's rows; ``—`` if ``name`` was
    not timed."""
    if name not in rows:
        return "—"
    ratio = rows["dense"]["median_ms"] / rows[name]["median_ms"]
    return f"{ratio:.2f}× ({rows[name]['paired_speedup']:.2f}×)"


def _memory_method(result: dict[str, Any]) -> str:
    methods = {(v.get("memory") or {}).get("method") for v in result["variants"].values()} - {None}
    return f"; measured as resource.getrusage(RUSAGE_SELF).{', '.join(sorted(methods))}" if methods else ""


def render_markdown(result: dict[str, Any]) -> str:
    meta, model = result["meta"], result["model"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    machine = meta["machine"]
    lines = [
        f"# Inference latency: {model['family']}, {model['ratio']:.0%} of {model['group_kind']}s pruned",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"- Model: {model['description']}.",
        f"- Mask: {model['mask']}. Kept {model['groups_kept']} of {model['groups']} {model['group_kind']}s; "
        f"per layer: {model['kept_per_layer']} of {model['groups_per_layer']}. The prunable "
        f"{model['group_kind']} groups hold {model['group_parameters']:,} parameters, "
        f"{model['group_parameter_fraction']:.1%} of the dense model"
        + (
            " (a filter group is its conv's output channel and BN parameters; removing it also removes the "
            "next layer's input channel, which belongs to that layer's groups)."
            if model["group_kind"] == "filter"
            else " (the rest, e.g. embeddings, never shrinks)."
        ),
        f"- Machine: {machine['cpu']}, {machine['cpu_count']} CPU cores, {machine['platform']}; load average "
        f"(1, 5, 15 min) at start {machine['load_average_at_start']}, at the end "
        f"{machine.get('load_average_at_end')} (other jobs may share the cores).",
        f"- Versions: {versions}.",
        f"- Threads: torch.set_num_threads and ONNX Runtime intra-op threads = {meta['threads']} "
        f"(torch inter-op threads {meta['torch_interop_threads']}).",
        f"- Timing: {meta['timing']}.",
        f"- Memory: {meta['memory']}" + _memory_method(result) + ".",
        "",
        "## Size and memory",
        "",
    ]
    header = ("variant", "parameters", "vs dense", "MACs/sample", "weights file", "peak RSS, batch 32",
              "model + forward", "forward only", "max abs diff")  # fmt: skip
    rows: list[list[Any]] = []
    dense_params = result["variants"]["dense"].get("parameters")
    for name, info in result["variants"].items():
        memory = info.get("memory") or {}
        if "error" in memory:
            peak = whole = forward = f"failed: {memory['error'][:60]}"
        else:
            peak, whole, forward = (
                f"{memory[k]:.1f} MiB" if k in memory else "—"
                for k in ("peak_rss_mb", "model_and_forward_mb", "forward_mb")
            )
        file_size = (
            f"{_mb(info['onnx_bytes'])} (ONNX)"
            if "onnx_bytes" in info
            else f"{_mb(info.get('safetensors_bytes'))}"
        )
        diff = info.get("max_abs_diff_vs_masked", info.get("max_abs_diff_vs_compacted"))
        diff_text = (
            "—"
            if diff is None
            else f"{diff:.1e} vs " + ("masked" if "max_abs_diff_vs_masked" in info else "compacted")
        )
        ratio = info.get("parameters", 0) / dense_params if dense_params and info.get("parameters") else None
        rows.append([
            name, f"{info.get('parameters', 0):,}", "—" if ratio is None else f"{ratio:.3f}×",
            _count(info.get("macs_per_sample")), file_size, peak, whole, forward, diff_text,
        ])  # fmt: skip
    for name, why in result["unavailable"].items():
        rows.append([name, f"not measured: {why}", *[""] * (len(header) - 2)])
    lines += markdown_table(header, rows)
    lines += [
        "",
        "Weights file: safetensors of the state dict (the masked model stores its zeros), or the ONNX file. "
        "Peak RSS: the whole process (Python, torch and the model); model + forward: the peak minus the RSS "
        "before loading the model; forward only: the peak minus the RSS with the model loaded and warmed up "
        "by one batch-1 pass.",
        "",
        "## Latency (ms per call: median (Q1–Q3)) and throughput",
        "",
    ]
    lines += [
        "Speed-up: dense's median / the variant's median; in parentheses the paired speed-up, the median "
        "over rounds of dense's time / the variant's time in the same round (robust to load that changes "
        "between rounds). Throughput: 32 / the batch-32 median.",
        "",
    ]
    for threads, measures in result["latency"].items():
        lines += [f"### {threads} thread{'s' if threads != '1' else ''}", ""]
        header = (
            "variant",
            "batch 1",
            "speed-up",
            "batch 32",
            "speed-up",
            "throughput (samples/s, batch 32)",
        )
        b1, b32 = measures["batch1"], measures["batch32"]
        lines += markdown_table(
            header,
            (
                [name, _latency_cell(b1[name]), speedup_cell(b1, name), _latency_cell(b32[name]),
                 speedup_cell(b32, name), f"{32 / (b32[name]['median_ms'] / 1000):,.0f}"]
                for name in b1
            ),
        )  # fmt: skip
        if "attention_batch1" in measures:
            lines += [
                "",
                "Attention blocks only (every layer's attention module on a fixed hidden-state tensor):",
                "",
            ]
            a1, a32 = measures["attention_batch1"], measures["attention_batch32"]
            lines += markdown_table(
                ("variant", "batch 1", "speed-up", "batch 32", "speed-up"),
                (
                    [name, _latency_cell(a1[name]), speedup_cell(a1, name), _latency_cell(a32[name]),
                     speedup_cell(a32, name)]
                    for name in a1
                ),
            )  # fmt: skip
        lines.append("")
    tp = result.get("torch_pruning")
    if tp:
        lines += ["## Torch-Pruning on the same filters", "", f"Method: {tp['method']}.", ""]
        compacted = result["variants"].get("compacted")
        if compacted and "macs_match" in tp:
            lines += [
                f"- Parameters: Torch-Pruning {tp['parameters']:,}, plprune compacted "
                f"{compacted['parameters']:,} "
                f"({'equal' if tp['parameters_match'] else 'DIFFERENT'}).",
                f"- MACs/sample: Torch-Pruning {_count(tp['macs_per_sample'])}, plprune compacted "
                f"{_count(compacted['macs_per_sample'])} ({'equal' if tp['macs_match'] else 'DIFFERENT'}).",
                f"- Parameter shapes {'identical' if tp['shapes_match'] else 'DIFFERENT'}; outputs differ "
                f"by at most {tp['max_abs_diff_vs_compacted']:.1e}.",
                "- Latency: the torch-pruning rows of the tables above (timed in the same rounds).",
            ]
        else:
            lines.append(
                f"- Parameters {tp['parameters']:,}, MACs/sample {_count(tp['macs_per_sample'])}; plprune's "
                "compacted model is not available here, so there is nothing to compare with."
            )
        lines.append("")
    if result["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in result["notes"]] + [""]
    return "\n".join(lines)


def plot_latency(result: dict[str, Any], path: Path) -> None:
    """Bars of median latency (IQR as error bars) per variant: batch 1 and 32 (and the attention blocks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thread_counts = list(result["latency"])
    measures = [m for m in ("batch1", "batch32", "attention_batch1", "attention_batch32")
                if m in result["latency"][thread_counts[0]]]  # fmt: skip
    titles = {
        "batch1": "batch 1",
        "batch32": "batch 32",
        "attention_batch1": "attention blocks, batch 1",
        "attention_batch32": "attention blocks, batch 32",
    }
    fig, axes = plt.subplots(1, len(measures), figsize=(3.6 * len(measures) + 0.6, 3.8), squeeze=False)
    width = 0.8 / len(thread_counts)
    for ax, measure in zip(axes[0], measures, strict=True):
        names = list(result["latency"][thread_counts[0]][measure])
        for t, threads in enumerate(thread_counts):
            rows = result["latency"][threads][measure]
            medians = [rows[n]["median_ms"] for n in names]
            errors = [
                [rows[n]["median_ms"] - rows[n]["q1_ms"] for n in names],
                [rows[n]["q3_ms"] - rows[n]["median_ms"] for n in names],
            ]
            positions = [i + (t - (len(thread_counts) - 1) / 2) * width for i in range(len(names))]
            ax.bar(positions, medians, width, yerr=errors, capsize=2, label=f"{threads} thread(s)")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("ms per call (median, IQR)")
        ax.set_title(titles[measure], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    model = result["model"]
    fig.suptitle(f"{model['family']}: {model['ratio']:.0%} of {model['group_kind']}s pruned", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: dict[str, Any], out: Path) -> None:
    """``out/latency.json``, ``out/LATENCY.md`` and ``out/latency.png`` of ``result``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    (out / "LATENCY.md").write_text(render_markdown(result), encoding="utf-8")
    plot_latency(result, out / "latency.png")
