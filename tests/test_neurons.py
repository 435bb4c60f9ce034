"""Feed-forward neurons (group kind ``"neuron"``): found in every supported family, gated, compacted, scored.

References are independent of the site code: each family's output projections are named by hand, and the
masked model is compared with the same model whose pruned channels' columns of the output projection were
zeroed by hand (which removes a channel whatever the activation does at 0); compacted parameter counts are
arithmetic from the config; the batched tangent kernels are compared with the per-group ``J_i J_iᵀ``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import plprune
from plprune.compaction import compact
from plprune.curvature import ntk
from plprune.errors import PlpruneError
from plprune.models import BertConfig, BertForMaskedLM, SwitchConfig, SwitchForMaskedLM
from plprune.pruners.pl_plus import PLPlusConfig, PLPlusScorer
from plprune.sites.neurons import unregister_ffn
from plprune.sites.projections import is_conv1d

T = pytest.importorskip("transformers")

H, FFN, V, SEQ = 16, 32, 50, 8
EAGER = {"attn_implementation": "eager"}


def ids(n: int = 2, seed: int = 0) -> Tensor:
    return torch.randint(0, V, (n, SEQ), generator=torch.Generator().manual_seed(seed))


def bert_config(**overrides: object) -> BertConfig:
    settings = {
        "vocab_size": V,
        "hidden_size": H,
        "num_layers": 2,
        "num_heads": 2,
        "ffn_size": FFN,
        "max_length": SEQ,
        "dropout": 0.0,
        "attention_dropout": 0.0,
    }
    return BertConfig(**{**settings, **overrides})


def last_hidden(model: nn.Module) -> Tensor:
    return model(ids()).last_hidden_state


def encoder_decoder(model: nn.Module) -> Tensor:
    return model(ids(), decoder_input_ids=ids(seed=1)).last_hidden_state


def t5_outputs(model: nn.Module) -> list[nn.Module]:
    """The ``wo`` of every T5 feed-forward block: dense ones, and each expert of a SwitchTransformers MoE."""
    out = []
    for stack in (model.encoder, model.decoder):
        for block in stack.block:
            ff = block.layer[-1]
            inner = getattr(ff, "DenseReluDense", None) or ff.mlp
            experts = getattr(inner, "experts", None)
            out += (
                [experts[f"expert_{i}"].wo for i in range(len(experts))]
                if experts is not None
                else [inner.wo]
            )
    return out


@dataclass(frozen=True)
class Family:
    build: Callable[[], nn.Module]
    run: Callable[[nn.Module], Tensor]
    outputs: Callable[[nn.Module], list[nn.Module]]  # the output projections, named by hand, in order
    per_neuron: int  # weights one neuron holds, from the config
    width: int = FFN


def gated_decoder(model: str, config: str, **extra: object) -> Family:
    """A Llama-style decoder of 2 layers with a gated MLP (gate/up rows and a down column per neuron, no
    biases: 3·H weights each), its last hidden state as output."""
    return Family(
        lambda: getattr(T, model)(
            getattr(T, config)(
                hidden_size=H,
                intermediate_size=FFN,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                vocab_size=V,
                **extra,
                **EAGER,
            )
        ),
        last_hidden,
        lambda m: [layer.mlp.down_proj for layer in m.layers],
        3 * H,
    )


FAMILIES = {
    "plprune-bert": Family(
        lambda: BertForMaskedLM(bert_config()),
        lambda m: m(ids()).logits,
        lambda m: [layer.feed_forward.output for layer in m.layers],
        2 * H + 1,
    ),
    "plprune-switch": Family(  # one site per expert FFN
        lambda: SwitchForMaskedLM(bert_config(), SwitchConfig(num_experts=2, capacity_factor=4.0)),
        lambda m: m(ids()).logits,
        lambda m: [e.output for layer in m.layers for e in layer.feed_forward.experts],
        2 * H + 1,
    ),
    "hf-bert": Family(
        lambda: T.BertModel(
            T.BertConfig(
                hidden_size=H,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=FFN,
                vocab_size=V,
                max_position_embeddings=SEQ,
                **EAGER,
            )
        ),
        last_hidden,
        lambda m: [layer.output.dense for layer in m.encoder.layer],
        2 * H + 1,
    ),
    "hf-roberta": Family(
        lambda: T.RobertaModel(
            T.RobertaConfig(
                hidden_size=H,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=FFN,
                vocab_size=V,
                max_position_embeddings=16,
                **EAGER,
            )
        ),
        last_hidden,
        lambda m: [layer.output.dense for layer in m.encoder.layer],
        2 * H + 1,
    ),
    "hf-electra": Family(
        lambda: T.ElectraModel(
            T.ElectraConfig(
                embedding_size=H,
                hidden_size=H,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=FFN,
                vocab_size=V,
                max_position_embeddings=SEQ,
                **EAGER,
            )
        ),
        last_hidden,
        lambda m: [layer.output.dense for layer in m.encoder.layer],
        2 * H + 1,
    ),
    "hf-distilbert": Family(
        lambda: T.DistilBertModel(
            T.DistilBertConfig(
                dim=H,
                hidden_dim=FFN,
                n_layers=2,
                n_heads=2,
                vocab_size=V,
                max_position_embeddings=SEQ,
                **EAGER,
            )
        ),
        last_hidden,
        lambda m: [layer.ffn.lin2 for layer in m.transformer.layer],
        2 * H + 1,
    ),
    "hf-gpt2": Family(  # Conv1D: weights stored [in, out]
        lambda: T.GPT2Model(
            T.GPT2Config(
                n_embd=H,
                n_inner=FFN,
                n_layer=2,
                n_head=2,
                vocab_size=V,
                n_positions=SEQ,
                bos_token_id=0,
                eos_token_id=0,
                **EAGER,
            )
        ),
        last_hidden,
        lambda m: [block.mlp.c_proj for block in m.h],
        2 * H + 1,
    ),
    "hf-opt": Family(
        lambda: T.OPTModel(
            T.OPTConfig(
                hidden_size=H,
                num_hidden_layers=2,
                num_attention_heads=2,
                ffn_dim=FFN,
                vocab_size=V,
                max_position_embeddings=16,
                word_embed_proj_dim=H,
                **EAGER,
            )
        ),
        last_hidden,
        lambda m: [layer.fc2 for layer in m.decoder.layers],
        2 * H + 1,
    ),
    "hf-bart": Family(
        lambda: T.BartModel(
            T.BartConfig(
                d_model=H,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=FFN,
                decoder_ffn_dim=FFN,
                vocab_size=V,
                max_position_embeddings=16,
                **EAGER,
            )
        ),
        encoder_decoder,
        lambda m: [m.encoder.layers[0].fc2, m.decoder.layers[0].fc2],
        2 * H + 1,
    ),
    "hf-whisper": Family(
        lambda: T.WhisperModel(
            T.WhisperConfig(
                d_model=H,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=FFN,
                decoder_ffn_dim=FFN,
                vocab_size=V,
                num_mel_bins=4,
                max_source_positions=4,
                max_target_positions=16,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                decoder_start_token_id=1,
                **EAGER,
            )
        ),
        lambda m: (
            m(
                torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1)), decoder_input_ids=ids()
            ).last_hidden_state
        ),
        lambda m: [m.encoder.layers[0].fc2, m.decoder.layers[0].fc2],
        2 * H + 1,
    ),
    "hf-llama": gated_decoder("LlamaModel", "LlamaConfig"),
    "hf-qwen2": gated_decoder("Qwen2Model", "Qwen2Config"),
    "hf-mistral": gated_decoder("MistralModel", "MistralConfig"),
    "hf-gemma": gated_decoder("GemmaModel", "GemmaConfig", head_dim=8),
    # fused [gate; up]: rows c and I + c of gate_up_proj
    "hf-phi3": gated_decoder("Phi3Model", "Phi3Config", pad_token_id=0),
    "hf-t5": Family(
        lambda: T.T5Model(
            T.T5Config(d_model=H, d_ff=FFN, d_kv=8, num_layers=1, num_heads=2, vocab_size=V, **EAGER)
        ),
        encoder_decoder,
        t5_outputs,
        2 * H,
    ),
    "hf-t5-gated": Family(
        lambda: T.T5Model(
            T.T5Config(
                d_model=H,
                d_ff=FFN,
                d_kv=8,
                num_layers=1,
                num_heads=2,
                vocab_size=V,
                feed_forward_proj="gated-gelu",
                **EAGER,
            )
        ),
        encoder_decoder,
        t5_outputs,
        3 * H,
    ),
    "hf-switch-transformers": Family(  # dense FFNs and every expert's FFN
        lambda: T.SwitchTransformersModel(
            T.SwitchTransformersConfig(
                vocab_size=V,
                d_model=H,
                d_kv=8,
                d_ff=FFN,
                num_layers=2,
                num_decoder_layers=2,
                num_heads=2,
                num_experts=2,
                expert_capacity=64,
                num_sparse_encoder_layers=1,
                num_sparse_decoder_layers=1,
                **EAGER,
            )
        ),
        encoder_decoder,
        t5_outputs,
        2 * H,
    ),
    "hf-gpt-neox": Family(
        lambda: T.GPTNeoXModel(
            T.GPTNeoXConfig(
                hidden_size=H,
                intermediate_size=FFN,
                num_hidden_layers=2,
                num_attention_heads=2,
                vocab_size=V,
                **EAGER,
            )
        ),
        last_hidden,
        lambda m: [layer.mlp.dense_4h_to_h for layer in m.layers],
        2 * H + 1,
    ),
    "hf-falcon": Family(  # FalconLinear (an nn.Linear subclass), 4·hidden channels, no biases
        lambda: T.FalconModel(
            T.FalconConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=2, vocab_size=V, **EAGER)
        ),
        last_hidden,
        lambda m: [layer.mlp.dense_4h_to_h for layer in m.h],
        2 * H,
        width=4 * H,
    ),
    "hf-vit": Family(
        lambda: T.ViTModel(
            T.ViTConfig(
                image_size=8,
                patch_size=4,
                hidden_size=H,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=FFN,
                **EAGER,
            )
        ),
        lambda m: m(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))).last_hidden_state,
        lambda m: [layer.mlp.fc2 for layer in m.layers],
        2 * H + 1,
    ),
}


def build(family: Family, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return family.build().eval()


def half_mask(groups: plprune.GroupSet, seed: int = 3) -> Tensor:
    """About half of the neurons pruned, seeded; channel 0 of every site kept."""
    mask = torch.rand(len(groups), generator=torch.Generator().manual_seed(seed)) < 0.5
    for _, start, _ in groups.site_ranges():
        mask[start] = True
    return mask


def zero_channels_by_hand(projection: nn.Module, channels: Tensor) -> None:
    """Remove ``channels`` from a block by zeroing what the output projection reads of them."""
    with torch.no_grad():
        if type(projection).__name__ == "Conv1D":  # [in, out]
            projection.weight[channels, :] = 0
        else:
            projection.weight[:, channels] = 0


def check_shapes_agree(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if is_conv1d(module):
            assert tuple(module.weight.shape) == (module.nx, module.nf), name
        elif isinstance(module, nn.Linear):
            assert tuple(module.weight.shape) == (module.out_features, module.in_features), name


@pytest.mark.parametrize("name", list(FAMILIES))
def test_masked_neurons_equal_zeroed_channels_and_compact_exactly(name: str) -> None:
    family = FAMILIES[name]
    model = build(family)
    reference = copy.deepcopy(model)
    groups = plprune.GroupSet(model, kinds=("neuron",))
    outputs = family.outputs(model)
    assert [site.output for site in groups.sites] == outputs  # exactly the blocks named by hand, in order
    assert [site.num_groups for site in groups.sites] == [family.width] * len(outputs)
    assert len({g.layer for g in groups.groups}) == len(outputs)  # one protection layer per block
    with torch.no_grad():
        dense = family.run(model)
    mask = half_mask(groups)
    groups.apply_mask(mask)
    for (_, start, stop), projection in zip(groups.site_ranges(), family.outputs(reference), strict=True):
        zero_channels_by_hand(projection, (~mask[start:stop]).nonzero().flatten())
    params = dict(model.named_parameters())
    for group, kept in zip(groups.groups, mask.tolist(), strict=True):
        if not kept:
            assert all(not s.select(params[s.param_name]).any() for s in group.slices), group.name
    with torch.no_grad():
        masked, expected = family.run(model), family.run(reference)
    assert not torch.allclose(masked, dense)  # the mask did something
    torch.testing.assert_close(masked, expected, rtol=0, atol=1e-6)

    compacted, report = compact(groups)
    with torch.no_grad():
        torch.testing.assert_close(family.run(compacted), masked, rtol=0, atol=1e-5)
    pruned = int((~mask).sum())
    assert report.parameters_before - report.parameters_after == pruned * family.per_neuron
    assert report.groups_after == {"neuron": len(mask) - pruned}
    check_shapes_agree(compacted)
    kept = [int(mask[a:b].sum()) for _, a, b in groups.site_ranges()]
    assert [s.num_groups for s in plprune.GroupSet(compacted, kinds=("neuron",)).sites] == kept
    if name in ("hf-llama", "hf-qwen2", "hf-mistral", "hf-gemma"):  # the module's own count follows
        assert [layer.mlp.intermediate_size for layer in compacted.layers] == kept


def test_switch_experts_are_one_neuron_layer_each_and_keep_a_neuron() -> None:
    model = build(FAMILIES["plprune-switch"])
    groups = plprune.GroupSet(model, kinds=("neuron",))
    assert [s.module_name for s in groups.sites] == [
        f"layers.{layer}.feed_forward.experts.{e}" for layer in range(2) for e in range(2)
    ]
    assert groups.layer_ids.unique().tolist() == [0, 1, 2, 3]
    with pytest.raises(PlpruneError, match="at least one group per layer"):
        mask = torch.ones(len(groups), dtype=torch.bool)
        mask[FFN : 2 * FFN] = False  # every neuron of expert 1 of layer 0
        groups.apply_mask(mask)


def test_neurons_of_switch_experts_compact_with_expert_pruning_or_refuse_clearly() -> None:
    def masked(pruned_experts: list[int], neurons_of: int) -> tuple[nn.Module, plprune.GroupSet]:
        torch.manual_seed(0)
        model = SwitchForMaskedLM(bert_config(num_layers=1), SwitchConfig(num_experts=4, capacity_factor=4.0))
        groups = plprune.GroupSet(model.eval(), kinds=("expert", "neuron"))
        mask = torch.ones(len(groups), dtype=torch.bool)
        mask[groups.kind_index("expert")[pruned_experts]] = False
        mask[groups.kind_index("neuron")[neurons_of * FFN + 1 : neurons_of * FFN + 9]] = False
        groups.apply_mask(mask)
        return model, groups

    for experts, neurons_of in (([3], 0), ([1], 1)):  # behind the removed expert, or the removed one itself
        model, groups = masked(experts, neurons_of)
        compacted, _ = compact(groups)
        with torch.no_grad():
            torch.testing.assert_close(compacted(ids()).logits, model(ids()).logits, rtol=0, atol=1e-5)
        widths = [e.intermediate.out_features for e in compacted.layers[0].feed_forward.experts]
        assert widths == ([FFN - 8, FFN, FFN] if neurons_of == 0 else [FFN] * 3)
    _, groups = masked([1], 2)  # expert 2 would be renumbered to 1 before its neuron edits
    with pytest.raises(PlpruneError, match=r"expert 2 of layers\.0\.feed_forward, which loses experts \[1\]"):
        compact(groups)


# -- the optimizer follows compaction --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["plprune-bert", "hf-gpt2", "hf-phi3"])
def test_a_step_after_compaction_equals_the_masked_step_on_kept_entries(name: str) -> None:
    family = FAMILIES[name]
    model = build(family)
    target = torch.randn_like(family.run(model).detach(), dtype=torch.float32)

    def loss_fn(m: nn.Module, batch: object = None) -> Tensor:
        return (family.run(m) - target).pow(2).mean()

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    pruner = plprune.Pruner(model, plprune.scorers.Magnitude(), plprune.OneShot(2, 0.5), kinds=("neuron",))
    pruner.attach(optimizer)

    def step(m: nn.Module, p: plprune.Pruner, opt: torch.optim.Optimizer, s: int) -> None:
        p.step(s)
        opt.zero_grad()
        loss_fn(m).backward()
        opt.step()

    for s in range(4):
        step(model, pruner, optimizer, s)
    twin, twin_pruner, twin_optimizer = copy.deepcopy((model, pruner, optimizer))
    report = pruner.compact()
    assert len(optimizer.state) == len(list(model.parameters()))
    step(model, pruner, optimizer, 4)
    step(twin, twin_pruner, twin_optimizer, 4)
    old = dict(twin.named_parameters())
    for param_name, param in model.named_parameters():
        origin, index = report.index_maps[param_name]
        expected = old[origin].detach().reshape(-1)[index].view(param.shape)
        torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-6, msg=param_name)
        state, twin_state = optimizer.state[param], twin_optimizer.state[old[origin]]
        for key in ("exp_avg", "exp_avg_sq"):
            kept = twin_state[key].reshape(-1)[index].view(param.shape)
            torch.testing.assert_close(state[key], kept, rtol=1e-4, atol=1e-7, msg=f"{param_name} {key}")
    with torch.no_grad():
        torch.testing.assert_close(family.run(model), family.run(twin), rtol=0, atol=1e-5)


# -- heads and neurons in one event ----------------------------------------------------------------------
def llama_lm() -> nn.Module:
    config = T.LlamaConfig(
        hidden_size=H,
        intermediate_size=FFN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=V,
        **EAGER,
    )
    return T.LlamaForCausalLM(config)


def bert_lm() -> nn.Module:
    config = T.BertConfig(
        hidden_size=H,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=FFN,
        vocab_size=V,
        max_position_embeddings=SEQ,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **EAGER,
    )
    return T.BertForMaskedLM(config)


def mlm_batch(step: int) -> tuple[Tensor, Tensor]:
    x = ids(4, seed=100 + step)
    masked = torch.rand(x.shape, generator=torch.Generator().manual_seed(step)) < 0.3
    masked[:, 0] = True
    return x, torch.where(masked, x, torch.full_like(x, -100))


HEAD_AND_NEURON_MODELS = {
    "plprune-bert": (lambda: BertForMaskedLM(bert_config(num_heads=4)), lambda m, b: m(*b).loss),
    "hf-bert": (bert_lm, lambda m, b: m(input_ids=b[0], labels=b[1]).loss),
    "hf-llama": (llama_lm, lambda m, b: m(input_ids=b[0], labels=b[0]).loss),
}


@pytest.mark.parametrize("name", list(HEAD_AND_NEURON_MODELS))
def test_heads_and_neurons_are_pruned_in_one_event_with_their_own_ratios(name: str) -> None:
    make, loss_fn = HEAD_AND_NEURON_MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    pruner = plprune.Pruner(
        model,
        plprune.scorers.PL(gate_steps=1, feature_samples=2),
        plprune.OneShot(0, 0.5),  # the event's ratio; kind_ratios sets each kind's
        kinds=("head", "neuron"),
        kind_ratios={"head": 0.5, "neuron": 0.25},
        loss_fn=loss_fn,
        batches=mlm_batch,
    )
    pruner.step(0)
    assert pruner.pruned_ratio("head") == 0.5 and pruner.pruned_ratio("neuron") == 0.25
    x = mlm_batch(9)
    with torch.no_grad():
        masked = loss_fn(model, x)
    report = pruner.compact()
    with torch.no_grad():
        assert math.isclose(float(loss_fn(model, x)), float(masked), rel_tol=1e-5)
    d = H // 4  # 4 heads of size 4 per layer; 2 of 4 heads and 8 of 32 neurons go in each of 2 layers
    bias = 0 if name == "hf-llama" else 1
    per_head = 3 * d * (H + bias) + H * d
    per_neuron = 3 * H if name == "hf-llama" else 2 * H + 1
    assert report.parameters_before - report.parameters_after == 4 * per_head + 16 * per_neuron
    assert report.groups_after == {"head": 4, "neuron": 48}


# -- every scorer on neurons -----------------------------------------------------------------------------
NEURON_SCORERS = {
    "pl": lambda: plprune.scorers.PL(gate_steps=1, feature_samples=2),
    "pl+": lambda: PLPlusScorer(PLPlusConfig(gate_steps=1, feature_samples=2)),
    "random": plprune.scorers.Random,
    "magnitude": plprune.scorers.Magnitude,
    "imp": lambda: plprune.scorers.IMP(rewind_step=1),
    "grad-score": lambda: plprune.scorers.GradScore(batches=1),
    "snip": lambda: plprune.scorers.SNIP(batches=1),
    "grasp": lambda: plprune.scorers.GraSP(batches=1),
    "prox-l1": lambda: plprune.scorers.Proximal("l1"),
    "trimmed-l1": plprune.scorers.TrimmedL1,
    "gsm": plprune.scorers.GSM,
    "l0-gates": plprune.scorers.L0Gates,
    "cont-sparse": plprune.scorers.ContinuousSparsification,
}


def test_every_scorer_prunes_neurons_and_filter_criteria_refuse_them() -> None:
    def loss_fn(m: nn.Module, b: tuple[Tensor, Tensor]) -> Tensor:
        return m(*b).loss

    for name, make in NEURON_SCORERS.items():
        torch.manual_seed(0)
        model = BertForMaskedLM(bert_config(ffn_size=16))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        pruner = plprune.Pruner(
            model, make(), plprune.OneShot(2, 0.5), kinds=("neuron",), loss_fn=loss_fn, batches=mlm_batch
        ).attach(optimizer)
        for s in range(4):
            pruner.step(s)
            optimizer.zero_grad()
            loss_fn(model, mlm_batch(s)).backward()
            optimizer.step()
        assert pruner.pruned_ratio("neuron") == 0.5, name
        assert all(pruner.mask.view(2, 16).any(dim=1)), name
        pruned = [g for g, keep in zip(pruner.groups.groups, pruner.mask.tolist(), strict=True) if not keep]
        params = dict(model.named_parameters())
        assert all(not s.select(params[s.param_name]).any() for g in pruned for s in g.slices), name
    for make in (plprune.scorers.FPGM, plprune.scorers.CHIP, plprune.scorers.DPFPS):
        with pytest.raises(PlpruneError, match="filter"):
            pruner = plprune.Pruner(
                BertForMaskedLM(bert_config()),
                make(),
                plprune.OneShot(0, 0.5),
                kinds=("neuron",),
                loss_fn=loss_fn,
                batches=mlm_batch,
            )
            pruner.step(0)


# -- your own FFN, and bad input -------------------------------------------------------------------------
class SwiGLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w13 = nn.Linear(H, 2 * FFN, bias=False)  # [gate; up]
        self.w2 = nn.Linear(FFN, H, bias=False)
        self.width = FFN

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SwiGLU() for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


def test_a_registered_ffn_is_found_gated_and_compacted() -> None:
    torch.manual_seed(0)
    model, x = TinyNet(), torch.randn(3, H)
    with pytest.raises(PlpruneError, match=r"no feed-forward block.*register_ffn"):
        plprune.GroupSet(model, kinds=("neuron",))
    plprune.register_ffn(
        plprune.FFNAdapter(
            name="test-swiglu",
            matches=lambda m: isinstance(m, SwiGLU),
            inputs=("w13",),
            output="w2",
            fused=True,
            set_size=lambda m, n: setattr(m, "width", n),
        )
    )
    try:
        groups = plprune.GroupSet(model, kinds=("neuron",))
        assert [s.num_groups for s in groups.sites] == [FFN, FFN]
        mask = half_mask(groups)
        groups.apply_mask(mask)
        reference = TinyNet()
        reference.load_state_dict(model.state_dict())
        for (_, a, b), block in zip(groups.site_ranges(), reference.blocks, strict=True):
            zero_channels_by_hand(block.w2, (~mask[a:b]).nonzero().flatten())
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-6)
        compacted, report = compact(groups)
        with torch.no_grad():
            torch.testing.assert_close(compacted(x), model(x), rtol=0, atol=1e-5)
        assert report.parameters_before - report.parameters_after == int((~mask).sum()) * 3 * H
        assert [b.width for b in compacted.blocks] == [
            int(mask[a:b].sum()) for _, a, b in groups.site_ranges()
        ]
    finally:
        unregister_ffn("test-swiglu")


def test_bad_input_gives_one_clear_error_each() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(PlpruneError, match=r"Sequential has no feed-forward block .*plprune\.register_ffn"):
        plprune.Pruner(cnn, plprune.scorers.Random(), plprune.OneShot(0, 0.5), kinds=("neuron",))
    with pytest.raises(PlpruneError, match="register_ffn takes an FFNAdapter"):
        plprune.register_ffn("fc1")  # type: ignore[arg-type]
    with pytest.raises(PlpruneError, match=r"fused .* is one path"):
        plprune.FFNAdapter(name="x", matches=lambda m: False, inputs=("a", "b"), output="c", fused=True)
    with pytest.raises(PlpruneError, match="inputs must be one or more"):
        plprune.FFNAdapter(name="x", matches=lambda m: False, inputs=(), output="c")
    adapter = plprune.FFNAdapter(name="x", matches=lambda m: True, inputs=("missing",), output="w2")
    with pytest.raises(PlpruneError, match="names submodule 'missing'"):
        plprune.NeuronSite("blocks.0", TinyNet().blocks[0], 0, adapter)
    wrong = plprune.FFNAdapter(name="x", matches=lambda m: True, inputs=("w13",), output="w2")
    with pytest.raises(PlpruneError, match="has 64 outputs but the output projection w2 reads 32"):
        plprune.NeuronSite("blocks.0", TinyNet().blocks[0], 0, wrong)
    model = BertForMaskedLM(bert_config())
    with pytest.raises(PlpruneError, match=r"keeps 1 of 64 neurons.*largest allowed ratio here is 0\.969"):
        plprune.Pruner(model, plprune.scorers.Random(), plprune.OneShot(0, 0.99), kinds=("neuron",))


# -- PL's kernels at thousands of groups: the batched kernels equal the per-group J_i J_iᵀ ---------------
def per_group_kernels(grads: dict[str, Tensor], groups: list) -> Tensor:
    """The reference: J_i = concatenated slices (as :func:`ntk.group_jacobians` builds it), K_i = J_i J_iᵀ."""
    n = next(iter(grads.values())).shape[0]
    out = []
    for g in groups:
        jac = torch.cat([s.select_batched(grads[s.param_name]).reshape(n, -1) for s in g.slices], dim=1)
        out.append(jac.double() @ jac.double().T)
    return torch.stack(out)


class ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(x + self.bn1(self.conv1(x)))
        return self.head(x.mean(dim=(2, 3)))


def kernel_cases() -> dict[str, tuple[nn.Module, tuple[str, ...], Callable, tuple, object]]:
    torch.manual_seed(0)
    bert = BertForMaskedLM(bert_config(initializer_range=0.5)).double().eval()
    phi3 = build(FAMILIES["hf-phi3"]).double()
    gpt2 = build(FAMILIES["hf-gpt2"]).double()
    cnn = ResidualCNN().double().eval()
    images = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])

    def hidden_energy(m: nn.Module, b: tuple[Tensor]) -> Tensor:
        return m(b[0]).last_hidden_state.pow(2).mean(dim=(1, 2))

    return {
        "plprune-bert heads+neurons": (
            bert,
            ("head", "neuron"),
            lambda m, b: m.per_sample_loss(*b),
            mlm_batch(0),
            None,
        ),
        "phi3 fused neurons": (phi3, ("neuron",), hidden_energy, (ids(3),), None),
        "gpt2 conv1d neurons": (gpt2, ("neuron",), hidden_energy, (ids(3),), None),
        "cnn filters": (
            cnn,
            ("filter",),
            lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none"),
            (images, labels),
            images[:1],
        ),
    }


@pytest.mark.parametrize("case", list(kernel_cases()))
def test_batched_group_kernels_equal_the_per_group_kernels(case: str) -> None:
    model, kinds, output_fn, batch, example = kernel_cases()[case]
    groups = plprune.GroupSet(model, kinds=kinds, example_inputs=example)
    group_list = groups.groups
    groups.remove_hooks()
    names = list(dict.fromkeys(s.param_name for g in group_list for s in g.slices))
    grads = ntk.per_sample_gradients(model, output_fn, batch, params=names, chunk_size=1)
    reference = per_group_kernels(grads, group_list)
    scale = reference.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-300)
    blocks = {}
    for block in (2**24, ntk.KERNEL_BLOCK_ELEMENTS, 7):  # the former 128 MiB blocks, the default, tiny blocks
        blocks[block] = ntk.batched_group_kernels(grads, group_list, block_elements=block)
        assert float(((blocks[block] - reference).abs() / scale).max()) < 1e-12
    # the block size only splits the work: the same products in the same order, bit for bit
    assert all(torch.equal(kernels, blocks[2**24]) for kernels in blocks.values())
    assert bool((reference.diagonal(dim1=1, dim2=2).sum(1) > 0).all())  # no dead group hides an error
    via_api = ntk.group_kernels(model, group_list, output_fn, batch, chunk_size=1)
    torch.testing.assert_close(via_api, reference, rtol=1e-10, atol=0)
    ours_, theirs = ntk.kernel_features(via_api), ntk.kernel_features(reference)
    for field in ("min_eigenvalue", "max_eigenvalue", "entropy"):
        a, b = getattr(ours_, field), getattr(theirs, field)
        assert float(((a - b).abs() / b.abs().clamp_min(1e-300)).max()) < 1e-6, field
