"""Training loop: loss goes down, exact resume, atomic checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plprune.errors import RunDirError
from plprune.run_config import RunConfig
from plprune.runner import train_run
from plprune.train.checkpoint import load_checkpoint, save_checkpoint
from plprune.train.metrics import read_jsonl


def tiny_config(data_dir: Path, **train) -> RunConfig:
    settings = {
        "steps": 24,
        "batch_size": 4,
        "lr": 3e-3,
        "eval_every": 6,
        "checkpoint_every": 12,
        "eval_batches": 2,
        "seed": 7,
    }
    settings.update(train)
    return RunConfig.from_dict(
        {
            "task": "bert-wikitext2",
            "data": {"data_dir": str(data_dir), "seq_len": 16, "min_freq": 1},
            "model": {"layers": 1, "hidden": 16, "heads": 2, "ffn": 32},
            "train": settings,
        }
    )


def test_short_run_lowers_training_loss(tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_wikitext_dir, steps=100, eval_every=50, lr=1e-2)
    config = config.with_overrides({"model": {"hidden": 32, "ffn": 64, "dropout": 0.0}})
    history = train_run(config, tmp_path / "run", progress=False)["history"]
    # mean training loss over steps 51-100 vs 1-50 (44-word vocabulary: uniform guessing is 3.78 nats)
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.1
    for key in ("step", "epoch", "train_loss", "train_ppl", "test_ppl", "delta_ppl", "lr", "wall_time"):
        assert key in history[0]
    assert history[-1]["delta_ppl"] == pytest.approx(history[-1]["test_ppl"] - history[-1]["train_ppl"])


def _numbers(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time" and "seconds" not in k} for r in records]


@pytest.mark.parametrize("method", ["dense", "pl"])
def test_resume_reproduces_uninterrupted_run_exactly(
    tiny_wikitext_dir: Path, tmp_path: Path, method: str
) -> None:
    config = tiny_config(tiny_wikitext_dir)
    if method == "pl":
        config = config.with_overrides(
            {
                "prune": {"method": "pl", "prune_at": "8", "ratio": 0.5, "diagnostics": False},
                "pl": {"gate_steps": 2, "feature_samples": 4},
            }
        )
    full = train_run(config, tmp_path / "full", progress=False)
    resumed_dir = tmp_path / "resumed"
    _run_until_checkpoint(config, resumed_dir, stop_after=12)  # the process "dies" after step 13
    resumed = train_run(config, resumed_dir, resume=True, progress=False)

    assert _numbers(resumed["history"]) == _numbers(full["history"])
    if method == "pl":  # the event happened before the interruption; the summary still has it
        assert len(resumed["pruning_events"]) == len(full["pruning_events"]) == 1
        assert resumed["pruning_events"][0]["mask"] == full["pruning_events"][0]["mask"]
    full_state = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    resumed_state = load_checkpoint(resumed_dir / "checkpoint.pt")["model"]
    for name, tensor in full_state.items():
        assert torch.equal(tensor, resumed_state[name]), name


class _StopError(Exception):
    pass


def _run_until_checkpoint(config: RunConfig, run_dir: Path, stop_after: int) -> None:
    """Run ``config`` and kill it (an exception) right after the checkpoint at ``stop_after``."""
    from plprune.train.callbacks import Callback

    class StopAt(Callback):
        def on_step_end(self, trainer, step):  # checkpoints are written after this hook's step ...
            if step == stop_after + 1:  # ... so stop one step later, before any further checkpoint
                raise _StopError

    with pytest.raises(_StopError):
        train_run(config, run_dir, callbacks=[StopAt()], progress=False)
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == stop_after


def test_existing_run_dir_is_refused_without_resume(tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="already exists"):
        train_run(tiny_config(tiny_wikitext_dir), run_dir, progress=False)
    assert (run_dir / "precious.txt").read_text() == "keep me"


def test_resume_refuses_a_different_config(tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train_run(tiny_config(tiny_wikitext_dir, steps=6), run_dir, progress=False)
    with pytest.raises(RunDirError, match="lr"):
        train_run(tiny_config(tiny_wikitext_dir, steps=6, lr=1e-2), run_dir, resume=True, progress=False)


def test_checkpoint_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"x": torch.arange(3)})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"x": Boom()})
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "ckpt.pt.sha256"]


def test_metrics_file_is_jsonl(tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    train_run(tiny_config(tiny_wikitext_dir, steps=12), tmp_path / "run", progress=False)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [6, 12]
    assert records[-1]["final"] is True


def test_train_fraction_uses_the_first_blocks_only(tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    from plprune.tasks.registry import build_task

    full_config = tiny_config(tiny_wikitext_dir)
    _, full = build_task(full_config, tmp_path / "a")
    _, part = build_task(full_config.with_overrides({"data": {"train_fraction": 0.25}}), tmp_path / "b")
    n = full.data.train_blocks.shape[0]
    assert part.data.train_blocks.shape[0] == round(0.25 * n)
    assert torch.equal(part.data.train_blocks, full.data.train_blocks[: round(0.25 * n)])
    assert part.data.tokenizer.vocab_size == full.data.tokenizer.vocab_size
    with pytest.raises(Exception, match=r"train_fraction must lie in \(0, 1\]"):
        full_config.with_overrides({"data": {"train_fraction": 0.0}})
