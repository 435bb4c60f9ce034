"""Benchmark of ``plprune compress`` on two pretrained checkpoints (issue 21, item 4): a Llama-style causal
LM with grouped-query attention (``--model llama``, the default; results in ``results/compress_llm``) and a
BERT masked LM (``--model bert``; ``results/compress_bert``). Every criterion at 20%, 35% and 50% of the
parameters removed, without and with recovery, over calibration seeds; on the Llama also LoRA recovery at 20%
beside full recovery; perplexity ratios to dense with paired 95% intervals, scoring cost, latency, a plot and
RESULTS.md (written by ``compress_report.py``).

Stages (each resumable: a finished piece is skipped when its file exists; run again to continue):

1. ``pretrain`` — the model (``transformers.LlamaForCausalLM`` with GQA, or ``transformers.BertForMaskedLM``
   trained with BERT's masking) trained from a seeded initialisation on WikiText-2 ``valid.txt`` (the
   project's training text), word tokenizer built on the same text; written with ``save_pretrained`` +
   ``plprune_tokenizer.json`` to ``OUT/checkpoints/dense`` (git-ignored). One thread, fixed seeds: the same
   weights on a rerun on this machine (``pretrain.json`` records the sha256).
2. ``compress`` — ``plprune.compress.compress`` for every (size, criterion, seed): kinds head + neuron,
   ``keep_params`` = 1 − size, calibration on ``valid.txt`` (``calibration_samples`` blocks drawn by the
   seed), perplexity on the first ``eval_samples`` blocks of ``test.txt`` (masked LM: pseudo-perplexity on
   compress's fixed seeded masks), then ``recover_steps`` steps of full fine-tuning (≤ 5% of the pretraining
   steps, same batch size). The no-recovery numbers are the same run's ``prune`` stage (it does not depend on
   the recovery that follows). Then the LoRA runs (``lora_sizes``): the same runs recovered with LoRA
   (``recovery="lora"``), filed as ``KEY-lora``. One JSON per run in ``OUT/run_reports/`` (the run's
   ``report.json``). PL's settings are pinned in full (``PL_SETTINGS``).
3. ``latency`` — per size, the dense model against the compacted one (magnitude, seed 0; every criterion
   gives the same shapes at a size except FLAP's added biases), interleaved rounds at batch 1 and 32, one
   thread, after the grid (a quiet step).
4. ``report`` — ``results.json``, ``results.csv``, ``ppl_ratio_vs_removed.png`` and ``RESULTS.md``.

Run: ``.venv/bin/python benchmarks/compress_llm.py all [--model bert]`` (``--smoke`` for a seconds-long check
of the script on tiny settings into ``/tmp``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compress_report import EVAL_MASK_SEED, grid_jobs, run_key, write_report

DATA = Path(os.environ.get("PLPRUNE_DATA_DIR", "/work/shared/data/wikitext-2"))
ROOT = Path(__file__).resolve().parent
MODELS = ("llama", "bert")
DEFAULT_OUTS = {"llama": ROOT / "results" / "compress_llm", "bert": ROOT / "results" / "compress_bert"}
CRITERIA = ("pl", "random", "magnitude", "taylor", "flap", "wanda-sp", "grad-score")
# PL pinned: its defaults when the Llama grid ran (10 gate-training steps, kernels on 16 samples) and its cost
# knob (docs/pl-method.md "PL's cost"): gate-training batches of 8 sequences instead of the whole batch of 32
# (37 s -> 8 s of scoring per run on this CPU). Written out in full, so a change of PL's defaults changes
# neither model's numbers.
PL_SETTINGS = {"gate_steps": 10, "gate_batch_size": 8, "feature_samples": 16}


@dataclass
class Setup:
    """Every size and setting of the benchmark (the real one, or ``--smoke``); ``model``: ``"llama"``
    (``LlamaForCausalLM`` with GQA) or ``"bert"`` (``BertForMaskedLM``; ``kv_heads`` unused)."""

    model: str = "llama"
    layers: int = 6
    hidden: int = 128
    heads: int = 8
    kv_heads: int = 2
    ffn: int = 344
    vocab_max: int = 2048
    min_freq: int = 2
    seq_len: int = 64
    batch_size: int = 32
    pretrain_steps: int = 1000
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    dropout: float = 0.0  # BERT's hidden and attention dropout (the Llama has none)
    sizes: tuple[float, ...] = (0.2, 0.35, 0.5)
    # fixed: a Llama config describes 8, 4, 2 or 1 of 8 query heads per layer at hidden 128 (hidden % heads
    # == 0); the neuron ratio is solved for the budget (RESULTS.md "Why the head ratio is fixed")
    head_ratio: float = 0.5
    seeds: tuple[int, ...] = (0, 1, 2)
    criteria: tuple[str, ...] = CRITERIA
    recover_sizes: tuple[float, ...] = (0.2, 0.35, 0.5)
    recover_fraction: float = 0.05
    recover_lr: float = 3e-4
    # LoRA recovery (peft, rank lora_rank on every linear layer, merged back) at these sizes, same steps
    lora_sizes: tuple[float, ...] = (0.2,)
    lora_lr: float = 2e-3
    lora_rank: int = 8
    calibration_samples: int = 128
    eval_samples: int = 512
    latency_rounds: int = 30
    pl_settings: dict[str, Any] = field(default_factory=lambda: dict(PL_SETTINGS))

    @property
    def recover_steps(self) -> int:
        return int(self.pretrain_steps * self.recover_fraction)


# BERT where the Llama recipe does not apply: post-LN takes a lower peak lr and a longer warm-up (1e-3,
# 10%), BERT's weight decay 0.01; recovery at a tenth of the peak lr, as the Llama's (3e-3 -> 3e-4). No
# dropout, as the Llama. Chosen from short trials, not a search (results/compress_bert/READING.md: at lr 3e-4
# the loss stayed on the unigram plateau; lr 1e-3 without dropout left it)
BERT = Setup(
    model="bert",
    kv_heads=8,
    ffn=512,
    lr=1e-3,
    warmup=100,
    weight_decay=0.01,
    recover_lr=1e-4,
    lora_sizes=(),
)

SMOKE = Setup(
    layers=1,
    hidden=32,
    heads=4,
    kv_heads=2,
    ffn=48,
    vocab_max=512,
    seq_len=16,
    batch_size=4,
    pretrain_steps=20,
    warmup=2,
    sizes=(0.2, 0.5),
    seeds=(0, 1),
    recover_sizes=(0.2,),
    recover_fraction=0.1,
    calibration_samples=8,
    eval_samples=8,
    latency_rounds=2,
    pl_settings={"gate_steps": 1, "feature_samples": 2},
)
# BERT's smoke model is wider than the Llama's: the tiny one's embedding leaves no room for 20% removed
SMOKE_BERT = dataclasses.replace(
    SMOKE, model="bert", layers=2, hidden=64, kv_heads=4, ffn=256, lr=1e-3, lora_sizes=()
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- pretrain


def pretrain(setup: Setup, out: Path) -> dict[str, Any]:
    """Train the dense checkpoint once (module doc); returns ``pretrain.json``'s record."""
    import torch
    import transformers

    from plprune.compress.inputs import TextCodec
    from plprune.compress.measure import lm_loss, objective_batches
    from plprune.data.causal_lm import make_lm_blocks
    from plprune.data.word_tokenizer import WordTokenizer

    directory = out / "checkpoints" / "dense"
    record_path = out / "pretrain.json"
    # the Llama keeps the record it was made with
    keys = _PRETRAIN_KEYS if setup.model == "llama" else ("model", "dropout", *_PRETRAIN_KEYS)
    asked = {k: v for k, v in asdict(setup).items() if k in keys}
    if record_path.is_file() and (directory / "model.safetensors").is_file():
        record = json.loads(record_path.read_text())
        if record["setup"] == asked and record["sha256"] == _sha256(directory / "model.safetensors"):
            print(f"pretrain: {directory} exists (sha256 matches pretrain.json); skipped")
            return record
    torch.set_num_threads(1)
    torch.manual_seed(0)
    text = (DATA / "valid.txt").read_text(encoding="utf-8")
    tokenizer = WordTokenizer.build(text, min_freq=setup.min_freq, max_size=setup.vocab_max)
    ids = torch.tensor(tokenizer.encode(text))
    inputs, labels = make_lm_blocks(ids, setup.seq_len, ignore_ids=(tokenizer.unk_id,))
    test_ids = torch.tensor(tokenizer.encode((DATA / "test.txt").read_text(encoding="utf-8")))
    test_inputs, test_labels = make_lm_blocks(test_ids, setup.seq_len, ignore_ids=(tokenizer.unk_id,))
    test_inputs, test_labels = test_inputs[: setup.eval_samples], test_labels[: setup.eval_samples]
    codec = TextCodec(
        tokenizer.encode,
        tokenizer.vocab_size,
        tokenizer.special_ids,
        tokenizer.mask_id,
        tokenizer.unk_id,
        "word tokenizer",
    )
    model = _dense_model(setup, tokenizer.vocab_size) if setup.model == "bert" else None
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=setup.hidden,
        intermediate_size=setup.ffn,
        num_hidden_layers=setup.layers,
        num_attention_heads=setup.heads,
        num_key_value_heads=setup.kv_heads,
        max_position_embeddings=setup.seq_len,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        architectures=["LlamaForCausalLM"],
    )
    config._attn_implementation = "eager"
    if model is None:  # the Llama (built here as when its checkpoint was made: same initialisation draws)
        model = transformers.LlamaForCausalLM(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": setup.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=setup.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < setup.warmup:
            return (step + 1) / setup.warmup
        progress = (step - setup.warmup) / max(1, setup.pretrain_steps - setup.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    generator = torch.Generator().manual_seed(0)
    order, position, losses = torch.randperm(inputs.shape[0], generator=generator), 0, []
    started = time.perf_counter()
    model.train()
    for step in range(setup.pretrain_steps):
        if position + setup.batch_size > order.numel():
            order, position = torch.randperm(inputs.shape[0], generator=generator), 0
        rows = order[position : position + setup.batch_size]
        position += setup.batch_size
        if setup.model == "bert":  # BERT masking (15%, 80/10/10) drawn afresh every step, seeded by it
            (batch,) = objective_batches(inputs[rows], labels[rows], "masked", codec, len(rows), 1 + step)
            loss = lm_loss(model, batch)
        else:
            logits = model(input_ids=inputs[rows]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), labels[rows].flatten(), ignore_index=-100
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss))
        if step % max(1, setup.pretrain_steps // 10) == 0 or step == setup.pretrain_steps - 1:
            print(
                f"pretrain step {step}/{setup.pretrain_steps} loss {loss:.3f} "
                f"({time.perf_counter() - started:.0f}s)"
            )
    seconds = time.perf_counter() - started
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for a, b in zip(
            test_inputs.split(setup.batch_size), test_labels.split(setup.batch_size), strict=True
        ):
            if setup.model == "bert":  # measured below on the saved model, as compress does
                break
            logits = model(input_ids=a).logits
            total += float(
                torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.flatten(), reduction="sum")
            )
            count += int((b != -100).sum())
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save(directory / "plprune_tokenizer.json")
    if setup.model == "bert":  # as compress measures it: the saved model, its seeded fixed masks
        total, count = _compress_perplexity(directory, setup), 1
    unk_test = float((test_ids == tokenizer.unk_id).float().mean())
    unk_train = float((ids == tokenizer.unk_id).float().mean())
    record = {
        "setup": asked,
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_parameters": model.get_input_embeddings().weight.numel(),
        "vocab_size": tokenizer.vocab_size,
        "train_tokens": int(ids.numel()),
        "train_blocks": int(inputs.shape[0]),
        "epochs": setup.pretrain_steps * setup.batch_size / inputs.shape[0],
        "unk_fraction_train": unk_train,
        "unk_fraction_test": unk_test,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "first_loss": losses[0],
        "last_loss_mean_20": statistics.fmean(losses[-20:]),
        "test_perplexity": total if setup.model == "bert" else math.exp(total / count),
        "sha256": _sha256(directory / "model.safetensors"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"pretrain: {seconds:.0f}s, test perplexity {record['test_perplexity']:.2f}")
    return record


def _dense_model(setup: Setup, vocab_size: int) -> Any:
    """The BERT masked LM to pretrain (BERT's defaults otherwise: post-LN, GELU, learned positions, tied
    decoder); dropout ``setup.dropout``."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=setup.hidden,
        num_hidden_layers=setup.layers,
        num_attention_heads=setup.heads,
        intermediate_size=setup.ffn,
        max_position_embeddings=setup.seq_len,
        hidden_dropout_prob=setup.dropout,
        attention_probs_dropout_prob=setup.dropout,
        architectures=["BertForMaskedLM"],
    )
    config._attn_implementation = "eager"
    return transformers.BertForMaskedLM(config)


def _compress_perplexity(directory: Path, setup: Setup) -> float:
    """Test perplexity exactly as ``compress``'s dense stage measures it (same blocks, same fixed masks)."""
    from plprune.compress.inputs import load_codec, load_model, read_text, text_blocks
    from plprune.compress.measure import objective_batches, perplexity

    model, objective = load_model(directory)
    codec = load_codec(directory, None, model, objective)
    inputs, labels = text_blocks(read_text(DATA / "test.txt", "evaluation"), codec, setup.seq_len, "eval")
    inputs, labels = inputs[: setup.eval_samples], labels[: setup.eval_samples]
    return perplexity(
        model, objective_batches(inputs, labels, objective, codec, setup.batch_size, seed=EVAL_MASK_SEED)
    )


_PRETRAIN_KEYS = ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab_max", "min_freq", "seq_len")
_PRETRAIN_KEYS += ("batch_size", "pretrain_steps", "lr", "warmup", "weight_decay")


# ---------------------------------------------------------------------------------------------- compress


def lora_trainable_parameters(model_dir: Path, rank: int) -> dict[str, int]:
    """Trainable and total parameters of the LoRA model recovery trains on the model in ``model_dir`` (same
    shapes as the one recovered: the adapters compress's recovery adds, ``plprune.compress.recover``)."""
    from plprune.compress.inputs import load_model
    from plprune.compress.recover import _lora  # the adapters compress builds (benchmark-only use)

    model, _ = load_model(model_dir)
    trainable, total = _lora(model, rank).get_nb_trainable_parameters()
    return {"lora_trainable": int(trainable), "lora_model_total": int(total)}


def _setup_from(setup_dict: dict[str, Any]) -> Setup:
    tuples = ("sizes", "seeds", "criteria", "recover_sizes", "lora_sizes")
    return Setup(**{k: tuple(v) if k in tuples else v for k, v in setup_dict.items()})


def _run_one(args: tuple[dict[str, Any], str, float, str, int, str]) -> tuple[str, str]:
    """One compress run in a worker process (one thread); writes ``run_reports/KEY.json``."""
    setup_dict, out_name, size, criterion, seed, recovery = args
    import torch

    torch.set_num_threads(1)
    import transformers

    from plprune.compress import CompressSettings, compress

    transformers.utils.logging.disable_progress_bar()

    setup = _setup_from(setup_dict)
    out = Path(out_name)
    key = run_key(size, criterion, seed, recovery)
    target = out / "run_reports" / f"{key}.json"
    if target.is_file():
        return key, "skipped"
    recover = setup.recover_steps if any(math.isclose(size, s) for s in setup.recover_sizes) else 0
    if recovery == "lora":
        recover = setup.recover_steps
    settings = CompressSettings(
        model_dir=out / "checkpoints" / "dense",
        data=DATA / "valid.txt",
        eval_data=DATA / "test.txt",
        out=out / "checkpoints" / "compressed" / key,
        kinds=("head", "neuron"),
        keep_params=round(1 - size, 6),
        kind_ratios={"head": setup.head_ratio},
        method=criterion,
        method_settings=setup.pl_settings if criterion == "pl" else {},
        seq_len=setup.seq_len,
        batch_size=setup.batch_size,
        calibration_samples=setup.calibration_samples,
        eval_samples=setup.eval_samples,
        recover_steps=recover,
        recovery=recovery,
        recover_lr=setup.recover_lr if recovery == "full" else setup.lora_lr,
        lora_rank=setup.lora_rank,
        latency_repeats=1,
        seed=seed,
        force=True,
        resume=True,
        progress=False,
    )
    started = time.perf_counter()
    try:
        report = compress(settings)
    except Exception as error:  # recorded and reported, never hidden
        (out / "run_reports").mkdir(parents=True, exist_ok=True)
        failed = out / "run_reports" / f"{key}.failed.txt"
        failed.write_text(f"{type(error).__name__}: {error}\n")
        return key, f"FAILED {type(error).__name__}: {error}"
    report["benchmark"] = {
        "size": size,
        "criterion": criterion,
        "seed": seed,
        "wall_seconds": time.perf_counter() - started,
        "recover_steps": recover,
        "recovery": recovery,
    }
    if recovery == "lora":
        report["benchmark"].update(lora_trainable_parameters(settings.out, setup.lora_rank))
    (out / "run_reports").mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.rename(target)
    (out / "run_reports" / f"{key}.failed.txt").unlink(missing_ok=True)
    if not (criterion == "magnitude" and seed == setup.seeds[0] and recovery == "full"):  # latency times it
        (settings.out / "model.safetensors").unlink(missing_ok=True)
    return key, f"done in {time.perf_counter() - started:.0f}s"


def run_grid(setup: Setup, out: Path, workers: int) -> None:
    """The grid (full recovery), then the LoRA runs, skipping every run whose report exists."""
    jobs = [
        (asdict(setup), str(out), size, c, seed, recovery)
        for recovery in ("full", "lora")
        for size, c, seed in grid_jobs(setup, recovery)
    ]
    todo = [j for j in jobs if not (out / "run_reports" / f"{run_key(*j[2:])}.json").is_file()]
    print(f"compress: {len(jobs)} runs, {len(jobs) - len(todo)} already done, {workers} worker(s)")
    started = time.perf_counter()
    if workers == 1:
        results = map(_run_one, todo)
        for key, status in results:
            print(f"  {key}: {status} (+{time.perf_counter() - started:.0f}s)", flush=True)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for key, status in pool.imap_unordered(_run_one, todo):
            print(f"  {key}: {status} (+{time.perf_counter() - started:.0f}s)", flush=True)


# ----------------------------------------------------------------------------------------------- latency


def measure_latency(setup: Setup, out: Path) -> None:
    """Dense vs compacted (magnitude, first seed) per size, interleaved rounds, one thread."""
    import torch

    from plprune.compress.inputs import load_model
    from plprune.compress.measure import latency

    torch.set_num_threads(1)
    target = out / "latency.json"
    record = json.loads(target.read_text()) if target.is_file() else {}
    dense, _ = load_model(out / "checkpoints" / "dense")
    vocab = dense.config.vocab_size
    for size in setup.sizes:
        name = f"{round(size * 100)}%"
        compacted_dir = out / "checkpoints" / "compressed" / run_key(size, "magnitude", setup.seeds[0])
        if name in record or not (compacted_dir / "model.safetensors").is_file():
            continue
        compacted, _ = load_model(compacted_dir)
        started = time.perf_counter()
        result = latency(dense, compacted, setup.seq_len, (1, 32), setup.latency_rounds, vocab)
        record[name] = {
            "model": compacted_dir.name,
            "dense_parameters": sum(p.numel() for p in dense.parameters()),
            "compacted_parameters": sum(p.numel() for p in compacted.parameters()),
            "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "seconds": time.perf_counter() - started,
            **result,
        }
        print(f"latency {name}: " + ", ".join(f"{b}: {v['speedup']:.2f}x" for b, v in result.items()))
        target.write_text(json.dumps(record, indent=2) + "\n")


# -------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("pretrain", "compress", "latency", "report", "all"))
    parser.add_argument("--model", choices=MODELS, default="llama", help="the pretrained checkpoint (llama)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: results/compress_llm, compress_bert)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny settings into /tmp (a check of the script)"
    )
    parser.add_argument("--criteria", default=None, help="comma-separated subset of " + ",".join(CRITERIA))
    parser.add_argument("--sizes", default=None, help="comma-separated fractions removed, e.g. 0.2,0.35")
    parser.add_argument("--recover-sizes", default=None, help="sizes with recovery (default: all sizes)")
    parser.add_argument("--seeds", default=None, help="comma-separated calibration seeds")
    parser.add_argument("--lora-sizes", default=None, help="sizes with LoRA-recovery runs ('' for none)")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="override (timing checks only)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    smoke = {"llama": SMOKE, "bert": SMOKE_BERT}[args.model]
    setup = dataclasses.replace(smoke if args.smoke else {"llama": Setup(), "bert": BERT}[args.model])
    out = args.out or (Path(f"/tmp/compress_{args.model}_smoke") if args.smoke else DEFAULT_OUTS[args.model])
    if args.criteria:
        unknown = sorted(set(args.criteria.split(",")) - set(CRITERIA))
        if unknown:
            parser.error(f"unknown criteria {unknown}; valid: {', '.join(CRITERIA)}")
        setup.criteria = tuple(args.criteria.split(","))
    if args.sizes:
        setup.sizes = tuple(float(s) for s in args.sizes.split(","))
    if args.recover_sizes is not None:
        setup.recover_sizes = tuple(float(s) for s in args.recover_sizes.split(",") if s)
    if args.seeds:
        setup.seeds = tuple(int(s) for s in args.seeds.split(","))
    if args.lora_sizes is not None:
        setup.lora_sizes = tuple(float(s) for s in args.lora_sizes.split(",") if s)
    if args.pretrain_steps is not None:
        setup.pretrain_steps = args.pretrain_steps
    command = "benchmarks/compress_llm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.stage in ("pretrain", "all"):
        pretrain(setup, out)
    if args.stage in ("compress", "all"):
        run_grid(setup, out, args.workers)
    if args.stage in ("latency", "all"):
        measure_latency(setup, out)
    if args.stage in ("report", "all"):
        write_report(setup, out, command, DATA)
    return 0


if __name__ == "__main__":
    sys.exit(main())
