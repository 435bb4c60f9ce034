"""Run one training job end to end: run directory, config, task, trainer, summary."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

import plprune.distributed as dist
from plprune.devices import describe_device, model_device, resolve_device
from plprune.errors import PlpruneError, RunDirError
from plprune.gates import GroupSet
from plprune.groups import WEIGHT_KIND
from plprune.memory import check_fits_on_device
from plprune.run_config import RunConfig, config_differences, normalised_saved_config, save_config
from plprune.seeding import deterministic_mode
from plprune.sites import kinds_need_inputs
from plprune.tasks.registry import DEFAULT_KINDS, TASKS, build_task
from plprune.train.callbacks import Callback
from plprune.train.checkpoint import atomic_write_text, checkpoint_exists, remove_temp_files
from plprune.train.loop import CHECKPOINT_NAME, METRICS_NAME, Trainer
from plprune.train.metrics import read_jsonl
from plprune.train.pruning import PRUNING_LOG
from plprune.train.run_lock import LOCK_NAME, RunLock
from plprune.validation import check_choice

CONFIG_NAME = "config.json"
SUMMARY_NAME = "summary.json"


def check_run_dir(out: Path, config: RunConfig, resume: bool) -> None:
    """Refuse, reading only, a run directory that :func:`prepare_run_dir` would refuse: an existing non-empty
    one without ``resume``; with ``resume`` one with nothing to resume or a different config. Called before
    the lock is taken, so a refused command leaves an existing directory byte-identical."""
    out = Path(out)
    if resume:
        if not (out / CONFIG_NAME).is_file() or not checkpoint_exists(out / CHECKPOINT_NAME):
            raise RunDirError(
                f"--resume: {out} has no {CONFIG_NAME} and {CHECKPOINT_NAME}; nothing to resume"
            )
        try:
            saved = json.loads((out / CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:  # unreadable, not UTF-8, not JSON
            raise RunDirError(f"--resume: {out / CONFIG_NAME} is unreadable ({error})") from error
        if not isinstance(saved, dict):
            raise RunDirError(f"--resume: {out / CONFIG_NAME} does not hold a config table; cannot resume")
        saved = normalised_saved_config(saved)
        diff = config_differences(saved, json.loads(json.dumps(config.to_dict())))
        if diff:
            raise RunDirError(
                f"--resume: the requested config differs from the one {out} was started with "
                f"(saved -> requested): {'; '.join(diff)}"
            )
        return
    if out.exists() and (not out.is_dir() or any(p.name != LOCK_NAME for p in out.iterdir())):
        raise RunDirError(
            f"{out} already exists and is not empty; pass --resume to continue it, or pick a new --out"
        )


def prepare_run_dir(out: Path, config: RunConfig, resume: bool) -> Path:
    """Create (or, with ``resume``, validate) the run directory; never overwrite an existing run."""
    out = Path(out)
    check_run_dir(out, config, resume)
    if resume:
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise RunDirError(f"cannot write to output directory {out}: {error.strerror or error}") from error
    if not os.access(out, os.W_OK):
        raise RunDirError(f"output directory {out} is not writable")
    save_config(out / CONFIG_NAME, config)
    return out


def build_pruning_callbacks(
    config: RunConfig, model: torch.nn.Module, steps_per_epoch: int, example_inputs: Any = None
) -> list[Callback]:
    """The pruning callback of the config's method (its scorer brings any extras, e.g. IMP's rewinding, as
    plugins of the :class:`~plprune.pruner.Pruner`), then the curvature tracker; for ``method = "dense"``
    only the tracker, if asked for."""
    from plprune.pruners.base import Diagnostics
    from plprune.pruners.registry import BuildInfo, build_scorer, check_method_kinds, get_method
    from plprune.schedules import build_schedule, parse_time
    from plprune.train.pruning import PruningCallback

    prune = config.prune
    spec = get_method(prune.method)
    kinds = prune.kinds or DEFAULT_KINDS[config.task]
    if spec.build is None:
        if kinds == (WEIGHT_KIND,):  # dense reference of an unstructured comparison: the task's groups
            kinds = DEFAULT_KINDS[config.task]
        inputs = example_inputs if kinds_need_inputs(kinds) else None
        groups = GroupSet(model, kinds, example_inputs=inputs) if prune.curvature_every else None
        return _curvature_tracker(config, groups) if groups is not None else []

    def to_steps(value: str | None) -> int | None:
        return None if value is None else parse_time(value, steps_per_epoch)

    schedule = build_schedule(
        prune.schedule,
        prune.ratio,
        to_steps(prune.prune_at) or 0,
        end=to_steps(prune.prune_end),
        every=to_steps(prune.prune_every),
        rounds=prune.rounds,
    )
    schedule.validate(config.train.steps)
    if kinds == (WEIGHT_KIND,):
        return [_weight_pruning(config, model, schedule, BuildInfo(config.train.steps, steps_per_epoch))]
    groups = GroupSet(model, kinds=kinds, example_inputs=example_inputs if kinds_need_inputs(kinds) else None)
    check_method_kinds(prune.method, groups.kinds)
    diagnostics = Diagnostics() if prune.diagnostics else None
    pruning = PruningCallback(
        groups,
        build_scorer(prune.method, prune.method_settings, BuildInfo(config.train.steps, steps_per_epoch)),
        schedule,
        seed=config.train.seed,
        diagnostics=diagnostics,
        kind_ratios=prune.kind_ratios,
        allocation=prune.allocation,
        compact=prune.compact,
    )
    return [pruning, *_curvature_tracker(config, groups)]


def _weight_pruning(config: RunConfig, model: torch.nn.Module, schedule: Any, info: Any) -> Callback:
    """Unstructured pruning (``kinds = ["weight"]``): the method's weight-level version in a WeightPruner."""
    from plprune.pruners.registry import build_scorer, check_method_kinds
    from plprune.train.weight_pruning import WeightPruningCallback
    from plprune.weight_pruner import WeightPruner

    prune = config.prune
    check_method_kinds(prune.method, (WEIGHT_KIND,))
    for flag, value in (("compact", prune.compact), ("curvature_every", prune.curvature_every)):
        if value:
            raise PlpruneError(
                f"{flag} works on groups (heads, experts, filters); unstructured pruning (kinds = weight) "
                "keeps every tensor's shape and tracks no group curvature: leave it off"
            )
    scorer = build_scorer(prune.method, prune.method_settings, info)
    return WeightPruningCallback(WeightPruner(model, scorer.weight_method(), schedule))


def _curvature_tracker(config: RunConfig, groups: GroupSet) -> list[Callback]:
    from plprune.train.curvature_tracking import CurvatureTracker

    if not config.prune.curvature_every:
        return []
    return [CurvatureTracker(groups, config.prune.curvature_every, seed=config.train.seed)]


def train_run(
    config: RunConfig,
    out: Path,
    *,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train per ``config`` into ``out``; returns and writes ``summary.json`` (final metrics, wall time).

    The run holds ``out/.lock`` (:class:`~plprune.train.run_lock.RunLock`) from start to end: a second
    process on the same ``out`` is refused. ``config.train.deterministic`` switches every determinism knob
    on for the run (:func:`~plprune.seeding.deterministic_mode`). Under ``torchrun`` (docs/distributed.md)
    each rank trains on its shard of every global batch with DDP-averaged gradients; rank 0 alone holds the
    lock, creates the run directory and writes every file."""
    out = Path(out)
    check_choice("task", config.task, TASKS)  # before the run directory is touched
    dist.init_from_env()  # torchrun: join the process group (gloo); alone: nothing
    if dist.active() and config.train.device != "cpu":
        raise PlpruneError(
            f"device {config.train.device!r} under torchrun is not supported yet (the process group is gloo "
            "on CPUs); train on one GPU without torchrun, or run several runs on it with compare --workers"
        )
    if dist.active() and config.prune.compact:
        raise PlpruneError("compact is not supported under torchrun yet: compact a finished run (export)")
    if config.train.batch_size % dist.world_size():
        raise PlpruneError(
            f"batch_size {config.train.batch_size} (the global batch) does not split over "
            f"{dist.world_size()} ranks; use a multiple of {dist.world_size()}"
        )
    fresh = dist.run_on_main(out.exists) is False  # rank 0's view: every rank takes the same branches
    if not fresh or resume:  # a refusal creates no lock file in someone's run directory
        dist.run_on_main(lambda: check_run_dir(out, config, resume))
    held: list[RunLock | None] = []  # rank 0's lock (its failure is relayed to the other ranks)
    dist.run_on_main(lambda: held.append(_lock_run_dir(out, resume)))
    lock = held[0] if held else None
    try:
        with deterministic_mode(config.train.deterministic, config.train.seed):
            return _train_locked(config, out, fresh, resume, callbacks, progress)
    finally:
        if lock is not None:
            lock.release()


def place_on_device(model: torch.nn.Module, task: Any, device: torch.device) -> None:
    """Move ``model`` to ``device`` and have ``task`` hand out its batches there (tasks with a ``device``
    attribute: the built-in ones; a user's task hands out what its batches hold)."""
    check_fits_on_device(model, device)
    model.to(device)
    if hasattr(task, "device"):
        task.device = device


def _lock_run_dir(out: Path, resume: bool) -> RunLock | None:
    """Take ``out``'s lock (creating ``out`` for a new run); None where ``out`` is not a directory and
    :func:`prepare_run_dir` will say why."""
    if not resume and not out.exists():
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(f"cannot write to output directory {out}: {error.strerror or error}") from error
    if not out.is_dir():
        return None
    return RunLock(out).acquire()


def _train_locked(
    config: RunConfig,
    out: Path,
    fresh: bool,
    resume: bool,
    callbacks: list[Callback] | None,
    progress: bool,
) -> dict[str, Any]:
    out = dist.run_on_main(lambda: prepare_run_dir(out, config, resume))  # the others get rank 0's answer
    if resume and dist.is_main():
        remove_temp_files(out)  # half-written files of a killed writer (we hold the lock)
    try:
        model, task = dist.main_first(lambda: build_task(config, out))  # rank 0 writes the tokenizer first
        place_on_device(model, task, resolve_device(config.train.device))
        pruning = build_pruning_callbacks(config, model, task.steps_per_epoch, task.train_batch(0)[0])
    except Exception:
        if fresh and dist.is_main():  # a setup error (bad data, bad schedule) leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    callbacks = [*pruning, *(callbacks or [])]
    progress = progress and dist.is_main()
    trainer = Trainer(model, dist.shard_task(task), config.train, out, callbacks, progress=progress)
    # the model itself alone; a mixture of experts may route no token to some expert in a step
    moe = "expert" in DEFAULT_KINDS[config.task]
    trainer.train_model = dist.wrap_ddp(model, find_unused_parameters=moe)
    if resume:
        trainer.resume()
    final = trainer.fit()
    summary = {
        "task": config.task,
        "steps": trainer.step,
        "parameters": sum(p.numel() for p in model.parameters()),
        "nonzero_parameters": sum(int(torch.count_nonzero(p)) for p in model.parameters()),
        "method": config.prune.method,
        "final": final,
        "pruning_events": read_jsonl(out / PRUNING_LOG),  # [] when nothing was pruned
        "history": read_jsonl(out / METRICS_NAME),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    summary["world_size"] = dist.world_size()
    summary["device"] = describe_device(model_device(model))
    if dist.is_main():
        try:
            atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        except OSError as error:
            raise RunDirError(
                f"cannot write {out / SUMMARY_NAME}: {error.strerror or error}; the final checkpoint is "
                "intact: free space or fix permissions, then run the same command with --resume to write it"
            ) from error
    dist.barrier()
    return summary
