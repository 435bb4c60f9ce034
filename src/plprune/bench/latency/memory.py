"""Peak memory of one forward pass, each model form in a fresh process.

A server process (:func:`memory_server`) imports torch and the modules that build the models, and never
runs a model; for each job it forks a child that rebuilds one form (:func:`plprune.bench.latency.variants.
rebuild`: the same family, mask and compaction) and loads its weights from the form's safetensors file, or
opens the ONNX file in an ONNX Runtime session; runs one batch-1 warm-up pass; resets the kernel's
resident-set high-water mark (``/proc/self/clear_refs``); runs one batch-32 forward pass and reads
``resource.getrusage(...).ru_maxrss``. ``model_and_forward_mb`` = that peak minus the child's RSS before the
model was built; ``forward_mb`` = the peak minus the RSS with the model loaded (activations, workspaces,
allocator growth). Building a compacted form passes through the dense model, which is freed (and the heap
trimmed) before the loaded RSS is read.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import os
import pickle
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plprune.bench.latency.families import TASK, LogitsOf
from plprune.bench.latency.onnx_runtime import ort_call, ort_session
from plprune.bench.latency.variants import rebuild

__all__ = ["measure_memory", "memory_server", "start_memory_server"]

# what every child needs before its baseline: the model builders, GroupSet, compaction, safetensors
PRELOAD = (
    "plprune.bench.latency.variants",
    "plprune.gates",
    "plprune.compaction",
    "plprune.run_config",
    "plprune.tasks.registry",
    "safetensors.torch",
)


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # pragma: no cover - not Linux


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")  # reset the resident-set high-water mark to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _load_torch(job: dict[str, Any]) -> nn.Module:
    """The job's PyTorch form: rebuilt from the spec and mask, its weights loaded from its safetensors file
    (strict: every tensor present, every shape equal), wrapped as ``input -> Tensor``, in eval mode."""
    from safetensors.torch import load_model

    model = rebuild(job["spec"], job["variant"], job["mask"])
    load_model(model, job["weights"], strict=True)
    return (LogitsOf(model) if job["spec"].model in TASK else model).eval()


def _memory_job(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: load one variant, one batch-1 warm-up pass (lazy initialisation of the
    runtimes: thread pools, kernels, caches), reset the RSS high-water mark, one batch-32 forward pass."""
    torch.set_num_threads(job["threads"])
    _trim()
    baseline = _rss_kb()
    call: Callable[[], Any]
    warm: Callable[[], Any] | None = None
    if job["kind"] == "ort":
        session = ort_session(Path(job["path"]), job["threads"])
        call = ort_call(session, job["input"])
        if job.get("warmup") is not None:
            warm = ort_call(session, job["warmup"])
    else:
        module = _load_torch(job)
        call = lambda: module(job["input"])  # noqa: E731
        if job.get("warmup") is not None:
            warm = lambda: module(job["warmup"])  # noqa: E731
    if warm is not None:
        with torch.inference_mode():
            warm()
    _trim()
    loaded = _rss_kb()
    reset = _reset_peak()
    with torch.inference_mode():
        call()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "baseline_kb": baseline,
        "loaded_kb": loaded,
        "peak_kb": peak,
        "reset": reset,
        "warm": warm is not None,
    }


# the jobs and answers travel pickled between this process and its own server over pipes; no file is
# unpickled (a form's weights come from its safetensors file)
def _send(stream: Any, obj: Any) -> None:
    data = pickle.dumps(obj)
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _receive(stream: Any) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        return None
    return pickle.loads(stream.read(int.from_bytes(header, "little")))


def memory_server() -> None:
    """``python -m plprune.bench.latency.memory [MODULE...]``: import torch (and MODULEs) once,
    then for each job read from stdin fork a fresh child that runs it and writes its result to stdout. The
    server itself never runs a model, so every child starts from the same clean state."""
    for module in sys.argv[1:]:
        importlib.import_module(module)
    stdin = sys.stdin.buffer
    stdout = os.fdopen(os.dup(1), "wb")  # the answers' channel; anything else printed goes to stderr
    os.dup2(2, 1)
    while (job := _receive(stdin)) is not None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: run the job, report, leave without running the server's cleanup
            os.close(read)
            with os.fdopen(write, "wb") as out:
                try:
                    _send(out, _memory_job(job))
                except Exception as error:
                    _send(out, {"error": f"{type(error).__name__}: {error}"})
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as answer:
            message = _receive(answer)
        _, status = os.waitpid(pid, 0)
        if message is None:
            message = {"error": f"the measuring process died (wait status {status})"}
        _send(stdout, message)


def start_memory_server(preload: Sequence[str] = ()) -> subprocess.Popen:
    """Start :func:`memory_server` (it imports torch, the modules that rebuild a variant, and ``preload``
    while the caller goes on, so that no child counts an import as the model's memory)."""
    return subprocess.Popen(
        [sys.executable, "-m", "plprune.bench.latency.memory", *PRELOAD, *preload],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def measure_memory(
    jobs: dict[str, dict[str, Any]], preload: Sequence[str] = (), server: subprocess.Popen | None = None
) -> dict[str, dict[str, Any]]:
    """Peak memory of one forward pass per job, each in its own process forked from a clean server process
    (:func:`memory_server`, started here unless given) that has imported torch and never run a model; the
    server is stopped afterwards."""
    server = server if server is not None else start_memory_server(preload)
    results = {}
    try:
        for name, job in jobs.items():
            _send(server.stdin, job)
            message = _receive(server.stdout)
            if message is None:
                message = {"error": f"the memory server stopped (exit code {server.poll()})"}
            if "error" in message:
                results[name] = {"error": message["error"]}
                continue
            mb = 1 / 1024
            results[name] = {
                "peak_rss_mb": message["peak_kb"] * mb,
                "model_and_forward_mb": (message["peak_kb"] - message["baseline_kb"]) * mb,
                "forward_mb": (message["peak_kb"] - message["loaded_kb"]) * mb,
                "loaded_rss_mb": message["loaded_kb"] * mb,
                "baseline_rss_mb": message["baseline_kb"] * mb,
                "method": "ru_maxrss after resetting the high-water mark (/proc/self/clear_refs)"
                if message["reset"]
                else "ru_maxrss of the whole process (high-water mark could not be reset)",
                "batch1_warmup": message["warm"],
            }
    finally:
        server.stdin.close()
        server.wait(60)
    return results


if __name__ == "__main__":
    from plprune.bench.latency import memory  # the importable module: the jobs' classes are its classes

    memory.memory_server()
