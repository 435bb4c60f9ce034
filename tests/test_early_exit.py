"""Multi-exit networks (plprune.models.early_exit): BranchyNet's entropy exit and PABEE's patience exit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plprune.bench.early_exit import batched_logits, entropy_sweep, exit_rows, layer_rows, patience_sweep
from plprune.data.replaced_words import (
    CLS_ID,
    FIRST_WORD_ID,
    WindowSpec,
    build_replaced_word_task,
    make_windows,
    replace_tokens,
    shuffle_span,
    training_batch,
)
from plprune.errors import DataError, PlpruneError
from plprune.models import BertConfig
from plprune.models.early_exit import (
    MultiExitBertClassifier,
    MultiExitCNN,
    branchynet_loss,
    entropy_exit,
    normalized_entropy,
    pabee_loss,
    patience_exit,
)
from plprune.train.early_exit import (
    decay_parameter_groups,
    train_multi_exit_bert,
    train_multi_exit_cnn,
    warmup_decay_scheduler,
)
from tiny_data import bump_sequences


def logits_with_entropy(target: float, classes: int = 4) -> torch.Tensor:
    """A (1, classes) row whose normalised entropy is ``target`` (bisection on a peak's height)."""
    low, high = 0.0, 50.0  # peak 0: uniform (entropy 1); peak 50: ~one-hot (entropy ~0)
    for _ in range(200):
        mid = (low + high) / 2
        row = torch.zeros(1, classes, dtype=torch.float64)
        row[0, 0] = mid
        if float(normalized_entropy(row)) > target:
            low = mid
        else:
            high = mid
    row = torch.zeros(1, classes, dtype=torch.float64)
    row[0, 0] = (low + high) / 2
    return row


# -- normalised entropy and the entropy rule ----------------------------------------------------------------
def test_normalized_entropy_range_and_extremes() -> None:
    z = torch.tensor([[0.0, 0.0, 0.0], [1000.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, -math.inf, -math.inf]])
    h = normalized_entropy(z)
    assert h.dtype == torch.float64
    assert h[0] == 1.0  # exactly uniform: exactly 1
    assert h[1] == 0.0 and h[3] == 0.0  # one-hot (and -inf classes add nothing)
    p = torch.softmax(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 0)
    assert float(h[2]) == pytest.approx(float(-(p * p.log()).sum() / math.log(3)), rel=1e-12)


def test_entropy_exit_takes_first_exit_under_threshold() -> None:
    confident, unsure, flat = [4.0, 0.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]
    h_conf = float(normalized_entropy(torch.tensor([confident])))
    h_unsure = float(normalized_entropy(torch.tensor([unsure])))
    assert h_conf < 0.5 < h_unsure < 1.0
    # sample 0: confident at exit 1; sample 1: confident at exit 0 and 2; sample 2: never
    exit0 = torch.tensor([unsure, [0.0, 4.0, 0.0, 0.0], flat])
    exit1 = torch.tensor([[0.0, 0.0, 4.0, 0.0], unsure, flat])
    exit2 = torch.tensor([confident, [0.0, 0.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.1]])
    preds, where = entropy_exit([exit0, exit1, exit2], 0.5)
    assert where.tolist() == [1, 0, 2]
    assert preds.tolist() == [2, 1, 3]
    # threshold between the two entropies: unsure rows exit too
    preds, where = entropy_exit([exit0, exit1, exit2], (h_unsure + 1) / 2)
    assert where.tolist() == [0, 0, 2] and preds.tolist() == [0, 1, 3]


def test_entropy_exit_threshold_edges() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(64, 5, generator=generator) * 3 for _ in range(3)]
    logits[0][7] = 0.0  # an exactly uniform row at the first exit
    _, where = entropy_exit(logits, 0.0)
    assert (where == 2).all()  # entropy >= 0 is never < 0
    preds, where = entropy_exit(logits, 1.0)
    expected = torch.zeros(64, dtype=torch.long)
    expected[7] = 1  # uniform row: entropy exactly 1 is not < 1; its second exit is not uniform
    assert where.tolist() == expected.tolist()
    assert preds[expected == 0].tolist() == logits[0].argmax(1)[expected == 0].tolist()
    # an entropy exactly equal to the threshold does not exit (strict <)
    row = logits_with_entropy(0.3)
    h = float(normalized_entropy(row))
    confident = torch.tensor([[9.0, 0, 0, 0]], dtype=torch.float64)
    assert entropy_exit([row, confident], h)[1].item() == 1
    assert entropy_exit([row, confident], math.nextafter(h, 2.0))[1].item() == 0


def test_branchynet_loss_matches_manual_sum() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = [torch.randn(8, 4, generator=generator) for _ in range(3)]
    target = torch.randint(4, (8,), generator=generator)
    ce = [F.cross_entropy(z, target) for z in logits]
    assert torch.allclose(branchynet_loss(logits, target), sum(ce))
    assert torch.allclose(branchynet_loss(logits, target, [0.5, 0.0, 2.0]), 0.5 * ce[0] + 2.0 * ce[2])
    assert torch.allclose(branchynet_loss(logits, target, torch.tensor([0.0, 0.0, 1.0])), ce[2])


# -- MultiExitCNN ------------------------------------------------------------------------------------------
def hooked_exit_macs(model: MultiExitCNN, x: torch.Tensor) -> list[int]:
    """Cumulative MACs per exit counted independently, from the shapes seen by forward hooks."""
    counts: dict[nn.Module, int] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv1d):
            per_out = module.in_channels // module.groups * module.kernel_size[0]
            counts[module] = output[0].numel() * per_out
        else:
            counts[module] = module.in_features * module.out_features

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))
    ]
    model(x[:1])
    for h in handles:
        h.remove()
    cumulative, total = [], 0
    for block, head in zip(model.blocks, model.heads, strict=True):
        total += sum(counts[m] for m in block.modules() if m in counts) + counts[head]
        cumulative.append(total)
    return cumulative


@pytest.fixture
def cnn() -> MultiExitCNN:
    torch.manual_seed(3)
    model = MultiExitCNN(widths=(8, 12, 16), num_classes=10)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for module in model.modules():
            if hasattr(module, "running_var"):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        for head in model.heads:  # spread the entropies over (0, 1)
            head.weight.mul_(8)
    return model.eval()


def test_cnn_forward_returns_every_exit(cnn: MultiExitCNN) -> None:
    out = cnn(torch.randn(5, 1, 40))
    assert len(out) == cnn.num_exits == 3
    assert all(z.shape == (5, 10) for z in out)


def test_infer_early_exit_matches_entropy_exit_and_analytical_macs(cnn: MultiExitCNN) -> None:
    x = torch.randn(200, 1, 40, generator=torch.Generator().manual_seed(4))
    full = cnn(x)
    analytical = cnn.exit_macs(40)
    assert analytical == hooked_exit_macs(cnn, x)
    # conv MACs by hand: lengths 40 -> 20 -> 10 (each block: 2 convs, then pool)
    assert cnn.block_macs(40) == [
        8 * 1 * 3 * 40 + 8 * 8 * 3 * 40,
        12 * 8 * 3 * 20 + 12 * 12 * 3 * 20,
        16 * 12 * 3 * 10 + 16 * 16 * 3 * 10,
    ]
    assert cnn.head_macs() == [80, 120, 160]
    seen = set()
    for threshold in [i / 40 for i in range(41)]:
        preds, where = entropy_exit(full, threshold)
        result = cnn.infer_early_exit(x, threshold)
        assert torch.equal(result.predictions, preds)
        assert torch.equal(result.exit_index, where)
        assert result.macs.tolist() == [analytical[i] for i in where.tolist()]
        assert torch.allclose(result.logits, torch.stack(full)[where, torch.arange(200)], atol=1e-5)
        seen.update(where.tolist())
    assert seen == {0, 1, 2}  # the thresholds exercised every exit
    for i in range(3):  # batch of one: the same decision as in the batch
        one = cnn.infer_early_exit(x[i : i + 1], 0.3)
        batch = cnn.infer_early_exit(x, 0.3)
        assert one.exit_index.item() == batch.exit_index[i].item()
        assert one.predictions.item() == batch.predictions[i].item()
    empty = cnn.infer_early_exit(x[:0], 0.5)
    assert empty.predictions.shape == (0,) and empty.logits.shape == (0, 10)


def test_infer_early_exit_needs_eval_mode(cnn: MultiExitCNN) -> None:
    cnn.train()
    with pytest.raises(PlpruneError, match=r"model.eval\(\)"):
        cnn.infer_early_exit(torch.randn(2, 1, 40), 0.5)


# -- PABEE -------------------------------------------------------------------------------------------------
def logits_from_predictions(rows: list[list[int]], classes: int = 4) -> list[torch.Tensor]:
    """Per layer (N, classes) one-hot-ish logits from per-sample predicted classes ``rows[sample][layer]``."""
    layers = len(rows[0])
    return [F.one_hot(torch.tensor([r[j] for r in rows]), classes).double() * 3.0 for j in range(layers)]


def test_patience_exit_counts_agreeing_layers() -> None:
    rows = [
        [1, 2, 2, 2, 3],  # counter 0,0,1,2 -> exits at layer 3 with patience 2
        [0, 1, 0, 1, 0],  # never agree -> last layer
        [3, 3, 3, 3, 3],  # counter 0,1,2,... -> patience p exits at layer p
        [1, 1, 2, 2, 2],  # 0,1,0,1,2 -> patience 1 at layer 1, patience 2 at layer 4
    ]
    logits = logits_from_predictions(rows)
    preds, where = patience_exit(logits, 2)
    assert where.tolist() == [3, 4, 2, 4]
    assert preds.tolist() == [2, 0, 3, 2]
    preds, where = patience_exit(logits, 1)
    assert where.tolist() == [2, 4, 1, 1] and preds.tolist() == [2, 0, 3, 1]
    for patience in (4, 5, 100):  # counter reaches 4 only at the last layer; beyond: never early
        assert patience_exit(logits, patience)[1].tolist() == [4, 4, 4, 4]
    assert patience_exit(logits[:1], 1)[1].tolist() == [0, 0, 0, 0]  # one layer: it is the last


def test_pabee_loss_weights_layers_by_depth() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = [torch.randn(6, 3, generator=generator) for _ in range(4)]
    target = torch.randint(3, (6,), generator=generator)
    manual = sum(j * F.cross_entropy(z, target) for j, z in enumerate(logits, start=1)) / 10
    assert torch.allclose(pabee_loss(logits, target), manual)


@pytest.fixture
def bert() -> MultiExitBertClassifier:
    torch.manual_seed(5)
    config = BertConfig(vocab_size=50, hidden_size=16, num_layers=4, num_heads=2, ffn_size=32, max_length=12)
    model = MultiExitBertClassifier(config, num_classes=3)
    with torch.no_grad():  # larger classifier weights: layers disagree often enough to exercise patience
        for classifier in model.classifiers:
            classifier.weight.normal_(0, 2.0)
        model.pooler.weight.normal_(0, 0.5)
    return model.eval()


def test_infer_patience_matches_patience_exit(bert: MultiExitBertClassifier) -> None:
    generator = torch.Generator().manual_seed(6)
    ids = torch.randint(5, 50, (96, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[::3, 9:] = 0  # some padding
    full = bert(ids, mask)
    assert len(full) == 4 and all(z.shape == (96, 3) for z in full)
    analytical = bert.exit_macs(12)
    per_layer = 4 * 12 * 16 * 16 + 2 * 12 * 12 * 16 + 2 * 12 * 16 * 32 + 16 * 16 + 16 * 3
    assert analytical == [per_layer * j for j in range(1, 5)]
    seen = set()
    for patience in (1, 2, 3, 4):
        preds, where = patience_exit(full, patience)
        result = bert.infer_patience(ids, patience, attention_mask=mask)
        assert torch.equal(result.predictions, preds)
        assert torch.equal(result.exit_index, where)
        assert torch.equal(result.exits_evaluated, where + 1)
        assert result.macs.tolist() == [analytical[j] for j in where.tolist()]
        seen.update(where.tolist())
    assert seen == {1, 2, 3}  # early exits happened and so did full-depth runs


def test_bert_needs_eval_mode_and_valid_ids(bert: MultiExitBertClassifier) -> None:
    ids = torch.randint(50, (2, 12))
    with pytest.raises(PlpruneError, match="max_length"):
        bert(torch.randint(50, (2, 13)))
    with pytest.raises(PlpruneError, match="vocab_size"):
        bert(ids + 50)
    with pytest.raises(PlpruneError, match="attention_mask"):
        bert(ids, torch.ones(2, 11))
    bert.train()
    with pytest.raises(PlpruneError, match=r"model.eval\(\)"):
        bert.infer_patience(ids, 1)


# -- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [-0.1, 1.5, math.nan, math.inf, "0.5", None, True])
def test_bad_threshold_is_refused(threshold: object, cnn: MultiExitCNN) -> None:
    logits = [torch.randn(3, 4), torch.randn(3, 4)]
    with pytest.raises(PlpruneError, match=r"threshold.*\[0, 1\]"):
        entropy_exit(logits, threshold)
    with pytest.raises(PlpruneError, match=r"threshold.*\[0, 1\]"):
        cnn.infer_early_exit(torch.randn(2, 1, 40), threshold)


@pytest.mark.parametrize("patience", [0, -1, 1.5, 2.0, "2", None, True])
def test_bad_patience_is_refused(patience: object, bert: MultiExitBertClassifier) -> None:
    with pytest.raises(PlpruneError, match=r"patience.*positive integer"):
        patience_exit([torch.randn(3, 2), torch.randn(3, 2)], patience)
    with pytest.raises(PlpruneError, match=r"patience.*positive integer"):
        bert.infer_patience(torch.randint(50, (2, 12)), patience)


def test_mismatched_or_malformed_inputs_are_refused() -> None:
    a, b = torch.randn(4, 3), torch.randn(5, 3)
    target = torch.zeros(4, dtype=torch.long)
    with pytest.raises(PlpruneError, match="same shape"):
        entropy_exit([a, b], 0.5)
    with pytest.raises(PlpruneError, match="same shape"):
        patience_exit([a, torch.randn(4, 2)], 1)
    with pytest.raises(PlpruneError, match="non-empty list"):
        entropy_exit([], 0.5)
    with pytest.raises(PlpruneError, match="non-empty list"):
        pabee_loss(a, target)  # a tensor, not a list of exits
    with pytest.raises(PlpruneError, match="2 entries but there are 3 exits"):
        branchynet_loss([a, a, a], target, [1.0, 1.0])
    with pytest.raises(PlpruneError, match=r"weights\[1\] must be a finite number >= 0"):
        branchynet_loss([a, a], target, [1.0, -1.0])
    with pytest.raises(PlpruneError, match="not all be zero"):
        branchynet_loss([a, a], target, [0.0, 0.0])
    with pytest.raises(PlpruneError, match="target has 5 labels"):
        branchynet_loss([a], torch.zeros(5, dtype=torch.long))
    with pytest.raises(PlpruneError, match=r"target labels must lie in \[0, 3\)"):
        pabee_loss([a], torch.full((4,), 3))
    with pytest.raises(PlpruneError, match="at least 2 classes"):
        normalized_entropy(torch.randn(4, 1))
    with pytest.raises(PlpruneError, match="NaN"):
        normalized_entropy(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(PlpruneError, match="widths"):
        MultiExitCNN(widths=())
    with pytest.raises(PlpruneError, match=r"widths\[1\] must be a positive integer"):
        MultiExitCNN(widths=(4, 0))
    with pytest.raises(PlpruneError, match="in_channels = 1"):
        MultiExitCNN(widths=(4,))(torch.randn(2, 3, 40))


# -- single-exit forwards -----------------------------------------------------------------------------------
def test_final_exit_and_last_layer_equal_the_full_forwards_last_exit(
    cnn: MultiExitCNN, bert: MultiExitBertClassifier
) -> None:
    x = torch.randn(5, 1, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(cnn.final_exit(x), cnn(x)[-1])
        ids = torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(1))
        mask = torch.ones(4, 9, dtype=torch.long)
        mask[1, 6:] = 0
        assert torch.allclose(bert.last_layer(ids), bert(ids)[-1], atol=1e-6)
        assert torch.allclose(bert.last_layer(ids, mask), bert(ids, mask)[-1], atol=1e-6)
    with pytest.raises(PlpruneError, match="input_ids"):
        bert.last_layer(ids.float())


# -- training (plprune.train.early_exit) --------------------------------------------------------------------
def old_benchmark_lambda(steps: int, warmup: float):
    """The LR lambda benchmarks/early_exit.py carried before it used plprune.train.lr_schedule."""
    warm = max(1, int(steps * warmup))
    return lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))


@pytest.mark.parametrize(
    ("steps", "warmup"), [(500, 0.1), (1, 0.1), (7, 0.0), (10, 0.5), (10, 1.0), (33, 0.3)]
)
def test_warmup_decay_scheduler_matches_the_old_lambda_at_every_step(steps: int, warmup: float) -> None:
    lrs = []
    for make in (
        lambda opt: warmup_decay_scheduler(opt, steps, warmup),
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, old_benchmark_lambda(steps, warmup)),
    ):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2e-3)
        scheduler = make(optimizer)
        seen = []
        for _ in range(steps + 2):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        lrs.append(seen)
    assert lrs[0] == lrs[1]
    assert max(lrs[0]) == pytest.approx(2e-3)


def test_decay_parameter_groups_leave_embeddings_biases_and_norms_undecayed(bert) -> None:
    decay, rest = decay_parameter_groups(bert, 0.01)
    assert decay["weight_decay"] == 0.01 and rest["weight_decay"] == 0.0
    names = {id(p): n for n, p in bert.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {
        n for n, p in bert.named_parameters() if p.dim() == 2 and "embedding" not in n
    }
    assert len(decay["params"]) + len(rest["params"]) == len(list(bert.parameters()))
    assert any("token_embedding" in names[id(p)] for p in rest["params"])


def exit_losses(model: MultiExitCNN, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    with torch.no_grad():
        return [float(F.cross_entropy(z, y)) for z in model(x)]


def test_train_multi_exit_cnn_lowers_every_exits_loss_and_is_reproducible() -> None:
    x, y = bump_sequences()
    models, params = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = MultiExitCNN(widths=(8, 8), num_classes=2).eval()
        before = exit_losses(model, x, y)
        seconds = train_multi_exit_cnn(
            model, x, y, epochs=8, batch_size=16, lr=1e-2, weight_decay=1e-4,
            order_generator=torch.Generator().manual_seed(4),
        )  # fmt: skip
        assert seconds > 0 and not model.training
        after = exit_losses(model, x, y)
        assert all(a < 0.5 * b for a, b in zip(after, before, strict=True)), (before, after)
        models.append(model)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(params[0], params[1])  # same seeds, same batches: the same model


def test_train_multi_exit_cnn_with_final_weight_only_leaves_early_heads_untouched() -> None:
    x, y = bump_sequences(32)
    torch.manual_seed(0)
    model = MultiExitCNN(widths=(4, 8), num_classes=2)
    head0 = [p.detach().clone() for p in model.heads[0].parameters()]
    head1 = [p.detach().clone() for p in model.heads[1].parameters()]
    train_multi_exit_cnn(
        model, x, y, epochs=2, batch_size=16, lr=1e-2, weight_decay=1e-2,
        order_generator=torch.Generator().manual_seed(0), exit_weights=[0.0, 1.0],
    )  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(head0, model.heads[0].parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(head1, model.heads[1].parameters(), strict=True))


def tiny_bert_task(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS]=1 then 5 tokens; label 1 if token 7 occurs among them."""
    gen = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(2, 7, (16, 6), generator=gen)
    ids[:, 0] = 1
    y = torch.randint(0, 2, (16,), generator=gen)
    where = torch.randint(1, 6, (16,), generator=gen)
    ids[y == 1, where[y == 1]] = 7
    return ids, y


def test_train_multi_exit_bert_lowers_every_layers_loss() -> None:
    config = BertConfig(
        vocab_size=8, hidden_size=16, num_layers=2, num_heads=2, ffn_size=32, max_length=6, dropout=0.0,
        attention_dropout=0.0,
    )  # fmt: skip
    ids, y = tiny_bert_task(-1)
    for last_only in (False, True):
        torch.manual_seed(0)
        model = MultiExitBertClassifier(config, num_classes=2).eval()
        with torch.no_grad():
            before = [float(F.cross_entropy(z, y)) for z in model(ids)]
        first = model.classifiers[0].weight.detach().clone()
        steps_seen: list[int] = []
        train_multi_exit_bert(
            model, tiny_bert_task, steps=60, lr=3e-3, weight_decay=0.01, warmup_fraction=0.1,
            last_only=last_only, on_step=lambda step, loss, seen=steps_seen: seen.append(step),
        )  # fmt: skip
        assert steps_seen == list(range(60)) and not model.training
        with torch.no_grad():
            after = [float(F.cross_entropy(z, y)) for z in model(ids)]
        assert after[-1] < 0.6 * before[-1], (before, after)
        if last_only:  # the first layer's classifier is not in the loss: AdamW never touches it
            assert torch.equal(model.classifiers[0].weight, first)
        else:
            assert after[0] < 0.85 * before[0], (before, after)


def test_training_refuses_bad_arguments(cnn: MultiExitCNN, bert: MultiExitBertClassifier) -> None:
    x, y = bump_sequences(8)
    kw = {"batch_size": 4, "lr": 1e-3, "weight_decay": 0.0}
    gen = torch.Generator()
    with pytest.raises(PlpruneError, match="MultiExitCNN"):
        train_multi_exit_cnn(bert, x, y, epochs=1, order_generator=gen, **kw)
    with pytest.raises(PlpruneError, match="epochs"):
        train_multi_exit_cnn(cnn, x, y, epochs=0, order_generator=gen, **kw)
    with pytest.raises(PlpruneError, match="one label per sample"):
        train_multi_exit_cnn(cnn, x, y[:3], epochs=1, order_generator=gen, **kw)
    with pytest.raises(PlpruneError, match=r"torch\.Generator"):
        train_multi_exit_cnn(cnn, x, y, epochs=1, order_generator=3, **kw)
    with pytest.raises(PlpruneError, match="MultiExitBertClassifier"):
        train_multi_exit_bert(cnn, tiny_bert_task, steps=1, lr=1e-3, weight_decay=0, warmup_fraction=0.1)
    with pytest.raises(PlpruneError, match="warmup_fraction"):
        train_multi_exit_bert(bert, tiny_bert_task, steps=1, lr=1e-3, weight_decay=0, warmup_fraction=1.5)


# -- the replaced-word task (plprune.data.replaced_words) ---------------------------------------------------
VOCAB = 30


def test_replace_tokens_changes_exactly_k_positions_to_other_words() -> None:
    window = torch.arange(FIRST_WORD_ID, FIRST_WORD_ID + 20)
    window[3] = 0  # a special token ([UNK]-like) in the window
    for seed in range(50):
        out, k = replace_tokens(window, torch.Generator().manual_seed(seed), 2, 6, VOCAB)
        changed = out != window
        assert 2 <= k <= 6 and int(changed.sum()) == k
        assert bool(((out[changed] >= FIRST_WORD_ID) & (out[changed] < VOCAB)).all())


def test_shuffle_span_permutes_one_span() -> None:
    window = torch.arange(FIRST_WORD_ID, FIRST_WORD_ID + 16)
    for seed in range(30):
        out, span = shuffle_span(window, torch.Generator().manual_seed(seed), 3, 6)
        assert 3 <= span <= 6 and torch.equal(out.sort().values, window)
        changed = torch.nonzero(out != window).flatten()
        assert changed.numel() >= 2 and int(changed[-1] - changed[0]) < span
    same, size = shuffle_span(torch.full((8,), 9), torch.Generator(), 2, 4)  # nothing can change
    assert same is None and size == 0


def test_make_windows_keeps_originals_and_corrupts_label_zero() -> None:
    stream = torch.arange(FIRST_WORD_ID, FIRST_WORD_ID + 25)
    spec = WindowSpec(window=6, corruption="replace", corrupt_min=1, corrupt_max=3)
    starts, labels = torch.tensor([0, 6, 12, 18]), torch.tensor([1, 0, 1, 0])
    ids, y, sizes = make_windows(stream, starts, labels, spec, torch.Generator().manual_seed(0), VOCAB)
    assert ids.shape == (4, 7) and torch.equal(y, labels) and bool((ids[:, 0] == CLS_ID).all())
    for row, start, label, size in zip(ids, starts.tolist(), labels.tolist(), sizes.tolist(), strict=True):
        original = stream[start : start + 6]
        assert int((row[1:] != original).sum()) == size
        assert (size == 0) == (label == 1) and size <= 3


def test_build_replaced_word_task_and_training_batches(tmp_path) -> None:
    words = [f"w{i}" for i in range(12)]
    gen = torch.Generator().manual_seed(0)
    text = lambda n: " ".join(words[int(i)] for i in torch.randint(0, 12, (n,), generator=gen))  # noqa: E731
    (tmp_path / "valid.txt").write_text(text(400), encoding="utf-8")
    (tmp_path / "test.txt").write_text(text(200), encoding="utf-8")
    spec = WindowSpec(window=8, corrupt_min=1, corrupt_max=2)
    task = build_replaced_word_task(tmp_path, spec, 10, torch.Generator().manual_seed(1), min_freq=1)
    assert task.test_ids.shape == (10, 9) and int(task.test_y.sum()) == 5  # balanced labels
    test_stream = torch.tensor(task.tokenizer.encode((tmp_path / "test.txt").read_text(encoding="utf-8")))
    for i in range(10):  # non-overlapping windows in order; originals verbatim
        original = test_stream[8 * i : 8 * i + 8]
        assert int((task.test_ids[i, 1:] != original).sum()) == int(task.test_sizes[i])
    a = training_batch(task, 6, torch.Generator().manual_seed(7))
    b = training_batch(task, 6, torch.Generator().manual_seed(7))
    assert a[0].shape == (6, 9) and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(DataError, match="corrupt_min <= corrupt_max <= window"):
        WindowSpec(window=4, corrupt_min=3, corrupt_max=6)
    with pytest.raises(PlpruneError, match="corruption"):
        WindowSpec(corruption="delete")


# -- measuring (plprune.bench.early_exit) -------------------------------------------------------------------
def test_entropy_sweep_rows_against_the_rule_on_the_full_forward(cnn: MultiExitCNN) -> None:
    x = torch.randn(64, 1, 40, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = cnn(x)
    mid = float(normalized_entropy(full[0]).median())  # about half the samples leave at exit 0
    rows = entropy_sweep(cnn, x, y, [0.0, mid, 1.0])
    cumulative = cnn.exit_macs(40)
    assert rows[0]["mean_exit_depth"] == 3.0 and rows[0]["exit_fractions"] == [0.0, 0.0, 1.0]
    assert rows[0]["accuracy"] == pytest.approx(float((full[-1].argmax(1) == y).float().mean()))
    assert rows[0]["mean_macs"] == cumulative[-1]
    assert rows[2]["exit_fractions"][0] == 1.0 and rows[2]["mean_macs"] == cumulative[0]
    predictions, where = entropy_exit(full, mid)
    assert rows[1]["accuracy"] == pytest.approx(float((predictions == y).float().mean()))
    assert rows[1]["mean_macs"] == pytest.approx(sum(cumulative[int(i)] for i in where) / 64)
    assert 0 < rows[1]["exit_fractions"][0] < 1 and sum(rows[1]["exit_fractions"]) == pytest.approx(1.0)
    assert all(r["matches_entropy_exit"] for r in rows)
    blocks, heads = cnn.block_macs(40), cnn.head_macs()
    exits = exit_rows(cnn, full, y, 40)
    assert [e["macs_alone"] for e in exits] == [
        blocks[0] + heads[0],
        blocks[0] + blocks[1] + heads[1],
        sum(blocks) + heads[2],
    ]
    assert exits[1]["accuracy"] == pytest.approx(float((full[1].argmax(1) == y).float().mean()))


def test_patience_sweep_rows_and_groups(bert: MultiExitBertClassifier) -> None:
    ids = torch.randint(0, 50, (40, 7), generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(5))
    groups = torch.arange(40) % 3
    rows = patience_sweep(bert, ids, y, [1, 2, 4], groups=groups)
    full = batched_logits(bert, ids, batch=16)
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full, bert(ids), strict=True))
    for row in rows:
        predictions, where = patience_exit(full, row["patience"])
        assert row["matches_patience_exit"]
        assert row["accuracy"] == pytest.approx(float((predictions == y).float().mean()))
        assert row["mean_exit_layer"] == pytest.approx(float((where + 1).double().mean()))
        assert row["speedup_layers"] == pytest.approx(4 / row["mean_exit_layer"])
        parts = row["by_corruption_size"]
        assert list(parts) == ["0", "1", "2"] and sum(p["windows"] for p in parts.values()) == 40
        assert sum(p["accuracy"] * p["windows"] for p in parts.values()) / 40 == pytest.approx(
            row["accuracy"]
        )
    assert rows[-1]["mean_exit_layer"] == 4.0 and rows[-1]["exit_fractions"] == [0.0, 0.0, 0.0, 1.0]
    assert [r["layer"] for r in layer_rows(bert, full, y, 7)] == [0, 1, 2, 3]
    with pytest.raises(PlpruneError, match="one label per sample"):
        patience_sweep(bert, ids, y[:5], [1])
