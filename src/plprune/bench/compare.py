"""Run a suite's jobs: one run per worker process, resumable, refusing to mix configs.

Layout of ``OUT``: ``suite.json`` (what was asked, by whom, on what machine) and ``runs/TASK/VARIANT-sSEED/``,
each a normal run directory (``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, ``summary.json``). A run
with ``summary.json`` is finished and never re-run; a run with a checkpoint resumes from it; a run started
but never checkpointed starts again. A run directory whose ``config.json`` differs from the planned config
is refused before anything runs (mixing results of different configs would make the tables lie). The suite
holds ``OUT/.lock`` while it runs (a second ``plprune compare`` on the same ``OUT`` is refused) and each run
its own ``RUN_DIR/.lock``; checkpoints are crash-safe (:mod:`plprune.train.checkpoint`), so a killed suite
resumes every unfinished run from its last good checkpoint.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from plprune.bench import harness
from plprune.bench.suites import Job
from plprune.errors import RunDirError
from plprune.run_config import RunConfig, config_differences, normalised_saved_config
from plprune.train.checkpoint import atomic_write_text, checkpoint_exists
from plprune.train.run_lock import RunLock

SUITE_FILE = "suite.json"
FAILED_FILE = "failed.txt"


def check_existing(jobs: list[Job]) -> None:
    """Raise :class:`RunDirError` if any existing run directory was made with a different config."""
    problems = []
    for job in jobs:
        saved_path = job.run_dir / "config.json"
        if not saved_path.is_file():
            continue
        try:
            saved = normalised_saved_config(json.loads(saved_path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as error:
            problems.append(f"{saved_path}: unreadable ({error})")
            continue
        planned = json.loads(json.dumps(RunConfig.from_dict(job.config).to_dict()))
        diff = config_differences(saved, planned)
        if diff:
            problems.append(f"{job.run_dir}: {'; '.join(diff[:4])}")
    if problems:
        raise RunDirError(
            "the results directory holds runs made with a different config (saved -> requested), and mixing "
            "them would make the tables compare unlike runs; use a new --out or the original settings:\n  "
            + "\n  ".join(problems)
        )


def pending(jobs: list[Job]) -> list[Job]:
    """The jobs without a finished ``summary.json``."""
    return [job for job in jobs if not (job.run_dir / "summary.json").is_file()]


def _run_job(job: Job) -> tuple[str, float, str | None]:
    """Pool worker: :func:`execute_job` with one torch thread (workers share the cores)."""
    import torch

    torch.set_num_threads(1)
    return execute_job(job)


def execute_job(job: Job) -> tuple[str, float, str | None]:
    """Run (or resume) one job; a failure is written to ``RUN_DIR/failed.txt`` and returned, not raised."""
    from plprune.runner import train_run

    started = time.time()
    try:
        resume = checkpoint_exists(job.run_dir / "checkpoint.pt")
        if job.run_dir.exists() and not resume:
            shutil.rmtree(job.run_dir)  # started but never checkpointed: start again
        train_run(RunConfig.from_dict(job.config), job.run_dir, resume=resume, progress=False)
        (job.run_dir / FAILED_FILE).unlink(missing_ok=True)
        return f"{job.task} {job.variant} s{job.seed}", time.time() - started, None
    except Exception as error:  # keep the suite going; the report lists the failure
        message = f"{type(error).__name__}: {error}"
        job.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(job.run_dir / FAILED_FILE, message + "\n\n" + traceback.format_exc())
        return f"{job.task} {job.variant} s{job.seed}", time.time() - started, message


def write_suite_file(out: Path, suite: str, jobs: list[Job], command: str, workers: int) -> None:
    import torch

    info: dict[str, Any] = {
        "suite": suite,
        "command": command,
        "commands": [command],
        "runs": [
            {"task": j.task, "variant": j.variant, "seed": j.seed, "dir": str(j.run_dir.relative_to(out))}
            for j in jobs
        ],
        "machine": harness.machine(
            python=platform.python_version(),
            torch=torch.__version__,
            workers=workers,
            # pool workers take one thread each; --workers 1 runs in this process with its threads
            threads_per_run=1 if workers > 1 else torch.get_num_threads(),
        ),
    }
    previous = out / SUITE_FILE
    if previous.is_file():  # keep the union of runs asked for over several invocations
        try:
            old = json.loads(previous.read_text(encoding="utf-8"))
            seen = {r["dir"] for r in info["runs"]}
            info["runs"] = [r for r in old.get("runs", []) if r["dir"] not in seen] + info["runs"]
            earlier = old.get("commands") or [old["command"]]
            info["commands"] = [*earlier, command] if earlier[-1:] != [command] else earlier
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            pass
    atomic_write_text(previous, json.dumps(info, indent=2) + "\n")


def run_jobs(jobs: list[Job], out: Path, *, suite: str, workers: int, command: str) -> list[dict[str, Any]]:
    """Run the unfinished jobs with ``workers`` processes; returns one record per job run now. Holds
    ``out/.lock`` throughout (another suite on the same ``out`` is refused)."""
    check_existing(jobs)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        check_existing(jobs)  # again, now that no other suite can be writing
        return _run_pending(jobs, out, suite=suite, workers=workers, command=command)


def _run_pending(
    jobs: list[Job], out: Path, *, suite: str, workers: int, command: str
) -> list[dict[str, Any]]:
    write_suite_file(out, suite, jobs, command, workers)
    todo = pending(jobs)
    done = len(jobs) - len(todo)
    print(f"{len(jobs)} runs in the plan, {done} already finished, {len(todo)} to run with {workers} workers")
    records: list[dict[str, Any]] = []
    if not todo:
        return records
    from tqdm.auto import tqdm

    if workers == 1:  # in this process: no start-up cost, and the caller's thread settings hold
        for job in tqdm(todo, desc="runs", unit="run", disable=None):
            name, seconds, error = execute_job(job)
            records.append({"run": name, "seconds": seconds, "error": error})
        return records
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # terminate workers, not orphan them
    try:
        with mp.get_context("spawn").Pool(min(workers, len(todo))) as pool:
            bar = tqdm(total=len(todo), desc="runs", unit="run", disable=None)
            for name, seconds, error in pool.imap_unordered(_run_job, todo):
                records.append({"run": name, "seconds": seconds, "error": error})
                bar.write(f"{name}: {'FAILED ' + error if error else 'done'} ({seconds:.0f} s)")
                bar.update(1)
            bar.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return records
