"""SIGKILL `plprune train` at many moments, resume it with --resume, compare with an uninterrupted run.

Task: BERT masked-LM on CPython's pydoc text (offline), a small model (2 layers, hidden 32, 4 heads), 60
steps, PL pruning of heads on a linear schedule (events at steps 20, 30, 40, to 50% of heads), a checkpoint
every 5 steps, ``--deterministic``, one torch thread per process. Every run is its own
``plprune train`` process.

Trials: kills at named points through the test-only hook ``PLPRUNE_TEST_KILL_AT`` (``plprune/faults.py``:
before/during/after a pruning event, halfway through a checkpoint's bytes, between the rotation of the
previous checkpoint and the rename of the new one, between that rename and the checksum, right after a
checkpoint), one trial killed twice (again while resuming), and kills at seeded random times (uniform over
the reference run's duration; a run that finishes before its timer fires is started again with 0.7x the
delay, so that every random trial is killed). Each killed run
is resumed (``--resume``) until it finishes; a run killed before its first checkpoint has nothing to resume
and is started again (``--resume`` refuses it with a clear error). A trial is *bit-identical* when its
metrics, pruning records (masks, scores, gate training) and final weights equal the uninterrupted run's
exactly (wall-clock fields aside); *lost* counts trials that did not finish or did not match.

Then the cost of ``--deterministic``: the same training run with and without it, interleaved round by round,
steps/s from the trainer's own step time (evaluation excluded).

Writes ``OUT/kill_resume.json`` and ``OUT/RESULTS.md``. Run (about 10 minutes on 2 busy cores):
``PYTHONPATH=src .venv/bin/python benchmarks/kill_resume.py --out benchmarks/results/kill_resume``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from plprune.bench.harness import machine
from plprune.faults import ENV_VAR
from plprune.train.checkpoint import load_checkpoint, load_latest_checkpoint
from plprune.train.metrics import read_jsonl

SRC = Path(__file__).resolve().parents[1] / "src"
ARGS = [
    *("train", "--task", "bert-pydoc", "--seq-len", "32", "--layers", "2", "--hidden", "32", "--heads", "4"),
    *("--ffn", "64", "--steps", "60", "--batch-size", "8", "--eval-every", "15", "--eval-batches", "2"),
    *("--checkpoint-every", "5", "--seed", "3", "--method", "pl", "--schedule", "linear", "--prune-at", "20"),
    *("--prune-end", "40", "--prune-every", "10", "--prune-ratio", "0.5", "--gate-steps", "3"),
    *("--feature-samples", "8", "--no-diagnostics", "--deterministic", "--no-progress"),
]
# (kill spec of the first process, kill spec of the first resume or None, what the moment is)
HOOK_TRIALS = [
    ("step-end:3", None, "step 3, before the first checkpoint (nothing to resume: started again)"),
    ("prune-start:1", None, "a pruning event is due (step 20), nothing of it has run"),
    ("prune-logged:2", None, "second pruning event (step 30) applied and logged, not checkpointed"),
    ("step-end:22", None, "two steps after the first pruning event"),
    ("checkpoint-write:4", None, "halfway through the bytes of step 20's checkpoint"),
    ("checkpoint-rotate:5", None, "step 25's checkpoint: previous rotated, new one not yet renamed"),
    ("checkpoint-digest:6", None, "step 30's checkpoint renamed into place, its checksum not yet written"),
    ("checkpoint-done:7", None, "right after step 35's checkpoint and checksum"),
    (
        "prune-logged:3",
        "checkpoint-write:2",
        "third event logged; killed again mid-checkpoint while resuming",
    ),
]


def _env(kill: str | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.pop(ENV_VAR, None)
    if kill:
        env[ENV_VAR] = kill
    return env


def _start(out: Path, *, resume: bool = False, kill: str | None = None) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "plprune.cli",
        *ARGS,
        "--out",
        str(out),
        *(["--resume"] if resume else []),
    ]
    return subprocess.Popen(
        command, env=_env(kill), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _state(out: Path) -> dict[str, Any]:
    """What a killed run left: the checkpoint a resume would use, fallback notes, leftover temp files."""
    info: dict[str, Any] = {"temp_files": len(list(out.glob(".*.tmp"))), "events_logged": 0}
    info["events_logged"] = len(read_jsonl(out / "pruning.jsonl", torn_tail=True))
    try:
        state, used, notes = load_latest_checkpoint(out / "checkpoint.pt")
        info.update(resume_step=int(state["step"]), resume_file=used.name, fallback=bool(notes))
    except Exception as error:
        info.update(resume_step=None, resume_error=str(error))
    return info


def _numbers(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time" and "seconds" not in k} for r in records]


def _compare(run: Path, reference: Path) -> dict[str, bool]:
    got, want = load_checkpoint(run / "checkpoint.pt"), load_checkpoint(reference / "checkpoint.pt")
    masks = [r["mask"] for r in read_jsonl(run / "pruning.jsonl")]
    return {
        "metrics": _numbers(read_jsonl(run / "metrics.jsonl"))
        == _numbers(read_jsonl(reference / "metrics.jsonl")),
        "pruning_records": _numbers(read_jsonl(run / "pruning.jsonl"))
        == _numbers(read_jsonl(reference / "pruning.jsonl")),
        "masks": masks == [r["mask"] for r in read_jsonl(reference / "pruning.jsonl")],
        "weights": all(torch.equal(got["model"][k], v) for k, v in want["model"].items()),
    }


def run_trial(
    out: Path, reference: Path, first_kill: str | None, resume_kill: str | None, delay: float | None
):
    """One trial: start, kill (hook or timer), resume until done (``resume_kill`` on the first resume)."""
    started = time.perf_counter()
    delays = []
    while True:
        process = _start(out, kill=first_kill)
        try:
            _, err = process.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            _, err = process.communicate()
        delays.append(delay)
        if delay is None or process.returncode != 0 or len(delays) == 5:
            break
        shutil.rmtree(out)  # finished before the timer fired (the machine ran faster): kill sooner
        delay *= 0.7
    kills, resumes, restarts, errors = [], 0, 0, []
    kill_next = resume_kill
    while process.returncode != 0:
        if process.returncode == -signal.SIGKILL:
            kills.append({"returncode": process.returncode, **_state(out)})
        else:
            errors.append(err[-500:])
            if len(errors) > 2:
                break
        if kills and kills[-1]["resume_step"] is None:  # killed before its first checkpoint: start again
            shutil.rmtree(out)
            process, restarts = _start(out, kill=kill_next), restarts + 1
        else:
            process, resumes = _start(out, resume=True, kill=kill_next), resumes + 1
        kill_next = None
        _, err = process.communicate()
        if "resuming from the previous good checkpoint" in err and kills:
            kills[-1]["fallback_reported"] = True
    finished = process.returncode == 0
    match = _compare(out, reference) if finished else {}
    return {
        "kill_delays_tried": delays,
        "kills": kills,
        "resumes": resumes,
        "restarts": restarts,
        "finished": finished,
        "errors": errors,
        "match": match,
        "bit_identical": finished and all(match.values()),
        "temp_files_after": len(list(out.glob(".*.tmp"))),
        "seconds": time.perf_counter() - started,
    }


def determinism_cost(work: Path, rounds: int, steps: int) -> dict[str, Any]:
    """Steps/s of the same run with and without --deterministic, interleaved (order alternating per round)."""
    from plprune.run_config import RunConfig
    from plprune.runner import train_run

    base = {
        "task": "bert-pydoc",
        "data": {"seq_len": 64},
        "model": {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256},
        "train": {
            "steps": steps,
            "batch_size": 16,
            "eval_every": steps,
            "eval_batches": 1,
            "checkpoint_every": 0,
        },
    }
    torch.set_num_threads(1)
    rates: dict[str, list[float]] = {"default": [], "deterministic": []}
    finals: dict[str, Any] = {}
    for r in range(rounds):
        order = ["default", "deterministic"] if r % 2 == 0 else ["deterministic", "default"]
        for mode in order:
            config = RunConfig.from_dict(
                {**base, "train": {**base["train"], "deterministic": mode != "default"}}
            )
            out = work / f"det-{mode}-{r}"
            shutil.rmtree(out, ignore_errors=True)
            summary = train_run(config, out, progress=False)
            rates[mode].append(steps / summary["final"]["wall_time"])
            finals[mode] = {k: v for k, v in summary["final"].items() if k != "wall_time"}
            shutil.rmtree(out)
    median = {mode: statistics.median(values) for mode, values in rates.items()}
    return {
        "rounds": rounds,
        "steps_per_run": steps,
        "config": base,
        "steps_per_second": rates,
        "median_steps_per_second": median,
        "cost_percent": 100 * (1 - median["deterministic"] / median["default"]),
        "same_final_metrics": finals["default"] == finals["deterministic"],
        "threads": 1,
    }


def write_results(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "kill_resume.json").write_text(json.dumps(result, indent=2) + "\n")
    trials = result["trials"]
    identical = sum(t["bit_identical"] for t in trials)
    lost = sum(not t["bit_identical"] for t in trials)
    lines = [
        "# Kill and resume (`benchmarks/kill_resume.py`)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu_count']} CPUs ({result['machine']['platform']}), torch "
        f"{result['machine']['torch']}, one torch thread per process; shared with other jobs.",
        "",
        "Run: `plprune train` "
        + " ".join(ARGS[1:])
        + " (BERT MLM on CPython's pydoc text, PL head pruning at "
        "steps 20/30/40, checkpoint every 5 steps). Reference: the same command uninterrupted.",
        "",
        f"**{len(trials)} trials, {sum(len(t['kills']) for t in trials)} SIGKILLs: {identical} bit-identical "
        f"to the uninterrupted run (metrics, pruning masks/scores, final weights); {lost} lost anything.**",
        "",
        "| # | killed at | resumed from (file) | temp files left | fallback said | resumes/restarts "
        "| identical |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, trial in enumerate(trials):
        points = []
        for kill in trial["kills"]:
            if kill.get("resume_step") is None:
                points.append("no checkpoint yet")
            else:
                points.append(f"step {kill['resume_step']} ({kill['resume_file']})")
        lines.append(
            f"| {index + 1} | {trial['moment']} | {'; '.join(points)} | "
            f"{', '.join(str(k['temp_files']) for k in trial['kills'])} | "
            f"{'yes' if any(k.get('fallback_reported') for k in trial['kills']) else '-'} | "
            f"{trial['resumes']}/{trial['restarts']} | {'yes' if trial['bit_identical'] else 'NO'} |"
        )
    cost = result.get("determinism")
    if cost:
        med = cost["median_steps_per_second"]
        lines += [
            "",
            "## Cost of `--deterministic`",
            "",
            "BERT MLM on pydoc (2 layers, hidden 64, 4 heads, FFN 256, seq 64, batch 16), "
            f"{cost['steps_per_run']} steps per run, {cost['rounds']} rounds, the two modes interleaved "
            "(order alternating), 1 thread; "
            "steps/s from the trainer's step time (evaluation excluded).",
            "",
            "| mode | median steps/s | runs |",
            "|---|---|---|",
            *(
                f"| {mode} | {med[mode]:.2f} | {', '.join(f'{v:.2f}' for v in values)} |"
                for mode, values in cost["steps_per_second"].items()
            ),
            "",
            f"Cost: {cost['cost_percent']:.1f}% fewer steps/s with `--deterministic` (median vs median). "
            f"Final metrics identical in both modes: {cost['same_final_metrics']}.",
        ]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kill_resume"))
    parser.add_argument("--work", type=Path, default=Path("runs/kill_resume"), help="run directories")
    parser.add_argument("--random-trials", type=int, default=5, help="kills at random times (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--determinism-rounds", type=int, default=5, help="0 skips the cost measurement")
    parser.add_argument("--determinism-steps", type=int, default=40)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    reference = args.work / "reference"
    started = time.perf_counter()
    process = _start(reference)
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"reference run failed: {err}")
    reference_seconds = time.perf_counter() - started
    print(f"reference run: {reference_seconds:.1f} s", flush=True)
    rng = random.Random(args.seed)
    plan = [(first, again, moment, None) for first, again, moment in HOOK_TRIALS]
    for _ in range(args.random_trials):  # uniform over the reference's run time (a run that finishes
        plan.append((None, None, "random time", rng.uniform(0.2, 0.95) * reference_seconds))  # first: x0.7)
    trials = []
    for index, (first, again, moment, delay) in enumerate(plan):
        trial = run_trial(args.work / f"trial-{index:02d}", reference, first, again, delay)
        if delay is not None:
            moment = f"random time {trial['kill_delays_tried'][-1]:.1f} s after start"
        trial.update(moment=moment, kill_spec=first, resume_kill_spec=again)
        trials.append(trial)
        print(
            f"trial {index + 1}/{len(plan)} ({moment}): identical={trial['bit_identical']} {trial['match']}"
        )
    result: dict[str, Any] = {
        "command": "PYTHONPATH=src python benchmarks/kill_resume.py " + " ".join(sys.argv[1:]),
        "machine": {**machine(), "torch": torch.__version__},
        "reference_seconds": reference_seconds,
        "trials": trials,
        "summary": {
            "trials": len(trials),
            "sigkills": sum(len(t["kills"]) for t in trials),
            "bit_identical": sum(t["bit_identical"] for t in trials),
            "lost": sum(not t["bit_identical"] for t in trials),
            "fallbacks_to_previous": sum(
                bool(k.get("fallback_reported")) for t in trials for k in t["kills"]
            ),
        },
    }
    if args.determinism_rounds:
        result["determinism"] = determinism_cost(args.work, args.determinism_rounds, args.determinism_steps)
        print(f"--deterministic: {result['determinism']['median_steps_per_second']}")
    write_results(args.out, result)
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
