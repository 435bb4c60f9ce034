"""Training throughput (tokens/s) and step time of the default CPU BERT config on WikiText-2.

Also measures the masked-only logits path against full logits (forward+backward of one step).
Writes ``benchmarks/results/throughput.json`` (or ``--out``). WikiText-2: trains on valid.txt.

    .venv/bin/python benchmarks/throughput.py --data-dir ../shared/data/wikitext-2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from plprune.bench.harness import machine, time_rounds
from plprune.data import build_or_load_tokenizer, prepare_mlm_data, read_wikitext_dir
from plprune.models import BertForMaskedLM
from plprune.run_config import RunConfig
from plprune.tasks.mlm import MlmTask
from plprune.tasks.registry import bert_config_for
from plprune.train.loop import build_optimizer


def time_steps(model, task, optimizer, logits_at: str, steps: int, warmup: int = 3) -> list[float]:
    """Seconds per training step after ``warmup`` untimed ones (the batch fetched outside the timer)."""

    def train_step(input_ids, labels) -> None:
        loss = model(input_ids, labels, logits_at=logits_at).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times = time_rounds(
        {"step": train_step}, steps, warmup, inputs=lambda r: task.train_batch(r + warmup), inference=False
    )
    return times["step"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=os.environ.get("PLPRUNE_DATA_DIR", "../shared/data/wikitext-2"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput.json"))
    args = parser.parse_args()

    config = RunConfig()
    corpus = read_wikitext_dir(args.data_dir)
    tmp = args.out.parent
    tmp.mkdir(parents=True, exist_ok=True)
    tokenizer = build_or_load_tokenizer(tmp / "throughput-tokenizer.json", corpus.train)
    data = prepare_mlm_data(corpus, tokenizer, config.data.seq_len)
    task = MlmTask(data, config.train.batch_size, seed=0)
    results = {}
    for logits_at in ("masked", "all"):
        torch.manual_seed(0)
        model = BertForMaskedLM(bert_config_for(config, tokenizer.vocab_size)).train()
        times = time_steps(model, task, build_optimizer(model, config.train), logits_at, args.steps)
        tokens = config.train.batch_size * config.data.seq_len
        results[logits_at] = {
            "step_seconds_median": statistics.median(times),
            "step_seconds_stdev": statistics.stdev(times),
            "tokens_per_second": tokens / statistics.median(times),
            "steps_timed": len(times),
        }
        print(
            f"logits at {logits_at:6s}: {statistics.median(times) * 1000:.0f} ms/step, "
            f"{tokens / statistics.median(times):,.0f} tokens/s"
        )
    record = {
        "config": {
            "model": config.model.__dict__,
            "seq_len": config.data.seq_len,
            "batch_size": config.train.batch_size,
            "vocab_size": tokenizer.vocab_size,
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "results": results,
        "masked_only_speedup": results["all"]["step_seconds_median"]
        / results["masked"]["step_seconds_median"],
        "machine": {**machine(), "torch": torch.__version__},
        "data": "WikiText-2 valid.txt (used as the training split)",
    }
    (tmp / "throughput-tokenizer.json").unlink(missing_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"masked-only speed-up: {record['masked_only_speedup']:.2f}x; wrote {args.out}")


if __name__ == "__main__":
    main()
