"""Classification data for the CNN experiments (paper Tables 3 and 5) and their CPU stand-ins.

* :func:`load_mnist1d`: MNIST-1D (Greydanus, 2020) generated procedurally by the ``mnist1d`` package's
  ``make_dataset`` — never downloaded; sequences ``(N, 1, 40)``, 10 classes.
* :func:`load_digits`: scikit-learn's bundled 8×8 handwritten digits, images ``(N, 1, 8, 8)``.
* :func:`load_cifar`: CIFAR-10/100 from local files via ``torchvision`` (``download=False``), the
  paper's data, for users with torchvision and the files.

Every loader returns a validated :class:`ClassificationData` whose inputs are standardised with
statistics of the *training* split only (per channel: zero mean, unit variance), and whose split is a
seeded permutation (the same ``seed`` gives the same split and values).
"""

from __future__ import annotations

import importlib
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from plprune.errors import DataError
from plprune.seeding import generator
from plprune.validation import check_non_negative_int, check_positive_int

__all__ = ["CIFAR_NAMES", "ClassificationData", "load_cifar", "load_digits", "load_mnist1d"]

CIFAR_NAMES = ("cifar10", "cifar100")
MNIST1D_LENGTH = 40


@dataclass
class ClassificationData:
    """Train/test inputs ``(N, C, L)`` or ``(N, C, H, W)`` (float) and integer labels ``(N,)``.

    ``in_channels`` is C; ``source`` names where the data came from (``"mnist1d"``, ``"digits"``, ...).
    Validated on construction: shapes, dtypes, label range, finite values, non-empty splits.
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    in_channels: int
    source: str

    def __post_init__(self) -> None:
        check_positive_int("num_classes", self.num_classes)
        check_positive_int("in_channels", self.in_channels)
        if not isinstance(self.source, str) or not self.source:
            raise DataError(f"source must be a non-empty string naming the data, got {self.source!r}")
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise DataError(f"{split}_x and {split}_y must be torch Tensors")
            if x.dim() not in (3, 4) or not x.dtype.is_floating_point:
                raise DataError(
                    f"{split}_x must be a float tensor (N, C, L) or (N, C, H, W), got shape "
                    f"{tuple(x.shape)} and dtype {x.dtype}"
                )
            if x.shape[1] != self.in_channels:
                raise DataError(f"{split}_x has {x.shape[1]} channels, but in_channels is {self.in_channels}")
            if y.dim() != 1 or y.dtype != torch.long or y.shape[0] != x.shape[0]:
                raise DataError(
                    f"{split}_y must be int64 labels of shape ({x.shape[0]},), got shape {tuple(y.shape)} "
                    f"and dtype {y.dtype}"
                )
            if x.shape[0] == 0:
                raise DataError(f"the {split} split is empty; it needs at least one sample")
            if bool(((y < 0) | (y >= self.num_classes)).any()):
                raise DataError(
                    f"{split}_y has labels outside [0, {self.num_classes}): min {int(y.min())}, "
                    f"max {int(y.max())}"
                )
            if not bool(torch.isfinite(x).all()):
                raise DataError(f"{split}_x contains NaN or Inf")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise DataError(
                f"train and test inputs differ in shape: {tuple(self.train_x.shape[1:])} vs "
                f"{tuple(self.test_x.shape[1:])}"
            )

    @property
    def dims(self) -> int:
        """Spatial dimensions: 1 for sequences ``(N, C, L)``, 2 for images ``(N, C, H, W)``."""
        return self.train_x.dim() - 2

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, ``(C, L)`` or ``(C, H, W)``."""
        return tuple(self.train_x.shape[1:])


def _check_test_fraction(test_fraction: object, n: int) -> float:
    ok = isinstance(test_fraction, (int, float)) and not isinstance(test_fraction, bool)
    if not ok or not math.isfinite(test_fraction) or not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    n_test = round(n * test_fraction)
    if n_test < 1 or n_test >= n:
        raise DataError(
            f"test_fraction {test_fraction} of {n} samples leaves an empty train or test split; "
            "use a fraction that keeps at least one sample on each side"
        )
    return float(test_fraction)


def _seeded_split(
    x: Tensor, y: Tensor, test_fraction: float, seed: int, source: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded permutation; the first ``round(n · test_fraction)`` samples are the test split."""
    n = x.shape[0]
    n_test = round(n * _check_test_fraction(test_fraction, n))
    order = torch.randperm(n, generator=generator(seed, "split", source))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _standardise(train_x: Tensor, test_x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel zero mean / unit variance with statistics of the training split only."""
    dims = [0, *range(2, train_x.dim())]
    shape = (1, train_x.shape[1]) + (1,) * (train_x.dim() - 2)
    mean = train_x.double().mean(dim=dims).view(shape)
    std = train_x.double().std(dim=dims, unbiased=False).clamp_min(1e-12).view(shape)

    def scale(x: Tensor) -> Tensor:
        return ((x.double() - mean) / std).to(torch.float32)

    return scale(train_x), scale(test_x)


def _build(
    x: Tensor, y: Tensor, test_fraction: float, seed: int, source: str, classes: int
) -> ClassificationData:
    train_x, train_y, test_x, test_y = _seeded_split(x, y, test_fraction, seed, source)
    train_x, test_x = _standardise(train_x, test_x)
    return ClassificationData(train_x, train_y, test_x, test_y, classes, x.shape[1], source)


def load_mnist1d(num_samples: int = 4000, test_fraction: float = 0.2, seed: int = 0) -> ClassificationData:
    """MNIST-1D generated locally with ``mnist1d.data.make_dataset`` (no download, no files written).

    ``num_samples`` (a multiple of 10: the generator makes ``num_samples / 10`` per class) are generated
    with the package's default transformation settings but ``seed`` as the generator seed (the published
    dataset uses 42), then split with a seeded permutation. Inputs ``(N, 1, 40)``. The package seeds
    Python's and NumPy's global RNGs; both are restored afterwards.
    """
    check_positive_int("num_samples", num_samples)
    check_non_negative_int("seed", seed)
    if num_samples % 10 or num_samples < 20:
        raise DataError(
            f"num_samples must be a multiple of 10 and >= 20 (MNIST-1D makes num_samples/10 per class), "
            f"got {num_samples}"
        )
    _check_test_fraction(test_fraction, num_samples)  # fail before generating
    try:
        mnist1d_data = importlib.import_module("mnist1d.data")
    except ImportError as error:
        raise DataError(
            f"MNIST-1D needs the mnist1d package ({error}); install it with: pip install mnist1d"
        ) from error
    args = mnist1d_data.get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, 1.0
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        dataset = mnist1d_data.make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    x = torch.as_tensor(np.asarray(dataset["x"]), dtype=torch.float32).unsqueeze(1)
    y = torch.as_tensor(np.asarray(dataset["y"]), dtype=torch.long)
    if x.shape[2] != MNIST1D_LENGTH:
        raise DataError(f"mnist1d produced sequences of length {x.shape[2]}, expected {MNIST1D_LENGTH}")
    return _build(x, y, test_fraction, seed, "mnist1d", 10)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ClassificationData:
    """scikit-learn's bundled 8×8 digits (1797 images, 10 classes) as ``(N, 1, 8, 8)``: pixel values
    0..16 scaled to [0, 1], split with a seeded permutation, standardised with training statistics."""
    check_non_negative_int("seed", seed)
    try:
        datasets = importlib.import_module("sklearn.datasets")
    except ImportError as error:
        raise DataError(
            f"the digits data needs scikit-learn ({error}); install it with: pip install scikit-learn"
        ) from error
    digits = datasets.load_digits()
    x = torch.as_tensor(np.asarray(digits.images), dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(np.asarray(digits.target), dtype=torch.long)
    return _build(x, y, test_fraction, seed, "digits", 10)


def load_cifar(root: str | Path, name: str = "cifar10") -> ClassificationData:
    """CIFAR-10/100 (the paper's Tables 3 and 5) from local files with ``torchvision`` (never downloads).

    ``root`` must hold ``cifar-10-batches-py`` (or ``cifar-100-python``), the "python version" archives
    from https://www.cs.toronto.edu/~kriz/cifar.html, extracted. Uses the official train/test split;
    images ``(N, 3, 32, 32)`` scaled to [0, 1] and standardised per channel with training statistics.
    No augmentation (the paper's random crop and flip are not applied).
    """
    if name not in CIFAR_NAMES:
        raise DataError(f"unknown CIFAR name {name!r}; valid: {', '.join(CIFAR_NAMES)}")
    try:
        datasets = importlib.import_module("torchvision.datasets")
    except ImportError as error:
        raise DataError(
            f"{name} is read with torchvision, which is not installed ({error}); install a torchvision "
            "matching your torch, or use the offline tasks (MNIST-1D, digits)"
        ) from error
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"CIFAR root {str(root)!r} is not a directory; pass the folder holding the extracted files"
        )
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train = dataset_class(root=str(root), train=True, download=False)
        test = dataset_class(root=str(root), train=False, download=False)
    except RuntimeError as error:
        raise DataError(
            f"{name} files not found or corrupted under {str(root)!r} ({error}); expected the extracted "
            f"{folder}/ folder there (plprune never downloads it)"
        ) from error

    def arrays(dataset: object) -> tuple[Tensor, Tensor]:
        images = torch.as_tensor(np.asarray(dataset.data), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
        return images.contiguous(), torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)

    (train_x, train_y), (test_x, test_y) = arrays(train), arrays(test)
    train_x, test_x = _standardise(train_x, test_x)
    classes = 10 if name == "cifar10" else 100
    return ClassificationData(train_x, train_y, test_x, test_y, classes, 3, name)
