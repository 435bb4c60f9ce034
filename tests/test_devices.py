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


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU"))]
)
@pytest.mark.parametrize("method", ["pl", "pl+", "grad-score", "snip", "random", "imp"])
def test_pruning_run_on_the_device(method: str, device: str, tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    """Each method prunes in ``plprune train`` on the device (on the CPU this checks the test itself); the
    mask keeps the ratio, the run resumes onto the device, its checkpoint loads on the CPU and its test loss
    is close to the CPU run's (kernels and Hessian products in another floating-point order, so not bit for
    bit)."""
    run = train_run(_tiny_pl_config(tiny_wikitext_dir, device, method), tmp_path / "dev", progress=False)
    assert run["device"] == "cpu" if device == "cpu" else run["device"].startswith("cuda:0 (")
    assert sum(run["pruning_events"][0]["mask"]) == 4  # 8 heads, half kept
    config = json.loads((tmp_path / "dev" / "config.json").read_text())
    assert config["train"]["device"] == device
    state = torch.load(tmp_path / "dev" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in state["model"].values())
    again = train_run(
        _tiny_pl_config(tiny_wikitext_dir, device, method), tmp_path / "dev", resume=True, progress=False
    )  # loads the CPU-mapped checkpoint back onto the device
    assert again["final"]["test_loss"] == pytest.approx(run["final"]["test_loss"], rel=1e-5)
    cpu = train_run(_tiny_pl_config(tiny_wikitext_dir, "cpu", method), tmp_path / "cpu", progress=False)
    assert run["final"]["test_loss"] == pytest.approx(cpu["final"]["test_loss"], rel=0.05)
    if method in ("random", "imp", "grad-score"):  # rankings far apart relative to float error
        assert run["pruning_events"][0]["mask"] == cpu["pruning_events"][0]["mask"]


def _gpu_scorers() -> dict[str, object]:
    import plprune

    s = plprune.scorers
    return {
        "pl": lambda: s.PL(gate_steps=2, feature_samples=4, probe_check=2),
        "pl-full-pass-alpha0": lambda: s.PL(gate_steps=2, feature_samples=4, alpha=0.0),
        "random": s.Random,
        "magnitude": s.Magnitude,
        "imp": lambda: s.IMP(rewind_step=1),
        "grad-score": lambda: s.GradScore(batches=1),
        "snip": lambda: s.SNIP(batches=1),
        "grasp": lambda: s.GraSP(batches=1),
        "prox-l1": lambda: s.Proximal("l1", 5e-3),
        "trimmed-l1": s.TrimmedL1,
        "gsm": s.GSM,
        "l0-gates": s.L0Gates,
        "cont-sparse": s.ContinuousSparsification,
        "fpgm": s.FPGM,
        "chip": lambda: s.CHIP(batches=1),
        "dpfps": s.DPFPS,
    }


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU"))]


@pytest.mark.parametrize("device_name", DEVICES)
@pytest.mark.parametrize("name", list(_gpu_scorers()))
def test_user_loop_pruner_on_the_device(name: str, device_name: str) -> None:
    """``plprune.Pruner`` in a user's loop with the model on the device and CPU batches given to the pruner
    (the same test on the CPU checks the test itself here): every scorer prunes its ratio, pruned weights
    stay zero on the device, the mask lives on the CPU."""
    import torch.nn.functional as F

    import plprune
    from plprune.models import VGG
    from tiny_models import bert_batch, tiny_bert

    device = torch.device(device_name)
    filters = name in ("fpgm", "chip", "dpfps")
    if filters:
        torch.manual_seed(0)
        model = VGG(width_multiplier=0.0625, in_channels=1, num_classes=3, dims=1).to(device)
        gen = torch.Generator().manual_seed(0)
        cpu_batch = (torch.randn(8, 1, 32, generator=gen), torch.arange(8) % 3)

        def loss_fn(m: torch.nn.Module, b: tuple) -> torch.Tensor:
            return F.cross_entropy(m(b[0]), b[1])

        kinds: tuple[str, ...] = ("filter",)
    else:
        model = tiny_bert().float().train().to(device)
        cpu_batch = bert_batch(8)

        def loss_fn(m: torch.nn.Module, b: tuple) -> torch.Tensor:
            return m(*b).loss

        kinds = ("head",)
    # the pruner gets CPU batches (as from a DataLoader); the user's own loop moves them, as users do
    batch = tuple(t.to(device) for t in cpu_batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scorer, schedule = _gpu_scorers()[name](), plprune.OneShot(2, 0.5)
    pruner = plprune.Pruner(model, scorer, schedule, kinds=kinds, loss_fn=loss_fn, batches=[cpu_batch])
    pruner.attach(optimizer)
    for step in range(4):
        pruner.step(step)
        optimizer.zero_grad()
        loss_fn(model, batch).backward()
        optimizer.step()
    assert pruner.finished and pruner.mask.device.type == "cpu"
    assert pruner.pruned_ratio(kinds[0]) == pytest.approx(0.5, abs=0.01)
    assert all(p.device.type == device.type for p in model.parameters())
    params = dict(model.named_parameters())
    for index in (~pruner.mask).nonzero().flatten().tolist():
        for piece in pruner.groups.groups[index].slices:
            assert torch.count_nonzero(piece.select(params[piece.param_name])) == 0
