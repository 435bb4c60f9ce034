"""What the hook-based gates cost a training step, on plprune's BERT and on a Hugging Face BERT.

For each model (the default CPU config: 4 layers, hidden 128, 8 heads, FFN 512, seq 128, batch 16, vocab
8000) one AdamW training step is timed in three states, interleaved round by round so that drift of the
machine hits all three alike:

* ``plain``: no plprune at all;
* ``hooked``: a ``plprune.Pruner`` attached (gate hooks on every attention output projection, optimizer
  hooks), nothing pruned yet: the hooks return their input unchanged;
* ``masked``: 75% of the heads pruned: every hook multiplies by the 0/1 mask and the optimizer hooks zero
  gradients and re-zero weights. Masked heads are still computed (only compaction removes them), so this
  is *not* expected to be faster.

Writes ``OUT/hook_overhead.json`` and ``OUT/HOOK_OVERHEAD.md`` (median and IQR per state, ratio to plain).
Run: ``.venv/bin/python benchmarks/hook_overhead.py --out benchmarks/results/hook_overhead``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import nn

import plprune
from plprune.bench.harness import machine, quartiles, time_rounds
from plprune.models import BertConfig, BertForMaskedLM
from plprune.models.hf_bert import HfBertForMaskedLM

STATES = ("plain", "hooked", "masked")


def build(kind: str, config: BertConfig) -> nn.Module:
    torch.manual_seed(0)
    return BertForMaskedLM(config) if kind == "plprune" else HfBertForMaskedLM(config)


def batch(step: int, config: BertConfig, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    ids = torch.randint(config.vocab_size, (size, config.max_length), generator=gen)
    masked = torch.rand(size, config.max_length, generator=gen) < 0.15
    return ids, torch.where(masked, ids, torch.full_like(ids, -100))


def loss_fn(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return model(*data).loss


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: tuple) -> None:
    loss = loss_fn(model, data)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def measure(kind: str, config: BertConfig, batch_size: int, rounds: int, warmup: int) -> dict[str, Any]:
    runs = {}
    for state in STATES:
        model = build(kind, config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if state != "plain":
            pruner = plprune.Pruner(model, plprune.scorers.Random(), plprune.OneShot(0, 0.75), kinds="head")
            pruner.attach(optimizer)
            if state == "masked":
                pruner.step(0)
        runs[state] = (model, optimizer)
    # interleaved: each round times every state once, in a fixed order, on the round's batch
    times = time_rounds(
        {state: lambda data, state=state: train_step(*runs[state], data) for state in STATES},
        rounds,
        warmup,
        inputs=lambda r: (batch(r + warmup, config, batch_size),),
        rotate=False,
        inference=False,
    )
    summary = {}
    for state in STATES:
        q1, _, q3 = quartiles(times[state])
        paired = [t / p for t, p in zip(times[state], times["plain"], strict=True)]  # same round, same batch
        p1, _, p3 = quartiles(paired)
        summary[state] = {
            "median_ms": 1000 * statistics.median(times[state]),
            "iqr_ms": [1000 * q1, 1000 * q3],
            "paired_ratio_median": statistics.median(paired),
            "paired_ratio_iqr": [p1, p3],
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = BertConfig(vocab_size=8000, dropout=0.0, attention_dropout=0.0)
    results = {
        kind: measure(kind, config, 16, args.rounds, args.warmup) for kind in ("plprune", "huggingface")
    }
    host = machine()
    meta = {
        "command": f"benchmarks/hook_overhead.py --out {args.out} --rounds {args.rounds} "
        f"--warmup {args.warmup} --threads {args.threads}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": host["platform"],
        "cpu_count": host["cpu_count"],
        "model": "BERT 4 layers x 8 heads, hidden 128, FFN 512, seq 128, batch 16, vocab 8000, AdamW",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hook_overhead.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [
        "# Hook overhead: one training step with plprune's gates attached",
        "",
        f"Command: `{meta['command']}`; torch {meta['torch']}, {meta['threads']} thread(s), "
        f"{meta['cpu_count']} CPU cores, {meta['machine']}; {meta['model']}. Median over "
        f"{args.rounds} interleaved rounds after {args.warmup} warm-up steps.",
        "",
        "| model | state | step (ms) | IQR (ms) | paired ratio to plain (median, IQR) |",
        "|---|---|---|---|---|",
    ]
    for kind, summary in results.items():
        for state, row in summary.items():
            low, high = row["paired_ratio_iqr"]
            q1, q3 = row["iqr_ms"]
            lines.append(
                f"| {kind} | {state} | {row['median_ms']:.1f} | {q1:.1f}-{q3:.1f} "
                f"| {row['paired_ratio_median']:.3f} ({low:.3f}-{high:.3f}) |"
            )
    lines += [
        "",
        "Paired ratio: each round times the three states on the same batch back to back; the ratio is taken "
        "within a round, which cancels most of the machine's drift.",
        "",
        "plain: no plprune; hooked: a Pruner attached, nothing pruned; masked: 75% of heads pruned (still "
        "computed: a masked model is not faster until it is compacted).",
    ]
    (args.out / "HOOK_OVERHEAD.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
