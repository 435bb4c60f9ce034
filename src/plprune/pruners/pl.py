"""The PL-regularised pruner (paper Sec. 3.2, Alg. 2): kernel features → gating network → TopK.

At a pruning event (Alg. 2 lines 4-8):

1. features d_w = (λ_min(K_i), ρ_i) of every group's tangent kernel on ``feature_samples`` samples
   (Sec. 3.2.2, Eq. 7);
2. the gating network g = FN_v(d̂) (Eq. 8, scaled to mean 1, see :mod:`plprune.gating`) is trained with
   the weights w frozen on ``L_S(g ⊙ w) + α · Tr(H(g ⊙ w))`` (Eq. 36), Tr by Hutchinson (Alg. 1) with
   ``create_graph`` so the trace is differentiated w.r.t. v (third order), for ``gate_steps`` batches;
3. the final gates are the scores: the callback keeps the TopK (with layer protection).

The Hessian is taken of ``hessian_scalar``: ``"loss"`` (default: the training loss, the quantity whose
conditioning the paper's Prop. 8 bounds via the loss Hessian) or ``"logits"`` (sum of the masked-token
logits, literally Alg. 1's ``f``), w.r.t. the group weights (attention Q/K/V/O, expert, filter weights).

Data-parallel (``context.distributed``, docs/distributed.md): the kernel samples are the first
``feature_samples`` of the global batch, gathered from every rank's shard (:func:`plprune.distributed.
gather_samples`), so every rank computes the same features; each gate-training batch is each rank's shard
and the gating network's gradients (and the logged loss/trace) are averaged over ranks, which is the
gradient of the global batch's objective (same seeded probes on every rank; Hutchinson's estimate is linear
in H). The Pruner broadcasts rank 0's final gates.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

import plprune.distributed as dist
from plprune.curvature import compute_group_features, hutchinson_trace
from plprune.errors import TrainingDivergedError
from plprune.exact_norms import exact_norms
from plprune.gating import GatingNetwork, normalise_features
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


@dataclass
class PLConfig:
    """Settings of the PL pruner; defaults are the ones the benchmark uses (docs/pl-method.md)."""

    alpha: float = field(default=1.0, metadata={"help": "weight of the Hessian-trace term (1, Alg. 2)"})
    gate_steps: int = field(default=10, metadata={"help": "gating-network training batches per event (10)"})
    gate_lr: float = field(default=0.05, metadata={"help": "gating-network learning rate (default 0.05)"})
    gate_hidden: int = 16
    num_probes: int = field(default=1, metadata={"help": "Hutchinson probes per batch (default 1)"})
    probe_distribution: str = "rademacher"
    hessian_scalar: str = field(default="loss", metadata={"help": "loss (default) or logits (Alg. 1's f)"})
    kernel_output: str = field(
        default="loss", metadata={"help": "per-sample scalar of the kernels: loss (default) or logit"}
    )
    feature_samples: int = field(default=16, metadata={"help": "samples n of the tangent kernels (16)"})
    # per-sample loop: on CPU faster than vmap, which holds n × T × V logits at once (helper timing)
    chunk_size: int | None = 1
    scale_to_mean_one: bool = True
    log_min_eigenvalue: bool = True

    def __post_init__(self) -> None:
        check_non_negative_float("alpha", self.alpha)
        check_non_negative_int("gate_steps", self.gate_steps)
        check_positive_float("gate_lr", self.gate_lr)
        check_positive_int("gate_hidden", self.gate_hidden)
        check_positive_int("num_probes", self.num_probes)
        check_choice("probe distribution", self.probe_distribution, ("rademacher", "gaussian"))
        check_choice("hessian_scalar", self.hessian_scalar, HESSIAN_SCALARS)
        check_choice("kernel_output", self.kernel_output, ("loss", "logit"))
        check_positive_int("feature_samples", self.feature_samples)
        if self.chunk_size is not None:
            check_positive_int("chunk_size", self.chunk_size)


def _hessian_scalar(kind: str, context: PruneContext, batch: tuple[Tensor, ...], loss: Tensor) -> Tensor:
    if kind == "loss":
        return loss
    if hasattr(context.task, "logits"):  # classification: the task knows which tensor is the input
        return context.task.logits(context.model, batch).sum()
    return context.model(*batch).logits.sum()  # masked LM: logits at the masked positions


@register_method("pl", description="PL-regularised gating network (the paper, Alg. 2)", config=PLConfig)
class PLScorer(GroupScorer):
    """Scores = gates of a gating network trained on loss + α·Hutchinson trace (Alg. 2)."""

    name = "pl"

    def __init__(self, config: PLConfig | None = None) -> None:
        self.config = config or PLConfig()

    def _feature_batch(self, context: PruneContext) -> tuple[Tensor, ...]:
        batch = context.task.train_batch(context.step)
        if context.distributed:  # every rank's samples, in global order, on every rank
            return dist.gather_samples(batch, self.config.feature_samples)  # type: ignore[return-value]
        return tuple(t[: self.config.feature_samples] for t in batch)

    def scores(self, context: PruneContext) -> Tensor:
        cfg = self.config
        model, groups = context.model, context.groups
        # exact third derivatives: plain-op norms, eager attention (foreign models; plprune.exact_norms)
        with exact_norms(model):
            was_training = model.training
            model.eval()  # no dropout: features and the gate objective are deterministic
            try:
                features = compute_group_features(
                    model,
                    groups.groups,
                    functools.partial(context.task.per_sample_output, kind=cfg.kernel_output),
                    self._feature_batch(context),
                    chunk_size=cfg.chunk_size,
                )
                # standardised per kind: heads' and experts' kernels live on different scales
                raw = features.as_matrix()
                inputs = torch.zeros_like(raw)
                for kind in groups.kinds:
                    index = groups.kind_index(kind)
                    inputs[index] = normalise_features(raw[index], cfg.log_min_eigenvalue)
                with torch.random.fork_rng():  # leave the training RNG stream untouched
                    net = GatingNetwork(cfg.gate_hidden, cfg.scale_to_mean_one).double()
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
                for b in range(cfg.gate_steps):
                    batch = context.task.train_batch(context.step + b)
                    gates = net(inputs)
                    with groups.soft_gates(gates.to(weights[0].dtype)):
                        loss = context.task.loss(model, batch)
                        trace = None
                        objective = loss
                        if cfg.alpha > 0:  # α = 0: loss-only gate training, no Hessian work at all
                            scalar = _hessian_scalar(cfg.hessian_scalar, context, batch, loss)
                            if context.distributed and cfg.hessian_scalar == "logits":
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
                    finite = bool(torch.isfinite(objective))
                    if context.distributed:
                        finite = dist.all_true(finite)  # the ranks skip together or step together
                    if not finite:
                        skipped += 1
                        continue
                    grads = torch.autograd.grad(objective, list(net.parameters()))
                    logged = [loss.detach(), trace.mean.detach() if trace is not None else loss.new_zeros(())]
                    if context.distributed:  # the global batch's gradient; identical on every rank
                        *grads, loss_mean, trace_mean = dist.all_reduce_mean([*grads, *logged])
                        logged = [loss_mean, trace_mean]
                    for param, grad in zip(net.parameters(), grads, strict=True):
                        param.grad = grad
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    history.append({"loss": float(logged[0]), "trace": float(logged[1])})
                if cfg.gate_steps and skipped == cfg.gate_steps:
                    raise TrainingDivergedError(
                        "every gate-training batch gave a NaN/Inf objective; lower --alpha or --gate-lr"
                    )
                with torch.no_grad():
                    final_gates = net(inputs).float()
            finally:
                groups.clear_soft_gates()
                model.train(was_training)
        context.log.update(
            features={
                "min_eigenvalue": features.min_eigenvalue.tolist(),
                "max_eigenvalue": features.max_eigenvalue.tolist(),
                "condition_number": features.condition_number.tolist(),
                "entropy": features.entropy.tolist(),
            },
            gates=final_gates.tolist(),
            gate_training=history,
            gate_batches_skipped=skipped,
            pl_config=asdict(cfg),
        )
        return final_gates
