"""The report of ``benchmarks/compress_llm.py`` (issue 21, item 4): ``results.json``, ``results.csv``, the
perplexity-ratio plot and ``RESULTS.md`` from the run reports of one model's folder (the GQA Llama or the
BERT masked LM), and the names of the runs those reports are filed under.

Statistics: perplexity ratios to dense as geometric means over calibration seeds; criteria against magnitude
and Taylor, and LoRA against full recovery, as paired ratios with a 95% t interval of the per-seed log ratio
(:func:`plprune.bench.stats.paired_ratio`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

# ``setup``: benchmarks/compress_llm.py's Setup (sizes, seeds, criteria, the model's settings)
Setup = Any


def run_key(size: float, criterion: str, seed: int, recovery: str = "full") -> str:
    """The run's name (and report file): full-recovery runs keep the name they had before LoRA runs."""
    suffix = "" if recovery == "full" else f"-{recovery}"
    return f"removed{round(size * 100):02d}-{criterion}-seed{seed}{suffix}"


def grid_jobs(setup: Setup, recovery: str = "full") -> list[tuple[float, str, int]]:
    """Every (size, criterion, seed) of the grid (``recovery="full"``) or of the LoRA runs (``"lora"``: the
    sizes ``lora_sizes``); PL first (the longest), so two workers finish together."""
    sizes = setup.sizes if recovery == "full" else setup.lora_sizes
    jobs = [(size, c, seed) for c in setup.criteria for size in sizes for seed in setup.seeds]
    return sorted(jobs, key=lambda job: (job[1] != "pl", job[2], job[0]))


STAGES = {"pruned": "no recovery", "recovered": "recovered"}
# per model: the title's name, how the grid's processes ran (for the scoring-cost caveat), the reproduce
# command, and how the outputs reload
MODEL_TEXT = {
    "llama": {
        "name": "GQA Llama",
        "plot": "a 6-layer GQA Llama",
        "workers": "two workers side by side on the 2-core machine, other agents' jobs also running",
        "command": "all --workers 2",
        "reload": "so the output reloads with `AutoModelForCausalLM.from_pretrained`",
        "metric": "perplexity",
    },
    "bert": {
        "name": "BERT masked LM",
        "plot": "a 6-layer BERT masked LM",
        "workers": "one worker on the 2-core machine, another agent's one-core benchmark on the other core",
        "command": "all --model bert --workers 1",
        "reload": "written as a plprune export read back with `plprune.load` (BERT's config cannot state "
        "pruned heads; the neuron-only width it could)",
        "metric": "pseudo-perplexity",
    },
}


def _geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def _rows(setup: Setup, out: Path, recovery: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """``(one row per finished run, the failed runs with their error)`` of the grid or the LoRA runs."""
    rows, failed = [], []
    for size, criterion, seed in grid_jobs(setup, recovery):
        key = run_key(size, criterion, seed, recovery)
        path = out / "run_reports" / f"{key}.json"
        if not path.is_file():
            if (out / "run_reports" / f"{key}.failed.txt").is_file():
                failed.append(
                    {"run": key, "error": (out / "run_reports" / f"{key}.failed.txt").read_text().strip()}
                )
            continue
        report = json.loads(path.read_text())
        stages = report["stages"]
        dense, pruned = stages["dense"], stages["prune"]
        recovered = stages.get("recover")
        bench = report["benchmark"]
        rows.append(
            {
                "run": key,
                "size": size,
                "criterion": criterion,
                "seed": seed,
                "recovery": recovery if recovered else "none",
                "dense_ppl": dense["perplexity"],
                "dense_params": dense["parameters"],
                "params": pruned["parameters"],
                "removed": 1 - pruned["parameters"] / dense["parameters"],
                "macs_ratio": pruned["macs"] / dense["macs"],
                "ratios": pruned["ratios"],
                "pruned_ppl": pruned["perplexity"],
                "pruned_ratio": pruned["perplexity"] / dense["perplexity"],
                "recovered_ppl": recovered["perplexity"] if recovered else None,
                "recovered_ratio": recovered["perplexity"] / dense["perplexity"] if recovered else None,
                "recover_steps": recovered["steps"] if recovered else 0,
                "scoring_seconds": pruned["scoring_seconds"],
                "scoring_s_per_mparam": pruned["scoring_seconds"] / (dense["parameters"] / 1e6),
                "compress_latency_b32": pruned["latency"]["batch 32"]["speedup"],
                "wall_seconds": bench["wall_seconds"],
                "recover_lr": report["settings"]["recover_lr"],
                "lora_trainable": bench.get("lora_trainable"),
            }
        )
    return rows, failed


def _lora_vs_full(
    setup: Setup, rows: list[dict[str, Any]], lora: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per (size, criterion): the LoRA-recovered perplexity over the fully recovered one, paired by seed."""
    from plprune.bench.stats import paired_ratio, verdict

    out = []
    for size in setup.lora_sizes:
        for criterion in setup.criteria:
            a, b = (
                {r["seed"]: r["recovered_ppl"] for r in runs if (r["size"], r["criterion"]) == cell}
                for runs, cell in ((lora, (size, criterion)), (rows, (size, criterion)))
            )
            seeds = [s for s in setup.seeds if a.get(s) and b.get(s)]
            if not seeds:
                continue
            entry: dict[str, Any] = {
                "size": size,
                "criterion": criterion,
                "seeds": seeds,
                "lora_geomean": _geomean([a[s] for s in seeds]),
                "full_geomean": _geomean([b[s] for s in seeds]),
                "lora_trainable": next(r["lora_trainable"] for r in lora if r["size"] == size),
                "params": next(r["params"] for r in lora if r["size"] == size),
            }
            if len(seeds) >= 2:
                result = paired_ratio([a[s] for s in seeds], [b[s] for s in seeds])
                entry.update(
                    ratio=result.ratio,
                    low=result.low,
                    high=result.high,
                    verdict=verdict(result, "LoRA", "full", higher_is_better=False),
                )
            out.append(entry)
    return out


def unigram_reference(setup: Setup, out: Path, data: Path) -> float:
    """Perplexity of the training text's word frequencies alone on the evaluation targets: exp of the mean
    −log p(word) over exactly the targets compress scores (next tokens, or the fixed-seed masked positions),
    p the add-one unigram of ``valid.txt`` over the non-special words (specials are never targets). The scale
    of what the model learned beyond frequencies."""
    import torch

    from plprune.compress.inputs import load_codec, load_model, read_text, text_blocks
    from plprune.compress.measure import objective_batches

    torch.set_num_threads(1)
    directory = out / "checkpoints" / "dense"
    model, objective = load_model(directory)
    codec = load_codec(directory, None, model, objective)
    train = torch.as_tensor(codec.encode(read_text(data / "valid.txt", "calibration")), dtype=torch.long)
    counts = torch.bincount(train, minlength=codec.vocab_size).double() + 1.0
    counts[sorted(codec.special_ids)] = 0.0
    log_p = torch.log(counts / counts.sum())
    inputs, labels = text_blocks(read_text(data / "test.txt", "evaluation"), codec, setup.seq_len, "eval")
    inputs, labels = inputs[: setup.eval_samples], labels[: setup.eval_samples]
    batches = objective_batches(inputs, labels, objective, codec, setup.batch_size, seed=EVAL_MASK_SEED)
    targets = torch.cat([b[1][b[1] != -100] for b in batches])
    return math.exp(float(-log_p[targets].mean()))


EVAL_MASK_SEED = 12345  # plprune.compress.pipeline's seed of the held-out masks


def collect(setup: Setup, out: Path) -> dict[str, Any]:
    """``results.json``: one row per run, plus per (size, criterion) aggregates and paired ratios."""
    from plprune.bench.stats import paired_ratio, verdict

    pre = json.loads((out / "pretrain.json").read_text())
    rows, failed = _rows(setup, out, "full")
    lora, lora_failed = _rows(setup, out, "lora")
    groups: dict[str, Any] = {}
    for size in setup.sizes:
        for criterion in setup.criteria:
            mine = sorted(
                (r for r in rows if r["size"] == size and r["criterion"] == criterion),
                key=lambda r: r["seed"],
            )
            if not mine:
                continue
            entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine], "removed": mine[0]["removed"]}
            for stage in ("pruned", "recovered"):
                values = [r[f"{stage}_ratio"] for r in mine if r[f"{stage}_ratio"] is not None]
                if len(values) == len(mine):
                    entry[stage] = {"geomean": _geomean(values), "min": min(values), "max": max(values)}
            entry["scoring_s_per_mparam"] = statistics.median(r["scoring_s_per_mparam"] for r in mine)
            groups[f"{size}|{criterion}"] = entry
    comparisons = []
    for size in setup.sizes:
        for stage in ("pruned", "recovered"):
            for base in ("magnitude", "taylor"):
                b = {
                    r["seed"]: r[f"{stage}_ppl"] for r in rows if r["size"] == size and r["criterion"] == base
                }
                for criterion in setup.criteria:
                    if criterion == base:
                        continue
                    a = {
                        r["seed"]: r[f"{stage}_ppl"]
                        for r in rows
                        if r["size"] == size and r["criterion"] == criterion
                    }
                    seeds = [s for s in setup.seeds if a.get(s) and b.get(s)]
                    if len(seeds) < 2:
                        continue
                    result = paired_ratio([a[s] for s in seeds], [b[s] for s in seeds])
                    comparisons.append(
                        {
                            "size": size,
                            "stage": stage,
                            "criterion": criterion,
                            "baseline": base,
                            "seeds": seeds,
                            "ratio": result.ratio,
                            "low": result.low,
                            "high": result.high,
                            "verdict": verdict(result, criterion, base, higher_is_better=False),
                        }
                    )
    latency = json.loads((out / "latency.json").read_text()) if (out / "latency.json").is_file() else {}
    return {
        "pretrain": pre,
        "setup": asdict(setup),
        "runs": rows,
        "failed": failed + lora_failed,
        "lora_runs": lora,
        "lora_vs_full": _lora_vs_full(setup, rows, lora),
        "aggregates": groups,
        "paired": comparisons,
        "latency": latency,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
    }


def _plot(results: dict[str, Any], setup: Setup, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    stages = [("pruned", "without recovery"), ("recovered", "after recovery")]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))  # own y range each: recovery ~1
    for axis, (stage, title) in zip(axes, stages, strict=True):
        for criterion in setup.criteria:
            xs, ys, lows, highs = [], [], [], []
            for size in setup.sizes:
                entry = results["aggregates"].get(f"{size}|{criterion}")
                if entry and stage in entry:
                    xs.append(100 * entry["removed"])
                    ys.append(entry[stage]["geomean"])
                    lows.append(entry[stage]["geomean"] - entry[stage]["min"])
                    highs.append(entry[stage]["max"] - entry[stage]["geomean"])
            if xs:
                style = {"linewidth": 2.5, "color": "black"} if criterion == "pl" else {}
                axis.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3, label=criterion, **style)
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_yscale("log")
        for set_formatter in (axis.yaxis.set_major_formatter, axis.yaxis.set_minor_formatter):
            set_formatter(matplotlib.ticker.FormatStrFormatter("%.4g"))  # 1.025, not 1.025 × 10^0
        axis.set_xlabel("parameters removed (%)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("PPL / dense (geo. mean; bars: min–max)")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"plprune compress on {MODEL_TEXT[setup.model]['plot']} (WikiText-2 test)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _size_section(results: dict[str, Any], setup: Setup, size: float) -> list[str]:
    """One size: the ratio table, the best criterion and PL's rank, the paired comparisons."""
    from plprune.bench.harness import markdown_table

    agg = results["aggregates"]
    present = {c: agg[f"{size}|{c}"] for c in setup.criteria if f"{size}|{c}" in agg}
    if not present:
        return []
    removed = next(iter(present.values()))["removed"]
    ratios = next(r["ratios"] for r in results["runs"] if r["size"] == size)
    lines = [
        f"### {size:.0%} asked: {removed:.1%} of the parameters removed "
        f"(ratios {', '.join(f'{k} {v:.3f}' for k, v in ratios.items())})",
        "",
    ]
    table = []
    for c, e in present.items():
        cells = [c, str(len(e["seeds"]))]
        for stage in STAGES:
            s = e.get(stage)
            cells.append("–" if not s else f"{s['geomean']:.3f} [{s['min']:.3f}–{s['max']:.3f}]")
        table.append(cells)
    lines += markdown_table(["criterion", "seeds", "PPL ratio, no recovery", "PPL ratio, recovered"], table)
    lines.append("")
    for stage in STAGES:
        ranked = sorted((e[stage]["geomean"], c) for c, e in present.items() if stage in e)
        if not ranked:
            continue
        pl_rank = next((f"{i + 1} of {len(ranked)}" for i, (_, c) in enumerate(ranked) if c == "pl"), "–")
        best_value, best = ranked[0]
        text = f"- {STAGES[stage]}: best **{best}** ({best_value:.3f}× dense); PL ranks {pl_rank}"
        for base in ("magnitude", "taylor"):
            pair = next(
                (
                    p
                    for p in results["paired"]
                    if p["size"] == size
                    and p["stage"] == stage
                    and p["criterion"] == best
                    and p["baseline"] == base
                ),
                None,
            )
            if pair:
                text += (
                    f"; {best} / {base} = {pair['ratio']:.3f} "
                    f"(95% t {pair['low']:.3f}–{pair['high']:.3f}: {pair['verdict']})"
                )
        lines.append(text + ".")
    lines.append("")
    paired = [p for p in results["paired"] if p["size"] == size]
    if paired:
        lines += [
            "<details><summary>Paired ratios against magnitude and taylor (same seeds)</summary>",
            "",
        ]
        lines += markdown_table(
            ["stage", "criterion", "vs", "paired PPL ratio", "95% t interval", "verdict"],
            [
                [
                    STAGES[p["stage"]],
                    p["criterion"],
                    p["baseline"],
                    f"{p['ratio']:.3f}",
                    f"{p['low']:.3f}–{p['high']:.3f}",
                    p["verdict"],
                ]
                for p in paired
            ],
        )
        lines += ["", "</details>", ""]
    return lines


def _latency_section(results: dict[str, Any]) -> list[str]:
    from plprune.bench.harness import markdown_table

    if not results["latency"]:
        return []
    rows = []
    for name, v in results["latency"].items():
        for batch in ("batch 1", "batch 32"):
            rows.append(
                [
                    name,
                    batch,
                    f"{v['compacted_parameters']:,} / {v['dense_parameters']:,}",
                    f"{v[batch]['dense_s'] * 1e3:.2f}",
                    f"{v[batch]['compressed_s'] * 1e3:.2f}",
                    f"{v[batch]['speedup']:.2f}×",
                    str(v[batch]["rounds"]),
                    ", ".join(f"{x:.1f}" for x in v["load_average"]),
                ]
            )
    header = ["removed", "batch", "params (compacted / dense)", "dense ms", "compacted ms", "speed-up"]
    return [
        "## Latency: dense vs compacted",
        "",
        "One process, one thread, the two models called in interleaved rounds (plprune.compress.measure."
        "latency); speed-up = median over rounds of dense time / compacted time in the same round. The "
        "compacted model is magnitude's (first seed); every criterion gives the same shapes at a size "
        "(FLAP adds biases where the model has none). Sequences of the pretraining length.",
        "",
        *markdown_table([*header, "rounds", "load average (1, 5, 15 min)"], rows),
        "",
    ]


def _scoring_section(results: dict[str, Any], setup: Setup) -> list[str]:
    from plprune.bench.harness import markdown_table

    rows = []
    for c in setup.criteria:
        mine = [r for r in results["runs"] if r["criterion"] == c]
        if mine:
            seconds = [r["scoring_seconds"] for r in mine]
            rows.append(
                [
                    c,
                    str(len(mine)),
                    f"{statistics.median(seconds):.2f}",
                    f"{statistics.median(r['scoring_s_per_mparam'] for r in mine):.2f}",
                ]
            )
    dense = results["pretrain"]["parameters"]
    return [
        "## Scoring cost",
        "",
        f"Seconds of the scoring stage (the Pruner event's `scoring_seconds`: {setup.calibration_samples} "
        f"calibration sequences of {setup.seq_len} tokens, batch {setup.batch_size}) per million parameters "
        f"of the dense model ({dense / 1e6:.2f} M), median over every run of the criterion. Measured in the "
        "grid's worker processes (one thread each, "
        f"{MODEL_TEXT[setup.model]['workers']}): compare criteria with each other, not with another "
        "machine.",
        "",
        *markdown_table(["criterion", "runs", "scoring s (median)", "s / M params"], rows),
        "",
    ]


def _targets_section(results: dict[str, Any], setup: Setup) -> list[str]:
    lines = ["## The issue's targets", ""]
    first = min(setup.sizes)
    recovered = [
        (e["recovered"]["geomean"], k.split("|")[1])
        for k, e in results["aggregates"].items()
        if k.startswith(f"{first}|") and "recovered" in e
    ]
    if recovered:
        value, best = min(recovered)
        met = "met" if value <= 1.15 else "NOT met"
        lines.append(
            f"- Best criterion after recovery at {first:.0%} removed ≤ 1.15× dense perplexity: **{met}** "
            f"({best}, {value:.3f}×, geometric mean over seeds)."
        )
    else:
        lines.append(f"- ≤ 1.15× dense after recovery at {first:.0%}: not measured (no recovered runs).")
    top = f"{round(max(setup.sizes) * 100)}%"
    latency = results["latency"].get(top)
    if latency:
        speedup = latency["batch 32"]["speedup"]
        met = "met" if speedup >= 1.8 else "NOT met"
        lines.append(
            f"- Compacted at {top} removed ≥ 1.8× lower batch-32 CPU latency: **{met}** ({speedup:.2f}×, "
            f"{latency['compacted_parameters']:,} of {latency['dense_parameters']:,} parameters)."
        )
    else:
        lines.append(f"- ≥ 1.8× batch-32 latency at {top}: not measured.")
    lines.append("- Scoring cost per criterion: the table above.")
    return [*lines, ""]


def _shared_ratio_plan(setup: Setup, model: Any, out: Path) -> list[str]:
    """What one shared ratio for heads and neurons (no kind ratio fixed) gives at each size: the plan
    compress makes (its solver, with the head-count rounding where the config describes head counts)."""
    from plprune.compress import CompressSettings
    from plprune.compress.pipeline import _plan  # the plan compress makes (benchmark-only use)

    shared = []
    for size in setup.sizes:
        settings = CompressSettings(model_dir=out, data=out, out=out, keep_params=round(1 - size, 6))
        try:
            ratios, kept, _ = _plan(model, settings)
            said = ", ".join(f"{kind} {ratio:.3f}" for kind, ratio in ratios.items())
            shared.append(f"{size:.0%} asked → {said}, {1 - kept:.1%} removed")
        except Exception as error:  # an unreachable size: say so
            shared.append(f"{size:.0%} asked → {error}")
    return shared


def _head_rounding(setup: Setup, out: Path) -> list[str]:
    """Why the head ratio is fixed: the head counts the config describes, and what one shared ratio for
    heads and neurons keeps at each size (the solver compress uses when no kind ratio is fixed)."""
    import torch

    from plprune.compaction.hf_config import heads_describable
    from plprune.compress.inputs import load_model

    torch.set_num_threads(1)
    model, _ = load_model(out / "checkpoints" / "dense")
    answers = [heads_describable(model.config, n) for n in range(1, setup.heads + 1)]
    counts = [n for n, ok in enumerate(answers, 1) if ok]
    shared = "; ".join(_shared_ratio_plan(setup, model, out))
    if setup.model == "llama":
        return [
            f"**Why the head ratio is fixed.** The Llama config describes {counts} query heads per layer "
            "here (plprune.compaction.hf_config.heads_describable: the config's own validation, hidden % "
            "heads == 0). With one shared ratio for heads and neurons (no kind ratio fixed), compress raises "
            "the ratio to the next describable head count and the neuron ratio with it: "
            + shared
            + f". So the head ratio is fixed at {setup.head_ratio} and only the neuron ratio is solved for "
            "the budget.",
            "",
        ]
    return [
        f"**Why the head ratio is fixed.** Hidden {setup.hidden} with {setup.heads} heads of size "
        f"{setup.hidden // setup.heads}: a count of heads that divides the hidden size (1, 2, 4 or 8) is the "
        "only one a config of the Llama's kind could state, and the Llama grid kept 4 of 8 (ratio 0.5). "
        "BERT's config cannot state pruned heads at all (its head size is always hidden / heads; "
        f"heads_describable answers {' / '.join(sorted(set(map(str, answers))))} for every count), so these "
        "outputs are plprune exports read back with `plprune.load`, whatever the count; the head ratio is "
        f"fixed at {setup.head_ratio} to prune heads exactly as the Llama grid does (4 of 8 per layer), so "
        "that the two models are compared at the same split, and only the neuron ratio is solved for the "
        f"budget. One shared ratio instead (no rounding here: nothing to describe) would give: {shared}.",
        "",
    ]


def _model_section(results: dict[str, Any], setup: Setup) -> list[str]:
    """The pretrained model: architecture, data, training and its dense quality."""
    pre = results["pretrain"]
    body = pre["parameters"] - pre["embedding_parameters"]
    vocabulary = (
        "word vocabulary of "
        f"{pre['vocab_size']} (the most frequent words of `valid.txt` seen ≥ {setup.min_freq} times; "
        "other words are `[UNK]`, never a "
        f"prediction target: {pre['unk_fraction_train']:.1%} of training and {pre['unk_fraction_test']:.1%} "
        f"of test tokens). {pre['parameters']:,} parameters: {pre['embedding_parameters']:,} in the "
        f"word embedding (never pruned) and {body:,} elsewhere."
    )
    training = (
        f"Trained on WikiText-2 **valid.txt** ({pre['train_tokens']:,} tokens, {pre['train_blocks']:,} "
        f"blocks of {setup.seq_len}) for {setup.pretrain_steps} AdamW steps of batch {setup.batch_size} "
        f"({pre['epochs']:.1f} epochs; lr {setup.lr}, warm-up {setup.warmup} steps, cosine to 10%, weight "
        f"decay {setup.weight_decay}, gradient clip 1), one thread, {pre['seconds']:.0f} s (training loss "
        f"{pre['first_loss']:.2f} → {pre['last_loss_mean_20']:.2f})."
    )
    if setup.model == "llama":
        return [
            "## The pretrained model",
            "",
            f"`transformers.LlamaForCausalLM`: {setup.layers} layers, hidden {setup.hidden}, "
            f"{setup.heads} query / {setup.kv_heads} key-value heads (GQA, head size "
            f"{setup.hidden // setup.heads}), SwiGLU {setup.ffn}, RMSNorm, rotary positions, tied "
            "embeddings; " + vocabulary,
            "",
            training + " Evaluated on WikiText-2 **test.txt**: "
            f"the first {setup.eval_samples} blocks of {setup.seq_len} tokens "
            f"({setup.eval_samples * setup.seq_len:,} tokens), perplexity **{pre['test_perplexity']:.2f}** — "
            "the same blocks every compress run evaluates (the training text's word frequencies alone, an "
            f"add-one unigram, give {results['unigram_reference_ppl']:.1f} on the same targets). Weights "
            f"sha256 `{pre['sha256'][:16]}…` (`pretrain.json`).",
            "",
        ]
    return [
        "## The pretrained model",
        "",
        f"`transformers.BertForMaskedLM`: {setup.layers} layers, hidden {setup.hidden}, {setup.heads} heads "
        f"(head size {setup.hidden // setup.heads}), intermediate {setup.ffn} (4× hidden), GELU, post-LN, "
        f"learned positions, decoder tied to the word embedding (BERT's defaults), dropout {setup.dropout} "
        "(BERT's is 0.1; off here as in the Llama, see below); " + vocabulary,
        "",
        training + " Masked-LM objective: every step masks its batch afresh (BERT's recipe, "
        "plprune.data.mlm.MlmMasker: 15% of the non-special tokens, 80% `[MASK]` / 10% random / 10% kept; "
        "`[UNK]` and the other specials never masked), seeded by the step. Evaluated on WikiText-2 "
        f"**test.txt**: the first {setup.eval_samples} blocks of {setup.seq_len} tokens, masked once with "
        "compress's fixed seed (plprune.compress.measure.objective_batches, seed 12345), so dense and every "
        "compressed model are scored on the very same masked inputs: **pseudo-perplexity** = exp(mean "
        "cross-entropy over the masked positions) = "
        f"**{pre['test_perplexity']:.2f}** (measured on the saved checkpoint by compress's own functions; "
        "every compress run's dense stage gives the same; the training text's word frequencies alone, an "
        f"add-one unigram, give {results['unigram_reference_ppl']:.1f} on the same masked targets). Weights "
        "sha256 "
        f"`{pre['sha256'][:16]}…` (`pretrain.json`).",
        "",
    ]


def _lora_section(results: dict[str, Any], setup: Setup) -> list[str]:
    """LoRA against full recovery, paired by seed per criterion."""
    from plprune.bench.harness import markdown_table

    compared = results["lora_vs_full"]
    if not setup.lora_sizes:
        return []
    header = [
        "## LoRA recovery against full recovery",
        "",
        f"At {', '.join(f'{s:.0%}' for s in setup.lora_sizes)} removed, each grid run's pruned model "
        f'recovered again with LoRA instead of full fine-tuning (`recovery="lora"`: peft rank '
        f"{setup.lora_rank}, α = {2 * setup.lora_rank}, no dropout, on every linear layer — LLM-Pruner's "
        "recovery — merged back after training), the same "
        f"{setup.recover_steps} steps, batches, seeds and calibration, lr {setup.lora_lr} (full: "
        f"{setup.recover_lr}; adapters start at zero and hold few parameters, so they take a larger lr, as "
        "in LoRA practice). Ratio = LoRA-recovered perplexity / fully recovered perplexity, paired by seed "
        "(95% t interval of the per-seed log ratio); < 1: LoRA better.",
        "",
    ]
    if not compared:
        return [*header, "Not measured: no LoRA run finished.", ""]
    dense = results["runs"][0]["dense_ppl"]
    rows = [
        [
            c["criterion"],
            f"{c['size']:.0%}",
            str(len(c["seeds"])),
            f"{c['full_geomean']:.2f} ({c['full_geomean'] / dense:.3f}×)",
            f"{c['lora_geomean']:.2f} ({c['lora_geomean'] / dense:.3f}×)",
            f"{c['ratio']:.3f}" if "ratio" in c else "–",
            f"{c['low']:.3f}–{c['high']:.3f}" if "ratio" in c else "–",
            c.get("verdict", "one seed: no interval"),
        ]
        for c in compared
    ]
    first = compared[0]
    lines = [
        *header,
        *markdown_table(
            [
                "criterion",
                "removed",
                "seeds",
                "PPL full (/ dense)",
                "PPL LoRA (/ dense)",
                "LoRA / full",
                "95% t",
                "verdict",
            ],
            rows,
        ),
        "",
        f"LoRA adapters: {first['lora_trainable']:,} trainable parameters on the compacted model of "
        f"{first['params']:,} ({first['lora_trainable'] / first['params']:.1%}; full recovery trains all "
        f"{first['params']:,}). Dense test perplexity {dense:.2f}; PPL columns: geometric means over seeds. "
        "Best LoRA-recovered criterion at "
        + ", ".join(
            f"{size:.0%}: {best['criterion']} {best['lora_geomean'] / dense:.3f}× dense ("
            + ("≤" if best["lora_geomean"] / dense <= 1.15 else ">")
            + " 1.15×, the issue's target)"
            for size in setup.lora_sizes
            for best in [min((c for c in compared if c["size"] == size), key=lambda c: c["lora_geomean"])]
        )
        + ".",
        "",
    ]
    missing = len(setup.criteria) * len(setup.seeds) * len(setup.lora_sizes) - len(results["lora_runs"])
    if missing:
        lines += [f"{missing} LoRA run(s) of the plan did not finish (not reported).", ""]
    return lines


def write_report(setup: Setup, out: Path, command: str, data: Path) -> None:
    """``results.json``, ``results.csv``, the plot and ``RESULTS.md`` (``READING.md`` appended if present)."""
    results = collect(setup, out)
    results["unigram_reference_ppl"] = unigram_reference(setup, out, data)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    with (out / "results.csv").open("w", newline="") as handle:
        every = results["runs"] + results["lora_runs"]
        columns = [k for k in every[0] if k != "ratios"] if every else []
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(every)
    _plot(results, setup, out / "ppl_ratio_vs_removed.png")
    text = MODEL_TEXT[setup.model]
    lines = [
        f"# `plprune compress` on a pretrained {text['name']} (issue 21, item 4)",
        "",
        "Generated by `benchmarks/compress_llm.py` from the files in this folder (the section `Reading` at "
        "the end is written by hand from these numbers, in `READING.md`).",
        "",
        f"Reproduce: `.venv/bin/python benchmarks/compress_llm.py {text['command']}` (the stages `pretrain`, "
        "`compress`, `latency` and `report` one by one do the same; this report was written by "
        f"`{command}`).",
        "",
        *_model_section(results, setup),
        "## What was run",
        "",
        "`plprune.compress.compress` per (size, criterion, seed): kinds head + neuron, `keep_params` = "
        f"1 − size, head ratio fixed at {setup.head_ratio} (below), the neuron ratio solved for the budget, "
        f"every layer pruned alike (`per_layer`), {text['reload']}. "
        f"Calibration: {setup.calibration_samples} sequences of `valid.txt` drawn by the seed "
        f"({', '.join(map(str, setup.seeds))}). Criteria: {', '.join(setup.criteria)}; PL with "
        f"`{json.dumps(setup.pl_settings)}` (pinned in full, so that a change of PL's defaults leaves these "
        "runs as they are). Recovery at "
        f"{', '.join(f'{s:.0%}' for s in setup.recover_sizes) or 'no size'}: {setup.recover_steps} steps of "
        f"full fine-tuning (AdamW, lr {setup.recover_lr}, batch {setup.batch_size}, clip 1) on `valid.txt` = "
        f"{setup.recover_fraction:.0%} of the pretraining steps"
        + (" (masked afresh every step)" if setup.model == "bert" else "")
        + ". The no-recovery numbers are the same run's prune stage (the recovery that follows does not "
        "change it).",
        "",
        *_head_rounding(setup, out),
        f"## Results: {text['metric']} ratio to dense",
        "",
        "Geometric mean over seeds [min–max]; lower is better. Paired ratios: same seeds, paired 95% t "
        "interval of the per-seed log ratio (plprune.bench.stats.paired_ratio); magnitude does not use the "
        "calibration data, so its prune stage is the same for every seed (its recovered runs still differ by "
        "the seed's batch order). Plot: `ppl_ratio_vs_removed.png`.",
        "",
        "![ppl ratio vs parameters removed](ppl_ratio_vs_removed.png)",
        "",
    ]
    for size in setup.sizes:
        lines += _size_section(results, setup, size)
    lines += _scoring_section(results, setup)
    lines += _latency_section(results)
    lines += _targets_section(results, setup)
    lines += _lora_section(results, setup)
    if results["failed"]:
        errors: dict[str, list[str]] = {}
        for f in results["failed"]:
            errors.setdefault(f["error"], []).append(f["run"])
        lines += ["## Failed runs", ""]
        lines += [f"- {', '.join(runs)}: `{error}`" for error, runs in errors.items()] + [""]
    lines += [
        "## Files",
        "",
        "`results.json` (every run, aggregates, paired ratios, latency"
        + (", the LoRA runs and their comparison" if results["lora_runs"] else "")
        + "), `results.csv` (one row per run), "
        "`ppl_ratio_vs_removed.png`, `pretrain.json`, `latency.json`, `run_reports/*.json` (each run's "
        "compress report). The models are in `checkpoints/` (git-ignored; rebuilt by the script: "
        "`pretrain` is skipped when the weights' sha256 matches `pretrain.json`, a run when its report "
        "exists).",
        "",
    ]
    reading = out / "READING.md"
    if reading.is_file():
        lines += [reading.read_text().rstrip(), ""]
    (out / "RESULTS.md").write_text("\n".join(lines))
    print(f"report: {out / 'RESULTS.md'}")
