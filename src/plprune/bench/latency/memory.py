"""Peak memory of one forward pass, each model form in a fresh process.

A server process (:func:`memory_server`) imports torch and the modules that build the models, and never
runs a model; for each job it forks a child that rebuilds one form (:func:`plprune.bench.latency.variants.
rebuild`: the same family, mask and compaction) with its weights' storage released, reads its baseline RSS,
then loads the weights from the form's safetensors file (or opens the ONNX file in an ONNX Runtime session);
runs one batch-1 warm-up pass; resets the kernel's resident-set high-water mark (``/proc/self/clear_refs``);
runs one batch-32 forward pass and reads ``resource.getrusage(...).ru_maxrss``. ``model_and_forward_mb`` =
that peak minus the baseline (the weights, the forward pass and the runtime's lazy state; for conv filters
the rebuild's filter discovery has already run one traced forward pass of every PyTorch form before the
baseline, so torch's lazy state is mostly outside their numbers, while ONNX Runtime's is inside its own);
``forward_mb`` = the peak minus the RSS with the model loaded and warmed up (activations, workspaces,
allocator growth).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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


@dataclass
class _Skeleton:
    """A rebuilt form whose weights (parameters and persistent buffers, each tensor once: ties stay ties)
    hold no storage, with the shapes and dtypes to give them back."""

    model: nn.Module  # the form as saved (its state dict is the safetensors file's)
    module: nn.Module  # the form as called: input -> Tensor
    tensors: list[tuple[Tensor, torch.Size, torch.dtype]]

    def fill(self, weights: str) -> nn.Module:
        """Storage for every weight again, filled from the safetensors file ``weights`` (strict: every
        tensor present, every shape equal); the callable module in eval mode."""
        from safetensors.torch import load_model

        for tensor, shape, dtype in self.tensors:
            tensor.data = torch.empty(shape, dtype=dtype)
        load_model(self.model, weights, strict=True)
        return self.module.eval()


def _skeleton(job: dict[str, Any]) -> _Skeleton:
    """The job's PyTorch form rebuilt from its spec and mask (the same family, mask and compaction as in
    the parent), wrapped as ``input -> Tensor``, with its weights' storage released. Building passes through
    the dense model (and, for filters, traced forward passes); all of that is done before the baseline is
    read, so the measured memory is the weights' and the forward pass's, as when loading a saved model."""
    model = rebuild(job["spec"], job["variant"], job["mask"])
    seen: dict[int, tuple[Tensor, torch.Size, torch.dtype]] = {}
    for tensor in model.state_dict(keep_vars=True).values():
        if id(tensor) not in seen:
            seen[id(tensor)] = (tensor, tensor.shape, tensor.dtype)
            tensor.data = torch.empty(0, dtype=tensor.dtype)
    module = LogitsOf(model) if job["spec"].model in TASK else model
    return _Skeleton(model, module, list(seen.values()))


def _memory_job(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: load one variant, one batch-1 warm-up pass (lazy initialisation of the
    runtimes: thread pools, kernels, caches), reset the RSS high-water mark, one batch-32 forward pass."""
    torch.set_num_threads(job["threads"])
    skeleton = _skeleton(job) if job["kind"] == "torch" else None
    _trim()
    baseline = _rss_kb()
    call: Callable[[], Any]
    warm: Callable[[], Any] | None = None
    if skeleton is None:
        session = ort_session(Path(job["path"]), job["threads"])
        call = ort_call(session, job["input"])
        if job.get("warmup") is not None:
            warm = ort_call(session, job["warmup"])
    else:
        module = skeleton.fill(job["weights"])
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
