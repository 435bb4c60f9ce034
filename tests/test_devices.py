"""The ``device`` option: validated names, a clear refusal where the device is missing, the CPU path
unchanged, and (where this machine has a CUDA GPU) a pruning run on it whose checkpoint loads on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plprune.cli import main
from plprune.devices import check_device_name, describe_device, model_device, resolve_device, to_device
from plprune.errors import PlpruneError
from plprune.run_config import RunConfig
from plprune.runner import train_run

CUDA = torch.cuda.is_available()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:1", "mps"])
def test_device_names_that_parse(name: str) -> None:
    assert check_device_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gpu", "is not a device name"),
        ("", "must be a name such as"),
        ("cuda:x", "is not a device name"),
        ("meta", "plprune runs on cpu, cuda, mps, not meta"),
        (3, "must be a name such as"),
    ],
)
def test_bad_device_names(name: object, message: str) -> None:
    with pytest.raises(PlpruneError, match=message):
        check_device_name(name)  # type: ignore[arg-type]


def test_config_validates_the_device() -> None:
    with pytest.raises(PlpruneError, match="is not a device name"):
        RunConfig.from_dict({"train": {"device": "gpu0"}})
    assert RunConfig.from_dict({"train": {"device": "cuda:0"}}).train.device == "cuda:0"


@pytest.mark.skipif(CUDA, reason="this machine has a CUDA GPU")
def test_missing_cuda_is_refused_clearly() -> None:
    with pytest.raises(PlpruneError, match="sees no CUDA GPU; use --device cpu"):
        resolve_device("cuda")


def test_to_device_keeps_the_batch_when_already_there() -> None:
    batch = (torch.zeros(2), None, torch.ones(3, dtype=torch.long))
    assert to_device(batch, torch.device("cpu")) is batch
    assert describe_device(torch.device("cpu")) == "cpu"
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")


TINY = ["--seq-len", "16", "--layers", "1", "--hidden", "16", "--heads", "2", "--ffn", "32"]
TINY += ["--batch-size", "4", "--eval-every", "4", "--eval-batches", "1", "--min-freq", "1", "--no-progress"]


@pytest.mark.skipif(CUDA, reason="this machine has a CUDA GPU")
def test_cli_cuda_without_a_gpu_leaves_nothing(capsys, tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "--data-dir", str(tiny_wikitext_dir), "--steps", "4", "--device", "cuda",
        "--out", str(out), *TINY,
    )  # fmt: skip
    assert code == 2 and err.count("plprune: error:") == 1 and "no CUDA GPU" in err
    assert not out.exists()  # a setup error leaves no run directory behind
    code, _, err = run_cli(capsys, "compare", "--suite", "quick", "--device", "cuda", "--out", str(out))
    assert code == 2 and "no CUDA GPU" in err and not out.exists()


def test_cli_bad_device_name(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "--device", "tpu", "--out", str(tmp_path / "r"), "--no-progress")
    assert code == 2 and err.count("plprune: error:") == 1 and "'tpu'" in err


def _tiny_pl_config(data_dir: Path, device: str | None, method: str = "pl") -> RunConfig:
    """A 2-layer BERT pruned by ``method`` at step 4 of 8 on ``device`` (None: the default)."""
    raw = RunConfig.from_dict(
        {
            "task": "bert-wikitext2",
            "data": {"data_dir": str(data_dir), "seq_len": 16, "min_freq": 1},
            "model": {"layers": 2, "hidden": 16, "heads": 4, "ffn": 32},
            "train": {
                "steps": 8,
                "batch_size": 4,
                "eval_every": 4,
                "eval_batches": 1,
                "checkpoint_every": 4,
                "device": device or "cpu",
            },
            "prune": {
                "method": method,
                "ratio": 0.5,
                "schedule": "one-shot",
                "prune_at": "4",
                "pl": {"gate_steps": 2, "feature_samples": 4, "probe_check": 2},
            },
        }
    ).to_dict()
    if device is None:
        del raw["train"]["device"]
    return RunConfig.from_dict(raw)


def test_device_cpu_is_the_default_path(tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    """``device = "cpu"`` spelled out gives the default run bit for bit, and the summary names the device."""
    a = train_run(_tiny_pl_config(tiny_wikitext_dir, None), tmp_path / "a", progress=False)
    b = train_run(_tiny_pl_config(tiny_wikitext_dir, "cpu"), tmp_path / "b", progress=False)
    assert a["final"]["test_loss"] == b["final"]["test_loss"] and a["device"] == "cpu"
    assert a["pruning_events"][0]["mask"] == b["pruning_events"][0]["mask"]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["pl", "pl+", "grad-score", "snip", "random", "imp"])
def test_pruning_run_on_cuda(method: str, tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    """Each method prunes on the GPU; the mask keeps the ratio, the run resumes, its checkpoint loads on CPU
    and its test loss is close to the CPU run's (kernels and Hessian products in other floating-point
    order, so not bit for bit)."""
    gpu = train_run(_tiny_pl_config(tiny_wikitext_dir, "cuda", method), tmp_path / "gpu", progress=False)
    assert gpu["device"].startswith("cuda:0 (")
    assert sum(gpu["pruning_events"][0]["mask"]) == 4  # 8 heads, half kept
    config = json.loads((tmp_path / "gpu" / "config.json").read_text())
    assert config["train"]["device"] == "cuda"
    state = torch.load(tmp_path / "gpu" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in state["model"].values())
    again = train_run(
        _tiny_pl_config(tiny_wikitext_dir, "cuda", method), tmp_path / "gpu", resume=True, progress=False
    )  # loads the CPU-mapped checkpoint back onto the GPU
    assert again["final"]["test_loss"] == pytest.approx(gpu["final"]["test_loss"], rel=1e-5)
    cpu = train_run(_tiny_pl_config(tiny_wikitext_dir, "cpu", method), tmp_path / "cpu", progress=False)
    assert gpu["final"]["test_loss"] == pytest.approx(cpu["final"]["test_loss"], rel=0.05)
    if method in ("random", "imp", "grad-score"):  # rankings far apart relative to float error
        assert gpu["pruning_events"][0]["mask"] == cpu["pruning_events"][0]["mask"]
