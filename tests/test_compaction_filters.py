"""Compaction of conv filters: the compacted CNN computes what the masked one did (VGG 1-D/2-D, ResNet, a
user's residual CNN, a CNN with concatenated branches), its parameter count is the arithmetic of the kept
channels, the plans of several sites compose in any order, and training goes on identically with the
optimizer state carried over (SGD with momentum, AdamW; BatchNorm in train mode; an LR scheduler)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plprune.compaction import compact, plan, strip_gate_hooks
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.keep import select_mask
from plprune.models import VGG, ResNet
from plprune.models.layers import BatchNorm
from plprune.sites.filter_discovery import build_dependency_graph
from plprune.sites.filters import ConvMember, FilterSite
from test_filter_discovery import UserNet

SMALL_VGG = (16, 16, "M", 32, 32, "M", 64, 64)  # widths at multiplier 0.25: 4, 4, 8, 8, 16, 16


def inputs(shape: tuple[int, ...], seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def vgg(dims: int) -> tuple[VGG, Tensor]:
    torch.manual_seed(0)
    model = VGG(0.25, in_channels=3, num_classes=5, dims=dims, cfg=SMALL_VGG)
    return model, inputs((4, 3, 12) if dims == 1 else (4, 3, 8, 8))


def settle(model: nn.Module, x: Tensor) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, then eval mode."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(inputs(tuple(x.shape), seed=10 + seed) * 2 + 0.5)
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, BatchNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def random_mask(groups: GroupSet, seed: int = 0) -> Tensor:
    scores = torch.rand(len(groups), generator=torch.Generator().manual_seed(seed))
    return select_mask(groups, scores, 0.5)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_same_outputs(compacted: nn.Module, masked: nn.Module, shape: tuple[int, ...]) -> None:
    for seed in (2, 3):
        x = inputs(shape, seed)
        with torch.no_grad():
            torch.testing.assert_close(compacted(x), masked(x), rtol=0, atol=1e-5)


# -- plprune's CNNs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [1, 2])
def test_vgg_compaction_computes_the_masked_model_with_the_kept_channels(dims: int) -> None:
    model, x = vgg(dims)
    settle(model, x)
    groups = GroupSet(model, kinds=("filter",), example_inputs=x)
    groups.apply_mask(random_mask(groups))
    kept = [int(groups.mask[a:b].sum()) for _, a, b in groups.site_ranges()]
    assert len(kept) == 6 and all(0 < k < s.num_groups for k, s in zip(kept, groups.sites, strict=True))

    compacted, report = compact(groups)
    assert_same_outputs(compacted, model, tuple(x.shape))

    taps = 3**dims
    expected, channels = 0, 3
    for out in kept:  # conv (no bias): in × out × taps; BatchNorm: weight and bias
        expected += channels * out * taps + 2 * out
        channels = out
    expected += channels * 5 + 5  # the classifier reads the last site's kept channels
    assert report.parameters_after == n_params(compacted) == expected
    assert report.parameters_before == n_params(model)
    blocks = [m for m in compacted.features if hasattr(m, "conv")]
    assert [b.conv.out_channels for b in blocks] == kept
    assert [b.conv.in_channels for b in blocks] == [3, *kept[:-1]]
    assert [b.bn.num_features for b in blocks] == kept
    assert [tuple(b.bn.running_mean.shape) for b in blocks] == [(k,) for k in kept]
    assert compacted.classifier.in_features == kept[-1]
    assert report.groups_after == {"filter": sum(kept)}
    assert not groups.mask.all() and n_params(model) == report.parameters_before  # the model is untouched


@pytest.mark.parametrize("depth", [8, 14])
def test_resnet_compaction_cuts_inner_convs_and_the_convs_reading_them(depth: int) -> None:
    torch.manual_seed(0)
    model = ResNet(depth, width_multiplier=0.5, in_channels=2, num_classes=3, dims=1)
    x = inputs((4, 2, 16))
    settle(model, x)
    groups = GroupSet(model, kinds=("filter",), example_inputs=x)
    assert all(s.module_name.endswith("conv1") for s in groups.sites)
    groups.apply_mask(random_mask(groups, seed=depth))
    compacted, report = compact(groups)
    assert_same_outputs(compacted, model, tuple(x.shape))

    removed = 0
    for site, a, b in groups.site_ranges():
        pruned = int((~groups.mask[a:b]).sum())
        block = model.get_submodule(site.module_name.rpartition(".")[0])
        conv1, conv2 = block.conv1.conv, block.conv2.conv
        # a channel of conv1: its filter (in × 3), BN weight and bias, and conv2's input column (out × 3)
        removed += pruned * (conv1.in_channels * 3 + 2 + conv2.out_channels * 3)
        new_block = compacted.get_submodule(site.module_name.rpartition(".")[0])
        kept = site.num_groups - pruned
        assert (new_block.conv1.conv.out_channels, new_block.conv1.bn.num_features) == (kept, kept)
        assert new_block.conv2.conv.in_channels == kept
        assert new_block.conv2.conv.out_channels == conv2.out_channels
    assert report.parameters_after == n_params(compacted) == n_params(model) - removed


# -- a user's CNNs ---------------------------------------------------------------------------------------
# the residual CNN of the discovery tests: stem → relu(x + bn2(conv2(relu(bn1(conv1(x)))))) → pool → fc
ResidualNet = UserNet


class ConcatNet(nn.Module):
    """Two conv branches concatenated, read by one conv (both sites cut its inputs), flatten → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.b, self.bn_b = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.c, self.bn_c = nn.Conv2d(9, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([F.relu(self.bn_a(self.a(x))), F.relu(self.bn_b(self.b(x)))], 1)
        z = F.relu(self.bn_c(self.c(y)))
        return self.fc(torch.flatten(F.max_pool2d(z, 2), 1))


X = inputs((4, 3, 8, 8))


def residual_net() -> ResidualNet:
    torch.manual_seed(0)
    return settle(ResidualNet(), X)  # type: ignore[return-value]


def test_user_residual_cnn_loses_coupled_channels_together() -> None:
    model = residual_net()
    groups = GroupSet(model, kinds=("filter",), example_inputs=X)
    coupled, _ = groups.sites
    assert [m.conv_name for m in coupled.members] == ["stem", "conv2"]
    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[[1, 4]] = False  # residual channels 1 and 4: stem, bn0, conv2, bn2 and every reader
    mask[6 + 2] = False  # conv1's channel 2
    groups.apply_mask(mask)
    model.bn0.bias.requires_grad_(False)  # frozen stays frozen
    compacted, report = compact(groups)
    assert_same_outputs(compacted, model, tuple(X.shape))
    assert not compacted.bn0.bias.requires_grad and compacted.bn2.bias.requires_grad
    assert (compacted.stem.out_channels, compacted.conv2.out_channels) == (4, 4)
    assert (compacted.bn0.num_features, compacted.bn2.num_features) == (4, 4)
    assert (compacted.conv1.in_channels, compacted.conv1.out_channels) == (4, 4)
    assert compacted.conv2.in_channels == 4
    assert compacted.fc.in_features == 4
    expected = 3 * 4 * 9 + 8 + (4 * 4 * 9 + 4) + 8 + (4 * 4 * 9 + 4) + 8 + (4 * 4 + 4)
    assert report.parameters_after == n_params(compacted) == expected
    torch.testing.assert_close(compacted.fc.weight, model.fc.weight[:, [0, 2, 3, 5]], rtol=0, atol=0)


def test_plans_of_several_sites_compose_in_any_order() -> None:
    """Consecutive pruned layers (a site cuts the next conv's inputs, the next site its outputs) and two
    sites cutting one conv's inputs (a concatenation): applying the edits reversed gives the same model."""
    for build, shape in ((lambda: vgg(2)[0], (4, 3, 8, 8)), (ConcatNet, tuple(X.shape))):
        torch.manual_seed(0)
        model = settle(build(), inputs(shape))
        groups = GroupSet(model, kinds=("filter",), example_inputs=inputs(shape))
        groups.apply_mask(random_mask(groups, seed=3))
        ops = plan(groups, inputs(shape))
        forward, _ = compact(groups)  # the edits in plan order
        reverse = copy.deepcopy(model)
        strip_gate_hooks(reverse)
        for op in reversed(ops):
            op.apply(reverse)
        assert_same_outputs(reverse, forward, shape)
        assert_same_outputs(reverse, model, shape)
        assert n_params(reverse) == n_params(forward)


def test_concatenated_branches_cut_the_reader_in_original_numbering() -> None:
    torch.manual_seed(0)
    model = settle(ConcatNet(), X)
    groups = GroupSet(model, kinds=("filter",), example_inputs=X)
    assert [s.module_name for s in groups.sites] == ["a", "b", "c"]
    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[[0, 2]] = False  # a: channels 0, 2
    mask[[4 + 1, 4 + 4]] = False  # b: channels 1, 4 = the reader's inputs 5, 8
    mask[[9 + 5]] = False  # c: channel 5 = the Linear's inputs 80..95
    groups.apply_mask(mask)
    compacted, _ = compact(groups)
    assert_same_outputs(compacted, model, tuple(X.shape))
    kept_inputs = [1, 3, 4, 6, 7]
    torch.testing.assert_close(compacted.c.weight, model.c.weight[:5][:, kept_inputs], rtol=0, atol=0)
    assert compacted.fc.in_features == 5 * 16
    # the edits are Torch-Pruning's own group for the pruned channels, mapped through concat and flatten
    graph = build_dependency_graph(model, X)
    import torch_pruning as tp

    group = graph.get_pruning_group(model.b, tp.prune_conv_out_channels, [1, 4])
    reader = [item for item in group.items if item.dep.target.module is model.c]
    assert [list(item.idxs) for item in reader] == [[5, 8]]


def test_the_edits_replay_on_a_float64_copy_keeping_its_dtype() -> None:
    """What compaction's index twin relies on: Torch-Pruning's functions slice (index_select), never cast."""
    for build, shape in ((lambda: vgg(1)[0], (4, 3, 12)), (ConcatNet, tuple(X.shape))):
        torch.manual_seed(0)
        model = settle(build(), inputs(shape))
        groups = GroupSet(model, kinds=("filter",), example_inputs=inputs(shape))
        groups.apply_mask(random_mask(groups, seed=4))
        compacted, _ = compact(groups)
        twin = copy.deepcopy(model).double()
        strip_gate_hooks(twin)
        for op in plan(groups, inputs(shape)):
            op.apply(twin)
        assert all(t.dtype == torch.float64 for t in twin.state_dict().values() if t.is_floating_point())
        for (name, p), (_, q) in zip(twin.named_parameters(), compacted.named_parameters(), strict=True):
            torch.testing.assert_close(p, q.double(), rtol=0, atol=0, msg=name)


# -- bad input -------------------------------------------------------------------------------------------
def test_compaction_without_example_inputs_says_what_is_needed() -> None:
    model = residual_net()
    groups = GroupSet(model, kinds=("filter",), example_inputs=X)
    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[0] = False
    groups.apply_mask(mask)
    groups.example_inputs = None
    with pytest.raises(PlpruneError, match="example_inputs"):
        compact(groups)
    compacted, _ = compact(groups, example_inputs=X)  # given here instead
    assert compacted.stem.out_channels == 5


def test_a_mask_emptying_a_layer_is_the_cores_error() -> None:
    model = residual_net()
    groups = GroupSet(model, kinds=("filter",), example_inputs=X)
    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[6:] = False  # every channel of conv1
    groups.mask = mask  # past apply_mask's protection check
    with pytest.raises(PlpruneError, match="cannot be emptied"):
        compact(groups)


def test_a_site_that_leaves_out_a_coupled_norm_is_refused() -> None:
    model = residual_net()
    site = FilterSite("conv1", model.conv1, 0, [ConvMember("conv1", model.conv1, None, None)])
    groups = GroupSet(model, kinds=("filter",), sites=[site], example_inputs=X)
    groups.apply_mask(torch.tensor([True, False, True, True, True]))
    with pytest.raises(PlpruneError, match="couples"):
        compact(groups)


def test_compaction_leaves_the_masked_model_as_it_was() -> None:
    model = residual_net().train()
    groups = GroupSet(model, kinds=("filter",), example_inputs=X)
    groups.apply_mask(random_mask(groups))
    before = copy.deepcopy(model.state_dict())
    compact(groups)
    assert model.training and all(m.training for m in model.modules())
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)


# -- training goes on ------------------------------------------------------------------------------------
def make_optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    return torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)


def training_setup(net: str, kind: str):
    if net == "vgg":
        model, x = vgg(1)
        model, x = model.double(), x.double()
        shape, classes = (8, 3, 12), 5
    else:
        model, shape, classes = residual_net().double(), (8, 3, 8, 8), 4
        x = X.double()
    model.train()
    groups = GroupSet(model, kinds=("filter",), example_inputs=x)
    optimizer = make_optimizer(kind, model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    generator = torch.Generator().manual_seed(5)
    batches = [
        (torch.randn(*shape, generator=generator, dtype=torch.float64),
         torch.randint(0, classes, (shape[0],), generator=generator))
        for _ in range(60)
    ]  # fmt: skip
    return model, groups, optimizer, scheduler, batches


def train_step(model, optimizer, scheduler, batch, groups: GroupSet | None) -> float:
    inputs_, labels = batch
    optimizer.zero_grad()
    loss = F.cross_entropy(model(inputs_), labels)
    loss.backward()
    if groups is not None:  # what Pruner.attach does around optimizer.step()
        groups.mask_gradients()
    optimizer.step()
    if groups is not None:
        groups.enforce()
    scheduler.step()
    return loss.item()


@pytest.mark.parametrize("net", ["vgg", "residual"])
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_training_goes_on_identically_after_compaction(net: str, kind: str) -> None:
    runs = []
    for compacted in (False, True):
        model, groups, optimizer, scheduler, batches = training_setup(net, kind)
        losses = [train_step(model, optimizer, scheduler, b, None) for b in batches[:3]]  # some training
        groups.apply_mask(random_mask(groups, seed=7))
        losses += [train_step(model, optimizer, scheduler, b, groups) for b in batches[3:10]]
        if compacted:
            params_before = n_params(model)
            same, report = compact(groups, inplace=True, optimizer=optimizer)
            assert same is model and report.parameters_after < params_before
            assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
            assert scheduler.optimizer is optimizer
        losses += [
            train_step(model, optimizer, scheduler, b, None if compacted else groups) for b in batches[10:60]
        ]
        model.eval()
        with torch.no_grad():
            out = model(batches[0][0])
        runs.append((losses, out, optimizer.param_groups[0]["lr"]))
    (masked_losses, masked_out, masked_lr), (losses, out, lr) = runs
    assert lr == masked_lr < make_optimizer(kind, nn.Linear(1, 1)).param_groups[0]["lr"]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(masked_losses), rtol=1e-5, atol=0)
    torch.testing.assert_close(out, masked_out, rtol=1e-5, atol=1e-7)
