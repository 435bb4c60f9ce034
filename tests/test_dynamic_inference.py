"""Dynamic inference (plprune.models.dynamic): dynamic convolution and input-dependent channel gating."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plprune.bench.dynamic_inference import gated_evaluation
from plprune.errors import PlpruneError
from plprune.models.dynamic import (
    ChannelGatedCNN,
    ChannelGatedConv,
    ChannelSkippingRunner,
    DynamicConv1d,
    DynamicConvCNN,
    GatedInference,
)
from plprune.models.vgg import VGG
from plprune.sparsity.hard_concrete import hard_concrete_gate, hard_concrete_l0
from plprune.train.dynamic_inference import annealed_temperature, train_dynamic_network
from tiny_data import bump_sequences

CHANNELS = (6, 8, 8, 10)
LENGTH = 40


# -- dynamic convolution ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("stride", "padding", "bias"), [(1, None, True), (2, 0, True), (1, 2, False)])
def test_collapsed_kernel_equals_mixture_and_per_sample_loop(stride, padding, bias):
    layer = DynamicConv1d(5, 7, 3, num_kernels=4, temperature=0.7, stride=stride, padding=padding, bias=bias)
    layer = layer.double()
    if bias:
        with torch.no_grad():
            layer.bias.normal_()
    x = torch.randn(6, 5, 13, dtype=torch.float64)
    out = layer(x)
    mixture = layer.mixture_forward(x)
    assert out.shape == mixture.shape == (6, 7, layer.output_length(13))
    assert (out - mixture).abs().max() <= 1e-10
    weight, b = layer.collapsed_kernel(x)
    assert weight.shape == (6, 7, 5, 3)
    assert (b is None) == (not bias)
    pi = layer.attention(x)
    assert torch.allclose(pi.sum(dim=1), torch.ones(6, dtype=torch.float64))
    expected_weight = sum(pi[:, k, None, None, None] * layer.weight[k] for k in range(4))
    assert (weight - expected_weight).abs().max() <= 1e-12
    for n in range(6):
        single = F.conv1d(
            x[n : n + 1], weight[n], None if b is None else b[n], stride=stride, padding=layer.padding
        )
        assert (out[n : n + 1] - single).abs().max() <= 1e-10


def test_single_kernel_is_a_plain_conv():
    layer = DynamicConv1d(3, 4, 5, num_kernels=1, temperature=2.0).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(4, 3, 17, dtype=torch.float64)
    assert torch.equal(layer.attention(x), torch.ones(4, 1, dtype=torch.float64))
    plain = F.conv1d(x, layer.weight[0], layer.bias[0], padding=2)
    assert (layer(x) - plain).abs().max() <= 1e-12


def test_temperature_flattens_attention_and_is_validated():
    layer = DynamicConv1d(4, 4, 3, num_kernels=3)
    with torch.no_grad():
        layer.attention_fc2.weight.mul_(50)
    x = torch.randn(5, 4, 9)
    sharp = layer.attention(x)
    layer.temperature = 1e6
    flat = layer.attention(x)
    assert (flat - 1 / 3).abs().max() < 1e-4 < (sharp - 1 / 3).abs().max()
    for bad in (0, -1.0, math.nan, math.inf, True, "1"):
        with pytest.raises(PlpruneError, match="temperature"):
            layer.temperature = bad
    model = DynamicConvCNN(channels=CHANNELS, num_kernels=2)
    model.set_temperature(30.0)
    assert all(conv.temperature == 30.0 for conv in model.convs)
    with pytest.raises(PlpruneError, match="temperature"):
        model.set_temperature(0.0)


def test_dynamic_conv_macs_and_cnn():
    layer = DynamicConv1d(8, 6, 3, num_kernels=4, attention_hidden=5)
    # attention 8·5 + 5·4; aggregation 4·(6·8·3 + 6); conv 6·8·3·20
    assert layer.macs_per_sample(20) == 8 * 5 + 5 * 4 + 4 * (6 * 8 * 3 + 6) + 6 * 8 * 3 * 20
    model = DynamicConvCNN(channels=CHANNELS, num_kernels=4)
    expected, c_in, length = 0, 1, LENGTH
    for out in CHANNELS:
        hidden = max(4, c_in // 4)
        expected += c_in * hidden + hidden * 4 + 4 * out * c_in * 3 + out * c_in * 3 * length
        c_in, length = out, length // 2
    assert model.macs_per_sample(LENGTH) == expected + 10 * CHANNELS[-1]
    model.eval()
    assert model(torch.randn(3, 1, LENGTH)).shape == (3, 10)


def test_dynamic_conv_bad_input():
    for kwargs, match in [
        ({"num_kernels": 0}, "num_kernels"),
        ({"num_kernels": 2.0}, "num_kernels"),
        ({"temperature": 0.0}, "temperature"),
        ({"stride": 0}, "stride"),
        ({"padding": -1}, "padding"),
        ({"bias": 1}, "bias"),
        ({"attention_hidden": 0}, "attention_hidden"),
    ]:
        with pytest.raises(PlpruneError, match=match):
            DynamicConv1d(2, 3, 3, **kwargs)
    with pytest.raises(PlpruneError, match="kernel_size"):
        DynamicConv1d(2, 3, 0)
    layer = DynamicConv1d(2, 3, 5, padding=0)
    with pytest.raises(PlpruneError, match="in_channels"):
        layer(torch.randn(2, 3, 9))
    with pytest.raises(PlpruneError, match="shorter than kernel_size"):
        layer(torch.randn(2, 2, 4))
    with pytest.raises(PlpruneError, match="odd"):
        DynamicConvCNN(kernel_size=4)


# -- channel gating -----------------------------------------------------------------------------------------
def _gated_model(seed: int = 0) -> ChannelGatedCNN:
    """A float64 model in eval mode whose gates depend strongly on the input: some channels closed, some
    partly open, some fully open, with the open set varying from sample to sample."""
    torch.manual_seed(seed)
    model = ChannelGatedCNN(channels=CHANNELS).double()
    model.train()
    for _ in range(3):  # non-trivial BN running statistics
        model(torch.randn(16, 1, LENGTH, dtype=torch.float64))
    with torch.no_grad():
        for block in model.blocks:
            block.gate.weight.normal_(0, 6.0)
            block.gate.bias.normal_(0, 2.0)
    return model.eval()


def _inputs(n: int = 12) -> torch.Tensor:
    x = torch.randn(n, 1, LENGTH, dtype=torch.float64)
    return x + torch.linspace(-2, 2, n, dtype=torch.float64)[:, None, None]  # spread the block-1 GAP


def _macs_formula(active: list[int], length: int = LENGTH, channels=CHANNELS, classes: int = 10) -> int:
    macs, a_in = 0, 1
    for a_out, out in zip(active, channels, strict=True):
        macs += out * a_in + a_out * a_in * 3 * length  # gate FC + conv over the active channels
        a_in, length = a_out, length // 2
    return macs + classes * a_in


def test_infer_skips_channels_and_equals_gated_eval_forward():
    model = _gated_model()
    x = _inputs()
    logits = model(x)
    gates = model.last_gates()
    result = model.infer(x)
    assert isinstance(result, GatedInference)
    runner = model.runner()  # reusable: the same numbers sample by sample
    for n in range(3):
        sample_logits, sample_macs, sample_counts = runner.run_one(x[n : n + 1])
        assert torch.equal(sample_logits, result.logits[n : n + 1])
        assert sample_macs == int(result.macs[n]) and sample_counts == result.active_channels[n].tolist()
    assert (result.logits - logits).abs().max() <= 1e-10
    for n in range(x.shape[0]):  # one sample at a time too
        assert (model.infer(x[n : n + 1]).logits - logits[n]).abs().max() <= 1e-10
    counts = torch.stack([(z > 0).sum(dim=1) for z in gates], dim=1)
    assert torch.equal(result.active_channels, counts)
    # the check means something: gates differ per sample, some are closed, some fractional
    all_gates = torch.cat([z.flatten() for z in gates])
    assert (all_gates == 0).any() and (all_gates == 1).any() and ((all_gates > 0) & (all_gates < 1)).any()
    assert len({tuple(row) for row in counts.tolist()}) > 1
    assert (counts < torch.tensor(CHANNELS)).any()
    # MACs: the analytical count from the active channels, strictly between min and max
    expected = torch.tensor([_macs_formula(row) for row in counts.tolist()])
    assert torch.equal(result.macs, expected)
    assert torch.equal(result.macs, torch.tensor([model.macs_for_counts(r, LENGTH) for r in counts.tolist()]))
    assert (result.macs < model.max_macs(LENGTH)).all() and (result.macs > model.min_macs(LENGTH)).all()
    assert result.mean_macs == pytest.approx(expected.double().mean().item())


def test_infer_float32_model_close_to_forward():
    torch.manual_seed(1)
    model = ChannelGatedCNN(channels=CHANNELS).eval()
    with torch.no_grad():
        model.blocks[1].gate.bias[:4] = -10.0
    x = torch.randn(5, 1, LENGTH)
    result = model.infer(x)
    assert torch.allclose(result.logits, model(x), atol=1e-5, rtol=1e-5)
    assert (result.active_channels[:, 1] == CHANNELS[1] - 4).all()


def _force_gates(model: ChannelGatedCNN, log_alpha: float, blocks=None) -> None:
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            if blocks is None or i in blocks:
                block.gate.weight.zero_()
                block.gate.bias.fill_(log_alpha)


def test_all_gates_closed_or_open_give_min_and_max_macs():
    model = _gated_model()
    x = _inputs(4)
    _force_gates(model, -10.0)
    closed = model.infer(x)
    assert (closed.macs == model.min_macs(LENGTH)).all()
    assert model.min_macs(LENGTH) == CHANNELS[0] * 1  # only the first gate FC runs
    assert (closed.active_channels == 0).all()
    assert torch.allclose(closed.logits, model.classifier.bias.expand(4, -1))
    assert (closed.logits - model(x)).abs().max() <= 1e-12

    _force_gates(model, 10.0)
    opened = model.infer(x)
    assert (opened.macs == model.max_macs(LENGTH)).all()
    assert model.max_macs(LENGTH) == _macs_formula(list(CHANNELS))
    assert (opened.active_channels == torch.tensor(CHANNELS)).all()
    # all gates open: the static VGG of the same shape with the same weights
    static = VGG(in_channels=1, num_classes=10, dims=1, cfg=model.static_cfg()).double().eval()
    for i, block in enumerate(model.blocks):
        static.features[2 * i].conv.load_state_dict(block.conv.state_dict())
        static.features[2 * i].bn.load_state_dict(block.bn.state_dict())
    static.classifier.load_state_dict(model.classifier.state_dict())
    assert (opened.logits - static(x)).abs().max() <= 1e-10
    assert model.static_macs(LENGTH) == _macs_formula(list(CHANNELS)) - sum(
        o * i for o, i in zip(CHANNELS, (1, *CHANNELS[:-1]), strict=True)
    )


def test_closed_block_followed_by_open_block():
    # block 1 closed: block 2's conv sees only zeros and gives BN's shift alone, without conv MACs
    model = _gated_model()
    _force_gates(model, -10.0, blocks={0})
    _force_gates(model, 10.0, blocks={1, 2, 3})
    x = _inputs(3)
    result = model.infer(x)
    assert (result.logits - model(x)).abs().max() <= 1e-10
    assert result.active_channels.tolist() == [[0, *CHANNELS[1:]]] * 3
    assert (result.macs == _macs_formula([0, *CHANNELS[1:]])).all()


def test_gate_penalty_is_mean_expected_l0_and_differentiable():
    model = _gated_model()
    x = _inputs(8)
    model.train()
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda _m, args: inputs.append(args[0])) for b in model.blocks]
    model(x)
    for hook in hooks:
        hook.remove()
    total, count = 0.0, 0
    for block, h in zip(model.blocks, inputs, strict=True):
        log_alpha = F.linear(h.mean(dim=2), block.gate.weight, block.gate.bias)
        assert (block.last_log_alpha - log_alpha).abs().max() <= 1e-12
        total = total + hard_concrete_l0(log_alpha).sum()
        count += log_alpha.numel()
        assert block.gate_penalty().item() == pytest.approx(
            hard_concrete_l0(log_alpha).mean().item(), abs=1e-12
        )
    penalty = model.gate_penalty()
    assert penalty.item() == pytest.approx((total / count).item(), abs=1e-12)
    assert 0 <= penalty.item() <= 1
    # training gates are stochastic hard-concrete samples in [0, 1]
    gates = torch.cat([z.flatten() for z in model.last_gates()])
    assert ((gates >= 0) & (gates <= 1)).all()
    model.zero_grad()
    loss = model.penalized_loss(torch.tensor(0.0, dtype=torch.float64), 0.5)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * penalty.item())
    assert all(b.gate.weight.grad.abs().sum() > 0 for b in model.blocks)
    # eval: deterministic gates
    model.eval()
    model(x)
    for block in model.blocks:
        assert torch.equal(block.last_gates, hard_concrete_gate(block.last_log_alpha))


def test_single_block_forward():
    block = ChannelGatedConv(3, 5, kernel_size=5).eval()
    x = torch.randn(4, 3, 11)
    y = block(x)
    z = hard_concrete_gate(block.gate(x.mean(dim=2)))
    assert torch.allclose(y, F.relu(block.bn(block.conv(x))) * z[:, :, None])
    assert y.shape == (4, 5, 11)


def test_channel_gating_bad_input():
    for kwargs, match in [
        ({"channels": ()}, "channels"),
        ({"channels": (4, 0)}, r"channels\[1\]"),
        ({"channels": "abc"}, "channels"),
        ({"kernel_size": 2}, "odd"),
        ({"gamma": 0.0}, "gamma"),
        ({"zeta": 1.0}, "zeta"),
        ({"beta": 0.0}, "beta"),
        ({"gate_bias_init": math.nan}, "gate_bias_init"),
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": -1}, "num_classes"),
        ({"pool": 1}, "pool"),
    ]:
        with pytest.raises(PlpruneError, match=match):
            ChannelGatedCNN(**kwargs)
    model = ChannelGatedCNN(channels=CHANNELS)
    with pytest.raises(PlpruneError, match="forward pass first"):
        model.gate_penalty()
    with pytest.raises(PlpruneError, match="forward pass first"):
        model.last_gates()
    with pytest.raises(PlpruneError, match="in_channels = 1"):
        model(torch.randn(2, 3, LENGTH))
    with pytest.raises(PlpruneError, match="in_channels = 1"):
        model.infer(torch.randn(2, LENGTH))
    with pytest.raises(PlpruneError, match="at least one sample"):
        model.infer(torch.randn(0, 1, LENGTH))
    model(torch.randn(4, 1, LENGTH))
    for lam in (-0.1, math.nan, math.inf, "1"):
        with pytest.raises(PlpruneError, match="λ"):
            model.penalized_loss(torch.tensor(1.0), lam)
    runner = model.runner()
    with pytest.raises(PlpruneError, match="one sample"):
        runner.run_one(torch.randn(2, 1, LENGTH))
    with pytest.raises(PlpruneError, match="ChannelGatedCNN"):
        ChannelSkippingRunner(DynamicConvCNN())
    with pytest.raises(PlpruneError, match="one count per block"):
        model.macs_for_counts([1, 2], LENGTH)
    with pytest.raises(PlpruneError, match=r"in \[0, 6\]"):
        model.macs_for_counts([7, 1, 1, 1], LENGTH)


# -- training (plprune.train.dynamic_inference) -------------------------------------------------------------
def test_annealed_temperature_by_hand() -> None:
    assert [annealed_temperature(s, 30.0, 10) for s in (0, 5, 10, 11, 100)] == [30.0, 15.5, 1.0, 1.0, 1.0]
    assert annealed_temperature(3, 1.0, 4) == 1.0
    with pytest.raises(PlpruneError, match="anneal_steps"):
        annealed_temperature(0, 30.0, 0)


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(x), y))


TRAIN = {"epochs": 6, "batch_size": 16, "lr": 1e-2}


@pytest.mark.parametrize("kind", ["static", "gated", "dynconv"])
def test_train_dynamic_network_lowers_the_loss_reproducibly(kind: str) -> None:
    x, y = bump_sequences()
    params = []
    for _ in range(2):
        torch.manual_seed(0)
        if kind == "static":
            model, extra = VGG(in_channels=1, num_classes=2, dims=1, cfg=(8, "M", 8, "M")), {}
        elif kind == "gated":
            model, extra = ChannelGatedCNN(1, 2, (8, 8), gate_bias_init=1.0), {"gate_penalty": 0.1}
        else:
            model, extra = DynamicConvCNN(1, 2, (8, 8), num_kernels=2), {"temperature_start": 5.0}
        before = loss_of(model, x, y)
        seconds = train_dynamic_network(
            model, x, y, order_generator=torch.Generator().manual_seed(2), **TRAIN, **extra
        )
        assert seconds > 0 and not model.training
        assert loss_of(model, x, y) < 0.5 * before
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(params[0], params[1])


def test_dynamic_convolution_temperature_follows_the_annealing(monkeypatch) -> None:
    x, y = bump_sequences(32)
    torch.manual_seed(0)
    model = DynamicConvCNN(1, 2, (4, 4), num_kernels=2)
    seen: list[float] = []
    original = DynamicConvCNN.set_temperature
    monkeypatch.setattr(
        DynamicConvCNN, "set_temperature", lambda self, t: (seen.append(t), original(self, t))[1]
    )
    train_dynamic_network(
        model, x, y, epochs=3, batch_size=8, lr=1e-3, order_generator=torch.Generator(),
        temperature_start=9.0, anneal_fraction=0.5,
    )  # fmt: skip
    total = 3 * (32 // 8)  # 12 steps, annealed over int(0.5 * 12) = 6
    assert seen == [max(1.0, 9.0 - 8.0 * s / 6) for s in range(total)] + [1.0]
    assert all(conv.temperature == 1.0 for conv in model.convs)


def test_a_larger_gate_penalty_closes_more_gates() -> None:
    x, y = bump_sequences()
    open_channels = []
    for lam in (0.0, 5.0):
        torch.manual_seed(0)
        model = ChannelGatedCNN(1, 2, (8, 8), gate_bias_init=1.0)
        train_dynamic_network(
            model, x, y, epochs=12, batch_size=16, lr=3e-2, order_generator=torch.Generator().manual_seed(2),
            gate_penalty=lam,
        )  # fmt: skip
        open_channels.append(model.infer(x).active_channels.double().mean(0))
    # the second block's gates close under the penalty (the first block's gate sees only the input's mean)
    assert float(open_channels[0][1]) == 8.0 and float(open_channels[1][1]) < 4.0, open_channels


def test_train_dynamic_network_refuses_bad_arguments() -> None:
    x, y = bump_sequences(16)
    gen = torch.Generator()
    gated = ChannelGatedCNN(1, 2, (4,))
    with pytest.raises(PlpruneError, match="gate_penalty"):
        train_dynamic_network(gated, x, y, order_generator=gen, **TRAIN)
    with pytest.raises(PlpruneError, match="ChannelGatedCNN only"):
        train_dynamic_network(
            DynamicConvCNN(1, 2, (4,)), x, y, order_generator=gen, gate_penalty=1.0, **TRAIN
        )
    with pytest.raises(PlpruneError, match="larger than"):
        train_dynamic_network(
            gated, x, y, order_generator=gen, gate_penalty=1.0, epochs=1, batch_size=64, lr=1e-3
        )
    with pytest.raises(PlpruneError, match="one label per sample"):
        train_dynamic_network(gated, x, y[:4], order_generator=gen, gate_penalty=1.0, **TRAIN)
    with pytest.raises(PlpruneError, match="anneal_fraction"):
        train_dynamic_network(
            gated, x, y, order_generator=gen, gate_penalty=1.0, anneal_fraction=2.0, **TRAIN
        )


# -- measuring (plprune.bench.dynamic_inference) ------------------------------------------------------------
def test_gated_evaluation_against_the_gates_and_a_hand_mac_count():
    model = _gated_model()
    x = _inputs(16)
    y = torch.arange(16) % 10
    row = gated_evaluation(model, x, y)
    with torch.no_grad():
        logits = model(x)
    gates = model.last_gates()
    counts = torch.stack([(z > 0).sum(dim=1) for z in gates], dim=1)
    accuracy = float((logits.argmax(1) == y).double().mean())
    assert row["test_accuracy"] == row["infer_test_accuracy"] == accuracy
    assert row["infer_max_abs_diff_vs_forward"] <= 1e-10
    per_sample = [_macs_formula(r) for r in counts.tolist()]
    assert row["macs_mean"] == pytest.approx(sum(per_sample) / 16)
    assert (row["macs_min"], row["macs_max"]) == (min(per_sample), max(per_sample))
    # the gate FCs: out_b x (open input channels of block b) per sample, by hand
    gate_fc = [
        sum(out * a_in for out, a_in in zip(CHANNELS, [1, *r[:-1]], strict=True)) for r in counts.tolist()
    ]
    assert row["gate_fc_macs_mean"] == pytest.approx(sum(gate_fc) / 16)
    assert row["active_channels_mean"] == pytest.approx(counts.double().mean(0).tolist())
    open_for = [(z > 0).sum(0) for z in gates]
    assert row["channels_never_open"] == [int((c == 0).sum()) for c in open_for]
    assert row["channels_open_for_some_but_not_all"] == [int(((c > 0) & (c < 16)).sum()) for c in open_for]
    assert sum(row["channels_open_for_some_but_not_all"]) > 0 and row["distinct_active_patterns"] > 1
    with pytest.raises(PlpruneError, match="ChannelGatedCNN"):
        gated_evaluation(DynamicConvCNN(1, 10, CHANNELS), x.float(), y)
