"""Switch Transformer for masked-language modelling: BERT with a top-1 mixture-of-experts FFN in every
layer (Fedus, Zoph & Shazeer, 2021, "Switch Transformers: Scaling to Trillion Parameter Models with
Simple and Efficient Sparsity", JMLR 2022).

Defaults follow the PL paper's Switch experiment (Table 2: 4 experts per layer, capacity factor 1.5)
and Fedus et al. (load-balancing weight α = 0.01, Sec. 2.2).

**Routing** (Fedus et al. Sec. 2.1, eq. 1-3). The B·T tokens of a batch are flattened (sample-major:
every token of sample 0, then sample 1, ...). The router ``W_r`` (a bias-free linear layer) gives
probabilities ``p(x) = softmax(W_r x)`` over the E experts; each token goes to its argmax expert i
(ties: the lowest index) and its FFN output is ``p_i(x) · E_i(x) · g_i`` (``g_i``: the expert's
soft gate, paper Eq. 6; 1 without a gate).

**Capacity and dropping** (eq. 3). Each expert processes at most
``capacity = ceil(capacity_factor · tokens / K)`` tokens, where ``tokens = B·T`` and K is the number of
experts not hard-pruned (K = E before pruning). Tokens are served in flattened order, so earlier tokens
keep their place and the overflow (the latest tokens routed to a full expert) is *dropped*: its FFN
output is exactly 0 and the layer's residual connection carries the token unchanged to the next layer
(as in Switch). ``drop_tokens=False`` gives every expert unlimited capacity. Padding tokens are routed
like any other token (the FFN does not see the attention mask; MLM blocks have no padding).

Because capacity is shared by the batch, a token's output depends on the *other* samples of the batch
(which tokens come before it). ``per_sample_loss``/``per_sample_true_logit`` are computed per sample from
one forward pass over the batch exactly as passed in; the per-sample gradient code of
:mod:`plprune.curvature` passes samples one at a time, so there each sample has its own capacity
``ceil(capacity_factor · T / K)``.

**Load balancing** (eq. 4). Every forward pass stores on the layer
``aux_loss = K · Σ_i f_i · P_i`` (f_i: fraction of tokens whose argmax is expert i, *before* dropping;
P_i: mean router probability of expert i), a 0-d tensor in the autograd graph; it is 1 for perfectly
uniform routing. :class:`SwitchForMaskedLM` adds ``aux_loss_weight · mean over layers`` to the MLM loss.

**Gates and pruning** (group kind ``"expert"``, applied from outside by :mod:`plprune.sites.experts`:
forward hooks, no pruning code in this model). Group i of a layer is expert i's two linear layers
(weights and biases). A *soft gate* ``g_i`` multiplies the expert's output and leaves routing alone: gate
0 is equivalent to zeroing the expert's weights (its tokens still go to it and come out as 0).
A *hard prune* (:meth:`SwitchFeedForward.set_hard_mask`, called by
``GroupSet.apply_mask``) additionally sets the expert's router logit to −∞, so its probability is 0, no
token is routed to it, the softmax renormalises over the remaining experts and K shrinks: the pruned
layer is exactly a Switch layer with K experts (what physically removing the expert gives). The
router's row of a pruned expert is not part of the group (it no longer influences anything).

Everything is plain differentiable ops (softmax, gather, index_select/index_add, no in-place ops on
tensors that need grad), so the model is twice- and thrice-differentiable w.r.t. gates; the discrete
choices (argmax, capacity) are piecewise constant. Expert computation is sparse (each expert only sees
its tokens), which uses data-dependent shapes, so ``torch.func.vmap`` over samples is not supported (the
curvature code falls back to its per-sample loop).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.architecture import register_architecture, register_trace_check
from plprune.models.bert import BertConfig, BertForMaskedLM, MaskedLMOutput, bert_example_inputs
from plprune.validation import check_non_negative_float, check_positive_float, check_positive_int

__all__ = [
    "ExpertFeedForward",
    "SwitchConfig",
    "SwitchFeedForward",
    "SwitchForMaskedLM",
    "SwitchMaskedLMOutput",
    "check_every_expert_is_traced",
]


@dataclass
class SwitchConfig:
    """Mixture-of-experts settings of a Switch layer (Fedus et al., 2021).

    * ``num_experts`` — E ≥ 2 experts per layer (PL paper Table 2: 4).
    * ``capacity_factor`` — > 0; expert capacity = ceil(capacity_factor · tokens / K), K = experts not
      hard-pruned (= E before pruning) (eq. 3; Table 2: 1.5).
    * ``aux_loss_weight`` — α ≥ 0 of the load-balancing loss (eq. 4; Fedus et al.: 0.01).
    * ``expert_ffn_size`` — hidden width of each expert FFN; ``None`` = the BERT config's ``ffn_size``.
    * ``drop_tokens`` — drop tokens beyond an expert's capacity (Switch); ``False`` = unlimited capacity.
    """

    num_experts: int = 4
    capacity_factor: float = 1.5
    aux_loss_weight: float = 0.01
    expert_ffn_size: int | None = None
    drop_tokens: bool = True

    def __post_init__(self) -> None:
        check_positive_int("num_experts", self.num_experts)
        if self.num_experts < 2:
            raise PlpruneError(
                f"num_experts must be an integer >= 2 (a mixture of experts needs at least two), "
                f"got {self.num_experts!r}"
            )
        self.capacity_factor = check_positive_float("capacity_factor", self.capacity_factor)
        self.aux_loss_weight = check_non_negative_float("aux_loss_weight", self.aux_loss_weight)
        if self.expert_ffn_size is not None:
            check_positive_int("expert_ffn_size", self.expert_ffn_size)
        if not isinstance(self.drop_tokens, bool):
            raise PlpruneError(f"drop_tokens must be True or False, got {self.drop_tokens!r}")


@dataclass
class SwitchMaskedLMOutput(MaskedLMOutput):
    """:class:`MaskedLMOutput` of a Switch model. ``loss`` = ``mlm_loss + aux_loss_weight · aux_loss``
    (with labels; ``None`` without), ``mlm_loss`` the pure masked-token cross-entropy (use it for
    perplexity), ``aux_loss`` the mean load-balancing loss over layers (always set)."""

    mlm_loss: Tensor | None = None
    aux_loss: Tensor | None = None


class ExpertFeedForward(nn.Module):
    """One expert: ``W_2 GELU(W_1 x + b_1) + b_2``, the same FFN as :class:`plprune.models.bert.FeedForward`
    (and with the same parameter names), sized by arguments instead of a BertConfig."""

    def __init__(self, hidden_size: int, ffn_size: int) -> None:
        super().__init__()
        self.intermediate = nn.Linear(hidden_size, ffn_size)
        self.output = nn.Linear(ffn_size, hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.output(F.gelu(self.intermediate(hidden)))


class SwitchFeedForward(nn.Module):
    """Top-1 routed mixture of E expert FFNs with capacity, token dropping and a load-balancing loss
    (Fedus et al. 2021, Sec. 2); a gate site of kind ``"expert"`` (see the module docstring).

    After each forward pass: ``aux_loss`` (0-d tensor, in the graph), and for diagnostics
    :attr:`last_expert_counts`, :attr:`last_routed_counts`, :attr:`last_dropped`, :attr:`last_capacity`.
    """

    group_kind = "expert"

    def __init__(self, hidden_size: int, ffn_size: int, switch_config: SwitchConfig | None = None) -> None:
        super().__init__()
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("ffn_size", ffn_size)
        if switch_config is None:
            switch_config = SwitchConfig()
        if not isinstance(switch_config, SwitchConfig):
            raise PlpruneError(f"switch_config must be a SwitchConfig, got {type(switch_config).__name__}")
        self.config = switch_config
        self.num_experts = switch_config.num_experts
        self.hidden_size = hidden_size
        self.ffn_size = ffn_size
        self.router = nn.Linear(hidden_size, self.num_experts, bias=False)
        self.experts = nn.ModuleList(
            ExpertFeedForward(hidden_size, ffn_size) for _ in range(self.num_experts)
        )
        # persistent, so that a saved pruned model keeps routing around its pruned experts
        self.register_buffer("expert_keep", torch.ones(self.num_experts, dtype=torch.bool))
        self.aux_loss: Tensor | None = None
        self._routed_counts: Tensor | None = None
        self._kept_counts: Tensor | None = None
        self._capacity: int | None = None

    def __getstate__(self) -> dict:
        """Copies and pickles hold ``aux_loss`` detached: a non-leaf tensor in the graph would
        make ``copy.deepcopy(model)`` / ``torch.save(model)`` fail after a forward pass."""
        state = super().__getstate__()
        for name in ("aux_loss",):
            if state.get(name) is not None:
                state[name] = state[name].detach()
        return state

    def set_hard_mask(self, keep: Tensor) -> None:
        """Hard-prune the experts where ``keep`` (bool, shape ``(num_experts,)``) is False: their router
        logit becomes −∞ (no token is routed to them; the softmax renormalises over the others) and the
        capacity is computed over the kept experts. At least one expert must be kept."""
        keep = torch.as_tensor(keep)
        if keep.dtype != torch.bool or tuple(keep.shape) != (self.num_experts,):
            raise PlpruneError(
                f"expert keep mask must be a bool tensor of shape ({self.num_experts},), "
                f"got {keep.dtype} of shape {tuple(keep.shape)}"
            )
        if not bool(keep.any()):
            raise PlpruneError(
                "expert keep mask removes every expert of the layer; at least one expert must be kept"
            )
        self.expert_keep.copy_(keep.to(self.expert_keep.device))

    # -- diagnostics ------------------------------------------------------------------------------
    def _require_forward(self) -> None:
        if self._routed_counts is None:
            raise PlpruneError("no forward pass yet: expert counts exist after the layer has run once")

    @property
    def last_routed_counts(self) -> Tensor:
        """Tokens whose argmax was each expert in the last forward pass, before dropping; long ``(E,)``."""
        self._require_forward()
        return self._routed_counts  # type: ignore[return-value]

    @property
    def last_expert_counts(self) -> Tensor:
        """Tokens each expert actually processed in the last forward pass (after dropping); long ``(E,)``."""
        self._require_forward()
        return self._kept_counts  # type: ignore[return-value]

    @property
    def last_dropped(self) -> int:
        """Tokens dropped (over capacity, FFN output 0) in the last forward pass."""
        self._require_forward()
        return int((self._routed_counts - self._kept_counts).sum())  # type: ignore[operator]

    @property
    def last_capacity(self) -> int:
        """Expert capacity used in the last forward pass."""
        self._require_forward()
        return int(self._capacity)  # type: ignore[arg-type]

    def capacity(self, num_tokens: int, num_alive: int | None = None) -> int:
        """``ceil(capacity_factor · num_tokens / K)`` (Fedus et al. eq. 3), K = kept experts; ``num_tokens``
        when ``drop_tokens`` is off."""
        if not self.config.drop_tokens:
            return num_tokens
        alive = int(self.expert_keep.sum()) if num_alive is None else num_alive
        return math.ceil(self.config.capacity_factor * num_tokens / alive)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, hidden: Tensor) -> Tensor:
        if hidden.dim() < 1 or hidden.shape[-1] != self.hidden_size:
            raise PlpruneError(
                f"input must have last dimension hidden_size={self.hidden_size}, got {tuple(hidden.shape)}"
            )
        shape = hidden.shape
        tokens = hidden.reshape(-1, self.hidden_size)
        num_tokens, num_experts = tokens.shape[0], self.num_experts
        keep = self.expert_keep
        num_alive = int(keep.sum())

        logits = self.router(tokens)
        logits = torch.where(keep, logits, torch.full_like(logits, -math.inf))  # exact when all kept
        probs = torch.softmax(logits, dim=-1)  # (N, E)
        expert_index = probs.detach().argmax(dim=-1)  # (N,), first maximum on ties
        one_hot = F.one_hot(expert_index, num_experts)  # (N, E) long

        # load balancing (eq. 4): f_i before dropping, P_i mean router probability
        fraction = one_hot.to(probs.dtype).mean(dim=0)
        self.aux_loss = num_alive * (fraction * probs.mean(dim=0)).sum()

        # capacity (eq. 3): a token's 0-based place in its expert's queue, in flattened token order
        capacity = self.capacity(num_tokens, num_alive)
        place = (one_hot.cumsum(dim=0) * one_hot).sum(dim=1) - 1  # (N,)
        kept = place < capacity
        self._capacity = capacity
        self._routed_counts = one_hot.sum(dim=0).detach()
        self._kept_counts = (one_hot * kept.unsqueeze(1)).sum(dim=0).detach()

        chosen_prob = probs.gather(1, expert_index.unsqueeze(1))  # (N, 1)
        indices, outputs = [], []
        for i, expert in enumerate(self.experts):
            index = ((expert_index == i) & kept).nonzero().squeeze(1)
            if index.numel() == 0:
                continue
            out = expert(tokens.index_select(0, index)) * chosen_prob.index_select(0, index)
            indices.append(index)
            outputs.append(out)
        result = tokens.new_zeros(tokens.shape)  # dropped tokens: FFN output 0 (residual carries them)
        if outputs:
            result = result.index_add(0, torch.cat(indices), torch.cat(outputs))
        return result.reshape(shape)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"experts={self.num_experts}, hidden={self.hidden_size}, ffn={self.ffn_size}, "
            f"capacity_factor={c.capacity_factor}, drop_tokens={c.drop_tokens}"
        )


class SwitchForMaskedLM(BertForMaskedLM):
    """BERT MLM (:class:`BertForMaskedLM`) whose every FFN is a :class:`SwitchFeedForward`.

    Attention heads (kind ``"head"``) and experts (kind ``"expert"``) are both gate sites:
    ``GroupSet(model, kinds=("head", "expert"))`` finds all of them. ``forward`` with labels returns a
    :class:`SwitchMaskedLMOutput` whose ``loss`` includes ``aux_loss_weight ·`` the mean load-balancing loss
    over layers (Fedus et al. eq. 4) and whose ``mlm_loss`` is the pure MLM loss. ``per_sample_loss`` and
    ``per_sample_true_logit`` are inherited (pure MLM quantities; see the module docstring on how token
    dropping couples the samples of a batch).
    """

    def __init__(self, config: BertConfig, switch_config: SwitchConfig | None = None) -> None:
        if switch_config is None:
            switch_config = SwitchConfig()
        if not isinstance(switch_config, SwitchConfig):
            raise PlpruneError(f"switch_config must be a SwitchConfig, got {type(switch_config).__name__}")
        ffn_size = switch_config.expert_ffn_size or config.ffn_size

        def factory(bert_config: BertConfig, layer_index: int) -> nn.Module:
            return SwitchFeedForward(bert_config.hidden_size, ffn_size, switch_config)

        super().__init__(config, feed_forward_factory=factory)
        self.switch_config = switch_config

    @property
    def moe_layers(self) -> list[SwitchFeedForward]:
        return [layer.feed_forward for layer in self.layers]

    def router_aux_loss(self) -> Tensor:
        """Mean load-balancing loss (eq. 4) over layers from the last forward pass (0-d, in the graph)."""
        losses = [layer.aux_loss for layer in self.moe_layers]
        if any(loss is None for loss in losses):
            raise PlpruneError("no forward pass yet: the load-balancing loss exists after a forward pass")
        return torch.stack(losses).mean()  # type: ignore[arg-type]

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
        logits_at: Literal["masked", "all"] = "masked",
    ) -> SwitchMaskedLMOutput:
        """MLM forward pass (see :meth:`BertForMaskedLM.forward`); ``loss = mlm_loss + α · aux_loss``."""
        output = super().forward(input_ids, labels, attention_mask, logits_at)
        aux = self.router_aux_loss()
        if output.loss is None:
            return SwitchMaskedLMOutput(logits=output.logits, loss=None, mlm_loss=None, aux_loss=aux)
        loss = output.loss + self.switch_config.aux_loss_weight * aux
        return SwitchMaskedLMOutput(logits=output.logits, loss=loss, mlm_loss=output.loss, aux_loss=aux)


# -- export: the family as data (plprune.models.architecture) -------------------------------------------
def _describe(model: SwitchForMaskedLM) -> dict:
    return {
        "bert_config": model.config.to_dict(),
        "switch_config": dataclasses.asdict(model.switch_config),
    }


def _build(description: dict) -> SwitchForMaskedLM:
    return SwitchForMaskedLM(
        BertConfig(**description["bert_config"]), SwitchConfig(**description["switch_config"])
    )


def check_every_expert_is_traced(model: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    """Tracing records only the experts the example batch reaches (a Switch layer skips an expert with no
    token): refuse an example that leaves one out, instead of an ONNX graph without it."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SwitchFeedForward)]
    if not layers:
        return
    with torch.no_grad():
        model(*inputs)
    for name, layer in layers:
        idle = (layer.last_expert_counts == 0).nonzero().flatten().tolist()
        if idle:
            raise PlpruneError(
                f"ONNX export traces the MoE routing with the example inputs, which send no token to experts "
                f"{idle} of {name}: the ONNX graph would leave them out. Pass a larger example_inputs batch"
            )


register_architecture(
    SwitchForMaskedLM,
    "plprune.SwitchForMaskedLM",
    describe=_describe,
    build=_build,
    example_inputs=bert_example_inputs,
)
register_trace_check(check_every_expert_is_traced)
