"""Filter gate sites in VGG and ResNet: gate 0 ≡ pruned filter, discovery, hard masks, protection,
features and gating network on filter groups, exact third derivatives, clear errors."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from plprune.curvature import compute_group_features
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.gating import GatingNetwork, normalise_features
from plprune.models.filters import GatedConvBN
from plprune.models.resnet import ResNet
from plprune.models.vgg import VGG
from plprune.sites import ConvMember, FilterSite

WIDTHS_0625 = [4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32]  # VGG-16 at width 1/16


def vgg_1d() -> VGG:
    return VGG(width_multiplier=0.0625, in_channels=1, num_classes=10, dims=1)


def vgg_2d() -> VGG:
    return VGG(width_multiplier=0.0625, in_channels=2, num_classes=5, dims=2)


def resnet_1d() -> ResNet:
    return ResNet(depth=20, width_multiplier=0.25, in_channels=1, num_classes=10, dims=1)


def resnet_2d() -> ResNet:
    return ResNet(depth=8, width_multiplier=0.25, in_channels=2, num_classes=5, dims=2)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "vgg-1d": (vgg_1d, (6, 1, 40)),
    "vgg-2d": (vgg_2d, (6, 2, 8, 8)),
    "resnet-1d": (resnet_1d, (6, 1, 40)),
    "resnet-2d": (resnet_2d, (6, 2, 8, 8)),
}


def _model_and_input(key: str) -> tuple[nn.Module, torch.Tensor]:
    build, shape = MODELS[key]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(shape)
    with torch.no_grad():  # non-trivial running statistics for eval mode
        for _ in range(3):
            model(torch.randn(shape) * 2 + 0.5)
    return model, x


def _zero_filter_by_hand(model: nn.Module, site_name: str, channel: int) -> None:
    """Independent reference: zero conv filter ``channel`` and its BN γ, β directly on the modules."""
    site = model.get_submodule(site_name)
    with torch.no_grad():
        site.conv.weight[channel].zero_()
        site.bn.weight[channel] = 0.0
        site.bn.bias[channel] = 0.0


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gate_zero_equals_zeroed_filter_and_hard_mask(key: str, mode: str) -> None:
    gated, x = _model_and_input(key)
    by_hand, masked, unpruned = copy.deepcopy(gated), copy.deepcopy(gated), copy.deepcopy(gated)
    groups = GroupSet(gated, kinds=("filter",), example_inputs=x)
    chosen = [1, len(groups) // 2, len(groups) - 2]  # groups in the first, a middle and the last site
    gates = torch.ones(len(groups))
    gates[chosen] = 0.0
    groups.set_soft_gates(gates)
    for index in chosen:
        group = groups.groups[index]
        site_name = group.slices[0].param_name.removesuffix(".conv.weight")
        _zero_filter_by_hand(by_hand, site_name, group.index)
    keep = torch.ones(len(groups), dtype=torch.bool)
    keep[chosen] = False
    GroupSet(masked, kinds=("filter",), example_inputs=x).apply_mask(keep)
    for model in (gated, by_hand, masked, unpruned):
        model.train(mode == "train")
    out = gated(x)
    assert torch.equal(out, by_hand(x))
    assert torch.equal(out, masked(x))
    assert not torch.allclose(out, unpruned(x))  # the chosen filters mattered


@pytest.mark.parametrize("key", ["vgg-2d", "resnet-1d"])
def test_all_ones_gates_are_exactly_the_ungated_model(key: str) -> None:
    model, x = _model_and_input(key)
    groups = GroupSet(model, kinds=("filter",), example_inputs=x)
    for mode in (True, False):
        model.train(mode)
        reference = model(x)
        with groups.soft_gates(torch.ones(len(groups))):
            assert torch.equal(model(x), reference)


def test_groupset_discovers_every_vgg_conv_filter() -> None:
    model = vgg_1d()
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.zeros(2, 1, 40))
    assert len(groups.sites) == 13 and len(groups) == sum(WIDTHS_0625)
    assert [site.num_groups for site in groups.sites] == WIDTHS_0625
    assert groups.layer_ids.tolist() == [i for i, w in enumerate(WIDTHS_0625) for _ in range(w)]
    group = groups.groups[4 + 2]  # second conv (features.1), filter 2
    assert group.name == "filter:L1.2"
    assert set(group.slices) == {
        (s := type(group.slices[0]))("features.1.conv.weight", 0, 2, 3),
        s("features.1.bn.weight", 0, 2, 3),
        s("features.1.bn.bias", 0, 2, 3),
    }
    params = dict(model.named_parameters())
    assert groups.groups[6].slices[0].select(params["features.1.conv.weight"]).shape == (1, 4, 3)
    assert not any(name.startswith("classifier") for name in groups.param_names)


def test_groupset_discovers_only_the_inner_resnet_convs() -> None:
    model = ResNet(depth=20, width_multiplier=0.25, in_channels=1, dims=1)  # widths 4, 8, 16
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.zeros(2, 1, 40))
    assert [site.num_groups for site in groups.sites] == [4] * 3 + [8] * 3 + [16] * 3
    assert [site.module_name for site in groups.sites] == [f"blocks.{i}.conv1" for i in range(9)]
    assert len(groups) == 84
    assert {n.split(".", 2)[-1] for n in groups.param_names} == {
        "conv1.conv.weight",
        "conv1.bn.weight",
        "conv1.bn.bias",
    }
    tied = [n for n in dict(model.named_parameters()) if "conv2" in n or n.startswith("stem")]
    assert tied and not set(tied) & set(groups.param_names)
    assert ResNet(depth=56, width_multiplier=0.0625).blocks_per_stage == 9
    resnet56 = ResNet(depth=56, width_multiplier=0.0625)
    assert len(GroupSet(resnet56, kinds=("filter",), example_inputs=torch.zeros(2, 3, 8, 8)).sites) == 27


@pytest.mark.parametrize("key", ["vgg-2d", "resnet-1d"])
def test_hard_masked_filters_stay_zero_through_sgd_momentum(key: str) -> None:
    model, _ = _model_and_input(key)
    shape = MODELS[key][1]
    model.train()
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.zeros(shape))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, model.num_classes, (shape[0],), generator=gen)

    def step(masked: bool) -> None:
        loss = nn.functional.cross_entropy(model(torch.randn(shape, generator=gen)), labels)
        optimizer.zero_grad()
        loss.backward()
        if masked:
            groups.mask_gradients()
        optimizer.step()
        if masked:
            groups.enforce()

    for _ in range(3):  # momentum buffers are non-zero when the mask arrives
        step(masked=False)
    keep = torch.ones(len(groups), dtype=torch.bool)
    pruned = [0, 2, len(groups) // 2, len(groups) - 1]
    keep[pruned] = False
    groups.apply_mask(keep)
    params = dict(model.named_parameters())
    for _ in range(50):
        step(masked=True)
        for index in pruned:
            for piece in groups.groups[index].slices:
                assert torch.count_nonzero(piece.select(params[piece.param_name])) == 0
    kept = groups.groups[1].slices[0]
    assert torch.count_nonzero(kept.select(params[kept.param_name])) > 0


def test_protection_keeps_a_filter_in_every_layer() -> None:
    groups = GroupSet(resnet_1d(), kinds=("filter",), example_inputs=torch.zeros(2, 1, 40))
    keep = torch.ones(len(groups), dtype=torch.bool)
    keep[groups.layer_ids == 3] = False  # every filter of block 3
    with pytest.raises(PlpruneError, match="remove every filter of layer 3"):
        groups.apply_mask(keep)
    assert bool(groups.mask.all())  # refused masks change nothing
    with pytest.raises(PlpruneError, match="keeps at least one"):
        groups.check_ratio(0.95)
    groups.check_ratio(0.85)  # 84 filters, 9 layers: up to (84 - 9) / 84 ≈ 0.89 is allowed


def _per_sample_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("key", ["vgg-1d", "resnet-2d"])
def test_features_and_gating_network_run_on_filter_groups(key: str) -> None:
    model, x = _model_and_input(key)
    groups = GroupSet(model, kinds=("filter",), example_inputs=x)
    keep = torch.ones(len(groups), dtype=torch.bool)
    keep[3] = False
    groups.apply_mask(keep)
    batch = (x, torch.arange(x.shape[0]) % model.num_classes)
    features = compute_group_features(model, groups.groups, _per_sample_loss, batch, chunk_size=1)
    assert features.num_groups == len(groups)
    assert torch.isfinite(features.as_matrix()).all()
    assert bool(features.dead[3])  # the pruned filter's kernel is exactly zero
    # at initialisation some deep filters are negative on all 6 samples (dead under ReLU), not most
    assert int(features.dead.sum()) < len(groups) // 4
    assert bool((features.max_eigenvalue[~features.dead] > 0).all())
    vmapped = compute_group_features(model, groups.groups, _per_sample_loss, batch, chunk_size=None)
    torch.testing.assert_close(vmapped.min_eigenvalue, features.min_eigenvalue, rtol=1e-3, atol=1e-9)
    gates = GatingNetwork(hidden=8).double()(normalise_features(features.as_matrix()))
    assert gates.shape == (len(groups),) and torch.isfinite(gates).all()
    torch.testing.assert_close(gates.sum(), torch.tensor(float(len(groups)), dtype=torch.float64))


def _block_site(block: GatedConvBN) -> FilterSite:
    """The filter site of a lone block, given explicitly: discovery skips channels that are the model's
    output, and here the block is the whole model."""
    site = FilterSite("", block, 0, [ConvMember("conv", block.conv, "bn", block.bn)])
    return GroupSet(block, kinds=("filter",), sites=[site]).sites[0]


def test_hessian_vector_product_through_a_gated_block_is_exact_to_third_order() -> None:
    """Gradcheck of ∂/∂g [vᵀ H v] through conv → BN (training mode) → gate → ReLU, float64."""
    torch.manual_seed(0)
    block = GatedConvBN(2, 3, dims=1).double().train()
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    readout = torch.randn(4, 3, 5, dtype=torch.float64)
    weight = block.conv.weight
    probe = torch.randn_like(weight)

    site = _block_site(block)

    def fn(gate: torch.Tensor) -> torch.Tensor:
        site.set_gate(gate)
        y = ((block(x) * readout).sum() + 1) ** 2
        (g,) = torch.autograd.grad(y, weight, create_graph=True)
        (hv,) = torch.autograd.grad((g * probe).sum(), weight, create_graph=True)
        return (hv * probe).sum()

    gate = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(fn, (gate,), eps=1e-6, atol=1e-6)


def test_gate_shape_is_validated() -> None:
    site = _block_site(GatedConvBN(2, 3, dims=2))
    with pytest.raises(PlpruneError, match=r"filter gate of .* must have shape \(3,\)"):
        site.set_gate(torch.ones(4))
    with pytest.raises(PlpruneError, match="Tensor or None"):
        site.set_gate([1.0, 1.0, 1.0])
    site.set_gate(None)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: VGG(width_multiplier=0.005), r"leaves conv 0 .* with 0 channels.*>= 0.0078125"),
        (lambda: ResNet(width_multiplier=0.02), r"leaves stage 1 \(16 channels at width 1\) with 0 channels"),
        (lambda: VGG(width_multiplier=0), "width_multiplier must be a finite number > 0"),
        (lambda: VGG(dims=3), "dims must be 1 .* or 2"),
        (lambda: ResNet(dims=0), "dims must be 1 .* or 2"),
        (lambda: ResNet(depth=21), "depth must be 6n \\+ 2"),
        (lambda: VGG(in_channels=0), "in_channels must be a positive integer"),
        (lambda: VGG(cfg=("M",)), "at least one conv width"),
    ],
)
def test_bad_model_arguments_are_clear_errors(build: Callable[[], nn.Module], match: str) -> None:
    with pytest.raises(PlpruneError, match=match):
        build()


def test_wrong_input_shape_is_a_clear_error() -> None:
    with pytest.raises(PlpruneError, match=r"built for 2-D inputs \(N, C, H, W\) with C = in_channels = 3"):
        VGG(width_multiplier=0.0625)(torch.randn(2, 1, 8, 8))
    with pytest.raises(PlpruneError, match=r"ResNet-8 was built for 1-D inputs \(N, C, L\)"):
        ResNet(depth=8, width_multiplier=0.25, in_channels=1, dims=1)(torch.randn(2, 1, 8, 8))


def test_pools_that_would_shrink_below_one_are_skipped() -> None:
    model = VGG(width_multiplier=0.0625, in_channels=1, dims=2).eval()
    assert model.features(torch.randn(2, 1, 8, 8)).shape == (2, 32, 1, 1)  # 8→4→2→1, then skipped
    assert model.features(torch.randn(2, 1, 32, 32)).shape == (2, 32, 1, 1)  # all five pools
    assert model.features(torch.randn(2, 1, 5, 3)).shape == (2, 32, 2, 1)  # 5×3→2×1, then skipped
    model_1d = VGG(width_multiplier=0.0625, in_channels=1, dims=1).eval()
    assert model_1d.features(torch.randn(2, 1, 40)).shape == (2, 32, 1)  # 40→20→10→5→2→1
    assert model_1d(torch.randn(2, 1, 1)).shape == (2, 10)  # every pool skipped
