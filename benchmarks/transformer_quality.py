"""Which units to remove from a GQA decoder, and by which criterion: summarise ``--suite transformer-units``.

The suite (``plprune.bench.suites``) trains the Llama-style causal LM of ``hf-llama-wikitext2`` (2 layers,
hidden 128, 8 query / 2 key-value heads, SwiGLU width 344, tied embeddings) on WikiText-2's valid.txt and
evaluates it on test.txt, 3 seeds, with

* ``llama-heads-neurons-r50``: 50% of the query heads (evenly per KV head) and 50% of the FFN neurons
  removed one-shot at step 160 of 800 — plus the dense runs;
* ``llama-heads-r75``: 75% of the query heads alone, the same schedule;

each by PL (the paper's gating network), random, and grad-score (3 iterative rounds, as its paper runs it).
This script reads the finished runs and writes, into the suite folder,

* ``SUMMARY.md`` / ``summary.json``: per (units, criterion) the final test perplexity (mean ± std over
  seeds) and the parameters left, and paired comparisons (same seed = same data order and steps; geometric
  mean of the per-seed ratio with a paired-t 95% interval, :func:`plprune.bench.stats.paired_ratio`):
  every pruned variant against dense, PL against random and grad-score within each unit set, grad-score
  against random, and heads+neurons 50% against heads 75% for each criterion;
* ``quality_vs_size.png``: test perplexity against parameters removed.

Run::

    plprune compare --suite transformer-units --data-dir ../shared/data/wikitext-2 --workers 2 \\
        --out benchmarks/results/transformer_quality
    .venv/bin/python benchmarks/transformer_quality.py benchmarks/results/transformer_quality
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from plprune.bench.results import Runs, load_results
from plprune.bench.stats import paired_ratio, verdict
from plprune.table import markdown_section

PLANS = {"llama-heads-neurons-r50": "heads + neurons 50%", "llama-heads-r75": "heads 75%"}
CRITERIA = ("pl", "random", "grad-score")  # heads alone: pl and random (the suite)
KEY = "test_ppl"
SETUP = (
    "Suite `transformer-units` (`plprune.bench.suites`): the Llama-style causal LM of `hf-llama-wikitext2` "
    "(2 layers, hidden 128, 8 query / 2 KV heads, SwiGLU 344, tied embeddings) trained 800 steps on "
    "WikiText-2's **valid.txt** and evaluated on **test.txt** (the training split is not available here), "
    "units removed one-shot at step 160 (grad-score: 3 iterative rounds, as its paper runs it); seeds 0, 1, "
    "2; one torch thread per run, 2 runs at a time on a 2-core CPU. Parameters left = non-zero parameters "
    "of the masked model (the tied embedding, most of this small model, is never pruned); the last "
    "column is the share of the transformer layers' parameters removed."
)


def _finals(runs: Runs, variant: str) -> dict[int, float]:
    return {seed: float(s["final"][KEY]) for seed, s in runs.get(variant, {}).items()}


def _layer_params(out: Path, plan: str) -> int:
    """Parameters of the model's transformer layers (everything but the embedding and the final norm): a
    Llama of the run's sizes, built on the meta device, counted."""
    import torch
    import transformers

    config_path = next((out / "runs" / plan).glob("*/config.json"))
    model = json.loads(config_path.read_text(encoding="utf-8"))["model"]
    config = transformers.LlamaConfig(
        vocab_size=8,
        hidden_size=model["hidden"],
        num_hidden_layers=model["layers"],
        num_attention_heads=model["heads"],
        num_key_value_heads=model["kv_heads"],
        intermediate_size=model["ffn"],
    )
    with torch.device("meta"):
        built = transformers.LlamaForCausalLM(config)
    return sum(p.numel() for p in built.model.layers.parameters())


def _kept(runs: Runs, variant: str) -> tuple[float, float]:
    """(mean parameters left, mean parameters of the dense model) over the variant's seeds."""
    summaries = list(runs[variant].values())
    left = statistics.fmean(float(s.get("nonzero_parameters") or s["parameters"]) for s in summaries)
    return left, statistics.fmean(float(s["parameters"]) for s in summaries)


def _pair(a: dict[int, float], b: dict[int, float], name_a: str, name_b: str) -> dict[str, Any] | None:
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    result = paired_ratio([a[s] for s in seeds], [b[s] for s in seeds])
    return {
        "A": name_a,
        "B": name_b,
        "seeds": len(seeds),
        "A / B (test PPL, geo. mean)": f"{result.ratio:.3f}",
        "95% CI (paired t)": f"[{result.low:.3f}, {result.high:.3f}]",
        "verdict": verdict(result, name_a, name_b, higher_is_better=False),
        "per_seed": [round(r, 4) for r in result.per_seed],
    }


def summarise(out: Path) -> dict[str, Any]:
    loaded = load_results(out)
    missing = [plan for plan in PLANS if plan not in loaded.tasks]
    if missing:
        raise SystemExit(f"{out} has no finished runs of {missing}; run the suite first (see the docstring)")
    dense_runs = loaded.tasks["llama-heads-neurons-r50"]
    dense = _finals(dense_runs, "dense")
    rows, series, pairs = [], {}, []
    dense_params = _kept(dense_runs, "dense")[1]
    layers = _layer_params(out, "llama-heads-neurons-r50")
    rows.append(
        {
            "units removed": "none (dense)",
            "criterion": "—",
            "seeds": len(dense),
            "test PPL": f"{statistics.fmean(dense.values()):.2f} ± {statistics.stdev(dense.values()):.2f}",
            "parameters left": f"{dense_params:,.0f} (100%)",
            "of the layers' parameters removed": "0%",
        }
    )
    for plan, title in PLANS.items():
        runs = loaded.tasks[plan]
        for criterion in CRITERIA:
            finals = _finals(runs, criterion)
            if not finals:
                continue
            left, total = _kept(runs, criterion)
            values = list(finals.values())
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            rows.append(
                {
                    "units removed": title,
                    "criterion": criterion,
                    "seeds": len(values),
                    "test PPL": f"{statistics.fmean(values):.2f} ± {spread:.2f}",
                    "parameters left": f"{left:,.0f} ({left / total:.1%})",
                    "of the layers' parameters removed": f"{(total - left) / layers:.1%}",
                }
            )
            series.setdefault(criterion, []).append(
                (1 - left / total, statistics.fmean(values), spread, title)
            )
            pair = _pair(finals, dense, f"{criterion} ({title})", "dense")
            if pair:
                pairs.append(pair)
        for a, b in (("pl", "random"), ("pl", "grad-score"), ("grad-score", "random")):
            pair = _pair(_finals(runs, a), _finals(runs, b), f"{a} ({title})", f"{b} ({title})")
            if pair:
                pairs.append(pair)
    for criterion in CRITERIA:
        both = [_finals(loaded.tasks[plan], criterion) for plan in PLANS]
        pair = _pair(
            both[0],
            both[1],
            f"{criterion} ({PLANS['llama-heads-neurons-r50']})",
            f"{criterion} ({PLANS['llama-heads-r75']})",
        )
        if pair:
            pairs.append(pair)
    return {
        "rows": rows,
        "pairs": pairs,
        "series": series,
        "dense": dense,
        "layer_parameters": layers,
        "failed": loaded.failed,
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dense = list(summary["dense"].values())
    ax.errorbar(
        [0.0], [statistics.fmean(dense)], yerr=[statistics.stdev(dense)], fmt="ks", label="dense", capsize=3
    )
    markers = {"pl": "o", "random": "^", "grad-score": "D"}
    for criterion, points in summary["series"].items():
        xs, ys, errs, _ = zip(*points, strict=True)
        ax.errorbar(
            [100 * x for x in xs],
            ys,
            yerr=errs,
            fmt=markers.get(criterion, "o"),
            label=criterion,
            capsize=3,
            alpha=0.8,
        )
    for x, y, _, title in next(iter(summary["series"].values())):
        ax.annotate(title, (100 * x, y), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set_xlabel("parameters removed (% of the whole model, embeddings included)")
    ax.set_ylabel("final test perplexity (WikiText-2 test.txt)")
    ax.set_title("GQA decoder: units removed vs quality (mean ± std, 3 seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: Path) -> Path:
    summary = summarise(out)
    plot(summary, out / "quality_vs_size.png")
    shown_pairs = [{k: v for k, v in p.items() if k != "per_seed"} for p in summary["pairs"]]
    lines = [
        "# Which units to remove from a GQA decoder (issue 20's quality comparison)",
        "",
        SETUP,
        "",
        *markdown_section("## Final test perplexity", summary["rows"]),
        "Paired comparisons (per seed A/B of the final test perplexity; lower is better; 'A beats B' only "
        "when the 95% paired-t interval excludes 1):",
        "",
        *markdown_section("", shown_pairs)[2:],
        "![quality vs size](quality_vs_size.png)",
        "",
    ]
    if summary["failed"]:
        lines += ["Failed runs: " + "; ".join(summary["failed"]), ""]
    (out / "SUMMARY.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "summary.json").write_text(
        json.dumps(
            {k: v for k, v in summary.items() if k != "series"} | {"series": summary["series"]}, indent=2
        )
        + "\n",
        encoding="utf-8",
    )
    return out / "SUMMARY.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("benchmarks/results/transformer_quality"))
    print(f"wrote {write(parser.parse_args().out)}")


if __name__ == "__main__":
    main()
