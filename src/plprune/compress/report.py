"""``report.md``, ``report.json`` and ``quality_vs_size.png`` of a ``plprune compress`` run: per stage the
held-out perplexity (and its ratio to dense), parameters, MACs and weight-file size; the compressed model's
latency against the dense one; and how to load the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plprune.table import markdown_section
from plprune.train.checkpoint import atomic_write_text

_EVALUATED = ("dense", "prune", "recover")
_TITLES = {"dense": "dense (loaded)", "prune": "pruned + compacted", "recover": "after recovery"}


def _stage_rows(stages: dict[str, Any]) -> list[dict[str, Any]]:
    dense = stages["dense"]
    rows = []
    for name in _EVALUATED:
        record = stages.get(name)
        if record is None:
            continue
        row = {
            "stage": _TITLES[name],
            "perplexity": f"{record['perplexity']:.2f}",
            "÷ dense": f"{record['perplexity'] / dense['perplexity']:.3f}",
            "parameters": f"{record['parameters']:,} ({record['parameters'] / dense['parameters']:.1%})",
            "MACs / sequence": f"{record['macs']:,} ({record['macs'] / dense['macs']:.1%})",
            "stage seconds": f"{record['seconds']:.1f}",
        }
        rows.append(row)
    return rows


def _loading_lines(state: dict[str, Any], fmt: str) -> list[str]:
    if fmt == "save_pretrained":
        auto = "AutoModelForCausalLM" if state["data"]["objective"] == "causal" else "AutoModelForMaskedLM"
        return [
            f"Load it without plprune: `transformers.{auto}.from_pretrained(OUT)` (its config was "
            "rewritten to "
            "the compacted sizes and checked by reloading).",
        ]
    return [
        "Its Hugging Face config cannot describe the compacted sizes (e.g. BERT-style configs have no head "
        "size, or layers were pruned unevenly), so it was written with `plprune.export`: load it with "
        "`plprune.load(OUT)`.",
    ]


def plot(stages: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = stages["dense"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in _EVALUATED:
        record = stages.get(name)
        if record is None:
            continue
        x = 100 * record["parameters"] / dense["parameters"]
        ax.plot([x], [record["perplexity"]], "o", label=_TITLES[name])
    ax.set_xlabel("parameters (% of dense)")
    ax.set_ylabel("held-out perplexity")
    ax.legend(fontsize=8)
    ax.set_title("quality against size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(state: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Write the report files into ``directory``; returns the JSON report."""
    stages, settings, data = state["stages"], state["settings"], state["data"]
    prune = stages["prune"]
    report = {
        "settings": settings,
        "data": data,
        "stages": {k: {f: v for f, v in r.items() if f != "mask"} for k, r in stages.items()},
    }
    lines = [
        f"# plprune compress: {settings['model_dir']}",
        "",
        f"Criterion `{settings['method']}` on {', '.join(settings['kinds'])} "
        f"({settings['allocation'].replace('_', '-')} allocation), ratios "
        + ", ".join(f"{k} {v:.1%}" for k, v in prune["ratios"].items())
        + " (removed: "
        + ", ".join(f"{k} {v:.1%}" for k, v in prune["pruned_ratio"].items())
        + ", after per-layer rounding and equal query heads per KV head)"
        + (f" (solved for --keep-params {settings['keep_params']})" if settings.get("keep_params") else "")
        + (
            " — head ratio moved to a count the model's config can describe (other kinds re-solved), so "
            "from_pretrained reloads it"
            if prune.get("rounded_for_config")
            else ""
        )
        + f"; scoring took {prune['scoring_seconds']:.1f} s on {data['calibration_blocks']} calibration "
        f"sequences of {settings['seq_len']} tokens from `{settings['data']}`.  ",
        f"Perplexity: {data['eval_blocks']} held-out sequences ({data['eval_source']}); "
        f"{'next-token' if data['objective'] == 'causal' else 'masked-token (15%, fixed seed)'} perplexity.",
        "",
        *markdown_section("## Stages", _stage_rows(stages)),
    ]
    latency = prune.get("latency") or {}
    if latency:
        rows = [
            {
                "input": f"{name} × {settings['seq_len']} tokens",
                "dense (s)": f"{r['dense_s']:.4f}",
                "compressed (s)": f"{r['compressed_s']:.4f}",
                "speed-up (paired median)": f"{r['speedup']:.2f}×",
            }
            for name, r in latency.items()
        ]
        lines += markdown_section(
            f"## CPU latency ({prune.get('threads', 1)} torch threads, {settings['latency_repeats']} "
            "interleaved "
            "rounds)",
            rows,
        )
    save = stages.get("save", {})
    dense_bytes = stages["dense"].get("weight_bytes") or 0
    if save:
        share = f" ({save['weight_bytes'] / dense_bytes:.1%} of dense)" if dense_bytes else ""
        lines += [f"Weight files: {save['weight_bytes']:,} bytes{share}.", ""]
        lines += [*_loading_lines(state, save["format"]), ""]
    recover = stages.get("recover")
    if recover:
        lines += [
            f"Recovery: {recover['steps']} steps ({recover['mode']}), training loss "
            f"{recover['first_loss']:.3f} → "
            f"{recover['last_loss']:.3f}.",
            "",
        ]
    lines += ["![quality against size](quality_vs_size.png)", ""]
    plot(stages, directory / "quality_vs_size.png")
    atomic_write_text(directory / "report.md", "\n".join(lines))
    atomic_write_text(directory / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    return report
