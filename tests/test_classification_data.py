"""Image/sequence data: MNIST-1D generated offline, sklearn digits, CIFAR via (a stand-in) torchvision."""

from __future__ import annotations

import random
import socket
import sys
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from plprune.data.images import ClassificationData, load_cifar, load_digits, load_mnist1d
from plprune.errors import DataError, PlpruneError


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    requests = pytest.importorskip("requests")
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)


def _assert_standardised(x: torch.Tensor) -> None:
    dims = [0, *range(2, x.dim())]
    torch.testing.assert_close(x.double().mean(dim=dims), torch.zeros(x.shape[1], dtype=torch.float64))
    torch.testing.assert_close(
        x.double().std(dim=dims, unbiased=False), torch.ones(x.shape[1], dtype=torch.float64)
    )


def test_mnist1d_is_generated_offline_deterministically(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_network(monkeypatch)
    monkeypatch.chdir(tmp_path)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    data = load_mnist1d(num_samples=300, test_fraction=0.2, seed=0)
    assert list(tmp_path.iterdir()) == []  # no cached pickle written
    assert random.getstate() == python_state  # the package's global seeding is undone
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state, strict=True))
    assert data.train_x.shape == (240, 1, 40) and data.test_x.shape == (60, 1, 40)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.long
    assert (data.num_classes, data.in_channels, data.dims, data.source) == (10, 1, 1, "mnist1d")
    assert set(torch.cat([data.train_y, data.test_y]).tolist()) == set(range(10))
    assert torch.bincount(torch.cat([data.train_y, data.test_y])).tolist() == [30] * 10
    _assert_standardised(data.train_x)
    again = load_mnist1d(num_samples=300, test_fraction=0.2, seed=0)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)
    other = load_mnist1d(num_samples=300, test_fraction=0.2, seed=1)
    assert not torch.equal(other.train_x, data.train_x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 305}, "multiple of 10"),
        ({"num_samples": 0}, "positive integer"),
        ({"num_samples": 300, "test_fraction": 1.0}, "strictly between 0 and 1"),
        ({"num_samples": 20, "test_fraction": 0.01}, "empty train or test split"),
    ],
)
def test_mnist1d_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(PlpruneError, match=match):
        load_mnist1d(**kwargs)


def test_digits_shapes_split_and_standardisation() -> None:
    data = load_digits(test_fraction=0.2, seed=0)
    assert data.train_x.shape == (1438, 1, 8, 8) and data.test_x.shape == (359, 1, 8, 8)
    assert (data.num_classes, data.in_channels, data.dims, data.input_shape) == (10, 1, 2, (1, 8, 8))
    _assert_standardised(data.train_x)
    again = load_digits(test_fraction=0.2, seed=0)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.train_y, data.train_y)
    other = load_digits(test_fraction=0.2, seed=3)
    assert not torch.equal(other.train_y, data.train_y)


def _fake_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for torchvision.datasets.CIFAR10 (torchvision itself must not be installed here)."""

    class FakeCifar10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert download is False
            if not (Path(root) / "cifar-10-batches-py").is_dir():
                raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
            n = 20 if train else 10
            gen = np.random.default_rng(0 if train else 1)
            self.data = gen.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
            self.targets = list(range(10)) * (n // 10)

    package = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    datasets.CIFAR10 = FakeCifar10
    datasets.CIFAR100 = FakeCifar10
    package.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


def test_cifar_without_torchvision_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision raises ImportError
    monkeypatch.delitem(sys.modules, "torchvision.datasets", raising=False)
    with pytest.raises(DataError, match="torchvision, which is not installed"):
        load_cifar(tmp_path)
    with pytest.raises(DataError, match="unknown CIFAR name 'svhn'"):
        load_cifar(tmp_path, name="svhn")


def test_cifar_missing_files_and_conversion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_torchvision(monkeypatch)
    with pytest.raises(DataError, match="is not a directory"):
        load_cifar(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"cifar10 files not found .*cifar-10-batches-py/"):
        load_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py").mkdir()
    data = load_cifar(tmp_path, name="cifar10")
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (10, 3, 32, 32)
    assert (data.num_classes, data.in_channels, data.source) == (10, 3, "cifar10")
    _assert_standardised(data.train_x)


def _data(**changes: object) -> ClassificationData:
    fields = {
        "train_x": torch.randn(6, 2, 5),
        "train_y": torch.tensor([0, 1, 2, 0, 1, 2]),
        "test_x": torch.randn(3, 2, 5),
        "test_y": torch.tensor([0, 1, 2]),
        "num_classes": 3,
        "in_channels": 2,
        "source": "toy",
    }
    fields.update(changes)
    return ClassificationData(**fields)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"in_channels": 3}, "has 2 channels, but in_channels is 3"),
        ({"train_y": torch.tensor([0, 1, 2, 0, 1, 3])}, r"labels outside \[0, 3\)"),
        ({"train_y": torch.zeros(6)}, "must be int64 labels"),
        ({"test_x": torch.randn(0, 2, 5), "test_y": torch.zeros(0, dtype=torch.long)}, "test split is empty"),
        ({"test_x": torch.randn(3, 2, 4)}, "differ in shape"),
        ({"train_x": torch.randn(6, 2)}, r"\(N, C, L\) or \(N, C, H, W\)"),
        ({"source": ""}, "source must be"),
    ],
)
def test_classification_data_validation(changes: dict, match: str) -> None:
    assert _data().dims == 1
    with pytest.raises(DataError, match=match):
        _data(**changes)
