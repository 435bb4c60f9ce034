"""What PL's scoring costs on feed-forward neurons vs attention heads, and what batching the kernels saved.

Model: plprune's BERT, 4 layers, hidden 128, 8 heads, FFN 512 (32 heads, 2048 neurons), seq 64, vocab 1000,
PL's defaults (16 kernel samples, per-sample loop, 10 gate-training batches of 16). Timed (``perf_counter``,
rounds interleaved so that drift of a shared machine hits every variant alike; min and median reported):

* the stages of the kernel features: per-sample gradients; the per-group kernels K_i = J_i J_iᵀ, both the
  former per-group loop (``loop``: J_i concatenated group by group, one product each — what
  ``ntk.group_kernels`` did before) and the batched one (``batched``: :func:`plprune.curvature.ntk.
  batched_group_kernels`); the eigenvalues (one batched ``eigvalsh``);
* a whole PL event (``Pruner.step``: features, gating network trained on loss + Hutchinson trace, TopK)
  with either kernel implementation;
* the mask's per-step upkeep at half pruned (``GroupSet.enforce`` + ``mask_gradients``, after each step);
* with ``--allocation``: how PL's global TopK (Alg. 2) spreads the kept neurons over the 4 layers at 50, 75
  and 90% (one event after 20 AdamW steps), the measurement behind keeping it global for neurons.

Writes ``OUT/pl_neuron_cost.json`` and ``OUT/PL_NEURON_COST.md``.
Run: ``.venv/bin/python benchmarks/pl_neuron_cost.py --out benchmarks/results/pl_neuron_cost``.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import plprune
import plprune.curvature.ntk as ntk
from plprune.models import BertConfig, BertForMaskedLM
from plprune.task import FunctionTask

VOCAB, SEQ, BATCH = 1000, 64, 16


def build() -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=128, num_layers=4, num_heads=8, ffn_size=512,
                        max_length=SEQ, dropout=0.0, attention_dropout=0.0)  # fmt: skip
    return BertForMaskedLM(config)


def batch_at(step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(VOCAB, (BATCH, SEQ), generator=g)
    masked = torch.rand(BATCH, SEQ, generator=g) < 0.15
    masked[:, 0] = True
    return ids, torch.where(masked, ids, torch.full_like(ids, -100))


def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return model(*batch).loss


def loop_kernels(grads: dict[str, Tensor], groups: list) -> Tensor:
    """The former ``group_kernels`` body: J_i group by group, ``J_i J_iᵀ`` in float64, stacked."""
    n = next(iter(grads.values())).shape[0]
    kernels = []
    for g in groups:
        jac = torch.cat([s.select_batched(grads[s.param_name]).reshape(n, -1) for s in g.slices], dim=1)
        jac = jac.to(torch.float64)
        kernels.append(jac @ jac.T)
    return torch.stack(kernels)


def former_group_kernels(model, groups, output_fn, batch, chunk_size=None) -> Tensor:
    groups = list(groups)
    names = list(dict.fromkeys(s.param_name for g in groups for s in g.slices))
    grads = ntk.per_sample_gradients(model, output_fn, batch, params=names, chunk_size=chunk_size)
    return loop_kernels(grads, groups)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pl_event(kind: str) -> float:
    model = build()
    pruner = plprune.Pruner(model, plprune.scorers.PL(), plprune.OneShot(0, 0.5), kinds=(kind,),
                            loss_fn=loss_fn, batches=batch_at)  # fmt: skip
    return timed(lambda: pruner.step(0))


def allocation(out: Path) -> None:
    rows = {}
    for ratio in (0.5, 0.75, 0.9):
        model = build()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        pruner = plprune.Pruner(model, plprune.scorers.PL(), plprune.OneShot(20, ratio), kinds=("neuron",),
                                loss_fn=loss_fn, batches=batch_at, allocation="global")  # fmt: skip
        pruner.attach(optimizer)
        for step in range(21):
            pruner.step(step)
            if step < 20:
                optimizer.zero_grad()
                loss_fn(model, batch_at(step)).backward()
                optimizer.step()
        rows[str(ratio)] = pruner.mask.view(4, 512).sum(dim=1).tolist()
    out.mkdir(parents=True, exist_ok=True)
    (out / "pl_neuron_allocation.json").write_text(json.dumps({"kept_per_layer_of_512": rows}, indent=2))
    print("PL, global TopK on neurons: kept per layer (of 512)", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--event-rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allocation", action="store_true", help="only the layer-allocation measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.allocation:
        allocation(args.out)
        return
    samples: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        samples.setdefault(name, []).append(seconds)

    model = build().eval()
    task = FunctionTask(loss_fn, batch_at)
    output_fn = functools.partial(task.per_sample_output, kind="loss")
    batch = tuple(t[:16] for t in task.train_batch(0))
    sets = {kind: plprune.GroupSet(model, kinds=(kind,)) for kind in ("head", "neuron")}
    counts = {kind: len(s) for kind, s in sets.items()}
    for _ in range(args.rounds):
        for kind, groups in sets.items():
            names = groups.param_names
            grads: dict[str, Tensor] = {}

            def gradients(g: dict = grads, n: list = names) -> None:
                g.update(ntk.per_sample_gradients(model, output_fn, batch, params=n, chunk_size=1))

            add(f"{kind}/per-sample gradients", timed(gradients))
            kernels: list[Tensor] = []
            add(
                f"{kind}/kernels loop",
                timed(lambda g=grads, s=groups, k=kernels: k.append(loop_kernels(g, s.groups))),
            )
            add(
                f"{kind}/kernels batched",
                timed(lambda g=grads, s=groups, k=kernels: k.append(ntk.batched_group_kernels(g, s.groups))),
            )
            add(f"{kind}/eigvalsh features", timed(lambda k=kernels[1]: ntk.kernel_features(k)))
            scale = kernels[0].abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-300)
            add(f"{kind}/max relative difference", float(((kernels[1] - kernels[0]).abs() / scale).max()))
            for name, implementation in (("loop", former_group_kernels), ("batched", ntk.group_kernels)):
                features = functools.partial(
                    implementation, model, groups.groups, output_fn, batch, chunk_size=1
                )
                add(f"{kind}/features: grads + kernels ({name}) + eigvalsh", timed(
                    lambda f=features: ntk.kernel_features(f())
                ))  # fmt: skip
    for groups in sets.values():
        groups.remove_hooks()
    for kind in ("head", "neuron"):  # mask upkeep per optimizer step, half pruned
        model = build()
        groups = plprune.GroupSet(model, kinds=(kind,))
        mask = torch.ones(len(groups), dtype=torch.bool)
        mask[1::2] = False
        groups.apply_mask(mask)
        loss_fn(model, batch_at(0)).backward()
        for _ in range(args.rounds):
            add(f"{kind}/mask upkeep per step", timed(lambda g=groups: (g.mask_gradients(), g.enforce())))
    import plprune.pruners.pl as pl  # PL's kernels stage calls batched_group_kernels(grads, groups)

    batched = pl.batched_group_kernels
    pl_event("head")  # warm-up: the first Adam imports torch._dynamo (~1.5 s, once per process)
    for _ in range(args.event_rounds):
        for kind in ("head", "neuron"):
            for name, implementation in (("loop", loop_kernels), ("batched", batched)):
                pl.batched_group_kernels = implementation
                try:
                    add(f"{kind}/PL event ({name} kernels)", pl_event(kind))
                finally:
                    pl.batched_group_kernels = batched
    summary = {
        name: {"min_s": min(v), "median_s": statistics.median(v), "runs": len(v)}
        for name, v in samples.items()
    }
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "groups": counts,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.platform(),
        "model": "plprune BERT 4x128, 8 heads, FFN 512, seq 64, 16 kernel samples",
    }
    (args.out / "pl_neuron_cost.json").write_text(json.dumps({"meta": meta, "timings": summary}, indent=2))
    lines = [
        f"# PL scoring cost: heads ({counts['head']}) vs neurons ({counts['neuron']})",
        "",
        f"{meta['model']}; torch {meta['torch']}, {args.threads} threads; min and median of the rounds.",
        "",
        "| what | min s | median s | runs |",
        "|---|---:|---:|---:|",
    ]
    for name, row in summary.items():
        lines.append(f"| {name} | {row['min_s']:.4g} | {row['median_s']:.4g} | {row['runs']} |")
    (args.out / "PL_NEURON_COST.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
