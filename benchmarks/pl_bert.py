"""Dense vs PL (vs random) BERT on WikiText-2: the paper's Table 1 at CPU scale, measured.

Trains on WikiText-2 ``valid.txt`` and evaluates on ``test.txt`` (the training split is not available
offline). Every (variant, seed) is one run directory under ``OUT/runs``; finished runs (with a
``summary.json``) are skipped, so an interrupted benchmark resumes. Runs execute in ``--workers``
processes with one torch thread each. Writes ``OUT/results.json``, ``OUT/results.csv``, ``OUT/REPORT.md``
and PNG plots.

    .venv/bin/python benchmarks/pl_bert.py --data-dir ../shared/data/wikitext-2 \
        --out benchmarks/results/pl_bert --seeds 0 1 2 --variants dense pl random
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

BASE = {
    "task": "bert-wikitext2",
    "data": {"seq_len": 128, "min_freq": 2},
    "model": {"layers": 4, "hidden": 128, "heads": 8, "ffn": 512},
    "train": {
        "steps": 2500,
        "batch_size": 16,
        "lr": 1e-3,
        "eval_every": 250,
        "eval_batches": 40,
        "checkpoint_every": 500,
    },
    "prune": {"ratio": 0.75, "schedule": "one-shot", "prune_at": "5e"},
}

# name -> (description, overrides of BASE["prune"] (with "pl" sub-table))
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "dense": ("no pruning", {"method": "dense"}),
    "pl": ("PL, defaults (α=1, loss Hessian, mean-1 gates, 10 gate batches)", {"method": "pl"}),
    "random": ("75% of heads removed at random (same schedule)", {"method": "random"}),
    "pl-alpha0": (
        "PL without the trace term (α=0): loss-only gate training",
        {"method": "pl", "pl": {"alpha": 0.0}},
    ),
    "pl-alpha10": ("PL with α=10", {"method": "pl", "pl": {"alpha": 10.0}}),
    "pl-logits": (
        "PL, Hessian of summed logits (Alg. 1's f)",
        {"method": "pl", "pl": {"hessian_scalar": "logits"}},
    ),
    "pl-rawsoftmax": (
        "PL with a raw softmax (gates sum to 1)",
        {"method": "pl", "pl": {"scale_to_mean_one": False}},
    ),
    "pl-early": ("PL pruning at epoch 1", {"method": "pl", "prune_at": "1e"}),
    "pl-late": ("PL pruning at epoch 12", {"method": "pl", "prune_at": "12e"}),
}


def run_config(
    variant: str, seed: int, data_dir: str, steps: int | None, train_fraction: float = 1.0
) -> dict[str, Any]:
    config = json.loads(json.dumps(BASE))
    config["data"]["data_dir"] = data_dir
    config["data"]["train_fraction"] = train_fraction
    config["train"]["seed"] = seed
    if steps:
        config["train"]["steps"] = steps
        config["train"]["eval_every"] = max(1, steps // 10)
        config["prune"]["prune_at"] = str(steps // 5)  # smoke runs: prune early enough to fit
    overrides = json.loads(json.dumps(VARIANTS[variant][1]))
    pl = overrides.pop("pl", {})
    if steps:
        overrides.pop("prune_at", None)
    config["prune"].update(overrides)
    config["prune"]["pl"] = pl
    return config


def _run_one(job: tuple[str, int, dict[str, Any], str]) -> str:
    variant, seed, raw, run_dir = job
    import torch

    torch.set_num_threads(1)
    from plprune.run_config import RunConfig
    from plprune.runner import train_run

    config = RunConfig.from_dict(raw)
    resume = (Path(run_dir) / "checkpoint.pt").exists()
    started = time.time()
    train_run(config, Path(run_dir), resume=resume, progress=False)
    return f"{variant} seed {seed}: {time.time() - started:.0f}s"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=os.environ.get("PLPRUNE_DATA_DIR", "../shared/data/wikitext-2"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pl_bert"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["dense", "pl", "random"], choices=list(VARIANTS))
    parser.add_argument(
        "--ablations",
        nargs="*",
        default=[],
        choices=list(VARIANTS),
        help="variants run on the first seed only",
    )
    parser.add_argument("--steps", type=int, help="override the number of steps (smoke tests)")
    parser.add_argument(
        "--train-fraction", type=float, default=1.0, help="train on this first fraction of valid.txt's blocks"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()

    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    plan = [(seed, variant) for seed in args.seeds for variant in args.variants]
    plan += [(args.seeds[0], variant) for variant in args.ablations if variant not in args.variants]
    for seed, variant in plan:
        run_dir = runs_dir / f"{variant}-s{seed}"
        if (run_dir / "summary.json").exists():
            continue
        if run_dir.exists() and not (run_dir / "checkpoint.pt").exists():
            import shutil

            shutil.rmtree(run_dir)  # started but never checkpointed: start again
        jobs.append(
            (
                variant,
                seed,
                run_config(
                    variant, seed, str(Path(args.data_dir).resolve()), args.steps, args.train_fraction
                ),
                str(run_dir),
            )
        )
    if jobs and not args.report_only:
        print(f"{len(jobs)} runs to do with {args.workers} workers", flush=True)
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for message in pool.imap_unordered(_run_one, jobs):
                print(message, flush=True)
    from pl_bert_report import write_report

    meta = {
        "command": " ".join(sys.argv),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "threads_per_run": 1,
            "workers": args.workers,
        },
        "base_config": BASE,
        "variants": {k: v[0] for k, v in VARIANTS.items()},
        "data": "WikiText-2: trained on valid.txt, evaluated on test.txt (no training split offline)",
    }
    write_report(args.out, [*args.variants, *args.ablations], args.seeds, meta)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
