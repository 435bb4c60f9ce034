"""Whole-model speed of pruned transformers: heads and feed-forward neurons removed, compacted, timed.

For a Hugging Face BERT (masked LM) and a Llama-style decoder with grouped-query attention (8 query / 2 KV
heads), both built from configs at the sizes below: 50% of the heads of every layer (for GQA: evenly per KV
head) and 50% of the FFN neurons of every layer are removed (``plprune.scorers.Random``, per-layer
allocation: latency depends on the shapes, not on which groups go), the model is compacted
(``Pruner.compact()``), and we measure, side by side in one run, interleaved round by round:

* parameters and MACs of one forward pass (``torch.utils.flop_counter``: MACs = FLOPs / 2; matmuls and
  linear layers, which is all but norms and activations);
* inference latency of the whole model (logits over the vocabulary included) and of its backbone
  (``model.bert`` / ``model.model``: no vocabulary projection) at batch 1 and batch 32, sequence 128,
  one torch thread; the paired speed-up is the median over rounds of dense time / compacted time;
* a training step (forward, backward, AdamW) of the masked model against the compacted one, batch 16;
* the largest difference between the masked and the compacted model's logits.

Run: ``.venv/bin/python benchmarks/transformer_compaction.py --out benchmarks/results/transformer_compaction``
(about 10 minutes on 2 cores). Writes ``results.json``, ``RESULTS.md`` and ``speedups.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import plprune
from plprune.bench.harness import markdown_table, summarize_rounds, time_rounds

SEQ = 128
VOCAB = 8192


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "hf-bert":
        config = transformers.BertConfig(
            vocab_size=VOCAB,
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=8,
            intermediate_size=1024,
            max_position_embeddings=SEQ,
            hidden_dropout_prob=0.0,  # no dropout: masked and compacted training see the same function
            attention_probs_dropout_prob=0.0,
            attn_implementation="eager",
        )
        return transformers.BertForMaskedLM(config).eval()
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=688,
        max_position_embeddings=SEQ,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(config).eval()


def backbone(model: nn.Module) -> nn.Module:
    return model.bert if hasattr(model, "bert") else model.model


def ids(batch: int, seed: int = 0) -> Tensor:
    return torch.randint(VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def lm_loss(model: nn.Module, batch: Tensor) -> Tensor:
    return model(input_ids=batch, labels=batch).loss


def macs(module: nn.Module, batch: Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(input_ids=batch)
    return counter.get_total_flops() // 2


def prune(model: nn.Module, ratio: float, optimizer: torch.optim.Optimizer | None = None) -> plprune.Pruner:
    """Random 50/50 per layer, applied at once; the pruner is returned masked (not yet compacted)."""
    pruner = plprune.Pruner(
        model,
        plprune.scorers.Random(),
        plprune.OneShot(0, ratio),
        kinds=("head", "neuron"),
        allocation="per_layer",
        seed=0,
    )
    if optimizer is not None:
        pruner.attach(optimizer)
    pruner.step(0)
    return pruner


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _call(module: nn.Module, x: Tensor) -> Callable[[], Any]:
    return lambda: module(input_ids=x)


def inference(name: str, ratio: float, repeats: int, progress: Callable[[str], None]) -> dict[str, Any]:
    dense = build(name)
    small = copy.deepcopy(dense)
    pruner = prune(small, ratio)
    masked_logits = small(input_ids=ids(2, 1)).logits.detach()
    pruner.compact()
    diff = float((small(input_ids=ids(2, 1)).logits - masked_logits).abs().max())
    # find_sites reads the counts without attaching gate hooks (a GroupSet would, and they would be timed)
    heads = [s.num_groups for s in plprune.sites.find_sites(small, ("head",))]
    neurons = [s.num_groups for s in plprune.sites.find_sites(small, ("neuron",))]
    row: dict[str, Any] = {
        "params": {"dense": count(dense), "compacted": count(small)},
        "heads_per_layer_after": heads,
        "neurons_per_layer_after": neurons,
        "max_abs_diff_masked_vs_compacted": diff,
    }
    for batch in (1, 32):
        x = ids(batch)
        for part, pick in (("model", lambda m: m), ("backbone", backbone)):
            key = f"{part}@batch{batch}"
            progress(f"{name} {key}")
            row.setdefault("macs", {})[key] = {
                "dense": macs(pick(dense), x),
                "compacted": macs(pick(small), x),
            }
            calls = {"dense": _call(pick(dense), x), "compacted": _call(pick(small), x)}
            rounds = repeats if batch == 32 else 4 * repeats
            row.setdefault("latency", {})[key] = summarize_rounds(time_rounds(calls, rounds, warmup=2))
    return row


def training(name: str, ratio: float, steps: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Masked vs compacted training steps, interleaved, from the same state: the same seeded model pruned
    with the same seed twice (identical masks, checked), one copy then compacted."""
    masked, compacted = build(name).train(), build(name).train()
    optimizer = torch.optim.AdamW(masked.parameters(), lr=1e-4)
    compacted_optimizer = torch.optim.AdamW(compacted.parameters(), lr=1e-4)
    pruner, twin = prune(masked, ratio, optimizer), prune(compacted, ratio, compacted_optimizer)
    assert torch.equal(twin.mask, pruner.mask)
    twin.compact()
    losses: dict[str, list[float]] = {"masked": [], "compacted": []}
    runs = {"masked": (masked, optimizer), "compacted": (compacted, compacted_optimizer)}

    def train_step(key: str, batch: Tensor) -> None:
        model, opt = runs[key]
        loss = lm_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses[key].append(float(loss))

    # interleaved rounds, the starting model alternating; each round one batch, the same for both
    times = time_rounds(
        {key: lambda batch, key=key: train_step(key, batch) for key in runs},
        steps,
        inputs=lambda step: (ids(16, 100 + step),),
        inference=False,
        progress=lambda text: progress(f"{name} training {text}"),
    )
    paired = [m / c for m, c in zip(times["masked"][1:], times["compacted"][1:], strict=True)]
    return {
        "step_ms": {k: 1000 * statistics.median(v[1:]) for k, v in times.items()},
        "paired_speedup": statistics.median(paired),
        "max_rel_loss_diff": max(abs(a - b) / abs(a) for a, b in zip(*losses.values(), strict=True)),
        "steps": steps,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Pruned transformers, compacted: whole-model speed on CPU",
        "",
        f"Measured by `benchmarks/transformer_compaction.py` on {result['machine']}, torch "
        f"{result['torch']}, transformers {result['transformers']}, {result['threads']} torch thread, "
        f"sequence {SEQ}, vocabulary {VOCAB}. 50% of the heads and 50% of the FFN neurons of every layer "
        "removed (random, per layer; GQA heads evenly per KV head), then `Pruner.compact()`. Ratios are "
        "paired medians over interleaved rounds (dense time / compacted time), with the interquartile range.",
        "",
    ]
    rows = []
    for name, row in result["models"].items():
        for key, lat in row["latency"].items():
            part, batch = key.split("@batch")
            mac = row["macs"][key]
            c = lat["compacted"]
            low, high = c["paired_speedup_iqr"]
            rows.append(
                [
                    name,
                    part,
                    batch,
                    f"{mac['dense'] / mac['compacted']:.2f}×",
                    f"{lat['dense']['median_ms']:.1f}",
                    f"{c['median_ms']:.1f}",
                    f"{c['paired_speedup']:.2f}× [{low:.2f}, {high:.2f}]",
                ]
            )
    header = (
        "model",
        "part",
        "batch",
        "MACs ratio",
        "latency dense (ms)",
        "compacted (ms)",
        "speed-up [IQR]",
    )
    lines += markdown_table(header, rows)
    rows = []
    for name, row in result["models"].items():
        p = row["params"]
        rows.append(
            [
                name,
                f"{p['dense']:,} → {p['compacted']:,} (×{p['compacted'] / p['dense']:.2f})",
                f"{row['heads_per_layer_after'][0]} / {row['neurons_per_layer_after'][0]}",
                f"{row['max_abs_diff_masked_vs_compacted']:.1e}",
            ]
        )
    lines += [
        "",
        *markdown_table(
            (
                "model",
                "parameters dense → compacted",
                "heads / neurons per layer after",
                "max masked − compacted",
            ),
            rows,
        ),
    ]
    lines += [
        "",
        "Training steps (forward + backward + AdamW, batch 16), masked vs compacted, interleaved:",
        "",
    ]
    rows = [
        [
            name,
            f"{row['step_ms']['masked']:.0f}",
            f"{row['step_ms']['compacted']:.0f}",
            f"{row['paired_speedup']:.2f}×",
            f"{row['max_rel_loss_diff']:.1e}",
        ]
        for name, row in result["training"].items()
    ]
    header = ("model", "masked (ms)", "compacted (ms)", "paired speed-up", "max relative loss difference")
    lines += markdown_table(header, rows)
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels, speed, mac = [], [], []
    for name, row in result["models"].items():
        for key, lat in row["latency"].items():
            labels.append(f"{name}\n{key.replace('@', ' ')}")
            speed.append(lat["compacted"]["paired_speedup"])
            mac.append(row["macs"][key]["dense"] / row["macs"][key]["compacted"])
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], mac, width=0.4, label="MACs ratio")
    ax.bar([i + 0.2 for i in x], speed, width=0.4, label="measured speed-up")
    ax.axhline(1.8, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(list(x), labels, fontsize=6)
    ax.set_ylabel("dense / compacted")
    ax.set_title("50% heads + 50% neurons removed (CPU, 1 thread)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/transformer_compaction"))
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds at batch 32 (×4 at batch 1)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    def progress(message: str) -> None:
        print(message, flush=True)

    result: dict[str, Any] = {
        "machine": f"{platform.machine()} CPU ({torch.get_num_threads()} thread)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "ratio": args.ratio,
        "models": {},
        "training": {},
    }
    for name in ("hf-bert", "llama-gqa"):
        result["models"][name] = inference(name, args.ratio, args.repeats, progress)
        result["training"][name] = training(name, args.ratio, args.train_steps, progress)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    (args.out / "RESULTS.md").write_text(render(result))
    plot(result, args.out / "speedups.png")
    print(render(result))


if __name__ == "__main__":
    main()
