"""A model too large to train is refused before any of it is allocated; the check leaves the model and the
RNG exactly as a plain build would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plprune.cli import main
from plprune.errors import PlpruneError
from plprune.memory import TRAINING_COPIES, build_if_it_fits, training_bytes
from plprune.models import VGG, BertConfig, BertForMaskedLM


def tiny_bert() -> BertForMaskedLM:
    config = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, ffn_size=32, max_length=16)
    return BertForMaskedLM(config)


@pytest.mark.parametrize(
    "make", [tiny_bert, lambda: VGG(width_multiplier=0.125, in_channels=1, num_classes=10, dims=1)]
)
def test_the_check_changes_neither_the_model_nor_the_rng(make) -> None:
    torch.manual_seed(0)
    plain, after_plain = make(), torch.rand(3)
    torch.manual_seed(0)
    checked, after_checked = build_if_it_fits(make, "the model"), torch.rand(3)
    assert torch.equal(after_plain, after_checked)  # the meta build draws no random numbers
    for (name, a), (_, b) in zip(plain.state_dict().items(), checked.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_training_bytes_counts_four_copies_of_every_parameter() -> None:
    model = tiny_bert()
    count = sum(p.numel() for p in model.parameters())
    assert training_bytes(model) == TRAINING_COPIES * 4 * count  # float32


def test_a_model_over_the_limit_is_refused_with_its_sizes() -> None:
    needed = training_bytes(tiny_bert())
    with pytest.raises(PlpruneError, match=r"the BERT has [\d,]+ parameters: training needs about 0\.0 GiB"):
        build_if_it_fits(tiny_bert, "the BERT", limit_bytes=needed - 1)
    assert isinstance(build_if_it_fits(tiny_bert, "the BERT", limit_bytes=needed), BertForMaskedLM)


def test_cli_refuses_a_huge_model_at_once_and_leaves_no_run(
    capsys, tiny_wikitext_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = [
        "train",
        "--data-dir",
        str(tiny_wikitext_dir),
        "--out",
        str(out),
        "--no-progress",
        "--min-freq",
        "1",
    ]
    argv += ["--layers", "64", "--hidden", "32768", "--heads", "8", "--ffn", "131072", "--seq-len", "16"]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code)
    err = capsys.readouterr().err
    assert code == 2 and err.count("plprune: error:") == 1 and "Traceback" not in err
    assert "the BERT has" in err and "GiB" in err and "choose smaller sizes" in err
    assert not out.exists()


def test_the_device_check_passes_cpu_and_refuses_a_gpu_too_small(monkeypatch) -> None:
    from types import SimpleNamespace

    from plprune.memory import check_fits_on_device

    model = tiny_bert()
    check_fits_on_device(model, torch.device("cpu"))  # checked at build time instead
    small = SimpleNamespace(total_memory=training_bytes(model) - 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: small)
    with pytest.raises(PlpruneError, match=r"to train on cuda:0 .* more than its 0\.0 GiB"):
        check_fits_on_device(model, torch.device("cuda:0"))
