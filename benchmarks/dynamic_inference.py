"""Dynamic inference on MNIST-1D: accuracy against the MACs actually executed per sample.

Trains, on MNIST-1D generated offline (``load_mnist1d``; one thread), for each seed:

* ``static``: the plain CNN of the shape used throughout (``VGG(cfg=(32, "M", 64, "M", 64, "M", 128, "M"),
  dims=1)``: conv → BN → ReLU → 2× max-pool per block, GAP, linear) — the reference;
* ``gated λ=…``: :class:`~plprune.models.dynamic.ChannelGatedCNN` of the same shape, trained with
  ``cross-entropy + λ · expected-ℓ0 of the gates`` for each λ;
* ``dynconv K=4``: :class:`~plprune.models.dynamic.DynamicConvCNN` of the same shape (temperature
  annealed 30 → 1 over the first 30% of the steps, Chen et al. 2020).

Then evaluates test accuracy, the MACs each test sample actually executes (gated: ``model.infer``, which
skips closed channels; its logits are checked against the gated eval forward), and batch-1 latency with
one thread on the first seed's models (interleaved rounds: every variant runs once per round on the same
sample, the order rotating). Writes ``results.json``, ``RESULTS.md`` and ``accuracy_vs_macs.png`` to
``benchmarks/results/dynamic_inference/``.

Training is :func:`plprune.train.dynamic_inference.train_dynamic_network`, the gated model's measurements
:func:`plprune.bench.dynamic_inference.gated_evaluation`, timing rounds :mod:`plprune.bench.harness`.

Usage::

    .venv/bin/python benchmarks/dynamic_inference.py            # the full run (~7-9 min on 2 busy cores)
    .venv/bin/python benchmarks/dynamic_inference.py --quick    # tiny smoke run (--out, default a tmp dir)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plprune.bench import harness
from plprune.bench.dynamic_inference import gated_evaluation
from plprune.data.images import load_mnist1d
from plprune.models.dynamic import ChannelGatedCNN, DynamicConvCNN, pooled_length
from plprune.models.vgg import VGG
from plprune.seeding import generator
from plprune.train.dynamic_inference import train_dynamic_network

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "dynamic_inference"
CHANNELS = (32, 64, 64, 128)
LENGTH = 40

FULL: dict[str, Any] = {
    "num_samples": 5000,  # 4000 train / 1000 test
    "epochs": 8,
    "batch_size": 128,
    "lr": 1e-2,
    "seeds": [0, 1, 2],
    "lambdas": [0.5, 1.0, 2.0, 4.0],
    "gate_bias_init": 1.0,
    "num_kernels": 4,
    "temperature_start": 30.0,
    "temperature_anneal_fraction": 0.3,
    "latency_rounds": 400,
    "latency_samples": 100,
    "latency_warmup": 20,
    "max_minutes": 9.0,  # no new seed is started after this much time
}
QUICK: dict[str, Any] = {
    **FULL,
    "num_samples": 500,
    "epochs": 1,
    "seeds": [0],
    "lambdas": [0.5, 4.0],
    "latency_rounds": 20,
    "latency_samples": 10,
    "latency_warmup": 2,
}


# -- models and training ------------------------------------------------------------------------------------
def static_model(num_classes: int) -> VGG:
    cfg: list[int | str] = []
    for width in CHANNELS:
        cfg += [width, "M"]
    return VGG(in_channels=1, num_classes=num_classes, dims=1, cfg=tuple(cfg))


def static_macs(num_classes: int) -> int:
    macs, c_in, length = 0, 1, LENGTH
    for out in CHANNELS:
        macs += out * c_in * 3 * length
        c_in, length = out, pooled_length(length)
    return macs + num_classes * c_in


def train(model: nn.Module, kind: str, data: Any, cfg: dict[str, Any], seed: int, lam: float | None) -> float:
    """:func:`plprune.train.dynamic_inference.train_dynamic_network` with this benchmark's settings; returns
    the training wall time in seconds."""
    return train_dynamic_network(
        model,
        data.train_x,
        data.train_y,
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        order_generator=generator(seed, "order"),
        gate_penalty=lam if kind == "gated" else None,
        temperature_start=cfg["temperature_start"],
        anneal_fraction=cfg["temperature_anneal_fraction"],
    )


def evaluate(model: nn.Module, kind: str, data: Any) -> dict[str, Any]:
    if kind == "gated":  # the gated forward, the skipping inference, and how input-dependent the gates are
        return gated_evaluation(model, data.test_x, data.test_y)
    with torch.no_grad():
        logits = model(data.test_x)
    row: dict[str, Any] = {"test_accuracy": float((logits.argmax(1) == data.test_y).double().mean())}
    classes = logits.shape[1]
    if kind == "static":
        row["macs_mean"] = row["macs_min"] = row["macs_max"] = static_macs(classes)
    else:
        macs = model.macs_per_sample(LENGTH)
        row["macs_mean"] = row["macs_min"] = row["macs_max"] = macs
        row["macs_breakdown"] = {
            "convolutions": static_macs(classes) - classes * CHANNELS[-1],
            "classifier": classes * CHANNELS[-1],
            "attention": sum(
                c.in_channels * c.attention_hidden + c.attention_hidden * c.num_kernels for c in model.convs
            ),
            "kernel_aggregation": sum(c.num_kernels * c.weight[0].numel() for c in model.convs),
        }
    return row


# -- latency ------------------------------------------------------------------------------------------------
def folded_static(model: VGG) -> Any:
    """The static network as plain functional ops with BN folded into the convs (the same execution style
    as the gated model's skipping runner, so that the two differ only in what the gating adds)."""
    layers = []
    with torch.no_grad():
        for block in (m for m in model.features if hasattr(m, "conv")):
            bn = block.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            layers.append(
                (
                    (block.conv.weight * scale[:, None, None]).clone(),
                    (bn.bias - bn.running_mean * scale).clone(),
                )
            )
    weight, bias = model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()

    def run(x: Tensor) -> Tensor:
        for w, b in layers:
            x = F.relu(F.conv1d(x, w, b, padding=1))
            if x.shape[2] >= 2:
                x = F.max_pool1d(x, 2)
        return F.linear(x.mean(dim=2), weight, bias)

    return run


def measure_latency(calls: dict[str, Any], samples: Tensor, rounds: int, warmup: int) -> dict[str, Any]:
    """Batch-1 latency of every entry in interleaved rounds, one sample per round (the same for all)."""
    times = harness.time_rounds(
        calls, rounds, warmup, inputs=lambda r: (samples[r % samples.shape[0]].unsqueeze(0),)
    )
    rows = {}
    for name, row in harness.summarize_rounds(times, reference="static").items():
        rows[name] = {k: row[k] for k in ("median_ms", "q1_ms", "q3_ms", "runs")}
        rows[name]["paired_speedup_vs_static"] = row["paired_speedup"]
    return rows


# -- reports ------------------------------------------------------------------------------------------------
def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize_variants(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    rows = []
    for variant, group in by_variant.items():
        acc, acc_sd = _mean_sd([r["test_accuracy"] for r in group])
        macs, macs_sd = _mean_sd([r["macs_mean"] for r in group])
        rows.append(
            {
                "variant": variant,
                "kind": group[0]["kind"],
                "lambda": group[0].get("lambda"),
                "seeds": [r["seed"] for r in group],
                "test_accuracy_mean": acc,
                "test_accuracy_sd": acc_sd,
                "macs_mean": macs,
                "macs_mean_sd": macs_sd,
                "macs_min": min(r["macs_min"] for r in group),
                "macs_max": max(r["macs_max"] for r in group),
                "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in group),
            }
        )
    return rows


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    static = result["static_macs"]
    markers = {"static": ("*", "black"), "dynconv": ("D", "tab:red")}
    lambdas = sorted({r["lambda"] for r in result["runs"] if r["kind"] == "gated"})
    cmap = plt.get_cmap("viridis")
    seen = set()
    for run in result["runs"]:
        if run["kind"] == "gated":
            colour = cmap(lambdas.index(run["lambda"]) / max(1, len(lambdas) - 1))
            marker, label = "o", f"gated λ={run['lambda']:g}"
            ax.errorbar(
                run["macs_mean"] / 1e3,
                100 * run["test_accuracy"],
                xerr=[
                    [(run["macs_mean"] - run["macs_min"]) / 1e3],
                    [(run["macs_max"] - run["macs_mean"]) / 1e3],
                ],
                fmt="none",
                ecolor=colour,
                alpha=0.5,
                capsize=2,
            )
        else:
            marker, colour = markers[run["kind"]]
            label = "static CNN (reference)" if run["kind"] == "static" else run["variant"]
        ax.scatter(
            run["macs_mean"] / 1e3,
            100 * run["test_accuracy"],
            marker=marker,
            s=140 if run["kind"] == "static" else 50,
            color=colour,
            label=None if label in seen else label,
            zorder=3,
        )
        seen.add(label)
    ax.axvline(static / 1e3, color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("average MACs executed per test sample (thousands)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    seeds = ", ".join(str(s) for s in result["config"]["seeds_run"])
    ax.set_title(f"MNIST-1D: accuracy vs executed MACs (one point per run; seeds {seeds})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _k(value: float) -> str:
    return f"{value / 1e3:,.1f} k"


def write_markdown(result: dict[str, Any], path: Path) -> None:
    cfg, static = result["config"], result["static_macs"]
    lines = [
        "# Dynamic inference on MNIST-1D: channel gating and dynamic convolution",
        "",
        f"Command: `{result['command']}` (total {result['total_seconds']:.0f} s). "
        f"Machine: {result['machine']['cpu']}, {result['machine']['cpu_count']} CPU cores shared with other "
        f"jobs (1-minute load average at the start: {result['machine']['load_average_at_start'][0]}), one "
        f"torch thread. Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
        f"Data: MNIST-1D generated offline (`load_mnist1d(num_samples={cfg['num_samples']}, seed=0)`: "
        f"{result['data']['train']} train / {result['data']['test']} test sequences of length 40). Every "
        f"model has the shape conv(32) → conv(64) → conv(64) → conv(128), each conv 3-tap + BN + ReLU + 2× "
        f"max-pool, "
        f"then global average pooling and a linear classifier. Training: Adam, one-cycle LR (max "
        f"{cfg['lr']}), {cfg['epochs']} epochs, batch {cfg['batch_size']}, seeds {cfg['seeds_run']}. Gated "
        f"models: loss = cross-entropy + λ · expected ℓ0 of the hard-concrete gates (mean over samples and "
        f"channels, i.e. the expected fraction of open channels), gate FC bias initialised to "
        f"{cfg['gate_bias_init']}. Dynamic convolution: K = {cfg['num_kernels']}, attention temperature "
        f"annealed {cfg['temperature_start']:g} → 1 over the first "
        f"{cfg['temperature_anneal_fraction']:.0%} of the steps.",
        "",
        "MACs per sample: multiply-accumulates of convolutions and fully-connected layers (gate FCs, "
        "attention FCs, classifier), plus dynamic convolution's kernel aggregation K·|W|; element-wise work "
        "(BN folded, ReLU, gating, pooling, softmax) is not counted. For the gated models they are the MACs "
        "`ChannelGatedCNN.infer` actually executes for each test sample (it computes only the open channels, "
        "reading only the open input channels), averaged over the test set.",
        "",
        f"## Accuracy vs executed MACs (mean ± sd over seeds; static reference {_k(static)} MACs)",
        "",
        "| variant | test accuracy (%) | avg MACs / sample | × static | per-sample MACs min – max | "
        "train s / run |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['variant']} | {100 * row['test_accuracy_mean']:.2f} ± "
            f"{100 * row['test_accuracy_sd']:.2f} | "
            f"{_k(row['macs_mean'])} | {row['macs_mean'] / static:.3f} | {_k(row['macs_min'])} – "
            f"{_k(row['macs_max'])} | {row['train_seconds_mean']:.0f} |"
        )
    lines += ["", "![accuracy vs MACs](accuracy_vs_macs.png)", "", "## Per run", ""]
    lines += [
        "| variant | seed | test acc (%) | avg MACs | MACs std over samples | open channels per block (mean; "
        "min–max) | distinct open-channel patterns | channels open for some samples only | infer vs forward "
        "max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        if run["kind"] == "gated":
            chans = ", ".join(
                f"{m:.1f} ({lo}–{hi})"
                for m, lo, hi in zip(
                    run["active_channels_mean"],
                    run["active_channels_min"],
                    run["active_channels_max"],
                    strict=True,
                )
            )
            extra = (
                f"{run['macs_std'] / 1e3:.2f} k | {chans} | {run['distinct_active_patterns']} | "
                f"{sum(run['channels_open_for_some_but_not_all'])} of {sum(CHANNELS)} | "
                f"{run['infer_max_abs_diff_vs_forward']:.1e}"
            )
        else:
            extra = "0 | all | 1 | — | —"
        lines.append(
            f"| {run['variant']} | {run['seed']} | {100 * run['test_accuracy']:.2f} | "
            f"{_k(run['macs_mean'])} | {extra} |"
        )
    dyn = next((r for r in result["runs"] if r["kind"] == "dynconv"), None)
    if dyn is not None:
        b = dyn["macs_breakdown"]
        lines += [
            "",
            f"Dynamic convolution MACs per sample: convolutions {_k(b['convolutions'])} (as static), "
            f"classifier {_k(b['classifier'])}, attention {_k(b['attention'])}, kernel aggregation "
            f"{_k(b['kernel_aggregation'])}.",
        ]
    lat = result.get("latency")
    if lat:
        lines += [
            "",
            f"## Batch-1 latency, one thread (seed {lat['seed']} models)",
            "",
            f"{lat['rounds']} interleaved rounds over {lat['samples']} test samples (each round: every "
            f"variant once on the same sample, the order rotating), after {lat['warmup']} warm-up rounds. "
            "Paired speed-up: median over rounds of static's time / the variant's time in the same round "
            "(> 1 = faster than the static module).",
            "",
            "| variant | median ms | IQR ms | paired speed-up vs static | avg MACs of these samples |",
            "|---|---|---|---|---|",
        ]
        for name, row in lat["rows"].items():
            macs = lat["macs"].get(name)
            lines.append(
                f"| {name} | {row['median_ms']:.3f} | {row['q1_ms']:.3f}–{row['q3_ms']:.3f} | "
                f"{row['paired_speedup_vs_static']:.2f}× | {_k(macs) if macs is not None else '—'} |"
            )
    lines += ["", "## Notes", ""] + [f"- {note}" for note in result["notes"]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def notes(result: dict[str, Any]) -> list[str]:
    out = []
    static = result["static_macs"]
    static_acc = next(r for r in result["summary"] if r["kind"] == "static")["test_accuracy_mean"]
    for row in result["summary"]:
        if row["kind"] == "gated":
            out.append(
                f"{row['variant']}: {row['macs_mean'] / static:.0%} of the static MACs at "
                f"{100 * (row['test_accuracy_mean'] - static_acc):+.2f} accuracy points vs static."
            )
        if row["kind"] == "dynconv":
            out.append(
                f"{row['variant']}: {row['macs_mean'] / static:.2f}× the static MACs (attention and kernel "
                f"aggregation; the aggregation K·|W| weighs most in the short last layers, length 5) at "
                f"{100 * (row['test_accuracy_mean'] - static_acc):+.2f} accuracy points; its parameters are "
                f"about {result['parameters']['dynconv'] / result['parameters']['static']:.1f}× the static "
                "model's."
            )
    gated = [r for r in result["runs"] if r["kind"] == "gated"]
    if gated:
        spread = max(r["macs_std"] / r["macs_mean"] for r in gated)
        partial = max(sum(r["channels_open_for_some_but_not_all"]) for r in gated)
        out.append(
            f"How input-dependent the gating is: per-sample MACs std/mean at most {spread:.1%} over the "
            f"test set in any run, and at most {partial} of the {sum(CHANNELS)} channels are open for some "
            "samples and closed for others. With a plain expected-ℓ0 penalty most gates settle at always "
            "open or always closed, so most of the saving is input-independent (the network is effectively "
            "pruned); batch-shaping (Bejnordi et al. 2020) is the usual remedy and is not used here."
        )
        same = all(r["infer_test_accuracy"] == r["test_accuracy"] for r in gated)
        out.append(
            "`infer` reproduces the gated eval forward: test accuracy "
            + ("identical in every run" if same else "DIFFERENT in some run (see results.json)")
            + f", max abs logit difference {max(r['infer_max_abs_diff_vs_forward'] for r in gated):.1e} "
            "(float32; `infer` folds BN into the convs)."
        )
        fc = [r["gate_fc_macs_mean"] for r in gated]
        fractional = [r["fractional_gates"] for r in gated]
        out.append(
            f"The gate FCs cost {min(fc) / 1e3:.1f}–{max(fc) / 1e3:.1f} k MACs per sample (included above); "
            f"{min(fractional):.0%}–{max(fractional):.0%} of the gates are strictly between 0 and 1 at test "
            "time (they scale their channel rather than switch it)."
        )
        closed_first = [r["active_channels_mean"][0] for r in gated]
        out.append(
            (
                f"The first block keeps all {CHANNELS[0]} of its channels open for every test sample in "
                "every run"
                if min(closed_first) == CHANNELS[0]
                else f"The first block keeps {min(closed_first):.1f}–{max(closed_first):.1f} of its "
                f"{CHANNELS[0]} channels on average"
            )
            + ": its gate sees only the mean of the (standardised) 1-channel input, and its channels "
            "are the cheapest, so the per-channel penalty buys little there."
        )
    lat = result.get("latency")
    if lat:
        rows = lat["rows"]
        infer = {k: v for k, v in rows.items() if k.endswith("infer (skipping)")}
        slow = [k for k, v in infer.items() if v["median_ms"] > rows["static"]["median_ms"]]
        folded = rows.get("static (BN folded, functional)")
        text = (
            "Wall time at batch 1: the per-sample skipping path is "
            + (
                "slower than the static module for " + ", ".join(slow)
                if slow
                else "not slower than the static module"
            )
            + ". "
        )
        if folded is not None and infer:
            fastest = min(infer.values(), key=lambda v: v["median_ms"])
            best = min(infer, key=lambda k: infer[k]["median_ms"])
            text += (
                f"The best case, {best} ({lat['macs'][best] / lat['macs']['static']:.0%} of the static "
                "MACs), "
                f"is {infer[best]['paired_speedup_vs_static']:.2f}× the static module's speed. Against the "
                f"static network run the same way (BN folded, functional ops: {folded['median_ms']:.3f} ms) "
                + (
                    "every skipping run is slower "
                    f"({fastest['median_ms'] / folded['median_ms']:.1f}× the time at best). "
                    if fastest["median_ms"] > folded["median_ms"]
                    else f"the fastest skipping run takes {fastest['median_ms']:.3f} ms. "
                )
            )
        text += (
            "At this size (tens to hundreds of kMACs per sample) a forward pass is dominated by per-operator "
            "dispatch, not arithmetic: the gate FCs, `nonzero`, the weight indexing (a copy of the active "
            "sub-kernel each call) and the gate multiplications add operators, so fewer MACs buy little "
            "wall time here. "
        )
        masked = [v["median_ms"] for k, v in rows.items() if k.endswith("masked forward")]
        if masked:
            text += (
                f"The masked eval forward (all channels computed, then multiplied by the gates) takes "
                f"{min(masked):.3f}–{max(masked):.3f} ms vs static {rows['static']['median_ms']:.3f} ms: "
                "all the work plus the gating."
            )
        out.append(text)
        dyn = next((k for k in rows if k.startswith("dynconv")), None)
        if dyn:
            out.append(
                f"{dyn} at batch 1: {rows[dyn]['median_ms']:.3f} ms vs static "
                f"{rows['static']['median_ms']:.3f} ms (attention branch + einsum aggregation per layer; at "
                "batch 1 the grouped conv is a plain conv)."
            )
    if result["skipped_seeds"]:
        out.append(
            f"Seeds not run (time budget of {result['config']['max_minutes']} min): "
            f"{result['skipped_seeds']}."
        )
    out.append(
        "The machine is shared with other jobs, so absolute times wander; the latency ratios within one "
        "round are the robust part. Training times include that load."
    )
    return out


# -- main ---------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (1 epoch, 500 samples, 1 seed)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="rewrite RESULTS.md and the PNG from results.json in --out",
    )
    parser.add_argument(
        "--out", type=Path, help=f"output folder (default {OUT.relative_to(ROOT)}; --quick: a tmp dir)"
    )
    args = parser.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    if args.seeds:
        cfg["seeds"] = args.seeds
    out = args.out or (Path(tempfile.mkdtemp(prefix="dynamic_inference_")) if args.quick else OUT)
    out.mkdir(parents=True, exist_ok=True)
    if args.summary_only:
        if not (out / "results.json").exists():
            raise SystemExit(f"--summary-only: no results.json in {out}; run the benchmark first")
        result = json.loads((out / "results.json").read_text(encoding="utf-8"))
        result["notes"] = notes(result)
        (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        plot(result, out / "accuracy_vs_macs.png")
        write_markdown(result, out / "RESULTS.md")
        print(f"rewritten {out}/RESULTS.md and accuracy_vs_macs.png from results.json")
        return
    torch.set_num_threads(1)
    started = time.perf_counter()
    meta_machine = harness.machine(note="2-core CPU shared with other jobs")
    data = load_mnist1d(cfg["num_samples"], 0.2, 0)
    classes = data.num_classes
    runs: list[dict[str, Any]] = []
    models: dict[str, nn.Module] = {}
    skipped: list[int] = []
    parameters: dict[str, int] = {}
    for seed_index, seed in enumerate(cfg["seeds"]):
        if seed_index and time.perf_counter() - started > 60 * cfg["max_minutes"]:
            skipped = cfg["seeds"][seed_index:]
            break
        variants: list[tuple[str, str, float | None]] = [("static", "static", None)]
        variants += [(f"gated λ={lam:g}", "gated", lam) for lam in cfg["lambdas"]]
        variants.append((f"dynconv K={cfg['num_kernels']}", "dynconv", None))
        for name, kind, lam in variants:
            torch.manual_seed(seed)
            if kind == "static":
                model: nn.Module = static_model(classes)
            elif kind == "gated":
                model = ChannelGatedCNN(1, classes, CHANNELS, gate_bias_init=cfg["gate_bias_init"])
            else:
                model = DynamicConvCNN(1, classes, CHANNELS, num_kernels=cfg["num_kernels"])
            parameters.setdefault(kind, sum(p.numel() for p in model.parameters()))
            seconds = train(model, kind, data, cfg, seed, lam)
            row = {"variant": name, "kind": kind, "lambda": lam, "seed": seed, "train_seconds": seconds}
            row.update(evaluate(model, kind, data))
            runs.append(row)
            print(
                f"seed {seed} {name:>14}: acc {100 * row['test_accuracy']:.2f}%  "
                f"MACs {row['macs_mean'] / 1e3:.1f} k  train {seconds:.0f} s  "
                f"(elapsed {time.perf_counter() - started:.0f} s)",
                flush=True,
            )
            if seed_index == 0:
                models[name] = model
    # latency: seed-0 models, batch 1, one thread, interleaved
    samples = data.test_x[: cfg["latency_samples"]]
    calls: dict[str, Any] = {
        "static": models["static"],
        "static (BN folded, functional)": folded_static(models["static"]),
    }
    latency_macs: dict[str, float] = {
        "static": static_macs(classes),
        "static (BN folded, functional)": static_macs(classes),
    }
    for name, model in models.items():
        if isinstance(model, ChannelGatedCNN):
            runner = model.runner()
            calls[f"{name} masked forward"] = model
            calls[f"{name} infer (skipping)"] = lambda x, runner=runner: runner.run_one(x)
            macs = float(model.infer(samples).macs.double().mean())
            latency_macs[f"{name} masked forward"] = float(model.max_macs(LENGTH))
            latency_macs[f"{name} infer (skipping)"] = macs
        elif isinstance(model, DynamicConvCNN):
            calls[name] = model
            latency_macs[name] = float(model.macs_per_sample(LENGTH))
    latency = {
        "seed": cfg["seeds"][0],
        "rounds": cfg["latency_rounds"],
        "samples": int(samples.shape[0]),
        "warmup": cfg["latency_warmup"],
        "threads": torch.get_num_threads(),
        "rows": measure_latency(calls, samples, cfg["latency_rounds"], cfg["latency_warmup"]),
        "macs": latency_macs,
        "note": "gated infer timed as ChannelSkippingRunner.run_one (runner built once, BN folded)",
    }
    command = " ".join([".venv/bin/python", "benchmarks/dynamic_inference.py", *sys.argv[1:]])
    result: dict[str, Any] = {
        "command": command,
        "config": {
            **cfg,
            "seeds_run": [s for s in cfg["seeds"] if s not in skipped],
            "channels": list(CHANNELS),
        },
        "data": {"source": "mnist1d", "train": int(data.train_x.shape[0]), "test": int(data.test_x.shape[0])},
        "machine": meta_machine,
        "versions": harness.versions("mnist1d", "matplotlib"),
        "static_macs": static_macs(classes),
        "parameters": parameters,
        "runs": runs,
        "summary": summarize_variants(runs),
        "latency": latency,
        "skipped_seeds": skipped,
    }
    result["machine"]["load_average_at_end"] = harness.load_average()
    result["total_seconds"] = time.perf_counter() - started
    result["notes"] = notes(result)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(result, out / "accuracy_vs_macs.png")
    write_markdown(result, out / "RESULTS.md")
    print(f"written {out}/results.json, RESULTS.md, accuracy_vs_macs.png in {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
