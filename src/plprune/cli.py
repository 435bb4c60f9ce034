"""``plprune`` command line: ``train``, ``demo``, ``compare``, ``report``, ``bench-latency``, ``export`` and
``compress``; each subcommand is a thin ``cmd_*`` function over the library and its argparse declaration.

Every user error is printed as one ``plprune: error: ...`` line with exit status 2 (no traceback).

Why over 600 lines: it is the flag declarations of seven subcommands (argparse is declarative, one line a
flag); the logic behind every flag lives in the library.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from plprune.errors import PlpruneError
from plprune.run_config import RunConfig, deep_merge, read_config_file


def _kinds(text: str) -> tuple[str, ...]:
    """``"head,expert"`` → ``("head", "expert")``."""
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _kind_ratios(text: str) -> dict[str, float]:
    """``"head=0.5,expert=0.25"`` → ``{"head": 0.5, "expert": 0.25}``."""
    ratios = {}
    for item in text.split(","):
        kind, sep, value = item.partition("=")
        try:
            ratios[kind.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(
                f"expected KIND=RATIO[,KIND=RATIO...], e.g. head=0.5,expert=0.5; got {text!r}"
            )
    return ratios


class _Parser(argparse.ArgumentParser):
    """argparse with plprune's error format: one ``plprune: error: ...`` line (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"plprune: error: {message} (see '{self.prog} --help')\n")


# flag -> (config section, field, type, help)
_RUN_FLAGS: list[tuple[str, str, str, type, str]] = [
    ("--data-dir", "data", "data_dir", str, "directory with the text files (or env PLPRUNE_DATA_DIR)"),
    ("--train-file", "data", "train_file", str, "training file name in --data-dir (default valid.txt)"),
    ("--test-file", "data", "test_file", str, "held-out file name in --data-dir (default test.txt)"),
    ("--tokenizer", "data", "tokenizer", str, "word (default; vocabulary of the training file) or bpe"),
    ("--min-freq", "data", "min_freq", int, "word tokenizer: minimum count to get an id (default 2)"),
    ("--bpe-vocab-size", "data", "bpe_vocab_size", int, "bpe tokenizer: vocabulary size (default 8000)"),
    ("--seq-len", "data", "seq_len", int, "tokens per block (default 128)"),
    ("--layers", "model", "layers", int, "encoder layers (default 4)"),
    ("--hidden", "model", "hidden", int, "hidden size (default 128)"),
    ("--heads", "model", "heads", int, "attention heads per layer; must divide --hidden (default 8)"),
    ("--ffn", "model", "ffn", int, "feed-forward size (default 512)"),
    ("--dropout", "model", "dropout", float, "dropout probability in [0, 1) (default 0.1)"),
    ("--device", "train", "device", str, "where to train: cpu (default), cuda, cuda:N or mps"),
    ("--experts", "model", "experts", int, "switch tasks: experts per layer, >= 2 (default 4)"),
    (
        "--capacity-factor",
        "model",
        "capacity_factor",
        float,
        "switch tasks: expert capacity factor (default 1.5)",
    ),
    (
        "--aux-loss-weight",
        "model",
        "aux_loss_weight",
        float,
        "switch tasks: load-balancing loss weight (0.01)",
    ),
    ("--expert-ffn", "model", "expert_ffn", int, "switch tasks: expert FFN size (default: --ffn)"),
    ("--width-multiplier", "model", "width_multiplier", float, "CNN tasks: channels × this (default 0.25)"),
    ("--depth", "model", "depth", int, "resnet tasks: depth 6n+2, e.g. 20 (default) or 56"),
    ("--kv-heads", "model", "kv_heads", int, "hf-llama tasks: key/value heads; must divide --heads (2)"),
    ("--num-samples", "data", "num_samples", int, "mnist1d tasks: number of generated samples (4000)"),
    (
        "--train-fraction",
        "data",
        "train_fraction",
        float,
        "train on this first fraction of the training blocks (MLM) or samples (classification)",
    ),
    ("--steps", "train", "steps", int, "optimizer steps (default 2000)"),
    ("--batch-size", "train", "batch_size", int, "blocks per batch (default 16)"),
    ("--lr", "train", "lr", float, "peak learning rate (default 1e-3; CNN tasks: see docs)"),
    ("--warmup-fraction", "train", "warmup_fraction", float, "fraction of steps of linear warm-up"),
    ("--weight-decay", "train", "weight_decay", float, "AdamW weight decay (default 0, paper Table 4)"),
    ("--grad-clip", "train", "grad_clip", float, "max gradient norm; 0 disables (default 1.0)"),
    ("--optimizer", "train", "optimizer", str, "adamw (default) or sgd"),
    ("--eval-every", "train", "eval_every", int, "evaluate every N steps (default 200)"),
    ("--checkpoint-every", "train", "checkpoint_every", int, "checkpoint every N steps; 0: only at the end"),
    ("--eval-batches", "train", "eval_batches", int, "batches per periodic evaluation (default 8)"),
    ("--seed", "train", "seed", int, "seed of initialisation, data order and masking (default 0)"),
    ("--prune-ratio", "prune", "ratio", float, "final fraction of groups removed, in [0, 1) (default 0.75)"),
    ("--schedule", "prune", "schedule", str, "one-shot (default), at-init, linear or iterative"),
    ("--prune-at", "prune", "prune_at", str, "when pruning starts: steps (800) or epochs (5e); default 5e"),
    ("--prune-end", "prune", "prune_end", str, "linear schedule: last pruning time"),
    ("--prune-every", "prune", "prune_every", str, "linear/iterative: time between pruning events"),
    ("--rounds", "prune", "rounds", int, "iterative schedule: number of pruning rounds (default 3)"),
    ("--kinds", "prune", "kinds", _kinds, "prunable groups, e.g. head or head,expert (default: the task's)"),
    (
        "--allocation",
        "prune",
        "allocation",
        str,
        "global (rank groups of a kind together), per_layer (same fraction per layer) or "
        "per_layer_for_filters (per layer for conv filters, global otherwise; PL's default); "
        "default: the method's",
    ),
    ("--kind-ratios", "prune", "kind_ratios", _kind_ratios, "final ratio per kind, e.g. head=0.5,expert=0.5"),
]


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        help="bert-wikitext2 (default), bert-pydoc, hf-bert-wikitext2, hf-bert-pydoc (a Hugging Face "
        "BertForMaskedLM of the same sizes), switch-wikitext2, switch-pydoc (MoE experts), "
        "hf-llama-wikitext2, hf-llama-pydoc (a Hugging Face LlamaForCausalLM with grouped-query attention, "
        "next-token LM), vgg-mnist1d, resnet-mnist1d, vgg-digits (conv filters; offline data)",
    )
    parser.add_argument("--config", type=Path, help="TOML file with task and [data]/[model]/[train] tables")
    from plprune.pruners.registry import METHODS

    for flag, _section, field, kind, text in _RUN_FLAGS:
        parser.add_argument(flag, dest=field, type=kind, default=None, help=text)
    # argparse %-formats help: a literal % (e.g. "5% of training") must be doubled
    methods = "; ".join(f"{name}: {spec.description}" for name, spec in METHODS.items()).replace("%", "%%")
    parser.add_argument("--method", default=None, help=f"pruning method (default dense). {methods}")
    _add_setting_flags(parser)
    parser.add_argument(
        "--pre-ln",
        dest="pre_layer_norm",
        action="store_true",
        default=None,
        help="pre-LayerNorm layers (default: post-LN as in BERT)",
    )
    parser.add_argument(
        "--compact",
        action="store_true",
        default=None,
        help="after the last pruning event, remove the pruned groups physically; train the smaller model",
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="every determinism knob torch offers (deterministic algorithms, cuDNN, cuBLAS workspace) and "
        "seeded Python/NumPy/torch RNGs; see docs/training.md (Reliability) for its cost",
    )
    parser.add_argument(
        "--diagnostics",
        dest="diagnostics",
        action="store_true",
        default=None,
        help="measure the NTK condition number and Hessian trace before and after each pruning event "
        "(opt-in: ~25 training steps per event on BERT; their seconds: diagnostics_seconds in the summary)",
    )
    parser.add_argument(
        "--no-diagnostics",
        dest="diagnostics",
        action="store_false",
        default=None,
        help="no curvature diagnostics around pruning events (the default)",
    )


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Defaults < the task's defaults (e.g. SGD for CNNs) < --config file < explicit flags."""
    from plprune.tasks.registry import TASK_DEFAULTS

    raw = read_config_file(args.config) if args.config else {}
    task = args.task or raw.get("task") or RunConfig().task
    defaults = TASK_DEFAULTS.get(task, {}) if isinstance(task, str) else {}  # a bad task: from_dict says so
    config = RunConfig.from_dict(deep_merge({"task": task, **defaults}, raw))
    overrides: dict[str, Any] = {}
    for _flag, section, field, _kind, _text in _RUN_FLAGS:
        value = getattr(args, field)
        if value is not None:
            overrides.setdefault(section, {})[field] = value
    if args.method is not None:
        overrides.setdefault("prune", {})["method"] = args.method
    method = overrides.get("prune", {}).get("method", config.prune.method)
    values = _setting_values(args, method)
    if values:
        overrides.setdefault(method, {}).update(values)
    if args.pre_layer_norm is not None:
        overrides.setdefault("model", {})["pre_layer_norm"] = True
    if args.compact is not None:
        overrides.setdefault("prune", {})["compact"] = True
    if args.diagnostics is not None:
        overrides.setdefault("prune", {})["diagnostics"] = args.diagnostics
    if getattr(args, "deterministic", None) is not None:
        overrides.setdefault("train", {})["deterministic"] = True
    return config.with_overrides(overrides)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per method settings field (``--gate-steps``, ``--score-batches``, ...), from the registry."""
    from plprune.pruners.registry import setting_flags

    for flag in setting_flags():
        parser.add_argument(
            flag.flag,
            dest=f"setting_{flag.field}",
            metavar=flag.field.upper(),
            type=flag.type,
            help=flag.help,
        )


def _setting_values(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """``{field: value}`` of the settings flags given, each checked to belong to ``method``."""
    from plprune.pruners.registry import setting_flags

    values = {}
    for setting in setting_flags():
        value = getattr(args, f"setting_{setting.field}")
        if value is not None:
            _setting_method(setting, method)  # a flag of another method is an error, not ignored
            values[setting.field] = value
    return values


def _setting_method(setting: Any, method: str) -> str:
    """The method a settings flag sets: the run's own; a flag of another method is an error, not ignored."""
    from plprune.pruners.registry import get_method

    get_method(method)  # an unknown --method: say that first
    if method not in setting.methods:
        raise PlpruneError(
            f"{setting.flag} is a setting of {', '.join(setting.methods)}, not of method {method!r} "
            "(choose the method with --method or drop the flag)"
        )
    return method


# (metric key, column title): the columns of the metrics table that a run's records have
_HISTORY_COLUMNS = [
    ("train_loss", "train loss"),
    ("train_ppl", "train PPL"),
    ("test_ppl", "test PPL"),
    ("delta_ppl", "ΔPPL"),
    ("train_accuracy", "train acc %"),
    ("test_loss", "test loss"),
    ("test_accuracy", "test acc %"),
    ("wall_time", "time (s)"),
]


def _history_table(history: list[dict[str, Any]]) -> str:
    from plprune.table import format_table

    present = [(key, title) for key, title in _HISTORY_COLUMNS if history and key in history[0]]
    if any(key == "test_ppl" for key, _ in present):  # MLM: perplexities say it; loss is redundant
        present = [(k, t) for k, t in present if k != "test_loss"]
    rows = [
        {"step": r["step"], "epoch": round(r["epoch"], 2), **{title: r[key] for key, title in present}}
        for r in history
    ]
    return format_table(rows, ["step", "epoch", *(title for _, title in present)])


def cmd_train(args: argparse.Namespace) -> int:
    from plprune.runner import train_run

    if args.out is None:
        raise PlpruneError("train needs --out RUN_DIR (a new directory, or an existing one with --resume)")
    config = resolve_config(args)
    summary = train_run(config, args.out, resume=args.resume, progress=not args.no_progress)
    from plprune.distributed import is_main

    if not is_main():  # torchrun: rank 0 reports
        return 0
    print(_history_table(summary["history"]))
    final = summary["final"]
    headline = (
        f"final test PPL {final['test_ppl']:.2f}"
        if "test_ppl" in final
        else f"final test accuracy {final['test_accuracy']:.2f}%"
    )
    print(f"\nrun written to {args.out}  ({headline}; last row: whole test split)")
    if config.prune.diagnostics and "diagnostics_seconds" in final:  # opt-in (--diagnostics): their cost
        print(
            f"curvature diagnostics at pruning events: {final['diagnostics_seconds']:.1f} s, pruning itself: "
            f"{final.get('prune_seconds', 0.0):.1f} s (summary.json: final.diagnostics_seconds)"
        )
    return 0


DEMO_CONFIG = {
    "task": "bert-pydoc",
    "data": {"seq_len": 64, "min_freq": 2},
    "model": {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256},
    "train": {"steps": 400, "batch_size": 16, "lr": 1e-3, "eval_every": 100, "checkpoint_every": 0},
    "prune": {"ratio": 0.5, "prune_at": "1e"},  # PL at its defaults (cheap since issue 22)
}


def _demo_row(method: str, summary: dict[str, Any]) -> dict[str, Any]:
    final = summary["final"]
    kept = "8/8"
    events = summary.get("pruning_events") or []
    if events:
        mask = events[-1]["mask"]
        kept = f"{sum(mask)}/{len(mask)}"
    return {
        "method": method,
        "heads kept": kept,
        "train PPL": final["train_ppl"],
        "test PPL": final["test_ppl"],
        "ΔPPL": final["delta_ppl"],
        "train time (s)": final["wall_time"] - final.get("diagnostics_seconds", 0.0),
        "pruning (s)": final.get("prune_seconds", 0.0),
    }


def cmd_demo(args: argparse.Namespace) -> int:
    from plprune.runner import train_run
    from plprune.table import format_table

    out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # it would gain dense/ and pl/ runs
        raise PlpruneError(f"{out} already exists and is not empty; give demo a new --out")
    base = RunConfig.from_dict(DEMO_CONFIG)
    if args.steps is not None:
        base = base.with_overrides({"train": {"steps": args.steps, "eval_every": max(1, args.steps // 4)}})
    print("plprune demo: BERT masked-LM on CPython's bundled pydoc help text (no download)")
    print(
        f"  {base.model.layers} layers x {base.model.heads} heads, hidden {base.model.hidden}, "
        f"{base.train.steps} steps; dense vs PL with {int(base.prune.ratio * 100)}% of heads pruned at "
        f"epoch {base.prune.prune_at.rstrip('e')}; writing {out}/\n"
    )
    rows = []
    for method in ("dense", "pl"):
        config = base.with_overrides({"prune": {"method": method}})
        summary = train_run(config, out / method, progress=not args.no_progress)
        rows.append(_demo_row(method, summary))
        print(f"--- {method} ---")
        print(_history_table(summary["history"]))
        print()
    print(format_table(rows, list(rows[0])))
    print(
        "\nTrain/test PPL: masked-token perplexity on training / held-out pydoc topics (last row: whole "
        f"held-out split). Per-event details (kernel features, gates, mask): {out}/pl/pruning.jsonl"
    )
    return 0


def _names(text: str) -> list[str]:
    """``"a,b"`` or ``"a b"`` pieces → ``["a", "b"]``."""
    return [t for t in text.replace(",", " ").split() if t]


def cmd_compare(args: argparse.Namespace) -> int:
    import os

    from plprune.bench.compare import run_jobs
    from plprune.bench.report import write_report
    from plprune.bench.suites import plan_suite

    if args.out is None:
        raise PlpruneError("compare needs --out DIR (new, or the same DIR to resume an interrupted suite)")
    if args.workers < 1:
        raise PlpruneError(f"--workers must be >= 1, got {args.workers}")
    if (args.out / "config.json").is_file() and not (args.out / "suite.json").is_file():
        raise PlpruneError(f"{args.out} is a plprune train run directory; give compare an --out of its own")
    if args.device is not None:  # a missing GPU: one error now, not one failed run per job
        from plprune.devices import resolve_device

        resolve_device(args.device)
    tasks = [t for chunk in args.tasks or [] for t in _names(chunk)]
    methods = [m for chunk in args.methods or [] for m in _names(chunk)]
    variants = [v for chunk in args.variants or [] for v in _names(chunk)]
    data_dir = args.data_dir or os.environ.get("PLPRUNE_DATA_DIR")
    if data_dir:
        data_dir = str(Path(data_dir).resolve())
    jobs = plan_suite(
        args.suite,
        args.out,
        tasks=tasks or None,
        methods=methods or None,
        seeds=args.seeds,
        data_dir=data_dir,
        ablations=not args.no_ablations,
        variants=variants or None,
        device=args.device,
    )
    command = "plprune " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["compare"] else "plprune compare"
    records = run_jobs(jobs, args.out, suite=args.suite, workers=args.workers, command=command)
    failed = [r for r in records if r["error"]]
    path = write_report(args.out)
    print(f"\nreport written to {path}")
    if failed:
        print(f"{len(failed)} run(s) failed; see failed.txt in their run directories", file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from plprune.run_export import export_run

    out, manifest, note = export_run(args.run_dir, format=args.format, out=args.out, force=args.force)
    print(f"{args.run_dir}: {note}")
    for kind, counts in ((manifest["pruning"] or {}).get("counts") or {}).items():
        print(f"  {kind}s: {counts['before']} -> {counts['after']} (per layer: {counts['per_layer']})")
    parameters = manifest["parameters"]
    print(f"  parameters: {parameters['dense']:,} -> {parameters['compacted']:,}")
    if "onnx" in manifest:
        onnx = manifest["onnx"]
        print(f"  ONNX via {onnx['exporter']}: max |onnxruntime - PyTorch| = {onnx['max_abs_diff']:.2g}")
    print(f"exported to {out}/ (load with plprune.load({str(out)!r}))")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from plprune.compress import CompressSettings, compress

    if args.kinds is None:
        args.kinds = ("head", "neuron")
    settings = CompressSettings(
        model_dir=args.model_dir,
        data=args.data,
        out=args.out,
        kinds=args.kinds,
        keep_params=args.keep_params,
        kind_ratios=args.kind_ratios or {},
        method=args.method,
        method_settings=_setting_values(args, args.method),  # --gate-steps ..., as plprune train takes them
        allocation=args.allocation,
        tokenizer=args.tokenizer,
        eval_data=args.eval_data,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        calibration_samples=args.calibration_samples,
        eval_samples=args.eval_samples,
        recover_steps=args.recover_steps,
        recovery=args.recovery,
        recover_lr=args.recover_lr,
        lora_rank=args.lora_rank,
        latency_repeats=args.latency_repeats,
        seed=args.seed,
        device=args.device,
        force=args.force,
        resume=args.resume,
        progress=False if args.no_progress else None,
    )
    report = compress(settings)
    print((args.out / "report.md").read_text(encoding="utf-8"))
    print(f"compressed model written to {args.out}/ ({report['stages']['save']['format']})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from plprune.bench.report import write_report

    path = write_report(args.dir)
    print(path.read_text(encoding="utf-8"))
    print(f"\nreport written to {path}")
    return 0


def cmd_bench_latency(args: argparse.Namespace) -> int:
    from plprune.bench.latency import parse_spec, run_latency_bench

    spec = parse_spec(
        model=args.model,
        out=args.out,
        ratio=args.ratio,
        width=args.width,
        input=args.input,
        size=args.size,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        memory=not args.no_memory,
        onnx=not args.no_onnx,
    )
    result = run_latency_bench(spec, progress=False if args.no_progress else None)
    for threads, measures in result["latency"].items():
        for measure, rows in measures.items():
            cells = ", ".join(
                f"{name} {row['median_ms']:.2f} ms ({row['paired_speedup']:.2f}x)"
                for name, row in rows.items()
            )
            print(f"{threads} thread(s), {measure}: {cells}")
    print(f"\nwritten to {spec.out}/ (latency.json, LATENCY.md, latency.png)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="plprune",
        description="Structured pruning during training with the Polyak-Łojasiewicz condition (ICLR 2023).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="train a model on a task and log metrics/checkpoints to a run directory",
        description="Train a model on a task. WikiText-2 here: trains on valid.txt, evaluates on test.txt.",
    )
    _add_run_options(train)
    train.add_argument("--out", type=Path, help="run directory (must be new unless --resume)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=cmd_train)

    demo = sub.add_parser("demo", help="dense vs PL on offline text, with a results table (about a minute)")
    demo.add_argument("--out", type=Path, help="run directory (default runs/demo-TIMESTAMP)")
    demo.add_argument("--steps", type=int, help="override the demo's number of steps")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(handler=cmd_demo)

    from plprune.bench.suites import SUITES
    from plprune.pruners.registry import METHOD_NAMES

    compare = sub.add_parser(
        "compare",
        help="run tasks x methods x seeds (resumable) and write RESULTS.md with tables and plots",
        description="Run a benchmark suite: every task x method x seed in its own run directory under "
        "OUT/runs (finished runs are never re-run, so an interrupted suite resumes), then write the report. "
        f"Suites: {'; '.join(f'{k}: {v.description}' for k, v in SUITES.items())}. "
        f"Methods: {', '.join(METHOD_NAMES)}.",
    )
    compare.add_argument("--suite", default="quick", choices=list(SUITES), help="which suite (default quick)")
    compare.add_argument("--tasks", nargs="+", help="only these tasks of the suite")
    compare.add_argument("--methods", nargs="+", help="only these methods (plus their ablations)")
    compare.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the suite's)")
    compare.add_argument(
        "--variants", nargs="+", help="only these runs, named as the suite lists them (e.g. pl@r90+alpha0)"
    )
    compare.add_argument("--no-ablations", action="store_true", help="skip the suite's ablation runs")
    compare.add_argument("--data-dir", help="WikiText-2 directory (or env PLPRUNE_DATA_DIR)")
    compare.add_argument("--workers", type=int, default=2, help="parallel runs, one thread each (default 2)")
    compare.add_argument(
        "--device",
        help="where every run trains: cpu (default), cuda, cuda:N or mps; with cuda, --workers runs "
        "share the one GPU",
    )
    compare.add_argument("--out", type=Path, help="results directory")
    compare.set_defaults(handler=cmd_compare)

    from plprune.bench.latency import MODELS as LATENCY_MODELS

    bench = sub.add_parser(
        "bench-latency",
        help="CPU inference latency, memory and size: dense vs masked vs compacted vs ONNX Runtime",
        description="Measure one model family with a random protected mask at --ratio: dense, masked (gate "
        "hooks), compacted (pruned groups removed) and compacted + ONNX Runtime (and, for the CNNs, the same "
        "filters removed by Torch-Pruning). Latency at batch 1 and 32 (median, IQR; variants interleaved "
        "round by round), throughput, parameters, MACs, peak memory (fresh process per variant) and file "
        "sizes; writes OUT/latency.json, OUT/LATENCY.md and OUT/latency.png.",
    )
    bench.add_argument("--model", help=f"model family: {', '.join(LATENCY_MODELS)}")
    bench.add_argument(
        "--ratio", help="fraction of groups removed (default: 0.75 of heads for BERT, 0.5 otherwise)"
    )
    bench.add_argument("--width", help="CNNs: channel multiplier (default 0.25 vgg, 0.5 resnet56; cifar: 1)")
    bench.add_argument("--input", help="CNNs: mnist1d (1x40 sequences, default) or cifar (3x32x32 images)")
    bench.add_argument("--size", help="default, or tiny (a small model of the family, for smoke tests)")
    bench.add_argument("--threads", help="torch and ONNX Runtime threads; a list such as 1,2 (default 1)")
    bench.add_argument("--repeats", help="timed calls per variant and batch size (default 30)")
    bench.add_argument("--warmup", help="untimed calls per variant before timing (default 3)")
    bench.add_argument("--seed", help="seed of the model, the inputs and the random mask (default 0)")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    bench.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and ONNX Runtime")
    bench.add_argument("--no-progress", action="store_true", help="no progress line (none without a tty)")
    bench.add_argument("--out", help="output directory")
    bench.set_defaults(handler=cmd_bench_latency)

    report = sub.add_parser("report", help="write RESULTS.md, results.json/csv and plots for a compare DIR")
    report.add_argument("dir", type=Path, help="the --out directory of plprune compare")
    report.set_defaults(handler=cmd_report)

    export = sub.add_parser(
        "export",
        help="write a run's pruned model, compacted, as safetensors (and ONNX) for plprune.load",
        description="Rebuild the model of a plprune train RUN_DIR (config.json, checkpoint.pt and the final "
        "mask of pruning.jsonl), remove its pruned groups and write OUT/model.safetensors and "
        "OUT/plprune.json (plprune.load(OUT) reads them back); --format onnx also writes OUT/model.onnx, "
        "checked against PyTorch with onnxruntime. A run without pruning events exports its dense model. "
        "See docs/deploy.md.",
    )
    export.add_argument("run_dir", type=Path, help="the --out directory of plprune train")
    export.add_argument(
        "--format", choices=("safetensors", "onnx"), default="safetensors", help="default safetensors"
    )
    export.add_argument("--out", type=Path, help="output directory (default RUN_DIR/export)")
    export.add_argument("--force", action="store_true", help="replace an existing output directory")
    export.set_defaults(handler=cmd_export)
    _add_compress_parser(sub)
    return parser


def _add_compress_parser(sub: Any) -> None:
    compress = sub.add_parser(
        "compress",
        help="prune a trained model directory into a smaller, faster one (calibrate, prune, recover)",
        description="Load a save_pretrained directory (causal or masked LM) or a plprune export, measure its "
        "held-out perplexity, score its heads/neurons on calibration text with a criterion, remove the "
        "lowest-scored ones to meet the target, compact, optionally fine-tune (--recover-steps), and "
        "write OUT "
        "(from_pretrained-loadable where the config can describe the result, else a plprune export) with "
        "report.md/report.json and a plot. See docs/compress.md.",
    )
    compress.add_argument("model_dir", type=Path, help="the trained model (a save_pretrained directory)")
    compress.add_argument("--data", type=Path, required=True, help="UTF-8 text for calibration and recovery")
    compress.add_argument("--out", type=Path, required=True, help="output directory (appears when complete)")
    compress.add_argument("--eval-data", type=Path, help="held-out text (default: the tail of --data)")
    compress.add_argument("--tokenizer", type=Path, help="tokenizer directory or plprune tokenizer file")
    compress.add_argument("--kinds", type=_kinds, help="group kinds, e.g. head,neuron (default head,neuron)")
    compress.add_argument("--keep-params", type=float, help="fraction of parameters to keep, e.g. 0.7")
    compress.add_argument("--kind-ratios", type=_kind_ratios, help="fixed ratio per kind, e.g. head=0.5")
    compress.add_argument("--method", default="pl", help="criterion (default pl; see plprune train --help)")
    _add_setting_flags(compress)
    compress.add_argument(
        "--allocation", default="per_layer", help="per_layer (default: from_pretrained-loadable) or global"
    )
    compress.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    compress.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8)")
    compress.add_argument("--calibration-samples", type=int, default=128, help="calibration sequences (128)")
    compress.add_argument("--eval-samples", type=int, default=64, help="held-out sequences (default 64)")
    compress.add_argument("--recover-steps", type=int, default=0, help="fine-tuning steps after pruning (0)")
    compress.add_argument("--recovery", choices=("full", "lora"), default="full", help="default full")
    compress.add_argument("--recover-lr", type=float, default=1e-4, help="recovery learning rate (1e-4)")
    compress.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (default 8)")
    compress.add_argument("--latency-repeats", type=int, default=5, help="timed rounds per batch size (5)")
    compress.add_argument("--seed", type=int, default=0, help="calibration sample and scorer seed (0)")
    compress.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    compress.add_argument("--force", action="store_true", help="replace OUT (and any unfinished work)")
    compress.add_argument("--resume", action="store_true", help="continue an interrupted compress")
    compress.add_argument("--no-progress", action="store_true", help="no progress bars")
    compress.set_defaults(handler=cmd_compress)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except PlpruneError as error:  # one line, whatever the message holds (e.g. a library's own text)
        if not getattr(error, "relayed", False):  # torchrun: rank 0's error, which rank 0 prints
            message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            print(f"plprune: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("plprune: interrupted (the last checkpoint is intact; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
