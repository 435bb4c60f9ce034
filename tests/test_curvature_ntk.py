"""Per-group tangent kernels and their features (paper Sec. 3.2.2, Eq. 7) against a numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from plprune.curvature import (
    CONDITION_EPS,
    KernelFeatures,
    compute_group_features,
    condition_numbers,
    group_jacobians,
    group_kernels,
    kernel_features,
    model_condition_number,
    per_sample_gradients,
    per_sample_loss_output,
)
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.groups import Group, ParamSlice
from plprune.models.bert import BertForMaskedLM
from tiny_models import VOCAB, bert_batch, tiny_bert

N_SAMPLES = 5


def _per_sample_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    return model.per_sample_loss(*batch)


def _mlp_output(model: nn.Module, batch: tuple) -> torch.Tensor:
    return model(batch[0]).squeeze(-1)


def bert_groups(model: nn.Module) -> list[Group]:
    return GroupSet(model, kinds=("head",)).groups


def tiny_mlp() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def mlp_groups() -> list[Group]:
    """Three groups of two hidden neurons: rows of W1, entries of b1, columns of W2."""
    return [
        Group(
            "filter",
            0,
            i,
            (
                ParamSlice("0.weight", 0, 2 * i, 2 * i + 2),
                ParamSlice("0.bias", 0, 2 * i, 2 * i + 2),
                ParamSlice("2.weight", 1, 2 * i, 2 * i + 2),
            ),
        )
        for i in range(3)
    ]


def mlp_batch() -> tuple[torch.Tensor]:
    return (torch.randn(N_SAMPLES, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64),)


# ---- independent reference: explicit loop over samples, hand-written slicing, numpy eigenvalues ----


def reference_bert_jacobians(model: BertForMaskedLM, batch: tuple) -> list[np.ndarray]:
    attention = model.layers[0].attention
    d = attention.head_size
    ids, labels = batch
    rows: list[list[np.ndarray]] = [[] for _ in range(attention.num_heads)]
    tensors = [
        attention.query.weight,
        attention.query.bias,
        attention.key.weight,
        attention.key.bias,
        attention.value.weight,
        attention.value.bias,
        attention.output.weight,
    ]
    for j in range(ids.shape[0]):
        out = model.per_sample_loss(ids[j : j + 1], labels[j : j + 1])[0]
        grads = torch.autograd.grad(out, tensors)
        for h in range(attention.num_heads):
            pieces = [g[h * d : (h + 1) * d] for g in grads[:6]] + [grads[6][:, h * d : (h + 1) * d]]
            rows[h].append(np.concatenate([p.detach().numpy().ravel() for p in pieces]))
    return [np.stack(r) for r in rows]


def reference_mlp_jacobians(model: nn.Sequential, batch: tuple) -> list[np.ndarray]:
    (x,) = batch
    rows: list[list[np.ndarray]] = [[], [], []]
    tensors = [model[0].weight, model[0].bias, model[2].weight]
    for j in range(x.shape[0]):
        out = model(x[j : j + 1])[0, 0]
        w1, b1, w2 = torch.autograd.grad(out, tensors)
        for i in range(3):
            s = slice(2 * i, 2 * i + 2)
            rows[i].append(np.concatenate([w1[s].numpy().ravel(), b1[s].numpy(), w2[:, s].numpy().ravel()]))
    return [np.stack(r) for r in rows]


def reference_features(jacobians: list[np.ndarray]) -> dict[str, np.ndarray]:
    lmin, lmax, kappa, entropy = [], [], [], []
    for jac in jacobians:
        eig = np.clip(np.linalg.eigvalsh(jac @ jac.T), 0.0, None)
        p = eig / eig.sum()
        lmin.append(eig[0])
        lmax.append(eig[-1])
        kappa.append(eig[-1] / eig[0])
        entropy.append(-sum(q * math.log(q) for q in p if q > 0))
    return {k: np.array(v) for k, v in {"min": lmin, "max": lmax, "kappa": kappa, "entropy": entropy}.items()}


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["bert", "mlp"])
def test_features_match_numpy_reference(case: str) -> None:
    if case == "bert":
        model, batch, groups, fn = tiny_bert(), bert_batch(N_SAMPLES), None, _per_sample_loss
        groups = bert_groups(model)
        ref_jac = reference_bert_jacobians(model, batch)
    else:
        model, batch, groups, fn = tiny_mlp(), mlp_batch(), mlp_groups(), _mlp_output
        ref_jac = reference_mlp_jacobians(model, batch)
    jacobians = group_jacobians(model, groups, fn, batch)
    for jac, ref in zip(jacobians, ref_jac, strict=True):
        assert jac.shape == ref.shape
        np.testing.assert_allclose(jac.numpy(), ref, rtol=1e-10, atol=1e-13)
    features = compute_group_features(model, groups, fn, batch)
    ref = reference_features(ref_jac)
    assert (ref["min"] > 1e-8 * ref["max"]).all(), "the reference kernels should be full rank"
    for value in (
        features.min_eigenvalue,
        features.max_eigenvalue,
        features.condition_number,
        features.entropy,
    ):
        assert value.dtype == torch.float64 and value.shape == (len(groups),)
    np.testing.assert_allclose(features.max_eigenvalue.numpy(), ref["max"], rtol=1e-9)
    np.testing.assert_allclose(features.min_eigenvalue.numpy(), ref["min"], rtol=1e-6)
    np.testing.assert_allclose(features.condition_number.numpy(), ref["kappa"], rtol=1e-6)
    np.testing.assert_allclose(features.entropy.numpy(), ref["entropy"], rtol=1e-9)
    matrix = features.as_matrix()
    assert matrix.shape == (len(groups), 2) and matrix.dtype == torch.float64
    np.testing.assert_allclose(matrix.numpy(), np.stack([ref["min"], ref["entropy"]], axis=1), rtol=1e-6)


def test_vmap_chunked_and_loop_paths_agree() -> None:
    model, batch = tiny_bert(), bert_batch(N_SAMPLES)
    groups = bert_groups(model)
    full = group_kernels(model, groups, _per_sample_loss, batch)
    assert full.shape == (2, N_SAMPLES, N_SAMPLES) and full.dtype == torch.float64
    for chunk_size in (2, 3, 1):
        other = group_kernels(model, groups, _per_sample_loss, batch, chunk_size=chunk_size)
        torch.testing.assert_close(other, full, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(full, full.transpose(1, 2))


def test_eval_mode_during_computation_and_modes_restored() -> None:
    model, batch = tiny_bert(dropout=0.5), bert_batch(N_SAMPLES)
    model.train()
    model.layers[0].feed_forward.eval()  # a mixed-mode model must come back exactly as it was
    modes = [m.training for m in model.modules()]
    groups = bert_groups(model)
    first = group_kernels(model, groups, _per_sample_loss, batch)
    second = group_kernels(model, groups, _per_sample_loss, batch, chunk_size=1)
    torch.testing.assert_close(first, second, rtol=1e-10, atol=1e-15)  # dropout was off
    assert [m.training for m in model.modules()] == modes


def test_per_sample_loss_output_is_the_models_per_sample_loss() -> None:
    model, batch = tiny_bert(), bert_batch(N_SAMPLES)
    groups = bert_groups(model)
    torch.testing.assert_close(
        group_kernels(model, groups, per_sample_loss_output, batch),
        group_kernels(model, groups, _per_sample_loss, batch),
        rtol=0,
        atol=0,
    )
    with pytest.raises(PlpruneError, match="no per_sample_loss"):
        group_kernels(tiny_mlp(), mlp_groups(), per_sample_loss_output, mlp_batch())


def test_only_group_parameters_differentiated_and_others_untouched() -> None:
    model, batch = tiny_bert(), bert_batch(N_SAMPLES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = per_sample_gradients(model, _per_sample_loss, batch, params=["decoder_bias"])
    assert list(grads) == ["decoder_bias"] and grads["decoder_bias"].shape == (N_SAMPLES, VOCAB)
    by_tensor = per_sample_gradients(model, _per_sample_loss, batch, params=[model.decoder_bias])
    torch.testing.assert_close(by_tensor["decoder_bias"], grads["decoder_bias"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(p.grad is None for p in model.parameters())


def test_dead_group_has_finite_documented_features() -> None:
    model, batch = tiny_bert(), bert_batch(N_SAMPLES)
    attention = model.layers[0].attention
    d = attention.head_size
    with torch.no_grad():  # kill head 0: q/k/v rows and biases, and its output-projection columns
        for proj in (attention.query, attention.key, attention.value):
            proj.weight[:d] = 0
            proj.bias[:d] = 0
        attention.output.weight[:, :d] = 0
    groups = bert_groups(model)
    jacobians = group_jacobians(model, groups, _per_sample_loss, batch)
    assert torch.count_nonzero(jacobians[0]) == 0
    assert torch.count_nonzero(jacobians[1]) > 0
    features = compute_group_features(model, groups, _per_sample_loss, batch)
    for value in (
        features.min_eigenvalue,
        features.max_eigenvalue,
        features.condition_number,
        features.entropy,
        features.as_matrix(),
    ):
        assert torch.isfinite(value).all()
    assert features.min_eigenvalue[0] == 0 and features.max_eigenvalue[0] == 0
    assert features.entropy[0] == 0
    assert features.condition_number[0] == 1.0 / CONDITION_EPS
    assert features.dead.tolist() == [True, False]
    assert 1.0 <= features.condition_number[1] < 1.0 / CONDITION_EPS
    assert 0 < features.entropy[1] <= math.log(N_SAMPLES)
    live = reference_features(reference_bert_jacobians(model, batch)[1:2])  # the live head, from numpy
    assert float(features.condition_number[1]) == pytest.approx(live["kappa"][0], rel=1e-6)
    assert float(features.entropy[1]) == pytest.approx(live["entropy"][0], rel=1e-9)


def test_kernel_features_synthetic_conventions() -> None:
    n = 4
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    spectra = {
        "identity": torch.ones(n),
        "rank_one": torch.tensor([0.0, 0.0, 0.0, 3.0]),
        "tiny_negative": torch.tensor([-1e-17, 1.0, 2.0, 4.0]),
        "zero": torch.zeros(n),
    }
    kernels = torch.stack([q @ torch.diag(s.double()) @ q.T for s in spectra.values()])
    kernels[3] = 0.0  # exactly zero, as for an all-zero Jacobian
    features = kernel_features(kernels)
    assert isinstance(features, KernelFeatures) and len(features) == 4
    for value in (
        features.min_eigenvalue,
        features.max_eigenvalue,
        features.condition_number,
        features.entropy,
        features.eigenvalues,
    ):
        assert torch.isfinite(value).all()
    assert (features.eigenvalues >= 0).all() and (features.min_eigenvalue >= 0).all()
    cap = 1.0 / CONDITION_EPS
    torch.testing.assert_close(features.condition_number[0], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(features.entropy[0], torch.tensor(math.log(n), dtype=torch.float64))
    assert features.condition_number[1] == cap  # rank-deficient: λ_min floored at eps·λ_max
    assert abs(features.entropy[1].item()) < 1e-12  # one non-zero eigenvalue: entropy 0
    assert features.condition_number[2] == cap  # clamped tiny negative λ_min
    p = np.array([1.0, 2.0, 4.0]) / 7.0
    assert features.entropy[2].item() == pytest.approx(-(p * np.log(p)).sum(), rel=1e-9)
    assert features.condition_number[3] == cap and features.entropy[3] == 0
    assert features.dead.tolist() == [False, False, False, True]
    # a custom eps moves the cap
    assert kernel_features(kernels, eps=1e-6).condition_number[1] == pytest.approx(1e6)
    kappa = condition_numbers(torch.tensor([2.0, 0.0, 0.0]), torch.tensor([8.0, 5.0, 0.0]))
    assert kappa.tolist() == [4.0, cap, cap]


def test_model_condition_number_matches_numpy() -> None:
    model, batch = tiny_mlp(), mlp_batch()
    (x,) = batch
    rows = []
    for j in range(x.shape[0]):
        grads = torch.autograd.grad(model(x[j : j + 1])[0, 0], list(model.parameters()))
        rows.append(np.concatenate([g.numpy().ravel() for g in grads]))
    jac = np.stack(rows)
    eig = np.linalg.eigvalsh(jac @ jac.T)
    expected = eig[-1] / eig[0]
    assert model_condition_number(model, _mlp_output, batch) == pytest.approx(expected, rel=1e-6)
    assert model_condition_number(model, _mlp_output, batch, chunk_size=1) == pytest.approx(
        expected, rel=1e-6
    )
    # only the output layer: K = [h_j · h_k] + 1, from the hidden activations
    hidden = torch.tanh(model[0](x)).detach().numpy()
    eig_out = np.linalg.eigvalsh(hidden @ hidden.T + 1.0)
    got = model_condition_number(model, _mlp_output, batch, params=["2.weight", "2.bias"])
    assert got == pytest.approx(eig_out[-1] / eig_out[0], rel=1e-6)


def test_vmap_failure_falls_back_to_loop_with_warning() -> None:
    model, batch = tiny_mlp(), mlp_batch()

    def not_vmappable(m: nn.Module, b: tuple) -> torch.Tensor:
        scale = 2.0 if b[0].sum().item() > -1e9 else 0.0  # .item() is not allowed under vmap
        return m(b[0]).squeeze(-1) * scale

    with pytest.warns(RuntimeWarning, match="falling back to a per-sample loop"):
        kernels = group_kernels(model, mlp_groups(), not_vmappable, batch)
    expected = 4.0 * group_kernels(model, mlp_groups(), _mlp_output, batch)
    torch.testing.assert_close(kernels, expected, rtol=1e-10, atol=1e-15)


def test_input_validation() -> None:
    model, batch = tiny_mlp(), mlp_batch()
    groups = mlp_groups()
    with pytest.raises(PlpruneError, match="at least one Group"):
        group_kernels(model, [], _mlp_output, batch)
    bad_name = [Group("filter", 0, 0, (ParamSlice("nope.weight", 0, 0, 1),))]
    with pytest.raises(PlpruneError, match=r"nope\.weight"):
        group_kernels(model, bad_name, _mlp_output, batch)
    bad_range = [Group("filter", 0, 0, (ParamSlice("0.weight", 0, 4, 9),))]
    with pytest.raises(PlpruneError, match="start < stop <= 6"):
        group_kernels(model, bad_range, _mlp_output, batch)
    bad_dim = [Group("filter", 0, 0, (ParamSlice("0.bias", 1, 0, 1),))]
    with pytest.raises(PlpruneError, match="slice dim 1"):
        group_kernels(model, bad_dim, _mlp_output, batch)
    with pytest.raises(PlpruneError, match="chunk_size"):
        group_kernels(model, groups, _mlp_output, batch, chunk_size=0)
    with pytest.raises(PlpruneError, match="tuple of tensors"):
        group_kernels(model, groups, _mlp_output, batch[0])
    with pytest.raises(PlpruneError, match="same first"):
        group_kernels(model, groups, _mlp_output, (batch[0], batch[0][:3]))
    for chunk_size in (None, 1):
        with pytest.raises(PlpruneError, match="one scalar per sample"):
            group_kernels(model, groups, lambda m, b: m(b[0]), batch, chunk_size=chunk_size)
    with pytest.raises(PlpruneError, match="output_fn must be a callable"):
        group_kernels(model, groups, None, batch)  # type: ignore[arg-type]
    with pytest.raises(PlpruneError, match=r"shape \(p, n, n\)"):
        kernel_features(torch.eye(3))
    with pytest.raises(PlpruneError, match="NaN"):
        kernel_features(torch.full((1, 2, 2), float("nan")))
    with pytest.raises(PlpruneError, match="eps"):
        kernel_features(torch.eye(3)[None], eps=0.0)
    with pytest.raises(PlpruneError, match="unknown parameter name"):
        model_condition_number(model, _mlp_output, batch, params=["missing"])
