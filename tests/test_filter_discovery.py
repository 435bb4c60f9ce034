"""Conv filter discovery through Torch-Pruning's dependency graph: a CNN plprune has never seen (residual
coupling), our VGG (same sites as the hand-written discovery) and ResNet (inner convs only), exact
equivalence of masking a group and zeroing its channels by hand, skipped convs, clear errors, and a
discovery that leaves the model's mode and BatchNorm statistics alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.groups import ParamSlice
from plprune.models.filters import GatedConvBN
from plprune.models.resnet import ResNet
from plprune.models.vgg import VGG
from plprune.pruners.dpfps import bn_scales
from plprune.sites import find_sites
from plprune.sites.filter_discovery import _Trace, find_filter_sites

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


class UserNet(nn.Module):
    """A user's CNN: stem → one residual block ``relu(x + bn2(conv2(relu(bn1(conv1(x))))))`` → pool → fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(6)
        self.conv1 = nn.Conv2d(6, 5, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.out_relu = nn.ReLU()  # a module, so a forward hook can read the residual stream
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = self.out_relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(y.mean(dim=(2, 3)))


def user_net() -> UserNet:
    torch.manual_seed(0)
    model = UserNet()
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for _ in range(3):
            model(torch.randn(8, 3, 8, 8) * 2 + 0.5)
        for bn in (model.bn0, model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _zero_by_hand(model: nn.Module, pairs: list[tuple[str, str]], channel: int) -> None:
    """Independent reference: zero output channel ``channel`` of each conv and its BN directly."""
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
            conv.weight[channel] = 0.0
            if conv.bias is not None:
                conv.bias[channel] = 0.0
            bn.weight[channel] = 0.0
            bn.bias[channel] = 0.0


def test_user_cnn_residual_convs_form_one_coupled_site() -> None:
    groups = GroupSet(user_net(), kinds=("filter",), example_inputs=X)
    assert [site.module_name for site in groups.sites] == ["stem", "conv1"]
    coupled, inner = groups.sites
    assert [(m.conv_name, m.norm_name) for m in coupled.members] == [("stem", "bn0"), ("conv2", "bn2")]
    assert [(m.conv_name, m.norm_name) for m in inner.members] == [("conv1", "bn1")]
    assert (coupled.layer, coupled.num_groups, inner.layer, inner.num_groups) == (0, 6, 1, 5)
    assert groups.groups[2].name == "filter:L0.2"
    assert set(groups.groups[2].slices) == {
        ParamSlice(name, 0, 2, 3)
        for name in ("stem.weight", "bn0.weight", "bn0.bias", "conv2.weight", "conv2.bias", "bn2.weight",
                     "bn2.bias")
    }
    assert coupled.feature_module is groups.model.bn0 and inner.feature_module is groups.model.bn1
    assert not any(name.startswith("fc") for name in groups.param_names)


@pytest.mark.parametrize(
    ("group", "pairs", "channel"),
    [(2, [("stem", "bn0"), ("conv2", "bn2")], 2), (6 + 4, [("conv1", "bn1")], 4)],
    ids=["residual", "inner"],
)
def test_user_cnn_masked_group_equals_channels_zeroed_by_hand(
    group: int, pairs: list[tuple[str, str]], channel: int
) -> None:
    masked, by_hand, unpruned = user_net(), user_net(), user_net()
    groups = GroupSet(masked, kinds=("filter",), example_inputs=X)
    keep = torch.ones(len(groups), dtype=torch.bool)
    keep[group] = False
    groups.apply_mask(keep)
    _zero_by_hand(by_hand, pairs, channel)
    stream: list[torch.Tensor] = []
    masked.out_relu.register_forward_hook(lambda module, args, output: stream.append(output))
    with torch.no_grad():
        out = masked(X)
        torch.testing.assert_close(out, by_hand(X), rtol=0, atol=1e-6)
        assert not torch.allclose(out, unpruned(X), atol=1e-4)  # the channel mattered
    (y,) = stream
    if group < 6:  # a channel of the residual stream: exactly zero after the block
        assert torch.count_nonzero(y[:, channel]) == 0
        assert torch.count_nonzero(y[:, [c for c in range(6) if c != channel]]) > 0


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_soft_gates_all_ones_are_exact_and_gate_zero_equals_the_hard_mask(mode: str) -> None:
    gated, masked = user_net(), user_net()
    reference = copy.deepcopy(gated)
    groups = GroupSet(gated, kinds=("filter",), example_inputs=X)
    for model in (gated, masked, reference):
        model.train(mode == "train")
    with torch.no_grad():
        expected = reference(X)
        with groups.soft_gates(torch.ones(len(groups))):
            assert torch.equal(gated(X), expected)
        gates = torch.ones(len(groups))
        gates[[1, 7]] = 0.0  # a residual channel and an inner one
        other = GroupSet(masked, kinds=("filter",), example_inputs=X)
        other.apply_mask(gates.bool())
        with groups.soft_gates(gates):
            torch.testing.assert_close(gated(X), masked(X), rtol=0, atol=1e-6)


def test_vgg_sites_are_the_gated_blocks_as_before() -> None:
    torch.manual_seed(0)
    model = VGG(width_multiplier=0.0625, in_channels=2, num_classes=5, dims=2)
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.randn(2, 2, 8, 8))
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, GatedConvBN)]
    assert len(blocks) == 13
    expected_groups = []
    for layer, (name, block) in enumerate(blocks):
        site = groups.sites[layer]
        assert (site.module_name, site.module, site.layer) == (name, block, layer)
        assert [(m.conv_name, m.conv, m.norm_name, m.norm) for m in site.members] == [
            (f"{name}.conv", block.conv, f"{name}.bn", block.bn)
        ]
        assert site.feature_module is block  # CHIP keeps reading the post-ReLU maps
        for c in range(block.conv.out_channels):
            params = (f"{name}.conv.weight", f"{name}.bn.weight", f"{name}.bn.bias")
            slices = tuple(ParamSlice(p, 0, c, c + 1) for p in params)
            expected_groups.append((f"filter:L{layer}.{c}", slices))
    assert len(groups.sites) == 13
    assert [(g.name, g.slices) for g in groups.groups] == expected_groups


@pytest.mark.parametrize(("dims", "shape"), [(1, (4, 1, 40)), (2, (4, 1, 8, 8))], ids=["1d", "2d"])
def test_resnet_keeps_its_inner_convs_and_a_masked_filter_equals_zeroing_it(dims: int, shape: tuple) -> None:
    torch.manual_seed(0)
    model = ResNet(depth=14, width_multiplier=0.25, in_channels=1, num_classes=3, dims=dims)
    x = torch.randn(shape)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(shape) * 2 + 0.5)
    model.eval()
    by_hand = copy.deepcopy(model)
    groups = GroupSet(model, kinds=("filter",), example_inputs=x)
    assert [s.module_name for s in groups.sites] == [f"blocks.{i}.conv1" for i in range(6)]
    assert [s.num_groups for s in groups.sites] == [4, 4, 8, 8, 16, 16]
    # the residual group (stem + every conv2) is rejected: Torch-Pruning reads the option-A F.pad as
    # the identity on channels
    skipped = _Trace(model, x).sites()[1]
    assert set(skipped) == {"stem.conv"} | {f"blocks.{i}.conv2.conv" for i in range(6)}
    assert "ConstantPadNd" in skipped["stem.conv"]
    index = 8 + 5  # blocks.2.conv1 (the stride-2 block), filter 5
    keep = torch.ones(len(groups), dtype=torch.bool)
    keep[index] = False
    groups.apply_mask(keep)
    _zero_by_hand(by_hand, [("blocks.2.conv1.conv", "blocks.2.conv1.bn")], 5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), by_hand(x), rtol=0, atol=1e-6)


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.dw, self.bn_dw = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.b, self.bn_b = nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)  # its output channels are the model output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_a(self.a(x)))
        x = F.relu(self.bn_dw(self.dw(x)))
        return self.head(F.relu(self.bn_b(self.b(x))))


def test_depthwise_convs_and_output_convs_are_skipped() -> None:
    model = Depthwise()
    sites = find_filter_sites(model, X)
    assert [s.module_name for s in sites] == ["b"] and sites[0].layer == 0
    skipped = _Trace(model, X).sites()[1]
    assert set(skipped) == {"a", "dw", "head"}
    assert "depthwise" in skipped["a"] and "depthwise" in skipped["dw"] and "output" in skipped["head"]
    lone = nn.Sequential(nn.Conv2d(3, 3, 3, groups=3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(PlpruneError, match=r"no prunable conv filters \(0: grouped/depthwise conv"):
        find_filter_sites(lone, X)


def test_a_conv_wrapped_alone_is_its_site_module_and_a_norm_after_a_sum_is_skipped() -> None:
    class Summed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.c1, self.c2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)  # after the sum of two convs: not one conv's norm
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.block(x)
            return self.fc(F.relu(self.bn(self.c1(x) + self.c2(x))).mean(dim=(2, 3)))

    model = Summed()
    (site,) = find_filter_sites(model, X)
    assert site.module_name == "block" and site.module is model.block and site.feature_module is model.block
    assert _Trace(model, X).sites()[1] == {
        "c1": "norm bn does not directly follow one conv",
        "c2": "norm bn does not directly follow one conv",
    }


def test_discovery_errors_are_clear() -> None:
    with pytest.raises(PlpruneError, match=r"finding conv filters needs example_inputs \(a batch the model"):
        GroupSet(user_net(), kinds=("filter",))
    with pytest.raises(PlpruneError, match="needs example_inputs"):
        find_sites(user_net(), ("filter",))
    with pytest.raises(PlpruneError, match=r"Sequential has no conv layer .*its modules are: Linear, ReLU"):
        find_filter_sites(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.randn(2, 4))
    with pytest.raises(PlpruneError, match="tracing UserNet on example_inputs failed"):
        find_filter_sites(user_net(), torch.randn(2, 5, 8, 8))


def test_discovery_leaves_modes_buffers_and_gradients_alone() -> None:
    for model, x in [(user_net(), X), (VGG(width_multiplier=0.0625, in_channels=3, dims=2), X)]:
        model.train()
        list(model.children())[1].eval()  # mixed modes must come back as they were
        modes = {name: m.training for name, m in model.named_modules()}
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        assert buffers and any(n.endswith("running_mean") for n in buffers)
        find_filter_sites(model, x)
        assert {name: m.training for name, m in model.named_modules()} == modes
        for name, buffer in model.named_buffers():
            assert torch.equal(buffer, buffers[name]), name
        assert all(p.grad is None for p in model.parameters())


def test_dpfps_ranks_the_summed_bn_scales_of_coupled_convs() -> None:
    model = user_net()
    groups = GroupSet(model, kinds=("filter",), example_inputs=X)
    scales = bn_scales(groups)
    assert [(w is model.bn0.weight, w is model.bn2.weight, a, b) for w, a, b in scales[:2]] == [
        (True, False, 0, 6),
        (False, True, 0, 6),
    ]
    assert scales[2][0] is model.bn1.weight and scales[2][1:] == (6, 11)
