"""Crash safety: checksummed checkpoints (keep two, fall back), RNG state, run lock, write errors, divergence,
the determinism switch."""

from __future__ import annotations

import errno
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import plprune.train.checkpoint as checkpoint_module
from plprune.cli import main
from plprune.errors import RunDirError, TrainingDivergedError
from plprune.runner import train_run
from plprune.seeding import deterministic_mode, rng_state, set_rng_state
from plprune.train.callbacks import Callback
from plprune.train.checkpoint import (
    digest_path,
    load_checkpoint,
    load_latest_checkpoint,
    previous_path,
    save_checkpoint,
)
from plprune.train.config import TrainConfig
from plprune.train.metrics import JsonlWriter, read_jsonl
from plprune.train.run_lock import RunLock
from test_training import tiny_config


def _save_steps(path: Path, steps: range) -> None:
    for step in steps:
        save_checkpoint(path, {"step": step, "w": torch.full((4,), float(step))}, keep_previous=True)


def test_keeps_the_last_two_checkpoints_each_with_its_sha256(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    _save_steps(path, range(1, 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.prev.pt",
        "checkpoint.prev.pt.sha256",
        "checkpoint.pt",
        "checkpoint.pt.sha256",
    ]
    assert load_checkpoint(path)["step"] == 3
    assert load_checkpoint(previous_path(path))["step"] == 2
    for file in (path, previous_path(path)):  # sha256sum's format, hashes computed independently
        expected = hashlib.sha256(file.read_bytes()).hexdigest()
        assert digest_path(file).read_text() == f"{expected}  {file.name}\n"


@pytest.mark.parametrize("damage", ["truncate", "flip-byte"])
def test_damaged_latest_checkpoint_is_refused_and_resume_falls_back(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "checkpoint.pt"
    _save_steps(path, range(1, 3))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :])
    with pytest.raises(RunDirError, match="does not match its checksum"):
        load_checkpoint(path)
    state, used, notes = load_latest_checkpoint(path)
    assert state["step"] == 1 and used == previous_path(path)
    assert len(notes) == 1 and "resuming from the previous good checkpoint" in notes[0]
    # both damaged: one error naming both files
    previous_path(path).write_bytes(b"not a checkpoint")
    with pytest.raises(RunDirError, match="no usable checkpoint") as error:
        load_latest_checkpoint(path)
    assert str(path) in str(error.value) and str(previous_path(path)) in str(error.value)


class _Crash(BaseException):  # stands in for SIGKILL at a fault point (the subprocess tests kill for real)
    pass


@pytest.mark.parametrize(
    ("point", "expected_step"),
    [("checkpoint-write", 2), ("checkpoint-rotate", 2), ("checkpoint-digest", 2), ("checkpoint-done", 3)],
)
def test_a_crash_at_any_point_of_a_write_leaves_a_verified_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str, expected_step: int
) -> None:
    path = tmp_path / "checkpoint.pt"
    _save_steps(path, range(1, 3))

    def crash(name: str) -> None:
        if name == point:
            raise _Crash

    monkeypatch.setattr(checkpoint_module, "kill_point", crash)
    with pytest.raises(_Crash):
        _save_steps(path, range(3, 4))
    monkeypatch.undo()
    state, _, _ = load_latest_checkpoint(path)
    assert state["step"] == expected_step
    _save_steps(path, range(4, 6))  # writing goes on normally afterwards: the last two are 4 and 5
    assert load_checkpoint(path)["step"] == 5 and load_checkpoint(previous_path(path))["step"] == 4


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (random.random(), np.random.standard_normal(2).tolist(), torch.rand(2))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.standard_normal(2).tolist(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_jsonl_truncation_drops_a_torn_last_line(tmp_path: Path) -> None:
    writer = JsonlWriter(tmp_path / "metrics.jsonl")
    for step in (2, 4, 6):
        writer.write({"step": step})
    with writer.path.open("a") as handle:
        handle.write('{"step": 8, "train_lo')  # the process died mid-append
    writer.truncate_after(4)
    assert read_jsonl(writer.path) == [{"step": 2}, {"step": 4}]


def test_run_lock_admits_one_holder(tmp_path: Path) -> None:
    with RunLock(tmp_path), pytest.raises(RunDirError, match=r"in use by another plprune process \(pid \d+"):
        RunLock(tmp_path).acquire()
    with RunLock(tmp_path) as lock:  # released: the next one gets it
        assert lock.held


def test_train_refuses_a_run_dir_that_another_process_holds(
    tiny_wikitext_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    argv = ["train", "--task", "bert-wikitext2", "--data-dir", str(tiny_wikitext_dir), "--out", str(out)]
    with RunLock(out):  # flock conflicts between two open files, in one process or two
        assert main(argv) == 2
        assert main([*argv, "--resume"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("plprune: error: ") for line in lines)
    assert "in use" in lines[0]
    assert "nothing to resume" in lines[1]  # the read-only check refuses before the lock is asked for
    assert [p.name for p in out.iterdir()] == [".lock"]  # nothing written by the refused runs


def test_disk_full_mid_run_keeps_the_earlier_checkpoints(
    tiny_wikitext_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(tiny_wikitext_dir, checkpoint_every=4)  # checkpoints at steps 4, 8, 12, ...
    saves = []

    def disk_full_on_third_write(point: str) -> None:
        if point == "checkpoint-write":
            saves.append(point)
            if len(saves) == 3:  # half of the step-12 checkpoint is on disk when the disk fills up
                raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "kill_point", disk_full_on_third_write)
    out = tmp_path / "run"
    with pytest.raises(RunDirError) as error:
        train_run(config, out, progress=False)
    message = str(error.value)
    assert "cannot write checkpoint" in message and "at step 12: No space left on device" in message
    assert "the checkpoint of step 8 is intact" in message
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 8
    assert load_checkpoint(out / "checkpoint.prev.pt")["step"] == 4
    assert not list(out.glob(".*.tmp"))  # the half-written file is gone
    monkeypatch.undo()
    resumed = train_run(config, out, resume=True, progress=False)  # space freed: the run finishes
    assert resumed["steps"] == 24


def test_an_unwritable_log_mid_run_is_one_clear_error(
    tiny_wikitext_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(tiny_wikitext_dir, checkpoint_every=4)  # evaluations at 6, 12, ...
    original = JsonlWriter.write

    def refuse_at_step_12(self: JsonlWriter, record: dict) -> None:
        if record["step"] == 12:
            raise PermissionError(errno.EACCES, "Permission denied")
        original(self, record)

    monkeypatch.setattr(JsonlWriter, "write", refuse_at_step_12)
    with pytest.raises(RunDirError) as error:
        train_run(config, tmp_path / "run", progress=False)
    message = str(error.value)
    assert "metrics.jsonl at step 12: Permission denied; the checkpoint of step 8 is intact" in message
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 8


class _DieAtTheEnd(Callback):
    def on_train_end(self, trainer):  # after the final checkpoint, before summary.json
        raise KeyboardInterrupt


def test_a_run_killed_after_its_final_checkpoint_resumes_to_the_same_final_record(
    tiny_wikitext_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_wikitext_dir, steps=12, checkpoint_every=6)
    full = train_run(config, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "killed", callbacks=[_DieAtTheEnd()], progress=False)
    resumed = train_run(config, tmp_path / "killed", resume=True, progress=False)
    drop = ("wall_time", "prune_seconds", "diagnostics_seconds")
    assert {k: v for k, v in resumed["final"].items() if k not in drop} == {
        k: v for k, v in full["final"].items() if k not in drop
    }
    assert [r["step"] for r in resumed["history"]] == [r["step"] for r in full["history"]]


class _PoisonAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, step):
        if step == self.step:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))


def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(
    tiny_wikitext_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_wikitext_dir, checkpoint_every=4)
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"training loss became nan at step 10") as error:
        train_run(config, out, callbacks=[_PoisonAt(9)], progress=False)
    assert "the checkpoint of step 8 is intact" in str(error.value)
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 8 and all(torch.isfinite(t).all() for t in state["model"].values())
    # weights that turn NaN right before a checkpoint are never written over the good one
    with pytest.raises(TrainingDivergedError, match="parameters became NaN or infinite by step 12"):
        train_run(config, tmp_path / "run2", callbacks=[_PoisonAt(12)], progress=False)
    assert load_checkpoint(tmp_path / "run2" / "checkpoint.pt")["step"] == 8


def test_cli_reports_divergence_as_one_error_line(
    tiny_wikitext_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--task", "bert-wikitext2", "--data-dir", str(tiny_wikitext_dir), "--seq-len", "16"]
    argv += ["--min-freq", "1", "--layers", "1", "--hidden", "16", "--heads", "2", "--ffn", "32"]
    argv += ["--steps", "8", "--batch-size", "4", "--eval-batches", "2", "--checkpoint-every", "1"]
    argv += ["--lr", "1e30", "--grad-clip", "0", "--warmup-fraction", "0", "--no-progress", "--out", str(out)]
    assert main(argv) == 2  # AdamW steps of size ~1e30: finite weights after step 1, NaN loss at step 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("plprune: error: training loss became nan at step 2; ")
    assert "the checkpoint of step 1 is intact" in err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 1


def test_deterministic_switch_sets_the_knobs_and_restores_them(tmp_path: Path) -> None:
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    with deterministic_mode(True, seed=5):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        draws = (random.random(), float(np.random.random()), float(torch.rand(())))
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    assert draws == (random.random(), float(np.random.random()), float(torch.rand(())))
    with pytest.raises(ValueError, match="deterministic must be true or false"):
        TrainConfig(deterministic="yes")


def test_deterministic_flag_reaches_the_saved_config(tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["train", "--task", "bert-wikitext2", "--data-dir", str(tiny_wikitext_dir), "--seq-len", "16"]
    argv += ["--min-freq", "1", "--layers", "1", "--hidden", "16", "--heads", "2", "--ffn", "32"]
    argv += ["--steps", "2", "--batch-size", "4", "--eval-batches", "1", "--no-progress", "--out", str(out)]
    assert main([*argv, "--deterministic"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["deterministic"] is True
    del saved["train"]["deterministic"]  # a run saved before the field existed resumes as non-deterministic
    (out / "config.json").write_text(json.dumps(saved))
    assert main([*argv, "--resume"]) == 0
