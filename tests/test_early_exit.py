"""Multi-exit networks (plprune.models.early_exit): BranchyNet's entropy exit and PABEE's patience exit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plprune.errors import PlpruneError
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
