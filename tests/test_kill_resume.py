"""Exact resume after SIGKILL: `plprune train` subprocesses killed during a checkpoint write, in the middle of
a pruning event and between a checkpoint's rename and its checksum, then resumed with --resume, end with the
masks, metrics and weights of an uninterrupted run, bit for bit. (benchmarks/kill_resume.py runs more trials,
including kills at random times.) A process started on the uninterrupted run's --out at the same time is
refused and leaves it intact (the bit-identical comparisons check it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plprune.cli import main
from plprune.faults import ENV_VAR
from plprune.train.checkpoint import load_checkpoint, load_latest_checkpoint
from plprune.train.metrics import read_jsonl

SRC = Path(__file__).resolve().parents[1] / "src"

# kill point (PLPRUNE_TEST_KILL_AT) -> step of the checkpoint the resume must start from. Checkpoints every 4
# steps (the 2nd write is step 8's), one PL event at step 10.
TRIALS = {
    "checkpoint-write:2": 4,  # half of step 8's checkpoint on disk: step 4's is the latest good one
    "prune-logged:1": 8,  # the event's mask applied and logged, not checkpointed: redone from step 8
    "checkpoint-digest:3": 8,  # step 12's file renamed into place, its checksum missing: fall back to 8
}


def _args(data_dir: Path) -> list[str]:
    return [
        *("train", "--task", "bert-wikitext2", "--data-dir", str(data_dir), "--seq-len", "16"),
        *("--min-freq", "1", "--layers", "1", "--hidden", "16", "--heads", "2", "--ffn", "32"),
        *("--steps", "20", "--batch-size", "4", "--eval-every", "5", "--eval-batches", "2", "--seed", "7"),
        *("--checkpoint-every", "4", "--lr", "3e-3", "--method", "pl", "--prune-at", "10"),
        *("--prune-ratio", "0.5", "--gate-steps", "2", "--feature-samples", "4", "--no-diagnostics"),
        *("--deterministic", "--no-progress"),
    ]


def _numbers(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time" and "seconds" not in k} for r in records]


def test_sigkilled_runs_resume_bit_identically(
    tiny_wikitext_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(tiny_wikitext_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    killed = {
        point: subprocess.Popen(
            [sys.executable, "-m", "plprune.cli", *args, "--out", str(tmp_path / point)],
            env={**env, ENV_VAR: point},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for point in TRIALS
    }
    reference = tmp_path / "reference"
    # a second process on the reference's --out, started at the same time: it must refuse and spoil nothing
    intruder = subprocess.Popen(
        [sys.executable, "-m", "plprune.cli", *args, "--out", str(reference)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert main([*args, "--out", str(reference)]) == 0  # uninterrupted, while those run
    for point, process in killed.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, (point, err.decode())
    _, err = intruder.communicate(timeout=300)
    assert intruder.returncode == 2 and err.count("\n") == 1 and err.startswith("plprune: error: "), err
    assert "in use by another plprune process" in err or "already exists and is not empty" in err, err
    capsys.readouterr()

    for point, start_step in TRIALS.items():
        run = tmp_path / point
        assert load_latest_checkpoint(run / "checkpoint.pt")[0]["step"] == start_step, point
        assert main([*args, "--out", str(run), "--resume"]) == 0, point
        err = capsys.readouterr().err
        if point.startswith("checkpoint-digest"):
            assert "has no checksum file" in err and "resuming from the previous good checkpoint" in err
        assert not list(run.glob(".*.tmp")), point  # the killed writer's temp file was cleaned up

        summary = json.loads((run / "summary.json").read_text())
        assert _numbers(summary["history"]) == _numbers(read_jsonl(reference / "metrics.jsonl")), point
        events, expected = read_jsonl(run / "pruning.jsonl"), read_jsonl(reference / "pruning.jsonl")
        assert len(events) == len(expected) == 1, point
        assert _numbers(events) == _numbers(expected), point  # masks, scores, gate training
        got, want = load_checkpoint(run / "checkpoint.pt"), load_checkpoint(reference / "checkpoint.pt")
        for name, tensor in want["model"].items():
            assert torch.equal(got["model"][name], tensor), (point, name)
        assert torch.equal(got["torch_rng"], want["torch_rng"]), point
