"""The public API in a user's own loop: ``plprune.Pruner`` on models plprune has never seen.

References are independent of the pruner: weights sliced by hand from the model's own modules, an
uninterrupted run for resume, plain arithmetic for mask counts.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import plprune
from plprune.errors import PlpruneError
from plprune.groups import ParamSlice
from plprune.models import VGG, BertConfig, BertForMaskedLM
from plprune.sites.heads import unregister_attention
from tiny_models import tiny_hf_bert

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 30, 8


def hf_bert() -> nn.Module:
    return tiny_hf_bert(VOCAB, SEQ)


def mlm_batch(step: int, n: int = 4) -> dict[str, Tensor]:
    """Batch ``step`` depends only on ``step``: ids and labels (-100 where not masked)."""
    gen = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
    masked = torch.rand(n, SEQ, generator=gen) < 0.3
    masked[:, 0] = True
    return {"input_ids": ids, "labels": torch.where(masked, ids, torch.full_like(ids, -100))}


def hf_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(**batch).loss


def head_weights(attention: nn.Module, head: int, size: int) -> list[Tensor]:
    """Head ``head``'s Q/K/V rows, biases and O columns, read from HF's own module names."""
    rows = slice(head * size, (head + 1) * size)
    inner = attention.self
    out = [getattr(inner, p).weight[rows] for p in ("query", "key", "value")]
    out += [getattr(inner, p).bias[rows] for p in ("query", "key", "value")]
    return [*out, attention.output.dense.weight[:, rows]]


def test_readme_loop_on_a_hugging_face_bert_keeps_pruned_heads_at_zero() -> None:
    model = hf_bert()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    # --- the README's own-loop example, verbatim apart from sizes ---
    pruner = plprune.Pruner(
        model,
        plprune.scorers.PL(gate_steps=2, feature_samples=4),
        plprune.OneShot(5, 0.5),
        kinds=("head",),
        loss_fn=hf_loss,
        batches=mlm_batch,
    )
    pruner.attach(optimizer)
    for step in range(100):
        pruner.step(step)
        loss = hf_loss(model, mlm_batch(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # --- end of the example ---
    assert pruner.events_done == 1 and pruner.pruned_ratio("head") == 0.5
    assert pruner.groups.names[:4] == ["head:L0.0", "head:L0.1", "head:L0.2", "head:L0.3"]
    layers = model.bert.encoder.layer
    for index in (~pruner.mask).nonzero().flatten().tolist():
        layer, head = divmod(index, 4)
        for weights in head_weights(layers[layer].attention, head, 4):
            assert torch.count_nonzero(weights) == 0, (layer, head)
    for index in pruner.mask.nonzero().flatten().tolist():  # kept heads trained on
        layer, head = divmod(index, 4)
        assert all(torch.count_nonzero(w) > 0 for w in head_weights(layers[layer].attention, head, 4))
    record = pruner.records[0]
    assert len(record["features"]["min_eigenvalue"]) == 8 and record["method"] == "pl"


def test_pruned_hf_model_equals_the_model_with_those_heads_zeroed_by_hand() -> None:
    model = hf_bert().eval()
    reference = copy.deepcopy(model)
    pruner = plprune.Pruner(model, plprune.scorers.Random(), plprune.OneShot(0, 0.5), kinds="head")
    pruner.step(0)
    with torch.no_grad():
        for index in (~pruner.mask).nonzero().flatten().tolist():
            layer, head = divmod(index, 4)
            for weights in head_weights(reference.bert.encoder.layer[layer].attention, head, 4):
                weights.zero_()
        batch = mlm_batch(0)
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=0, atol=1e-6)


def test_pruner_removes_its_hooks_and_the_model_computes_as_before() -> None:
    model = hf_bert().eval()
    batch = mlm_batch(1)
    with torch.no_grad():
        before = model(**batch).logits
    pruner = plprune.Pruner(model, plprune.scorers.Random(), plprune.OneShot(3, 0.5), kinds="head")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)  # nothing pruned yet: hooks are no-ops
    pruner.remove()
    assert all(not m._forward_pre_hooks for m in model.modules())


# -- every scorer through the same API ---------------------------------------------------------------------
def tiny_bert() -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_layers=2,
        num_heads=4,
        ffn_size=16,
        max_length=SEQ,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return BertForMaskedLM(config)


def tuple_batch(step: int) -> tuple[Tensor, Tensor]:
    batch = mlm_batch(step)
    return batch["input_ids"], batch["labels"]


def ours_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return model(*batch).loss


HEAD_SCORERS = {
    "pl": lambda: plprune.scorers.PL(gate_steps=1, feature_samples=2),
    "random": plprune.scorers.Random,
    "magnitude": plprune.scorers.Magnitude,
    "imp": lambda: plprune.scorers.IMP(rewind_step=1),
    "grad-score": lambda: plprune.scorers.GradScore(batches=1),
    "snip": lambda: plprune.scorers.SNIP(batches=1),
    "grasp": lambda: plprune.scorers.GraSP(batches=1),
}


@pytest.mark.parametrize("name", list(HEAD_SCORERS))
@pytest.mark.parametrize("schedule", ["one-shot", "linear", "iterative"])
def test_every_head_scorer_and_schedule_runs_through_the_pruner(name: str, schedule: str) -> None:
    model = tiny_bert()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    plan = {
        "one-shot": plprune.OneShot(2, 0.5),
        "linear": plprune.Linear(start=2, end=4, every=2, final_ratio=0.5),
        "iterative": plprune.Iterative(start=2, every=2, rounds=2, final_ratio=0.5),
    }[schedule]
    pruner = plprune.Pruner(
        model, HEAD_SCORERS[name](), plan, kinds=("head",), loss_fn=ours_loss, batches=tuple_batch
    ).attach(optimizer)
    for step in range(6):
        pruner.step(step)
        optimizer.zero_grad()
        ours_loss(model, tuple_batch(step)).backward()
        optimizer.step()
    assert pruner.finished and pruner.groups.pruned_ratio("head") == 0.5
    assert int(pruner.mask.sum()) == 8 - round(0.5 * 8)
    assert all(pruner.mask.view(2, 4).any(dim=1))  # protection: a head in every layer


def test_filter_scorers_run_through_the_pruner_on_a_vgg() -> None:
    for scorer in (plprune.scorers.FPGM(), plprune.scorers.CHIP(batches=1), plprune.scorers.DPFPS()):
        torch.manual_seed(0)
        model = VGG(width_multiplier=0.0625, in_channels=1, num_classes=3, dims=1)
        x = torch.randn(8, 1, 32, generator=torch.Generator().manual_seed(0))
        y = torch.arange(8) % 3
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        pruner = plprune.Pruner(
            model,
            scorer,
            plprune.OneShot(1, 0.5),
            kinds="filter",
            loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
            batches=[(x, y)],
        ).attach(optimizer)
        for step in range(3):
            pruner.step(step)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        assert pruner.finished, scorer.name
        assert math.isclose(pruner.pruned_ratio("filter"), 0.5, abs_tol=0.01), scorer.name


# -- exact resume -----------------------------------------------------------------------------------------
def train(model: nn.Module, pruner: plprune.Pruner, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        pruner.step(step)
        optimizer.zero_grad()
        ours_loss(model, tuple_batch(step)).backward()
        optimizer.step()


def fresh_run() -> tuple[nn.Module, plprune.Pruner, torch.optim.Optimizer]:
    model = tiny_bert()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scorer = plprune.scorers.PL(gate_steps=2, feature_samples=4)
    schedule = plprune.Linear(start=4, end=12, every=4, final_ratio=0.5)
    pruner = plprune.Pruner(model, scorer, schedule, kinds=("head",), loss_fn=ours_loss, batches=tuple_batch)
    return model, pruner.attach(optimizer), optimizer


def test_resume_through_state_dict_reproduces_the_uninterrupted_run_exactly(tmp_path) -> None:
    model, pruner, optimizer = fresh_run()
    train(model, pruner, optimizer, range(16))

    model_a, pruner_a, optimizer_a = fresh_run()
    train(model_a, pruner_a, optimizer_a, range(6))  # one event done, two to come
    path = tmp_path / "checkpoint.pt"
    torch.save(
        dict(model=model_a.state_dict(), optimizer=optimizer_a.state_dict(), pruner=pruner_a.state_dict()),
        path,  # the user's checkpoint: the pruner's state beside the model's and optimizer's
    )

    model_b, pruner_b, optimizer_b = fresh_run()
    saved = torch.load(path, weights_only=True)
    model_b.load_state_dict(saved["model"])
    optimizer_b.load_state_dict(saved["optimizer"])
    pruner_b.load_state_dict(saved["pruner"])
    assert pruner_b.events_done == 1 and torch.equal(pruner_b.mask, pruner_a.mask)
    train(model_b, pruner_b, optimizer_b, range(6, 16))
    assert torch.equal(pruner_b.mask, pruner.mask)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, model_b.state_dict()[name]), name


# -- bad input -------------------------------------------------------------------------------------------
class UserAttention(nn.Module):
    """An attention module no adapter knows (names wq/wk/wv/wo, head count n_heads)."""

    def __init__(self, width: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.n_heads, self.size = heads, width // heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        def split(t: Tensor) -> Tensor:
            return t.view(*t.shape[:-1], self.n_heads, self.size).transpose(-2, -3)

        q, k, v = split(self.wq(x)), split(self.wk(x)), split(self.wv(x))
        context = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.size), dim=-1) @ v
        return self.wo(context.transpose(-2, -3).reshape(x.shape))


class UserModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = UserAttention()

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(x)


def test_bad_input_gives_one_clear_error_each() -> None:
    random = plprune.scorers.Random()
    with pytest.raises(PlpruneError, match=r"no attention heads plprune can find \(no attention module\)"):
        plprune.Pruner(nn.Linear(3, 3), random, plprune.OneShot(0, 0.5), kinds=("head",))
    with pytest.raises(PlpruneError, match=r"class UserAttention with no adapter.*register_attention"):
        plprune.Pruner(UserModel(), random, plprune.OneShot(0, 0.5), kinds=("head",))
    with pytest.raises(PlpruneError, match=r"protected group; the largest allowed ratio here is 0\.750"):
        plprune.Pruner(tiny_bert(), random, plprune.OneShot(0, 0.9), kinds=("head",))
    with pytest.raises(PlpruneError, match="no mixture-of-experts layer"):
        plprune.Pruner(tiny_bert(), random, plprune.OneShot(0, 0.5), kinds=("expert",))
    with pytest.raises(PlpruneError, match="group kinds must be"):
        plprune.Pruner(tiny_bert(), random, plprune.OneShot(0, 0.5), kinds=("channel",))
    with pytest.raises(PlpruneError, match="look at training data"):
        plprune.Pruner(tiny_bert(), plprune.scorers.PL(), plprune.OneShot(0, 0.5), kinds=("head",))
    with pytest.raises(PlpruneError, match="loss_fn was given without batches"):
        plprune.Pruner(tiny_bert(), random, plprune.OneShot(0, 0.5), loss_fn=ours_loss)
    with pytest.raises(PlpruneError, match="scorer must be a GroupScorer"):
        plprune.Pruner(tiny_bert(), "pl", plprune.OneShot(0, 0.5))  # type: ignore[arg-type]
    with pytest.raises(PlpruneError, match="unknown PL settings"):
        plprune.scorers.PL(alhpa=1.0)

    model = tiny_bert()
    pruner = plprune.Pruner(model, random, plprune.OneShot(2, 0.5), kinds=("head",))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner.attach(optimizer)
    with pytest.raises(PlpruneError, match="already attached; attach it once"):
        pruner.attach(optimizer)
    with pytest.raises(PlpruneError, match="already attached to another optimizer"):
        pruner.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    pruner.step(3)
    with pytest.raises(PlpruneError, match="step went backwards: 2 after 3"):
        pruner.step(2)
    with pytest.raises(PlpruneError, match="integer >= 0"):
        pruner.step(-1)


def test_a_user_attention_module_is_pruned_after_registering_an_adapter() -> None:
    model = UserModel().eval()
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(model)
    plprune.register_attention(
        plprune.AttentionAdapter(
            name="user-attention",
            matches=lambda m: isinstance(m, UserAttention),
            query="wq",
            key="wk",
            value="wv",
            output="wo",
            num_heads=lambda m: m.n_heads,
        )
    )
    try:
        groups = plprune.GroupSet(model, kinds=("head",))
    finally:
        unregister_attention("user-attention")
    assert groups.names == ["head:L0.0", "head:L0.1"]
    assert groups.groups[1].slices[0] == ParamSlice("attention.wq.weight", 0, 4, 8)
    groups.apply_mask(torch.tensor([True, False]))
    with torch.no_grad():
        for proj in (reference.attention.wq, reference.attention.wk, reference.attention.wv):
            proj.weight[4:] = 0.0
            proj.bias[4:] = 0.0
        reference.attention.wo.weight[:, 4:] = 0.0
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-6)


def test_a_dataloader_serves_as_batches_and_a_bad_loss_fn_is_named() -> None:
    ids = torch.cat([tuple_batch(s)[0] for s in range(4)])
    labels = torch.cat([tuple_batch(s)[1] for s in range(4)])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, labels), batch_size=4)
    model = tiny_bert()
    scorer = plprune.scorers.PL(gate_steps=6, feature_samples=2)  # 6 gate batches, 4 in the loader: it cycles
    once = plprune.OneShot(0, 0.5)
    pruner = plprune.Pruner(model, scorer, once, kinds="head", loss_fn=ours_loss, batches=loader)
    (record,) = pruner.step(0)
    assert len(record["gate_training"]) == 6 and pruner.pruned_ratio("head") == 0.5

    def vector_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return model(*batch).logits.sum(dim=-1)  # not a scalar

    snip = plprune.scorers.SNIP(batches=1)
    bad = plprune.Pruner(tiny_bert(), snip, once, loss_fn=vector_loss, batches=loader)
    with pytest.raises(PlpruneError, match=r"must return a scalar Tensor, got Tensor of shape \(\d+,\)"):
        bad.step(0)
    with pytest.raises(PlpruneError, match="batches must be a callable"):
        plprune.Pruner(tiny_bert(), snip, once, loss_fn=ours_loss, batches=3)
