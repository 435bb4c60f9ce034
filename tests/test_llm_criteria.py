"""The LLM-pruning field's criteria on heads and neurons: ``taylor`` (LLM-Pruner), ``flap`` (FLAP, with bias
compensation), ``wanda-sp`` and ``magnitude`` (Torch-Pruning's group L2 norm).

References are independent of plprune's slice and hook code: each family's projections are named by hand
(Llama's ``o_proj``/``down_proj``, BERT's ``attention.output.dense``/``output.dense``, GPT-2's Conv1D
``c_proj``s), activations are captured by the test's own forward hooks and reduced with ``torch.var`` /
``torch.linalg.norm`` over all tokens at once, gradients come from ``loss.backward()`` on the model. FLAP's
bias compensation is checked against the unpruned model: every compensated projection's mean output over the
calibration tokens equals the dense one's, and a model whose pruned block is followed only by a linear probe
keeps its mean output exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import plprune
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.models import BertConfig, SwitchConfig, SwitchForMaskedLM
from plprune.pruners.base import PruneContext
from plprune.pruners.flap import FLAPScorer
from plprune.pruners.registry import METHODS, check_method_kinds
from plprune.sites.neurons import FFNAdapter, register_ffn, unregister_ffn
from plprune.task import FunctionTask

T = pytest.importorskip("transformers")

VOCAB, SEQ, HIDDEN, HEADS, FFN = 50, 8, 16, 4, 24
D = HIDDEN // HEADS
BATCHES = 2  # calibration batches every scorer here averages


def ids(step: int) -> Tensor:
    return torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(step))


def lm_loss(model: nn.Module, batch: Tensor) -> Tensor:
    return model(input_ids=batch, labels=batch).loss


def with_random_biases(model: nn.Module) -> nn.Module:
    """Hugging Face initialises biases to 0, which would hide how a criterion treats them."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return model


def llama() -> nn.Module:
    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, intermediate_size=FFN,
        num_attention_heads=HEADS, num_key_value_heads=2, attn_implementation="eager",
    )  # fmt: skip
    return T.LlamaForCausalLM(config).double().eval()


def bert() -> nn.Module:
    torch.manual_seed(0)
    config = T.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=16, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )  # fmt: skip
    return with_random_biases(T.BertForMaskedLM(config).double().eval())


def gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = T.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=HEADS, n_inner=FFN, n_positions=16,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager",
    )  # fmt: skip
    return with_random_biases(T.GPT2LMHeadModel(config).double().eval())


def opt() -> nn.Module:
    torch.manual_seed(0)
    config = T.OPTConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS, ffn_dim=FFN,
        word_embed_proj_dim=HIDDEN, max_position_embeddings=16, dropout=0.0, attention_dropout=0.0,
        attn_implementation="eager",
    )  # fmt: skip
    return with_random_biases(T.OPTForCausalLM(config).double().eval())


# -- each family's layout, by hand: the projections as (module name, output index or input index) ---------
# ``rows``: the group's output rows of an input projection (with its bias entry); ``cols``: its input
# columns of the output projection; both in nn.Linear orientation (Conv1D weights are transposed).
def llama_layout(kind: str, layer: int, j: int) -> dict[str, list[tuple[str, list[int]]]]:
    p = f"model.layers.{layer}"
    if kind == "head":  # GQA: the shared K/V heads belong to no query head
        return {"rows": [(f"{p}.self_attn.q_proj", heads(j))], "cols": [(f"{p}.self_attn.o_proj", heads(j))]}
    rows = [(f"{p}.mlp.gate_proj", [j]), (f"{p}.mlp.up_proj", [j])]
    return {"rows": rows, "cols": [(f"{p}.mlp.down_proj", [j])]}


def bert_layout(kind: str, layer: int, j: int) -> dict[str, list[tuple[str, list[int]]]]:
    p = f"bert.encoder.layer.{layer}"
    if kind == "head":
        qkv = [(f"{p}.attention.self.{name}", heads(j)) for name in ("query", "key", "value")]
        return {"rows": qkv, "cols": [(f"{p}.attention.output.dense", heads(j))]}
    return {"rows": [(f"{p}.intermediate.dense", [j])], "cols": [(f"{p}.output.dense", [j])]}


def gpt2_layout(kind: str, layer: int, j: int) -> dict[str, list[tuple[str, list[int]]]]:
    p = f"transformer.h.{layer}"
    if kind == "head":  # c_attn's outputs are [q | k | v], each HIDDEN wide
        rows = [r + offset for offset in (0, HIDDEN, 2 * HIDDEN) for r in heads(j)]
        return {"rows": [(f"{p}.attn.c_attn", rows)], "cols": [(f"{p}.attn.c_proj", heads(j))]}
    return {"rows": [(f"{p}.mlp.c_fc", [j])], "cols": [(f"{p}.mlp.c_proj", [j])]}


def opt_layout(kind: str, layer: int, j: int) -> dict[str, list[tuple[str, list[int]]]]:
    p = f"model.decoder.layers.{layer}"
    if kind == "head":
        qkv = [(f"{p}.self_attn.{name}", heads(j)) for name in ("q_proj", "k_proj", "v_proj")]
        return {"rows": qkv, "cols": [(f"{p}.self_attn.out_proj", heads(j))]}
    return {"rows": [(f"{p}.fc1", [j])], "cols": [(f"{p}.fc2", [j])]}


def heads(j: int) -> list[int]:
    return list(range(j * D, (j + 1) * D))


FAMILIES: dict[str, tuple[Callable[[], nn.Module], Callable[..., dict]]] = {
    "llama-gqa": (llama, llama_layout),
    "bert": (bert, bert_layout),
    "gpt2-conv1d": (gpt2, gpt2_layout),
    "opt": (opt, opt_layout),
}


def linear_view(module: nn.Module, tensor: Tensor) -> Tensor:
    """A weight-shaped tensor in nn.Linear orientation [out, in] (GPT-2's Conv1D stores [in, out])."""
    return tensor if isinstance(module, nn.Linear) else tensor.t()


def parse(name: str) -> tuple[str, int, int]:
    kind, rest = name.split(":")
    layer, index = rest[1:].split(".")
    return kind, int(layer), int(index)


def context_for(model: nn.Module, kinds: tuple[str, ...] = ("head", "neuron")) -> PruneContext:
    groups = GroupSet(model, kinds)
    return PruneContext(groups, FunctionTask(lm_loss, ids), step=0, ratio=0.5, event_index=0, seed=0)


def captured_inputs(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """Every calibration token's input ``(tokens, in)`` of each named module (the test's own hooks)."""
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda m, args, out, n=n: seen[n].append(args[0].detach().reshape(-1, args[0].shape[-1]))
        )
        for n in names
    ]
    with torch.no_grad():
        for b in range(BATCHES):
            lm_loss(model, ids(b))
    for handle in handles:
        handle.remove()
    return {n: torch.cat(rows) for n, rows in seen.items()}


def output_projections(model: nn.Module, layout: Callable[..., dict], names: list[str]) -> list[str]:
    return list(dict.fromkeys(m for n in names for m, _ in layout(*parse(n))["cols"]))


# -- scores against hand computations ------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_taylor_is_the_vector_wise_first_order_term_summed_over_the_group(family: str) -> None:
    build, layout = FAMILIES[family]
    model = build()
    context = context_for(model)
    scores = plprune.scorers.Taylor(batches=BATCHES).scores(context)
    context.groups.remove_hooks()
    model.zero_grad()
    for b in range(BATCHES):
        lm_loss(model, ids(b)).backward()  # gradients summed over the calibration batches
    want = []
    for name in context.groups.names:
        parts, total = layout(*parse(name)), 0.0
        for module_name, rows in parts["rows"]:
            m = model.get_submodule(module_name)
            product = linear_view(m, m.weight * m.weight.grad).detach().sum(dim=1)
            if m.bias is not None:
                product = product + (m.bias * m.bias.grad).detach()
            total += float(product[rows].abs().sum())  # one |Σ w·g| per output row (with its bias)
        for module_name, cols in parts["cols"]:
            m = model.get_submodule(module_name)
            total += float(linear_view(m, m.weight * m.weight.grad).detach().sum(dim=0)[cols].abs().sum())
        want.append(total)
    torch.testing.assert_close(scores, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_wanda_sp_is_column_magnitude_times_input_norm_summed_over_the_group(family: str) -> None:
    build, layout = FAMILIES[family]
    model = build()
    context = context_for(model)
    names = context.groups.names
    scores = plprune.scorers.WandaSP(batches=BATCHES).scores(context)
    context.groups.remove_hooks()
    inputs = captured_inputs(model, output_projections(model, layout, names))
    want = []
    for name in names:
        (module_name, cols), = layout(*parse(name))["cols"]
        m = model.get_submodule(module_name)
        column = linear_view(m, m.weight.detach()).abs().sum(dim=0)  # Σ_i |W_ij|
        norm = torch.linalg.vector_norm(inputs[module_name], dim=0)  # ‖X_j‖₂ over every token
        want.append(float((column * norm)[cols].sum()))
    torch.testing.assert_close(scores, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_flap_is_the_standardised_fluctuation_averaged_over_the_group(family: str) -> None:
    build, layout = FAMILIES[family]
    model = build()
    context = context_for(model)
    names = context.groups.names
    scores = FLAPScorer(batches=BATCHES).scores(context)
    context.groups.remove_hooks()
    inputs = captured_inputs(model, output_projections(model, layout, names))
    standardised = {}
    for module_name, x in inputs.items():
        m = model.get_submodule(module_name)
        energy = linear_view(m, m.weight.detach()).pow(2).sum(dim=0)  # ‖W_{:,j}‖²
        fluctuation = torch.var(x, dim=0, correction=1) * energy
        standardised[module_name] = (fluctuation - fluctuation.mean()) / fluctuation.std()
    want = [
        float(standardised[m][cols].mean()) for m, cols in (layout(*parse(n))["cols"][0] for n in names)
    ]
    torch.testing.assert_close(scores, torch.tensor(want, dtype=torch.float64), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("family", ["llama-gqa", "bert"])
def test_magnitude_is_torch_pruning_group_l2_norm_on_heads_and_neurons(family: str) -> None:
    """Torch-Pruning's GroupMagnitudeImportance(p=2) ranks a layer's groups by the L2 norm over every
    coupled slice: plprune's ``magnitude`` is that norm (no separate ``group-magnitude`` method)."""
    build, layout = FAMILIES[family]
    model = build()
    context = context_for(model)
    scores = plprune.scorers.Magnitude().scores(context)
    want = []
    for name in context.groups.names:
        parts, squares = layout(*parse(name)), 0.0
        for module_name, rows in parts["rows"]:
            m = model.get_submodule(module_name)
            squares += float(linear_view(m, m.weight.detach())[rows].pow(2).sum())
            squares += float(m.bias.detach()[rows].pow(2).sum()) if m.bias is not None else 0.0
        for module_name, cols in parts["cols"]:
            m = model.get_submodule(module_name)
            squares += float(linear_view(m, m.weight.detach())[:, cols].pow(2).sum())
        want.append(math.sqrt(squares))
    torch.testing.assert_close(scores, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)


# -- FLAP's bias compensation against the unpruned model -----------------------------------------------
@pytest.mark.parametrize("family", ["llama-gqa", "bert"])
def test_flap_compensation_keeps_each_output_projections_mean_output(family: str) -> None:
    """On the dense inputs of the calibration tokens, every pruned output projection's mean output equals
    the dense projection's (Eq. 9 is exact for the mean); without compensation it does not."""
    build, layout = FAMILIES[family]
    means = {}
    for compensate in (True, False):
        model = build()
        names = GroupSet(model, ("head", "neuron")).names
        projections = output_projections(model, layout, names)
        model = build()  # no hooks: the dense inputs and outputs
        inputs = captured_inputs(model, projections)
        with torch.no_grad():
            dense = {n: model.get_submodule(n)(x).mean(dim=0) for n, x in inputs.items()}
        pruner = plprune.Pruner(
            model, FLAPScorer(batches=BATCHES, compensate=compensate), plprune.OneShot(0, 0.5),
            kinds=("head", "neuron"), loss_fn=lm_loss, batches=ids,
        )  # fmt: skip
        (record,) = pruner.step(0)
        with torch.no_grad():
            pruned = {n: model.get_submodule(n)(x).mean(dim=0) for n, x in inputs.items()}
        means[compensate] = max(float((pruned[n] - dense[n]).abs().max()) for n in projections)
        scale = max(float(dense[n].abs().max()) for n in projections)
        if compensate:
            assert sorted(record["flap_compensated"]) == sorted(projections)
            created = sorted(projections) if family == "llama-gqa" else []  # Llama's projections have no bias
            assert sorted(record["flap_created_biases"]) == created
    assert means[True] < 1e-12 * scale
    assert means[False] > 1e-3 * scale


class LinearProbe(nn.Module):
    """One FFN block (``fc1`` → GELU → ``fc2``) read by a linear probe: the output is linear in ``fc2``'s."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.fc2 = nn.Linear(10, 6, bias=False)
        self.probe = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.probe(self.fc2(torch.nn.functional.gelu(self.fc1(x))))


@pytest.fixture
def probe_ffn():
    adapter = FFNAdapter(
        name="test-probe", matches=lambda m: isinstance(m, LinearProbe), inputs=("fc1",), output="fc2"
    )
    register_ffn(adapter)
    yield
    unregister_ffn("test-probe")


def probe_batch(step: int) -> Tensor:
    return torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(step), dtype=torch.float64) + 0.5


def probe_loss(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).pow(2).mean()


@pytest.mark.parametrize("schedule", ["one-shot", "two-events"])
def test_flap_keeps_the_mean_output_of_a_linear_probe_exactly(probe_ffn, schedule: str) -> None:
    """Everything after the pruned channels is linear, so the compensated model's mean output over the
    calibration data is the dense model's, exactly; also over two events, the second measuring its means on
    the already pruned and compensated model."""
    torch.manual_seed(0)
    model = LinearProbe().double()
    data = torch.cat([probe_batch(b) for b in range(BATCHES)])
    with torch.no_grad():
        dense = model(data).mean(dim=(0, 1))
    plan = plprune.OneShot(0, 0.5) if schedule == "one-shot" else plprune.Linear(0, 1, 1, 0.5)
    pruner = plprune.Pruner(
        model, FLAPScorer(batches=BATCHES), plan, kinds=("neuron",), loss_fn=probe_loss,
        batches=lambda step: probe_batch(step % BATCHES),
    )  # fmt: skip
    for step in range(2):
        pruner.step(step)
    assert pruner.pruned_ratio("neuron") == 0.5
    assert len(pruner.records) == (1 if schedule == "one-shot" else 2)
    assert not model.fc2.bias.requires_grad  # created by FLAP, frozen
    with torch.no_grad():
        torch.testing.assert_close(model(data).mean(dim=(0, 1)), dense, rtol=1e-12, atol=1e-12)


def test_flap_created_biases_come_back_when_a_pruner_state_is_loaded() -> None:
    """A resumed run (the Pruner's state loads before the model's weights) recreates the biases FLAP
    created, so the saved weights load strictly and the model computes what the pruned one did."""
    model = llama()
    pruner = plprune.Pruner(
        model, FLAPScorer(batches=BATCHES), plprune.OneShot(0, 0.5), kinds=("head", "neuron"),
        loss_fn=lm_loss, batches=ids,
    )  # fmt: skip
    pruner.step(0)
    state, weights = pruner.state_dict(), model.state_dict()
    with torch.no_grad():
        expected = model(input_ids=ids(7)).logits
    fresh = llama()
    assert fresh.model.layers[0].self_attn.o_proj.bias is None
    again = plprune.Pruner(
        fresh, FLAPScorer(batches=BATCHES), plprune.OneShot(0, 0.5), kinds=("head", "neuron"),
        loss_fn=lm_loss, batches=ids,
    )  # fmt: skip
    again.load_state_dict(state)
    fresh.load_state_dict(weights, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids(7)).logits, expected, rtol=0, atol=0)
    assert again.state_dict()["plugins"] == state["plugins"]


# -- Taylor on experts and filters -------------------------------------------------------------------------
def row_vectors(module: nn.Module) -> Tensor:
    """Σ over output rows of |Σ w·g| with the row's bias (a conv filter is one row, its kernel flattened)."""
    weight = module.weight
    product = (weight * weight.grad).detach().reshape(weight.shape[0], -1).sum(dim=1)
    if module.bias is not None:
        product = product + (module.bias * module.bias.grad).detach()
    return product


def test_taylor_on_experts_sums_the_vectors_of_each_experts_matrices() -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=8, num_layers=1, num_heads=2, ffn_size=8, max_length=SEQ,
        dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    model = SwitchForMaskedLM(config, SwitchConfig(num_experts=3, expert_ffn_size=5)).double().eval()

    def loss(m: nn.Module, batch: Tensor) -> Tensor:
        return m(batch, batch).loss

    groups = GroupSet(model, ("expert",))
    context = PruneContext(groups, FunctionTask(loss, ids), step=0, ratio=0.5, event_index=0, seed=0)
    scores = plprune.scorers.Taylor(batches=BATCHES).scores(context)
    groups.remove_hooks()
    model.zero_grad()
    for b in range(BATCHES):
        loss(model, ids(b)).backward()
    experts = model.layers[0].feed_forward.experts
    want = [float(row_vectors(e.intermediate).abs().sum() + row_vectors(e.output).abs().sum())
            for e in experts]  # fmt: skip
    torch.testing.assert_close(scores, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-15)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean(dim=(2, 3)))


def test_taylor_on_filters_takes_a_filter_with_its_bias_and_a_norm_channel_as_vectors() -> None:
    """Filter c: |Σ (kernel_c ⊙ ∇) + b_c ∂L/∂b_c| + |γ_c ∂L/∂γ_c + β_c ∂L/∂β_c|."""
    torch.manual_seed(0)
    model = TinyCNN().double().eval()
    with torch.no_grad():  # BN affine parameters away from their (1, 0) initialisation
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)

    def images(step: int) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(4, 1, 6, 6, generator=gen, dtype=torch.float64)
        return x, torch.randint(0, 3, (4,), generator=gen)

    def loss(m: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    pruner = plprune.Pruner(
        model, plprune.scorers.Taylor(batches=BATCHES), plprune.OneShot(0, 0.5), kinds=("filter",),
        loss_fn=loss, batches=images,
    )  # fmt: skip
    dense = TinyCNN().double().eval()
    dense.load_state_dict(model.state_dict())
    (record,) = pruner.step(0)
    for b in range(BATCHES):
        loss(dense, images(b)).backward()
    want = []
    for conv, bn in ((dense.conv1, dense.bn1), (dense.conv2, dense.bn2)):
        want += (row_vectors(conv).abs() + row_vectors(bn).abs()).tolist()
    got = torch.tensor(record["scores"], dtype=torch.float64)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=0)
    assert pruner.pruned_ratio("filter") == 0.5


# -- end to end through the Pruner, compaction included ------------------------------------------------
CRITERIA = {
    "taylor": lambda: plprune.scorers.Taylor(batches=BATCHES),
    "flap": lambda: plprune.scorers.FLAP(batches=BATCHES),
    "wanda-sp": lambda: plprune.scorers.WandaSP(batches=BATCHES),
    "magnitude": plprune.scorers.Magnitude,
}


@pytest.mark.parametrize("family", ["llama-gqa", "bert"])
@pytest.mark.parametrize("method", list(CRITERIA))
def test_each_criterion_prunes_heads_and_neurons_and_the_model_compacts(family: str, method: str) -> None:
    build, layout = FAMILIES[family]
    model = build()
    scorer = CRITERIA[method]()
    pruner = plprune.Pruner(
        model, scorer, plprune.OneShot(0, 0.5), kinds=("head", "neuron"), loss_fn=lm_loss, batches=ids
    )
    (record,) = pruner.step(0)
    assert record["method"] == method and record["allocation"] == scorer.allocation
    assert pruner.pruned_ratio("head") == 0.5 and pruner.pruned_ratio("neuron") == 0.5
    scores, mask = torch.tensor(record["scores"]), pruner.mask
    for name, keep in zip(pruner.groups.names, mask.tolist(), strict=True):
        for module_name, cols in layout(*parse(name))["cols"]:
            m = model.get_submodule(module_name)
            assert bool(linear_view(m, m.weight)[:, cols].any()) == keep, name
    # neurons: the kept ones outscore the pruned ones within each allocation unit (a layer, or the kind)
    neuron = pruner.groups.kind_index("neuron")
    layers = pruner.groups.layer_ids[neuron] if scorer.allocation == "per_layer" else torch.zeros_like(neuron)
    for layer in torch.unique(layers):
        unit = neuron[layers == layer]
        assert scores[unit][mask[unit]].min() >= scores[unit][~mask[unit]].max()
    if family == "llama-gqa":  # grouped-query attention: each KV head keeps as many query heads
        kept = mask[pruner.groups.kind_index("head")].view(2, 2, 2).sum(dim=2)
        assert bool((kept == 1).all())
    x = ids(11)
    with torch.no_grad():
        masked = lm_loss(model, x)
    pruner.compact()
    with torch.no_grad():
        assert math.isclose(float(lm_loss(model, x)), float(masked), rel_tol=1e-10)


@pytest.mark.parametrize("method", ["taylor", "flap", "wanda-sp"])
def test_plprune_train_runs_each_criterion_on_heads_and_neurons(method: str, tmp_path) -> None:
    import contextlib
    import io
    import json

    from plprune.cli import main

    argv = [
        "train", "--task", "hf-llama-pydoc", "--method", method, "--kinds", "head,neuron",
        "--kind-ratios", "head=0.5,neuron=0.5", "--seq-len", "16", "--layers", "1", "--hidden", "16",
        "--heads", "4", "--ffn", "16", "--eval-every", "4", "--prune-at", "2", "--steps", "3",
        "--score-batches", "2", "--out", str(tmp_path / "run"), "--no-progress",
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(argv) in (0, None), err.getvalue()
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "pruning.jsonl").read_text().splitlines()]
    assert record["method"] == method and record["score_batches"] == 2
    assert record["pruned_ratio"] == {"head": 0.5, "neuron": 0.5}


# -- bad settings --------------------------------------------------------------------------------------
def test_bad_settings_are_refused_with_the_reason() -> None:
    for make in (plprune.scorers.Taylor, plprune.scorers.FLAP, plprune.scorers.WandaSP):
        for bad in (0, -1, 1.5, "4"):
            with pytest.raises(PlpruneError, match="batches"):
                make(batches=bad)
    with pytest.raises(PlpruneError, match="compensate must be True or False"):
        plprune.scorers.FLAP(compensate="yes")
    for method in ("taylor", "flap", "wanda-sp"):
        with pytest.raises(PlpruneError, match="score_batches"):
            METHODS[method].settings({"score_batches": 0})
        with pytest.raises(PlpruneError, match="unknown settings"):
            METHODS[method].settings({"alpha": 1.0})
    for method in ("flap", "wanda-sp"):
        with pytest.raises(PlpruneError, match="head/neuron groups only, not expert"):
            check_method_kinds(method, ("expert",))
    with pytest.raises(PlpruneError, match="head/neuron/expert/filter groups only, not layer"):
        check_method_kinds("taylor", ("layer",))


def test_flap_and_wanda_sp_refuse_groups_no_projection_reads() -> None:
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=8, num_layers=1, num_heads=2, ffn_size=8, max_length=SEQ,
        dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    model = SwitchForMaskedLM(config, SwitchConfig(num_experts=3, expert_ffn_size=5)).double()

    def loss(m: nn.Module, batch: Tensor) -> Tensor:
        return m(batch, batch).loss

    for make in (plprune.scorers.FLAP, plprune.scorers.WandaSP):
        with pytest.raises(PlpruneError, match="scores head/neuron groups only, not expert"):
            plprune.Pruner(
                model, make(), plprune.OneShot(0, 0.5), kinds=("expert",), loss_fn=loss, batches=ids
            )
        groups = GroupSet(model, ("expert",))  # the scorer alone names the first group it cannot score
        context = PruneContext(groups, FunctionTask(loss, ids), step=0, ratio=0.5, event_index=0, seed=0)
        with pytest.raises(PlpruneError, match=r"expert:L0.0 has no slice .* kinds 'head' and 'neuron'"):
            make().scores(context)
        groups.remove_hooks()


def test_missing_data_nan_activations_and_out_of_order_calls_are_refused() -> None:
    model = llama()
    for make in (plprune.scorers.Taylor, plprune.scorers.FLAP, plprune.scorers.WandaSP):
        with pytest.raises(PlpruneError, match="look at training data"):
            plprune.Pruner(model, make(), plprune.OneShot(0, 0.5), kinds=("head", "neuron"))
    context = context_for(model)
    with pytest.raises(PlpruneError, match="call scores\\(context\\) before before_mask"):
        FLAPScorer().before_mask(context, context.groups.mask)
    with torch.no_grad():
        model.model.layers[0].self_attn.v_proj.weight[0, 0] = float("nan")
    for make in (plprune.scorers.FLAP, plprune.scorers.WandaSP):
        with pytest.raises(PlpruneError, match="o_proj holds NaN or Inf"):
            make(batches=1).scores(context)


# -- data-parallel ranks pool their calibration statistics ----------------------------------------------
def test_ranks_pool_their_statistics_into_those_of_the_whole_batch(monkeypatch) -> None:
    """Two ranks with unequal shards (3 and 1 samples): what each sends through ``all_gather`` merges into
    the count, mean and variance of the whole batch. The collective is replaced by the other rank's
    message (the real gloo ``all_gather`` is exercised by tests/test_ddp.py)."""
    import plprune.pruners.activations as activations

    reader = nn.Linear(6, 3).double()
    data = probe_batch(0)
    shards = {0: data[:3], 1: data[3:]}
    sent: dict[int, Tensor] = {}

    def collect(rank: int) -> activations.ChannelStats:
        stats = activations.collect_input_stats(
            {"reader": reader}, lambda b: reader(shards[rank]), 1, distributed=True
        )
        return stats["reader"]

    for rank in (0, 1):  # what each rank sends

        def record(tensor: Tensor, rank: int = rank) -> list[Tensor]:
            sent[rank] = tensor.clone()
            return [tensor]

        monkeypatch.setattr(activations.dist, "all_gather", record)
        collect(rank)
    rows = data.reshape(-1, 6)
    for rank in (0, 1):
        monkeypatch.setattr(activations.dist, "all_gather", lambda t: [sent[0], sent[1]])
        pooled = collect(rank)
        assert pooled.count == rows.shape[0]
        torch.testing.assert_close(pooled.mean, rows.mean(dim=0), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(pooled.variance, rows.var(dim=0, correction=1), rtol=1e-12, atol=1e-14)
