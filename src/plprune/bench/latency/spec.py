"""``plprune bench-latency``'s arguments: the model families, their defaults and the checked run spec."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plprune.errors import PlpruneError

__all__ = ["BATCHES", "KIND", "MODELS", "VARIANT_ORDER", "LatencySpec", "parse_spec"]

MODELS = ("bert", "hf-bert", "switch", "vgg", "resnet56")
INPUTS = ("mnist1d", "cifar")
SIZES = ("default", "tiny")
BATCHES = (1, 32)
KIND = {"bert": "head", "hf-bert": "head", "switch": "expert", "vgg": "filter", "resnet56": "filter"}
DEFAULT_RATIO = {"bert": 0.75, "hf-bert": 0.75, "switch": 0.5, "vgg": 0.5, "resnet56": 0.5}
DEFAULT_WIDTH = {"vgg": 0.25, "resnet56": 0.5}  # the vgg-mnist1d / resnet-mnist1d task defaults
ALLOCATION = {"head": "global", "expert": "global", "filter": "per_layer"}
VARIANT_ORDER = ("dense", "masked", "compacted", "compacted+ort", "torch-pruning")


@dataclass(frozen=True)
class LatencySpec:
    """One benchmark run (validated by :func:`parse_spec`)."""

    model: str
    ratio: float
    out: Path
    width: float | None = None
    input: str = "mnist1d"
    size: str = "default"
    threads: tuple[int, ...] = (1,)
    repeats: int = 30
    warmup: int = 3
    seed: int = 0
    memory: bool = True
    onnx: bool = True

    @property
    def command(self) -> str:
        """The canonical command line that reproduces this run."""
        parts = ["plprune bench-latency", f"--model {self.model}", f"--ratio {self.ratio:g}"]
        if self.width is not None:
            parts.append(f"--width {self.width:g}")
        if self.model in ("vgg", "resnet56") and self.input != "mnist1d":
            parts.append(f"--input {self.input}")
        if self.size != "default":
            parts.append(f"--size {self.size}")
        parts += [
            f"--threads {','.join(map(str, self.threads))}",
            f"--repeats {self.repeats}",
            f"--warmup {self.warmup}",
        ]
        if self.seed:
            parts.append(f"--seed {self.seed}")
        if not self.memory:
            parts.append("--no-memory")
        if not self.onnx:
            parts.append("--no-onnx")
        parts.append(f"--out {self.out}")
        return " ".join(parts)


def _number(flag: str, text: Any, kind: type) -> Any:
    if isinstance(text, kind) and not isinstance(text, bool):
        return text
    try:
        value = kind(str(text).strip())
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise PlpruneError(f"{flag} must be {noun}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise PlpruneError(f"{flag} must be a finite number, got {text!r}")
    return value


def parse_spec(
    *,
    model: str | None,
    out: str | Path | None,
    ratio: Any = None,
    width: Any = None,
    input: str | None = None,
    size: str | None = None,
    threads: Any = None,
    repeats: Any = None,
    warmup: Any = None,
    seed: Any = None,
    memory: bool = True,
    onnx: bool = True,
) -> LatencySpec:
    """Check the command's arguments (strings as typed, or values); each problem is one PlpruneError."""
    if model is None:
        raise PlpruneError(f"bench-latency needs --model, one of: {', '.join(MODELS)}")
    if model not in MODELS:
        raise PlpruneError(f"unknown --model {model!r}; valid: {', '.join(MODELS)}")
    if out is None:
        raise PlpruneError("bench-latency needs --out DIR (where latency.json, LATENCY.md, latency.png go)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PlpruneError(f"--out {out} exists and is not a directory")
    kind = KIND[model]
    ratio = DEFAULT_RATIO[model] if ratio is None else _number("--ratio", ratio, float)
    if not 0 < ratio < 1:
        raise PlpruneError(f"--ratio must lie in (0, 1) (the fraction of {kind}s removed), got {ratio:g}")
    if width is not None:
        if model not in DEFAULT_WIDTH:
            raise PlpruneError(f"--width applies to the CNNs (vgg, resnet56), not to {model}")
        width = _number("--width", width, float)
        if width <= 0:
            raise PlpruneError(f"--width must be > 0 (a channel multiplier, e.g. 0.25), got {width:g}")
    if input is not None and model not in DEFAULT_WIDTH:
        raise PlpruneError(f"--input applies to the CNNs (vgg, resnet56), not to {model}")
    input = input or "mnist1d"
    if input not in INPUTS:
        raise PlpruneError(
            f"unknown --input {input!r}; valid: mnist1d (1-D, 1×40, as the task), cifar (2-D, 3×32×32)"
        )
    size = size or "default"
    if size not in SIZES:
        raise PlpruneError(f"unknown --size {size!r}; valid: {', '.join(SIZES)}")
    counts: tuple[int, ...] = (1,)
    if threads is not None:
        pieces = [p for p in str(threads).replace(" ", ",").split(",") if p]
        if not pieces:
            raise PlpruneError("--threads must name at least one thread count, e.g. 1 or 1,2")
        counts = tuple(_number("--threads", p, int) for p in pieces)
        cores = os.cpu_count() or 1
        for n in counts:
            if not 1 <= n <= cores:
                raise PlpruneError(f"--threads must be between 1 and the {cores} CPU cores here, got {n}")
        if len(set(counts)) != len(counts):
            raise PlpruneError(f"--threads lists a thread count twice: {threads}")
    repeats = 30 if repeats is None else _number("--repeats", repeats, int)
    if repeats < 2:
        raise PlpruneError(
            f"--repeats must be >= 2 (the interquartile range needs two timings), got {repeats}"
        )
    warmup = 3 if warmup is None else _number("--warmup", warmup, int)
    if warmup < 0:
        raise PlpruneError(f"--warmup must be >= 0, got {warmup}")
    seed = 0 if seed is None else _number("--seed", seed, int)
    if model in DEFAULT_WIDTH and width is None:
        width = 1.0 if input == "cifar" else DEFAULT_WIDTH[model]
    return LatencySpec(
        model=model,
        ratio=ratio,
        out=out,
        width=width,
        input=input,
        size=size,
        threads=counts,
        repeats=repeats,
        warmup=warmup,
        seed=seed,
        memory=memory,
        onnx=onnx,
    )
