"""The PL-regularised pruner (paper Sec. 3.2, Alg. 2): kernel features → gating network → TopK.

At a pruning event (Alg. 2 lines 4-8):

1. features d_w = (λ_min(K_i), ρ_i) of every group's tangent kernel on ``feature_samples`` samples
   (Sec. 3.2.2, Eq. 7);
2. the gating network g = FN_v(d̂) (Eq. 8, scaled to mean 1, see :mod:`plprune.gating`) is trained with
   the weights w frozen on ``L_S(g ⊙ w) + α · Tr(H(g ⊙ w))`` (Eq. 36), Tr by Hutchinson (Alg. 1) with
   ``create_graph`` so the trace is differentiated w.r.t. v (third order), for ``gate_steps`` batches;
3. the final gates are the scores: the callback keeps the TopK (with layer protection).

Measurements logged in every event's record (small numbers; docs/pl-method.md "What decides PL's
ranking"): how far the final gates spread (``gate_spread``), how each gate input correlates with the gates
(``gate_feature_correlation``, Spearman), and how noisy the Hutchinson trace is at the final gates
(``probe_noise``: ``probe_check`` probes on each of ``probe_check_batches`` batches). Ablation settings:
``features`` (which inputs the gating network sees) and ``gate_full_pass`` (gate training on one epoch's
worth of batches, Alg. 2 lines 6-7 "for each batch in S", instead of ``gate_steps``). Cost (docs/pl-method.md
"PL's cost"): every record logs the ``seconds`` of each stage (:data:`STAGES`); gate training is ~90% of an
event at the paper's budget. The defaults are the cheap setting (2 gate-training batches of 4 samples, 8
kernel samples: an event costs 2-4 training steps on heads and neurons, 1.3-3.7 on VGG-16 at CIFAR-10 shapes
and 10-12 on the small MNIST-1D VGGs, instead of 48-85); :data:`PAPER_SETTINGS` are the paper's (10 batches,
the whole training batch, 16 kernel samples), which the benchmark suites written before pin.

The Hessian is taken of ``hessian_scalar``: ``"loss"`` (default: the training loss, the quantity whose
conditioning the paper's Prop. 8 bounds via the loss Hessian) or ``"logits"`` (sum of the masked-token
logits, literally Alg. 1's ``f``), w.r.t. the group weights (attention Q/K/V/O, expert, filter weights).

Data-parallel (``context.distributed``, docs/distributed.md): the kernel samples are the first
``feature_samples`` of the global batch, gathered from every rank's shard (:func:`plprune.distributed.
gather_samples`), so every rank computes the same features; a gate-training batch of ``gate_batch_size``
samples is likewise the first samples of the global batch, gathered, so every rank computes the single
process's objective; a whole gate-training batch (``gate_batch_size`` 0) is each rank's shard and the gating
network's gradients (and the logged loss/trace) are averaged over ranks, which is the gradient of the global
batch's objective (same seeded probes on every rank; Hutchinson's estimate is linear in H). The Pruner
broadcasts rank 0's final gates.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

import plprune.distributed as dist
from plprune.curvature import KernelFeatures, hutchinson_trace, kernel_features, per_sample_gradients
from plprune.curvature.ntk import batched_group_kernels
from plprune.errors import PlpruneError, TrainingDivergedError
from plprune.exact_norms import exact_norms
from plprune.gating import GatingNetwork, standardise_columns
from plprune.keep import PER_LAYER_FOR_FILTERS
from plprune.pruners.base import GroupScorer, PruneContext
from plprune.pruners.registration import register_method
from plprune.seeding import generator
from plprune.validation import (
    check_choice,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)

HESSIAN_SCALARS = ("loss", "logits")
FEATURE_SETS = ("both", "min_eigenvalue", "entropy", "shuffled")
KERNEL_FEATURES = ("log_min_eigenvalue", "entropy")
#: the paper's gate-training budget (Alg. 2: the gating network trained on whole training batches), PL's
#: defaults before issue 22; the cheap defaults were chosen by benchmarks/pl_cost.py (docs/pl-method.md)
PAPER_SETTINGS: dict[str, int] = {"gate_steps": 10, "gate_batch_size": 0, "feature_samples": 16}
#: where an event's time goes, logged as ``seconds`` in every event's record (docs/pl-method.md "PL's cost")
STAGES = (
    "feature_batch",  # the kernel samples (gathered from every rank when data-parallel)
    "per_sample_gradients",  # J: one gradient per kernel sample (Sec. 3.2.2)
    "kernels",  # K_i = J_i J_iᵀ of every group, batched
    "eigenvalues",  # one batched eigvalsh → (λ_min, ρ)
    "gate_loss",  # gate training: forward + loss at the soft gates, every batch
    "hessian_trace",  # gate training: Hutchinson's zᵀHz with create_graph (double backward), every batch
    "gate_backward",  # gate training: third-order backward to the gating network + Adam, every batch
    "probe_noise",  # the optional Hutchinson-noise measurement (probe_check)
)


@contextmanager
def _stage(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``seconds[name]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] += time.perf_counter() - started


@dataclass
class PLConfig:
    """Settings of the PL pruner (docs/pl-method.md). The gate-training budget defaults to the cheap setting;
    ``PLConfig(**PAPER_SETTINGS)`` is the paper's."""

    alpha: float = field(default=1.0, metadata={"help": "weight of the Hessian-trace term (1, Alg. 2)"})
    # cost knob (docs/pl-method.md "PL's cost"): gate training is 62-99% of an event and its cost grows with
    # the batches and their samples; the paper's budget is PAPER_SETTINGS (10 batches, whole, 16 samples)
    gate_steps: int = field(
        default=2, metadata={"help": "gating-network training batches per event (default 2; the paper 10)"}
    )
    gate_lr: float = field(default=0.05, metadata={"help": "gating-network learning rate (default 0.05)"})
    # 0 (or None) = the task's whole training batch (the paper)
    gate_batch_size: int | None = field(
        default=4,
        metadata={
            "type": int,
            "help": "samples of each gate-training batch (default 4; 0 = the whole batch, the paper)",
        },
    )
    gate_hidden: int = 16
    num_probes: int = field(default=1, metadata={"help": "Hutchinson probes per batch (default 1)"})
    probe_distribution: str = "rademacher"
    hessian_scalar: str = field(default="loss", metadata={"help": "loss (default) or logits (Alg. 1's f)"})
    kernel_output: str = field(
        default="loss", metadata={"help": "per-sample scalar of the kernels: loss (default) or logit"}
    )
    feature_samples: int = field(
        default=8, metadata={"help": "samples n of the tangent kernels (default 8; the paper 16)"}
    )
    # per-sample loop: on CPU faster than vmap, which holds n × T × V logits at once (helper timing)
    chunk_size: int | None = 1
    scale_to_mean_one: bool = True
    log_min_eigenvalue: bool = True
    # ablations (docs/pl-method.md): which kernel features the gating network sees — "both" (the paper),
    # "min_eigenvalue" or "entropy" only (the other column set to 0), "shuffled" (rows permuted across
    # the groups of a kind: the same feature values, no link to the group)
    features: str = "both"
    # gate training on steps_per_epoch batches (Alg. 2 lines 6-7, "for each batch in S") instead of gate_steps
    gate_full_pass: bool = False
    # measurement only (not used for the gates): Hutchinson probes per batch and batches, at the final gates;
    # off by default (16 extra Hessian-vector products per event at 8 × 2); the overparam suite sets 8
    probe_check: int = 0
    probe_check_batches: int = 2

    def __post_init__(self) -> None:
        check_non_negative_float("alpha", self.alpha)
        check_non_negative_int("gate_steps", self.gate_steps)
        check_positive_float("gate_lr", self.gate_lr)
        if self.gate_batch_size is not None:
            check_non_negative_int("gate_batch_size", self.gate_batch_size)
        check_positive_int("gate_hidden", self.gate_hidden)
        check_positive_int("num_probes", self.num_probes)
        check_choice("probe distribution", self.probe_distribution, ("rademacher", "gaussian"))
        check_choice("hessian_scalar", self.hessian_scalar, HESSIAN_SCALARS)
        check_choice("kernel_output", self.kernel_output, ("loss", "logit"))
        check_positive_int("feature_samples", self.feature_samples)
        if self.chunk_size is not None:
            check_positive_int("chunk_size", self.chunk_size)
        check_choice("features", self.features, FEATURE_SETS)
        if not isinstance(self.gate_full_pass, bool):
            raise PlpruneError(f"gate_full_pass must be true or false, got {self.gate_full_pass!r}")
        check_non_negative_int("probe_check", self.probe_check)
        check_positive_int("probe_check_batches", self.probe_check_batches)


def _hessian_scalar(kind: str, context: PruneContext, batch: tuple[Tensor, ...], loss: Tensor) -> Tensor:
    if kind == "loss":
        return loss
    if hasattr(context.task, "logits"):  # classification: the task knows which tensor is the input
        return context.task.logits(context.model, batch).sum()
    return context.model(*batch).logits.sum()  # masked LM: logits at the masked positions


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two ``(p,)`` vectors (ranks by stable sort, ties in index order);
    0.0 when either is constant or p < 2."""
    if x.numel() < 2:
        return 0.0

    def ranks(v: Tensor) -> Tensor:
        order = torch.sort(v.detach().double(), stable=True).indices
        r = torch.empty(v.numel(), dtype=torch.float64)
        r[order] = torch.arange(v.numel(), dtype=torch.float64)
        return r

    if bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return 0.0
    a, b = ranks(x), ranks(y)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def gate_spread(gates: Tensor) -> dict[str, float]:
    """How far the gates spread across groups: std, min, max and max/min of the (mean-1) gates."""
    g = gates.detach().double()
    return {
        "std": float(g.std(unbiased=False)),
        "min": float(g.min()),
        "max": float(g.max()),
        "max_over_min": float(g.max() / g.min()) if float(g.min()) > 0 else float("inf"),
    }


def probe_noise(per_batch: list[Tensor], history: list[float]) -> dict[str, float]:
    """Noise of Hutchinson's trace estimate: ``per_batch[b]`` = the probe values z_kᵀHz_k on batch b (all at
    the same gates). ``probe_std``: pooled within-batch std over probes; ``batch_std``: std of the batch
    means; ``single_probe_rel``: probe_std / |mean| (the relative error of one probe, what Alg. 2 uses per
    batch); ``training_trace_rel``: std / |mean| of the single-probe traces seen during gate training."""
    values = torch.stack([v.detach().double() for v in per_batch])  # (batches, probes)
    mean = float(values.mean())
    probe_std = float(values.var(dim=1, unbiased=True).mean().sqrt()) if values.shape[1] > 1 else 0.0
    batch_std = float(values.mean(dim=1).std(unbiased=True)) if values.shape[0] > 1 else 0.0
    result = {
        "mean": mean,
        "probe_std": probe_std,
        "batch_std": batch_std,
        "single_probe_rel": probe_std / abs(mean) if mean else float("inf"),
        "probes": int(values.shape[1]),
        "batches": int(values.shape[0]),
    }
    if len(history) > 1:
        h = torch.tensor(history, dtype=torch.float64)
        result["training_trace_rel"] = float(h.std(unbiased=True) / h.mean().abs()) if h.mean() else 0.0
    return result


@register_method("pl", description="PL-regularised gating network (the paper, Alg. 2)", config=PLConfig)
class PLScorer(GroupScorer):
    """Scores = gates of a gating network trained on loss + α·Hutchinson trace (Alg. 2)."""

    name = "pl"
    # filters: the same fraction from every layer (the global TopK collapses VGG, docs/pl-method.md);
    # heads and experts: Alg. 2's global TopK
    allocation = PER_LAYER_FOR_FILTERS

    def __init__(self, config: PLConfig | None = None) -> None:
        self.config = config or PLConfig()

    @staticmethod
    def _first_samples(context: PruneContext, batch: tuple[Tensor, ...], n: int) -> tuple[Tensor, ...]:
        """The first ``n`` samples of the global batch (data-parallel: gathered from every rank's shard, in
        global order, on every rank)."""
        if context.distributed:
            return dist.gather_samples(batch, n)  # type: ignore[return-value]
        return tuple(t[:n] for t in batch)

    def _feature_batch(self, context: PruneContext) -> tuple[Tensor, ...]:
        batch = context.task.train_batch(context.step)
        return self._first_samples(context, batch, self.config.feature_samples)

    def extra_features(self, context: PruneContext) -> tuple[Tensor, tuple[str, ...]]:
        """Further gate inputs beyond the kernel features: a ``(p, k)`` non-negative tensor (standardised on
        a log scale) and the column names; none for the paper's PL (``pl+`` adds other criteria)."""
        return torch.zeros(len(context.groups), 0, dtype=torch.float64), ()

    def _gate_inputs(self, context: PruneContext, raw: Tensor) -> Tensor:
        """Standardised gate inputs (per kind), then the ``features`` ablation."""
        cfg, groups = self.config, context.groups
        log_columns = tuple(
            c for c in range(raw.shape[1]) if (c != 0 or cfg.log_min_eigenvalue) and c != 1
        )  # column 1 (entropy) is already on a bounded scale
        inputs = torch.zeros_like(raw, dtype=torch.float64)
        for kind in groups.kinds:  # heads' and experts' kernels live on different scales
            index = groups.kind_index(kind)
            inputs[index] = standardise_columns(raw[index], log_columns)
        if cfg.features == "min_eigenvalue":
            inputs[:, 1] = 0.0
        elif cfg.features == "entropy":
            inputs[:, 0] = 0.0
        elif cfg.features == "shuffled":
            g = generator(context.seed, "pl-shuffled-features", context.event_index)
            for kind in groups.kinds:
                index = groups.kind_index(kind)
                inputs[index] = inputs[index][torch.randperm(len(index), generator=g)]
        return inputs

    def _gate_batches(self, context: PruneContext) -> int:
        if not self.config.gate_full_pass:
            return self.config.gate_steps
        per_epoch = getattr(context.task, "steps_per_epoch", None)
        if not isinstance(per_epoch, int) or per_epoch < 1:
            raise PlpruneError(
                "gate_full_pass needs a task that knows its steps_per_epoch (the built-in tasks do); "
                "set gate_steps instead"
            )
        return per_epoch

    def _gate_batch(self, context: PruneContext, b: int) -> tuple[tuple[Tensor, ...], bool]:
        """Gate-training batch ``b`` and whether it is this rank's shard of it: the task's training batch at
        ``step + b``, or its first ``gate_batch_size`` samples. Data-parallel, the whole batch is each rank's
        shard (the objective's gradient is averaged over ranks); the first samples are those of the *global*
        batch, gathered to every rank (:func:`plprune.distributed.gather_samples`), so every rank computes the
        single process's objective."""
        batch = context.task.train_batch(context.step + b)
        size = self.config.gate_batch_size
        if not size:
            return batch, bool(context.distributed)
        return self._first_samples(context, batch, size), False

    def _features(self, context: PruneContext, seconds: dict[str, float]) -> KernelFeatures:
        """``compute_group_features`` (Sec. 3.2.2) in its three stages, each timed into ``seconds``."""
        cfg, model, groups = self.config, context.model, context.groups.groups
        with _stage(seconds, "feature_batch"):
            batch = self._feature_batch(context)
        names = list(dict.fromkeys(s.param_name for g in groups for s in g.slices))
        output_fn = functools.partial(context.task.per_sample_output, kind=cfg.kernel_output)
        with _stage(seconds, "per_sample_gradients"):
            grads = per_sample_gradients(model, output_fn, batch, params=names, chunk_size=cfg.chunk_size)
        with _stage(seconds, "kernels"):
            kernels = batched_group_kernels(grads, groups)
        del grads
        with _stage(seconds, "eigenvalues"):
            return kernel_features(kernels)

    def scores(self, context: PruneContext) -> Tensor:
        cfg = self.config
        model, groups = context.model, context.groups
        seconds = dict.fromkeys(STAGES, 0.0)
        extra, extra_names = self.extra_features(context)  # other criteria score in their own modes
        # exact third derivatives: plain-op norms, eager attention (foreign models; plprune.exact_norms)
        with exact_norms(model):
            was_training = model.training
            model.eval()  # no dropout: features and the gate objective are deterministic
            try:
                features = self._features(context, seconds)
                raw = torch.cat([features.as_matrix().double().cpu(), extra.double().cpu()], dim=1)
                inputs = self._gate_inputs(context, raw)
                with torch.random.fork_rng():  # leave the training RNG stream untouched
                    net = GatingNetwork(cfg.gate_hidden, cfg.scale_to_mean_one, raw.shape[1]).double()
                with torch.no_grad():  # seeded per event
                    g = generator(context.seed, "gating-init", context.event_index)
                    net.hidden.weight.copy_(
                        torch.randn(net.hidden.weight.shape, generator=g, dtype=torch.float64)
                    )
                    net.hidden.bias.copy_(
                        torch.randn(net.hidden.bias.shape, generator=g, dtype=torch.float64)
                    )
                optimizer = torch.optim.Adam(net.parameters(), lr=cfg.gate_lr)
                probes = generator(context.seed, "gating-probes", context.event_index)
                weights = groups.parameters()
                history: list[dict[str, float]] = []
                skipped = 0
                gate_batches = self._gate_batches(context)
                for b in range(gate_batches):
                    started = time.perf_counter()
                    batch, sharded = self._gate_batch(context, b)
                    gates = net(inputs)
                    with groups.soft_gates(gates.to(weights[0].dtype)):
                        loss = context.task.loss(model, batch)
                        trace = None
                        objective = loss
                        seconds["gate_loss"] += time.perf_counter() - started
                        if cfg.alpha > 0:  # α = 0: loss-only gate training, no Hessian work at all
                            with _stage(seconds, "hessian_trace"):
                                scalar = _hessian_scalar(cfg.hessian_scalar, context, batch, loss)
                                if sharded and cfg.hessian_scalar == "logits":
                                    scalar = scalar * dist.world_size()  # a sum: ranks' mean × W = global sum
                                trace = hutchinson_trace(
                                    scalar,
                                    weights,
                                    num_probes=cfg.num_probes,
                                    distribution=cfg.probe_distribution,
                                    generator=probes,
                                    create_graph=True,
                                )
                                objective = loss + cfg.alpha * trace.mean
                    started = time.perf_counter()
                    finite = bool(torch.isfinite(objective))
                    if context.distributed:
                        finite = dist.all_true(finite)  # the ranks skip together or step together
                    if not finite:
                        skipped += 1
                        continue
                    grads = torch.autograd.grad(objective, list(net.parameters()))
                    logged = [loss.detach(), trace.mean.detach() if trace is not None else loss.new_zeros(())]
                    if sharded:  # the global batch's gradient; identical on every rank
                        *grads, loss_mean, trace_mean = dist.all_reduce_mean([*grads, *logged])
                        logged = [loss_mean, trace_mean]
                    for param, grad in zip(net.parameters(), grads, strict=True):
                        param.grad = grad
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    history.append({"loss": float(logged[0]), "trace": float(logged[1])})
                    seconds["gate_backward"] += time.perf_counter() - started
                if gate_batches and skipped == gate_batches:
                    raise TrainingDivergedError(
                        "every gate-training batch gave a NaN/Inf objective; lower --alpha or --gate-lr"
                    )
                with torch.no_grad():
                    final_gates = net(inputs).float()
                noise = None
                if cfg.alpha > 0 and cfg.probe_check > 0:
                    with _stage(seconds, "probe_noise"):
                        noise = self._probe_noise(context, final_gates, history)
            finally:
                groups.clear_soft_gates()
                model.train(was_training)
        names = (*KERNEL_FEATURES, *extra_names)
        context.log.update(
            features={
                "min_eigenvalue": features.min_eigenvalue.tolist(),
                "max_eigenvalue": features.max_eigenvalue.tolist(),
                "condition_number": features.condition_number.tolist(),
                "entropy": features.entropy.tolist(),
                **{name: extra[:, i].tolist() for i, name in enumerate(extra_names)},
            },
            gates=final_gates.tolist(),
            gate_training=history,
            gate_batches=gate_batches,
            gate_batches_skipped=skipped,
            gate_spread=gate_spread(final_gates),
            gate_feature_correlation={
                name: spearman(final_gates.double(), raw[:, i]) for i, name in enumerate(names)
            },
            probe_noise=noise,
            pl_config=asdict(cfg),
            seconds=seconds,
        )
        return final_gates

    def _probe_noise(
        self, context: PruneContext, gates: Tensor, history: list[dict[str, float]]
    ) -> dict[str, float] | None:
        """Hutchinson noise at the final gates (measurement only; its own probe stream)."""
        cfg = self.config
        if cfg.probe_check < 1:
            return None
        groups, weights = context.groups, context.groups.parameters()
        stream = generator(context.seed, "probe-check", context.event_index)
        per_batch = []
        for b in range(cfg.probe_check_batches):
            batch = context.task.train_batch(context.step + b)
            with groups.soft_gates(gates.detach().to(weights[0].dtype)):
                loss = context.task.loss(context.model, batch)
                estimate = hutchinson_trace(
                    _hessian_scalar(cfg.hessian_scalar, context, batch, loss),
                    weights,
                    num_probes=cfg.probe_check,
                    distribution=cfg.probe_distribution,
                    generator=stream,
                )
            per_batch.append(estimate.per_probe)
        return probe_noise(per_batch, [h["trace"] for h in history])
