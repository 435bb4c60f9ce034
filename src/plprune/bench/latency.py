"""``plprune bench-latency``: what pruning buys at inference, dense vs masked vs compacted vs ONNX Runtime.

For one model family and prune ratio the same randomly initialised model is measured in up to five forms:

* ``dense`` — the model as built, no plprune;
* ``masked`` — a :class:`~plprune.gates.GroupSet` attached and a hard mask applied (the pruned groups are
  zero and gated, but still computed);
* ``compacted`` — :func:`plprune.compaction.compact`: the pruned groups physically removed;
* ``compacted+ort`` — the compacted model exported to ONNX and run by ONNX Runtime (CPU provider);
* ``torch-pruning`` (CNNs only) — the same filter indices removed by Torch-Pruning itself
  (``DependencyGraph.get_pruning_group(conv, prune_conv_out_channels, idxs).prune()`` on a copy of the dense
  model), the reference for plprune's compacted model.

The mask is random (``plprune.keep.select_mask`` on seeded uniform scores, protected: no layer is emptied):
which groups are pruned does not matter for speed, only how many per layer. Heads and experts are ranked
globally per kind (layers may keep different numbers), filters per layer (every conv keeps the same fraction).

Measured, per variant: CPU latency at batch 1 and batch 32 (median and interquartile range of ``repeats``
timed calls after ``warmup`` untimed ones; variants are timed in *rounds*, one call each per round in rotating
order, so that drift of a shared machine hits all alike), throughput (samples/s at batch 32), parameter count,
MACs per sample (``torch_pruning.utils.count_ops_and_params`` on the PyTorch model at batch 1: it counts
the modules' ops, e.g. ``nn.Linear``/``nn.Conv*``, not functional matmuls such as attention's ``QKᵀ``), peak
memory of one batch-32 forward pass, weight file sizes (safetensors of the state dict; the ONNX file), and
for BERT the attention blocks alone (every layer's attention module called on a fixed hidden-state tensor).

**Peak memory** is measured in a fresh process per variant (forked from a clean ``forkserver`` that has
imported torch and never run a model): the process loads only that variant (a pickle of the model, or the
ONNX file into an ONNX Runtime session), then resets the kernel's resident-set high-water mark
(``/proc/self/clear_refs``), runs one batch-32 forward pass and reads ``resource.getrusage(...).ru_maxrss``.
``model_and_forward_mb`` = that peak minus the process's RSS before the model was loaded;
``forward_mb`` = the peak minus the RSS with the model loaded (activations, workspaces, allocator growth).

Writes ``OUT/latency.json``, ``OUT/LATENCY.md`` and ``OUT/latency.png``.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import importlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError

__all__ = [
    "MODELS",
    "LatencySpec",
    "parse_spec",
    "run_latency_bench",
]

MODELS = ("bert", "hf-bert", "switch", "vgg", "resnet56")
INPUTS = ("mnist1d", "cifar")
SIZES = ("default", "tiny")
BATCHES = (1, 32)
KIND = {"bert": "head", "hf-bert": "head", "switch": "expert", "vgg": "filter", "resnet56": "filter"}
DEFAULT_RATIO = {"bert": 0.75, "hf-bert": 0.75, "switch": 0.5, "vgg": 0.5, "resnet56": 0.5}
DEFAULT_WIDTH = {"vgg": 0.25, "resnet56": 0.5}  # the vgg-mnist1d / resnet-mnist1d task defaults
ALLOCATION = {"head": "global", "expert": "global", "filter": "per_layer"}
VARIANT_ORDER = ("dense", "masked", "compacted", "compacted+ort", "torch-pruning")


# -- arguments ----------------------------------------------------------------------------------------------
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


# -- the models ---------------------------------------------------------------------------------------------
class LogitsOf(nn.Module):
    """A masked-LM model as a plain ``ids -> logits`` function (every position, the whole vocabulary)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids).logits


class AttentionStack(nn.Module):
    """The attention blocks of every encoder layer, chained: ``h ← attention_l(h)`` (a tuple output's first
    element), nothing else of the layers (no FFN, no residual around the block)."""

    def __init__(self, attentions: Sequence[nn.Module]) -> None:
        super().__init__()
        self.attentions = nn.ModuleList(attentions)

    def forward(self, hidden: Tensor) -> Tensor:
        for attention in self.attentions:
            out = attention(hidden)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


@dataclass
class Family:
    """A built model and how to feed it."""

    name: str
    description: str
    model: nn.Module  # what GroupSet sees
    example: Callable[[int], Tensor]  # batch size -> input batch (fixed by seed)
    wrap: Callable[[nn.Module], nn.Module]  # model -> module(input) -> Tensor
    attentions: Callable[[nn.Module], list[nn.Module]] | None = None  # model -> its attention modules
    hidden: Callable[[int], Tensor] | None = None  # batch size -> hidden states for the attention blocks


def _bert_config(size: str) -> Any:
    from plprune.models import BertConfig

    if size == "tiny":
        return BertConfig(
            vocab_size=101, hidden_size=32, num_layers=2, num_heads=4, ffn_size=64, max_length=16,
            dropout=0.0, attention_dropout=0.0,
        )  # fmt: skip
    return BertConfig(
        vocab_size=8000, hidden_size=128, num_layers=4, num_heads=8, ffn_size=512, max_length=128,
        dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip


def _generator(seed: int, batch: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 * seed + batch)


def build_family(spec: LatencySpec) -> Family:
    """The model of ``spec`` (seeded, eval mode, dropout 0) and its inputs."""
    torch.manual_seed(spec.seed)
    if spec.model in ("bert", "hf-bert", "switch"):
        config = _bert_config(spec.size)

        def ids(batch: int) -> Tensor:
            return torch.randint(
                config.vocab_size, (batch, config.max_length), generator=_generator(spec.seed, batch)
            )

        def hidden(batch: int) -> Tensor:
            shape = (batch, config.max_length, config.hidden_size)
            return torch.randn(shape, generator=_generator(spec.seed, batch))

        sizes = (
            f"{config.num_layers} layers × {config.num_heads} heads, hidden {config.hidden_size}, FFN "
            f"{config.ffn_size}, vocab {config.vocab_size}, sequence length {config.max_length}"
        )
        if spec.model == "bert":
            from plprune.models import BertForMaskedLM

            model: nn.Module = BertForMaskedLM(config)
            description = f"plprune BertForMaskedLM ({sizes}); output: logits at every position"
            attentions: Callable[[nn.Module], list[nn.Module]] | None = lambda m: [  # noqa: E731
                layer.attention for layer in m.layers
            ]
        elif spec.model == "hf-bert":
            from plprune.models.hf_bert import HfBertForMaskedLM

            model = HfBertForMaskedLM(config)
            description = (
                f"Hugging Face transformers.BertForMaskedLM, eager attention ({sizes}); output: logits at "
                "every position"
            )
            attentions = lambda m: [layer.attention for layer in m.hf.bert.encoder.layer]  # noqa: E731
        else:
            from plprune.models import SwitchConfig, SwitchForMaskedLM

            switch = SwitchConfig(num_experts=4, capacity_factor=1.5)
            model = SwitchForMaskedLM(config, switch)
            description = (
                f"plprune SwitchForMaskedLM ({sizes}; every FFN a top-1 mixture of {switch.num_experts} "
                f"experts, capacity factor {switch.capacity_factor}); output: logits at every position"
            )
            attentions, hidden = None, None  # type: ignore[assignment]
        return Family(spec.model, description, model.eval(), ids, LogitsOf, attentions, hidden)
    from plprune.models import VGG, ResNet

    dims, channels, shape = (1, 1, (40,)) if spec.input == "mnist1d" else (2, 3, (32, 32))
    layout = "MNIST-1D-shaped 1×40 sequences" if dims == 1 else "CIFAR-shaped 3×32×32 images"
    width = spec.width if spec.width is not None else DEFAULT_WIDTH[spec.model]
    if spec.model == "vgg":
        cfg: Any = (16, "M", 32, "M") if spec.size == "tiny" else None
        kwargs = {"cfg": cfg} if cfg else {}
        model = VGG(width_multiplier=width, in_channels=channels, num_classes=10, dims=dims, **kwargs)
        name = "VGG (tiny: 2 convs)" if cfg else "VGG-16 (BN)"
    else:
        depth = 8 if spec.size == "tiny" else 56
        model = ResNet(depth=depth, width_multiplier=width, in_channels=channels, num_classes=10, dims=dims)
        name = f"ResNet-{depth} (CIFAR-style, option-A shortcuts)"
    description = f"plprune {name}, width × {width:g}, {dims}-D convolutions on {layout}"

    def images(batch: int) -> Tensor:
        return torch.randn((batch, channels, *shape), generator=_generator(spec.seed, batch))

    return Family(spec.model, description, model.eval(), images, lambda m: m)


# -- pruning ------------------------------------------------------------------------------------------------
def random_mask(groups: Any, ratio: float, seed: int) -> Tensor:
    """A protected keep-mask at ``ratio`` from seeded random scores (global per kind; filters per layer)."""
    from plprune.keep import select_mask

    scores = torch.rand(len(groups), generator=torch.Generator().manual_seed(seed))
    return select_mask(groups, scores, ratio, ALLOCATION[groups.kinds[0]])


def _enable_filter_compaction() -> str | None:
    """Register conv-filter compaction if its module exists; the reason it is unavailable otherwise."""
    try:
        importlib.import_module("plprune.compaction.filters")
    except ImportError as error:
        return f"plprune.compaction.filters is not available ({error})"
    return None


class _TpBatchNormPruner:
    """Torch-Pruning pruning function for plprune's BatchNorm (channel-wise, in = out), which tp's own
    ``BatchnormPruner`` does not recognise (it checks for torch's ``_BatchNorm``)."""

    @staticmethod
    def build() -> Any:
        from torch_pruning.pruner.function import BasePruningFunc

        from plprune.models.layers import BatchNorm

        class BatchNormPruner(BasePruningFunc):
            TARGET_MODULES = BatchNorm

            def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
                keep = torch.tensor(sorted(set(range(layer.num_features)) - set(idxs)), dtype=torch.long)
                layer.num_features = len(keep)
                for name in ("weight", "bias"):
                    param = getattr(layer, name, None)
                    if param is not None:
                        setattr(layer, name, nn.Parameter(param.data.index_select(0, keep)))
                for name in ("running_mean", "running_var"):
                    buffer = getattr(layer, name, None)
                    if buffer is not None:
                        layer._buffers[name] = buffer.index_select(0, keep)
                return layer

            prune_in_channels = prune_out_channels

            def get_out_channels(self, layer: nn.Module) -> int:
                return int(layer.num_features)

            get_in_channels = get_out_channels

        return BatchNormPruner()


def torch_pruning_copy(dense: nn.Module, groups: Any, mask: Tensor, example: Tensor) -> nn.Module:
    """A copy of ``dense`` with the pruned filters of ``mask`` removed by Torch-Pruning itself: for each
    filter site, ``get_pruning_group(first conv, prune_conv_out_channels, pruned indices).prune()``."""
    import torch_pruning as tp

    from plprune.models.layers import BatchNorm

    model = copy.deepcopy(dense).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example, customized_pruners={BatchNorm: _TpBatchNormPruner.build()}
        )
        for site, start, stop in groups.site_ranges():
            pruned = (~mask[start:stop]).nonzero().flatten().tolist()
            if pruned:
                conv = model.get_submodule(site.members[0].conv_name)
                graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=pruned).prune()
    return model.eval()


def group_parameter_count(groups: Any) -> int:
    """Parameters in the prunable groups (each group's slices; a parameter element counted once)."""
    total = 0
    for group in groups.groups:
        for piece in group.slices:
            shape = list(groups._params[piece.param_name].shape)
            shape[piece.dim] = piece.stop - piece.start
            total += math.prod(shape)
    return total


# -- measuring ----------------------------------------------------------------------------------------------
def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, example: Tensor) -> int | None:
    """MACs of one forward pass on ``example`` by ``torch_pruning.utils.count_ops_and_params``."""
    import torch_pruning as tp

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, _ = tp.utils.count_ops_and_params(module, example)
    except Exception:
        return None
    return int(macs)


def safetensors_size(model: nn.Module, path: Path) -> int:
    from safetensors.torch import save_model

    save_model(model, str(path))
    return path.stat().st_size


def _onnx_size(path: Path) -> int:
    extra = Path(str(path) + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def export_onnx(
    model: nn.Module,
    groups: Any,
    module: nn.Module,
    examples: dict[int, Tensor],
    directory: Path,
    stem: str,
) -> dict[str, Any]:
    """The compacted model as ONNX, for every batch size of ``examples``; returns ``{"paths": {batch: path},
    "exporter": ..., "dynamic_batch": bool}``.

    With :func:`plprune.export.export` (the library's deployment path; ``model`` is the masked model and
    ``groups`` its GroupSet, or ``None`` for a module exported as it is): one file if its batch axis is
    dynamic, else one export per batch size (the TorchScript fallback for data-dependent models such as the
    Switch layer's routing has static shapes). Without it: ``torch.onnx.export`` of ``module`` (the
    compacted model, ``input -> Tensor``), dynamo with a dynamic batch, else TorchScript per batch size.
    """
    directory.mkdir(parents=True, exist_ok=True)
    batches = sorted(examples, reverse=True)  # the largest batch first: it reaches every expert
    try:
        from plprune.export import export as plprune_export
    except ImportError:
        plprune_export = None
    if plprune_export is not None:
        paths: dict[int, Path] = {}
        info: dict[str, Any] = {}
        for batch in batches:
            if batch in paths:
                continue
            target = directory / f"{stem}.b{batch}"
            with warnings.catch_warnings(), _Quiet():
                warnings.simplefilter("ignore")
                manifest = plprune_export(
                    model, groups, target, format="onnx", example_inputs=(examples[batch],)
                )
            onnx = manifest["onnx"]
            dynamic = 0 in onnx["inputs"][0]["dynamic_axes"]
            for other in batches if dynamic else [batch]:
                paths.setdefault(other, target / onnx["file"])
            info.setdefault("exporter", f"plprune.export(format='onnx'): {onnx['exporter']}")
            info.setdefault("dynamic_batch", dynamic)
            info["onnx_check_max_abs_diff"] = max(
                info.get("onnx_check_max_abs_diff", 0.0), onnx["max_abs_diff"]
            )
        return {"paths": paths, **info}
    errors = []
    path = directory / f"{stem}.onnx"
    try:
        from torch.export import Dim

        with warnings.catch_warnings(), _Quiet():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (examples[batches[0]],),
                str(path),
                input_names=["input"],
                output_names=["output"],
                dynamo=True,
                external_data=False,
                dynamic_shapes=({0: Dim("batch", min=1, max=4096)},),
                verbose=False,
            )
        return {"paths": dict.fromkeys(batches, path), "exporter": "torch.onnx.export(dynamo=True)",
                "dynamic_batch": True}  # fmt: skip
    except Exception as error:
        errors.append(f"dynamo: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
    paths = {}
    try:
        for batch in batches:
            paths[batch] = directory / f"{stem}.b{batch}.onnx"
            with warnings.catch_warnings(), _Quiet():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    (examples[batch],),
                    str(paths[batch]),
                    input_names=["input"],
                    output_names=["output"],
                    dynamo=False,
                )
    except Exception as error:
        errors.append(f"torchscript: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
        raise PlpruneError("ONNX export failed: " + "; ".join(errors)) from error
    return {"paths": paths, "exporter": "torch.onnx.export(dynamo=False), static batch",
            "dynamic_batch": False, "dynamo_error": errors[-1]}  # fmt: skip


class _Quiet:
    """Silence a noisy library's prints to stdout/stderr (the ONNX exporters' progress lines)."""

    def __enter__(self) -> None:
        self._saved = (os.dup(1), os.dup(2))
        sys.stdout.flush()
        sys.stderr.flush()
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 1)
        os.dup2(self._null, 2)
        self._py = (sys.stdout, sys.stderr)
        sys.stdout = sys.stderr = open(os.devnull, "w")

    def __exit__(self, *exc: Any) -> None:
        sys.stdout.close()
        sys.stdout, sys.stderr = self._py
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in (*self._saved, self._null):
            os.close(fd)


def ort_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads, no spinning between calls."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_call(session: Any, x: Tensor) -> Callable[[], Any]:
    feeds = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feeds)


def _torch_call(module: nn.Module, x: Tensor) -> Callable[[], Any]:
    return lambda: module(x)


def time_rounds(
    calls: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each entry: ``warmup`` untimed calls each, then ``repeats`` rounds in which every
    entry is called once, the starting entry rotating from round to round."""
    names = list(calls)
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                calls[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - started)
            if progress is not None:
                progress(f"round {r + 1}/{repeats}")
    return times


def summarize(seconds: list[float]) -> dict[str, Any]:
    q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive")
    return {
        "median_ms": 1000 * statistics.median(seconds),
        "q1_ms": 1000 * q1,
        "q3_ms": 1000 * q3,
        "min_ms": 1000 * min(seconds),
        "runs": len(seconds),
    }


def summarize_rounds(times: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """:func:`summarize` per entry, plus the *paired* speed-up over dense: the median over rounds of
    dense's time / the entry's time in the same round (which cancels drift slower than a round)."""
    rows = {name: summarize(seconds) for name, seconds in times.items()}
    if "dense" in times:
        for name, seconds in times.items():
            paired = [d / s for d, s in zip(times["dense"], seconds, strict=True)]
            q1, _, q3 = statistics.quantiles(paired, n=4, method="inclusive")
            rows[name]["paired_speedup"] = statistics.median(paired)
            rows[name]["paired_speedup_iqr"] = [q1, q3]
    return rows


def _max_abs_diff(a: Any, b: Any) -> float:
    a = torch.as_tensor(a).float()
    b = torch.as_tensor(b).float()
    return float((a - b).abs().max()) if a.shape == b.shape else math.inf


# -- peak memory in a fresh process -------------------------------------------------------------------------
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


def _memory_job(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: load one variant, one batch-1 warm-up pass (lazy initialisation of the
    runtimes: thread pools, kernels, caches), reset the RSS high-water mark, one batch-32 forward pass."""
    torch.set_num_threads(job["threads"])
    _trim()
    baseline = _rss_kb()
    if job["kind"] == "ort":
        session = ort_session(Path(job["path"]), job["threads"])
        call = _ort_call(session, job["input"])
        warm = _ort_call(session, job["warmup"]) if job.get("warmup") is not None else None
    else:
        module = torch.load(job["path"], weights_only=False)
        if job.get("mask") is not None:  # the masked variant: the dense pickle with the mask applied
            from plprune.gates import GroupSet

            inner = module.model if isinstance(module, LogitsOf) else module
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                groups = GroupSet(inner, kinds=(job["group_kind"],), example_inputs=job.get("example"))
            groups.apply_mask(job["mask"])
        module.eval()
        call = _torch_call(module, job["input"])
        warm = _torch_call(module, job["warmup"]) if job.get("warmup") is not None else None
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


def _send(stream: Any, obj: Any) -> None:
    import pickle

    data = pickle.dumps(obj)
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _receive(stream: Any) -> Any:
    import pickle

    header = stream.read(8)
    if len(header) < 8:
        return None
    return pickle.loads(stream.read(int.from_bytes(header, "little")))


def memory_server() -> None:
    """``python -m plprune.bench.latency --memory-server [MODULE...]``: import torch (and MODULEs) once,
    then for each job read from stdin fork a fresh child that runs it and writes its result to stdout. The
    server itself never runs a model, so every child starts from the same clean state."""
    for module in sys.argv[2:]:
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


def start_memory_server(preload: Sequence[str]) -> subprocess.Popen:
    """Start :func:`memory_server` (it imports torch and ``preload`` while the caller goes on)."""
    return subprocess.Popen(
        [sys.executable, "-m", "plprune.bench.latency", "--memory-server", *preload],
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


# -- the run ------------------------------------------------------------------------------------------------
def _progress_printer(enabled: bool) -> Callable[[str], None]:
    def say(text: str) -> None:
        if enabled:
            print(f"\r\033[Kbench-latency: {text}", end="", file=sys.stderr, flush=True)

    return say


def _versions(spec: LatencySpec) -> dict[str, str]:
    from importlib.metadata import version

    versions = {
        "python": platform.python_version(),
        "plprune": version("plprune"),  # the installed distribution (the package root is a higher layer)
        "torch": torch.__version__,
    }
    for module in ("torch_pruning", "onnx", "onnxruntime", "onnxscript", "transformers", "safetensors"):
        if module == "transformers" and spec.model != "hf-bert":
            continue
        try:
            versions[module] = str(importlib.import_module(module).__version__)
        except (ImportError, AttributeError):
            versions[module] = "not installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        versions["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    return versions


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


@dataclass
class _Variant:
    name: str
    module: nn.Module | None = None  # torch variants (wrapped: input -> Tensor)
    onnx: dict[str, Any] | None = None  # compacted+ort: export info
    info: dict[str, Any] = field(default_factory=dict)


def run_latency_bench(spec: LatencySpec, progress: bool | None = None) -> dict[str, Any]:
    """Run the benchmark of ``spec`` and write latency.json, LATENCY.md and latency.png into ``spec.out``."""
    if progress is None:
        progress = sys.stderr.isatty()
    say = _progress_printer(progress)
    started = time.time()
    machine = _machine()
    torch.set_num_threads(spec.threads[0])
    family = build_family(spec)
    kind = KIND[spec.model]
    notes: list[str] = []

    from plprune.compaction import compact
    from plprune.gates import GroupSet

    say("building the variants")
    dense_model = copy.deepcopy(family.model)
    example_small = family.example(2)
    masked_model = family.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = GroupSet(
            masked_model, kinds=(kind,), example_inputs=example_small if kind == "filter" else None
        )
    groups.check_ratio(spec.ratio)
    mask = random_mask(groups, spec.ratio, spec.seed)
    groups.apply_mask(mask)
    layer_ids = groups.layer_ids
    kept_per_layer = [int(mask[layer_ids == layer].sum()) for layer in torch.unique(layer_ids)]
    total_per_layer = [int((layer_ids == layer).sum()) for layer in torch.unique(layer_ids)]
    group_params = group_parameter_count(groups)

    variants: dict[str, _Variant] = {
        "dense": _Variant("dense", family.wrap(dense_model).eval()),
        "masked": _Variant("masked", family.wrap(masked_model).eval()),
    }
    compacted_model: nn.Module | None = None
    unavailable: dict[str, str] = {}
    reason = _enable_filter_compaction() if kind == "filter" else None
    try:
        if reason is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compacted_model, _ = compact(groups)
            compacted_model.eval()
            variants["compacted"] = _Variant("compacted", family.wrap(compacted_model).eval())
    except PlpruneError as error:
        reason = str(error)
    if reason is not None:
        unavailable["compacted"] = unavailable["compacted+ort"] = reason
    tp_model = None
    if kind == "filter":
        say("pruning the same filters with Torch-Pruning")
        try:
            tp_model = torch_pruning_copy(dense_model, groups, mask, example_small)
            variants["torch-pruning"] = _Variant("torch-pruning", tp_model)
        except Exception as error:
            unavailable["torch-pruning"] = f"{type(error).__name__}: {error}"

    inputs = {batch: family.example(batch) for batch in BATCHES}
    check = inputs[BATCHES[-1]]
    with torch.inference_mode():
        reference = variants["masked"].module(check)
        for variant in variants.values():
            if variant.name not in ("dense", "masked"):
                variant.info["max_abs_diff_vs_masked"] = _max_abs_diff(variant.module(check), reference)

    scratch = Path(tempfile.mkdtemp(prefix="plprune-latency-"))
    memory_server_process = None
    if spec.memory:  # started now: its imports overlap with the exports below
        preload = ["onnxruntime"] if spec.onnx else []
        if spec.model == "hf-bert":
            preload.append("transformers.models.bert.modeling_bert")
        memory_server_process = start_memory_server(preload)
    try:
        # ONNX export of the compacted model (and of its attention blocks)
        attention_ort: dict[str, Any] | None = None
        if spec.onnx and "compacted" in variants:
            say("exporting the compacted model to ONNX")
            try:
                exported = export_onnx(
                    masked_model, groups, variants["compacted"].module, inputs, scratch / "onnx", "model"
                )
                variants["compacted+ort"] = _Variant("compacted+ort", None, exported)
            except Exception as error:  # reported; the other variants are still measured
                unavailable["compacted+ort"] = f"{type(error).__name__}: {error}".replace("\n", " ")
        elif not spec.onnx:
            unavailable["compacted+ort"] = "skipped (--no-onnx)"

        # static facts per variant: parameters, MACs, file sizes
        say("counting parameters and MACs")
        one = inputs[1]
        for name, variant in variants.items():
            if variant.module is None:
                continue
            inner = variant.module.model if isinstance(variant.module, LogitsOf) else variant.module
            variant.info["parameters"] = parameter_count(inner)
            variant.info["macs_per_sample"] = count_macs(variant.module, one)
            variant.info["safetensors_bytes"] = safetensors_size(inner, scratch / f"{name}.safetensors")
        if "compacted+ort" in variants:
            onnx_info = variants["compacted+ort"].onnx or {}
            paths = onnx_info["paths"]
            compacted_info = variants["compacted"].info
            info = variants["compacted+ort"].info
            info["parameters"] = compacted_info["parameters"]
            info["macs_per_sample"] = compacted_info["macs_per_sample"]
            info["onnx_bytes"] = _onnx_size(paths[BATCHES[-1]])
            info["exporter"] = onnx_info["exporter"]
            info["dynamic_batch"] = onnx_info["dynamic_batch"]
            if not onnx_info["dynamic_batch"]:
                notes.append(
                    f"The ONNX export ({onnx_info['exporter']}) has a static batch size: one file per batch "
                    "size was exported and timed."
                )
            if "dynamo=False" in onnx_info["exporter"] and info["onnx_bytes"] > 1.5 * compacted_info.get(
                "safetensors_bytes", math.inf
            ):
                notes.append(
                    f"The ONNX file is {info['onnx_bytes'] / compacted_info['safetensors_bytes']:.1f}x the "
                    "compacted safetensors file: the TorchScript exporter (static shapes) stores the tied "
                    "embedding a second time (transposed, for the decoder) and bakes batch-shaped tensors "
                    "(e.g. the zeros a Switch layer scatters its expert outputs into) into the graph as "
                    "constants."
                )
            if "dynamo_error" in onnx_info:
                notes.append(
                    "The dynamo ONNX exporter failed on this model (" + onnx_info["dynamo_error"] + "); the "
                    "TorchScript exporter was used instead, one static-shape file per batch size."
                )
            session = ort_session(paths[BATCHES[-1]], spec.threads[0])
            out = session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]
            with torch.inference_mode():
                info["max_abs_diff_vs_compacted"] = _max_abs_diff(out, variants["compacted"].module(check))
            del session

        # attention blocks (BERT): the same chain of attention modules for every variant
        attention_stacks: dict[str, nn.Module] = {}
        hidden_inputs: dict[int, Tensor] = {}
        if family.attentions is not None and family.hidden is not None:
            attention_stacks["dense"] = AttentionStack(family.attentions(dense_model)).eval()
            attention_stacks["masked"] = AttentionStack(family.attentions(masked_model)).eval()
            if compacted_model is not None:
                attention_stacks["compacted"] = AttentionStack(family.attentions(compacted_model)).eval()
            hidden_inputs = {batch: family.hidden(batch) for batch in BATCHES}
            if "compacted+ort" in variants:
                try:
                    stack = attention_stacks["compacted"]
                    attention_ort = export_onnx(
                        stack, None, stack, hidden_inputs, scratch / "onnx", "attention"
                    )
                except Exception as error:
                    notes.append(f"The attention blocks could not be exported to ONNX: {error}")

        # peak memory, each variant in a fresh process
        memory: dict[str, dict[str, Any]] = {}
        if spec.memory:
            say("measuring peak memory (one fresh process per variant)")
            dense_path = scratch / "dense.pt"
            torch.save(variants["dense"].module, dense_path)
            big = inputs[BATCHES[-1]]
            jobs: dict[str, dict[str, Any]] = {
                "dense": {"kind": "torch", "path": str(dense_path), "input": big},
                "masked": {
                    "kind": "torch",
                    "path": str(dense_path),
                    "input": big,
                    "mask": mask.clone(),
                    "group_kind": kind,
                    "example": example_small if kind == "filter" else None,
                },
            }
            for name in ("compacted", "torch-pruning"):
                if name in variants:
                    path = scratch / f"{name}.pt"
                    torch.save(variants[name].module, path)
                    jobs[name] = {"kind": "torch", "path": str(path), "input": big}
            if "compacted+ort" in variants:
                paths = variants["compacted+ort"].onnx["paths"]  # type: ignore[index]
                jobs["compacted+ort"] = {"kind": "ort", "path": str(paths[BATCHES[-1]]), "input": big}
                if paths[BATCHES[0]] != paths[BATCHES[-1]]:  # static batch: no batch-1 warm-up possible
                    jobs["compacted+ort"]["warmup"] = None
            for job in jobs.values():
                job["threads"] = spec.threads[0]
                job.setdefault("warmup", inputs[BATCHES[0]])
            memory = measure_memory(jobs, server=memory_server_process)
            memory_server_process = None

        # latency, in interleaved rounds, for every thread count
        latency: dict[str, dict[str, dict[str, Any]]] = {}
        for threads in spec.threads:
            torch.set_num_threads(threads)
            sessions = {}
            if "compacted+ort" in variants:
                paths = variants["compacted+ort"].onnx["paths"]  # type: ignore[index]
                sessions = {batch: ort_session(paths[batch], threads) for batch in BATCHES}
            attention_sessions = {}
            if attention_ort is not None:
                attention_sessions = {
                    batch: ort_session(attention_ort["paths"][batch], threads) for batch in BATCHES
                }
            per_thread: dict[str, dict[str, Any]] = {}
            for batch in BATCHES:
                calls: dict[str, Callable[[], Any]] = {}
                for name in VARIANT_ORDER:
                    if name == "compacted+ort" and sessions:
                        calls[name] = _ort_call(sessions[batch], inputs[batch])
                    elif name in variants and variants[name].module is not None:
                        calls[name] = _torch_call(variants[name].module, inputs[batch])
                label = f"{threads} thread(s), batch {batch}"
                times = time_rounds(
                    calls, spec.repeats, spec.warmup, lambda text, label=label: say(f"{label}: {text}")
                )
                per_thread[f"batch{batch}"] = summarize_rounds(times)
                if attention_stacks:
                    calls = {
                        name: _torch_call(stack, hidden_inputs[batch])
                        for name, stack in attention_stacks.items()
                    }
                    if attention_sessions:
                        calls["compacted+ort"] = _ort_call(attention_sessions[batch], hidden_inputs[batch])
                    label = f"{threads} thread(s), attention blocks, batch {batch}"
                    times = time_rounds(
                        calls, spec.repeats, spec.warmup, lambda text, label=label: say(f"{label}: {text}")
                    )
                    per_thread[f"attention_batch{batch}"] = summarize_rounds(times)
            latency[str(threads)] = per_thread
            del sessions, attention_sessions
    finally:
        if memory_server_process is not None:  # not used: an error came first
            memory_server_process.kill()
            memory_server_process.wait()
        for path in sorted(scratch.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        scratch.rmdir()
    say("writing the report")
    machine["load_average_at_end"] = (
        [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []
    )
    if progress:
        print(file=sys.stderr)

    torch_pruning_info = None
    if tp_model is not None:
        tp_info = variants["torch-pruning"].info
        torch_pruning_info = {
            "method": "tp.DependencyGraph().build_dependency(dense copy); for each plprune filter site, "
            "get_pruning_group(first conv, tp.prune_conv_out_channels, idxs=the pruned filter "
            "indices).prune()",
            "parameters": tp_info["parameters"],
            "macs_per_sample": tp_info["macs_per_sample"],
        }
        if "compacted" in variants:
            info = variants["compacted"].info
            with torch.inference_mode():
                diff = _max_abs_diff(tp_model(check), variants["compacted"].module(check))
            torch_pruning_info.update(
                {
                    "parameters_match": tp_info["parameters"] == info["parameters"],
                    "macs_match": tp_info["macs_per_sample"] == info["macs_per_sample"],
                    "max_abs_diff_vs_compacted": diff,
                    "shapes_match": [tuple(p.shape) for p in tp_model.parameters()]
                    == [tuple(p.shape) for p in variants["compacted"].module.parameters()],
                }
            )

    dense_params = variants["dense"].info["parameters"]
    result: dict[str, Any] = {
        "meta": {
            "command": spec.command,
            "spec": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(spec).items()},
            "versions": _versions(spec),
            "machine": machine,
            "threads": list(spec.threads),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "batch_sizes": list(BATCHES),
            "timing": f"median and interquartile range of {spec.repeats} timed calls per variant after "
            f"{spec.warmup} warm-up calls, in interleaved rounds (each round calls every variant once, the "
            "starting variant rotating); torch.inference_mode(); ONNX Runtime CPU provider with the same "
            "intra-op thread count, sequential execution, no spinning",
            "memory": "peak RSS of one batch-32 forward pass in a fresh process per variant, after one "
            "batch-1 warm-up pass (module docstring of plprune.bench.latency)"
            if spec.memory
            else "not measured (--no-memory)",
            "seconds": round(time.time() - started, 1),
        },
        "model": {
            "family": spec.model,
            "description": family.description,
            "group_kind": kind,
            "ratio": spec.ratio,
            "allocation": ALLOCATION[kind],
            "mask": f"random protected mask: plprune.keep.select_mask on uniform scores (seed {spec.seed}), "
            + (
                f"ranked globally over all {kind}s (layers may keep different numbers)"
                if ALLOCATION[kind] == "global"
                else "ranked within each layer (every layer keeps the same fraction)"
            )
            + f"; which {kind}s are pruned does not matter for speed, only how many per layer",
            "groups": len(groups),
            "groups_kept": int(mask.sum()),
            "kept_per_layer": kept_per_layer,
            "groups_per_layer": total_per_layer,
            "group_parameters": group_params,
            "group_parameter_fraction": group_params / dense_params,
            "input_shape_batch1": list(inputs[1].shape),
        },
        "variants": {
            name: {**variants[name].info, "memory": memory.get(name)}
            for name in VARIANT_ORDER
            if name in variants
        },
        "unavailable": unavailable,
        "latency": latency,
        "torch_pruning": torch_pruning_info,
        "notes": notes + _family_notes(spec, kind),
    }
    result["ratios"] = _ratios(result)
    spec.out.mkdir(parents=True, exist_ok=True)
    (spec.out / "latency.json").write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    (spec.out / "LATENCY.md").write_text(render_markdown(result), encoding="utf-8")
    plot_latency(result, spec.out / "latency.png")
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (Path, torch.Size)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _family_notes(spec: LatencySpec, kind: str) -> list[str]:
    notes = []
    if kind == "head":
        notes.append(
            "Only the attention blocks shrink when heads are removed: embeddings, the FFNs and the masked-LM "
            "head (whose vocabulary projection dominates the full forward pass) stay; the attention-block "
            "rows time every layer's attention module alone (Q/K/V projections, softmax attention, output "
            "projection"
            + (
                "; Hugging Face's block also includes its output LayerNorm and residual"
                if spec.model == "hf-bert"
                else ""
            )
            + ")."
        )
    if kind == "expert":
        notes.append(
            "Top-1 routing sends every token through exactly one expert, dense or pruned, so removing "
            "experts does not reduce the MACs per token; it removes parameters and memory. The masked "
            "model already "
            "routes no token to a pruned expert (its router logit is -inf), so masked and compacted do the "
            "same work. With fewer experts each has a larger capacity (capacity factor x tokens / experts), "
            "so fewer tokens are dropped."
        )
    if kind == "filter":
        notes.append(
            "Filters are removed per layer (every pruned conv keeps the same fraction); removing a conv's "
            "output channels also removes the next layer's input channels, so MACs fall roughly with the "
            "square of the kept fraction where consecutive convs are both pruned."
        )
        if spec.model == "resnet56":
            notes.append(
                "In plprune's ResNet only each block's first conv has prunable filters (the stem and the "
                "second convs are tied by the residual sums), so the MACs fall by less than in VGG."
            )
    notes.append(
        "MACs are counted by torch_pruning.utils.count_ops_and_params (module ops: Linear, Conv, norms, "
        "embeddings); functional matmuls (attention QK^T and attention x V) and element-wise ops are not "
        "in it."
        + (
            " plprune's BERT and Switch compute the vocabulary projection with F.linear on the tied token "
            "embedding, so their count also leaves out hidden x vocabulary MACs per token, which the Hugging "
            "Face model's nn.Linear decoder has in its count."
            if spec.model in ("bert", "switch")
            else ""
        )
    )
    if spec.memory and spec.onnx:
        notes.append(
            "ONNX Runtime's memory includes its CPU arena allocator (on by default), which grows in "
            "chunks and keeps what it has reserved, so its peak is not comparable byte for byte with "
            "PyTorch's."
        )
    return notes


def _ratios(result: dict[str, Any]) -> dict[str, Any]:
    """dense / variant latency (speed-up) per thread count and measure; dense / variant parameters."""
    out: dict[str, Any] = {"speedup_vs_dense": {}, "paired_speedup_vs_dense": {}, "parameters_vs_dense": {}}
    for threads, measures in result["latency"].items():
        out["speedup_vs_dense"][threads] = {
            measure: {name: rows["dense"]["median_ms"] / row["median_ms"] for name, row in rows.items()}
            for measure, rows in measures.items()
        }
        out["paired_speedup_vs_dense"][threads] = {
            measure: {name: row["paired_speedup"] for name, row in rows.items()}
            for measure, rows in measures.items()
        }
    dense = result["variants"]["dense"].get("parameters")
    for name, info in result["variants"].items():
        if dense and info.get("parameters"):
            out["parameters_vs_dense"][name] = info["parameters"] / dense
    return out


# -- report -------------------------------------------------------------------------------------------------
def _mb(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"


def _count(value: Any) -> str:
    if value is None:
        return "—"
    if value >= 1e9:
        return f"{value / 1e9:.3f} G"
    if value >= 1e6:
        return f"{value / 1e6:.3f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return str(value)


def _latency_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    return f"{row['median_ms']:.2f} ({row['q1_ms']:.2f}–{row['q3_ms']:.2f})"


def _speedup_cell(rows: dict[str, Any], name: str) -> str:
    ratio = rows["dense"]["median_ms"] / rows[name]["median_ms"]
    return f"{ratio:.2f}× ({rows[name]['paired_speedup']:.2f}×)"


def _memory_method(result: dict[str, Any]) -> str:
    methods = {(v.get("memory") or {}).get("method") for v in result["variants"].values()} - {None}
    return f"; measured as resource.getrusage(RUSAGE_SELF).{', '.join(sorted(methods))}" if methods else ""


def render_markdown(result: dict[str, Any]) -> str:
    meta, model = result["meta"], result["model"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    machine = meta["machine"]
    lines = [
        f"# Inference latency: {model['family']}, {model['ratio']:.0%} of {model['group_kind']}s pruned",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"- Model: {model['description']}.",
        f"- Mask: {model['mask']}. Kept {model['groups_kept']} of {model['groups']} {model['group_kind']}s; "
        f"per layer: {model['kept_per_layer']} of {model['groups_per_layer']}. The prunable "
        f"{model['group_kind']} groups hold {model['group_parameters']:,} parameters, "
        f"{model['group_parameter_fraction']:.1%} of the dense model"
        + (
            " (a filter group is its conv's output channel and BN parameters; removing it also removes the "
            "next layer's input channel, which belongs to that layer's groups)."
            if model["group_kind"] == "filter"
            else " (the rest, e.g. embeddings, never shrinks)."
        ),
        f"- Machine: {machine['cpu']}, {machine['cpu_count']} CPU cores, {machine['platform']}; load average "
        f"(1, 5, 15 min) at start {machine['load_average_at_start']}, at the end "
        f"{machine.get('load_average_at_end')} (other jobs may share the cores).",
        f"- Versions: {versions}.",
        f"- Threads: torch.set_num_threads and ONNX Runtime intra-op threads = {meta['threads']} "
        f"(torch inter-op threads {meta['torch_interop_threads']}).",
        f"- Timing: {meta['timing']}.",
        f"- Memory: {meta['memory']}" + _memory_method(result) + ".",
        "",
        "## Size and memory",
        "",
        "| variant | parameters | vs dense | MACs/sample | weights file | peak RSS, batch 32 | model + "
        "forward | forward only | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    dense_params = result["variants"]["dense"].get("parameters")
    for name, info in result["variants"].items():
        memory = info.get("memory") or {}
        if "error" in memory:
            peak = whole = forward = f"failed: {memory['error'][:60]}"
        else:
            peak, whole, forward = (
                f"{memory[k]:.1f} MiB" if k in memory else "—"
                for k in ("peak_rss_mb", "model_and_forward_mb", "forward_mb")
            )
        file_size = (
            f"{_mb(info['onnx_bytes'])} (ONNX)"
            if "onnx_bytes" in info
            else f"{_mb(info.get('safetensors_bytes'))}"
        )
        diff = info.get("max_abs_diff_vs_masked", info.get("max_abs_diff_vs_compacted"))
        diff_text = (
            "—"
            if diff is None
            else f"{diff:.1e} vs " + ("masked" if "max_abs_diff_vs_masked" in info else "compacted")
        )
        ratio = info.get("parameters", 0) / dense_params if dense_params and info.get("parameters") else None
        lines.append(
            f"| {name} | {info.get('parameters', 0):,} | {'—' if ratio is None else f'{ratio:.3f}×'} | "
            f"{_count(info.get('macs_per_sample'))} | {file_size} | {peak} | {whole} | {forward} | "
            f"{diff_text} |"
        )
    for name, why in result["unavailable"].items():
        lines.append(f"| {name} | not measured: {why} | | | | | | | |")
    lines += [
        "",
        "Weights file: safetensors of the state dict (the masked model stores its zeros), or the ONNX file. "
        "Peak RSS: the whole process (Python, torch and the model); model + forward: the peak minus the RSS "
        "before loading the model; forward only: the peak minus the RSS with the model loaded and warmed up "
        "by one batch-1 pass.",
        "",
        "## Latency (ms per call: median (Q1–Q3)) and throughput",
        "",
    ]
    lines += [
        "Speed-up: dense's median / the variant's median; in parentheses the paired speed-up, the median "
        "over rounds of dense's time / the variant's time in the same round (robust to load that changes "
        "between rounds). Throughput: 32 / the batch-32 median.",
        "",
    ]
    for threads, measures in result["latency"].items():
        lines += [
            f"### {threads} thread{'s' if threads != '1' else ''}",
            "",
            "| variant | batch 1 | speed-up | batch 32 | speed-up | throughput (samples/s, batch 32) |",
            "|---|---|---|---|---|---|",
        ]
        for name in measures["batch1"]:
            b1, b32 = measures["batch1"][name], measures["batch32"][name]
            throughput = 32 / (b32["median_ms"] / 1000)
            lines.append(
                f"| {name} | {_latency_cell(b1)} | {_speedup_cell(measures['batch1'], name)} | "
                f"{_latency_cell(b32)} | {_speedup_cell(measures['batch32'], name)} | {throughput:,.0f} |"
            )
        if "attention_batch1" in measures:
            lines += [
                "",
                "Attention blocks only (every layer's attention module on a fixed hidden-state tensor):",
                "",
                "| variant | batch 1 | speed-up | batch 32 | speed-up |",
                "|---|---|---|---|---|",
            ]
            for name in measures["attention_batch1"]:
                a1, a32 = measures["attention_batch1"], measures["attention_batch32"]
                lines.append(
                    f"| {name} | {_latency_cell(a1[name])} | {_speedup_cell(a1, name)} | "
                    f"{_latency_cell(a32[name])} | {_speedup_cell(a32, name)} |"
                )
        lines.append("")
    tp = result.get("torch_pruning")
    if tp:
        lines += ["## Torch-Pruning on the same filters", "", f"Method: {tp['method']}.", ""]
        compacted = result["variants"].get("compacted")
        if compacted and "macs_match" in tp:
            lines += [
                f"- Parameters: Torch-Pruning {tp['parameters']:,}, plprune compacted "
                f"{compacted['parameters']:,} "
                f"({'equal' if tp['parameters_match'] else 'DIFFERENT'}).",
                f"- MACs/sample: Torch-Pruning {_count(tp['macs_per_sample'])}, plprune compacted "
                f"{_count(compacted['macs_per_sample'])} ({'equal' if tp['macs_match'] else 'DIFFERENT'}).",
                f"- Parameter shapes {'identical' if tp['shapes_match'] else 'DIFFERENT'}; outputs differ "
                f"by at most {tp['max_abs_diff_vs_compacted']:.1e}.",
                "- Latency: the torch-pruning rows of the tables above (timed in the same rounds).",
            ]
        else:
            lines.append(
                f"- Parameters {tp['parameters']:,}, MACs/sample {_count(tp['macs_per_sample'])}; plprune's "
                "compacted model is not available here, so there is nothing to compare with."
            )
        lines.append("")
    if result["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in result["notes"]] + [""]
    return "\n".join(lines)


def plot_latency(result: dict[str, Any], path: Path) -> None:
    """Bars of median latency (IQR as error bars) per variant: batch 1 and 32 (and the attention blocks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thread_counts = list(result["latency"])
    measures = [m for m in ("batch1", "batch32", "attention_batch1", "attention_batch32")
                if m in result["latency"][thread_counts[0]]]  # fmt: skip
    titles = {
        "batch1": "batch 1",
        "batch32": "batch 32",
        "attention_batch1": "attention blocks, batch 1",
        "attention_batch32": "attention blocks, batch 32",
    }
    fig, axes = plt.subplots(1, len(measures), figsize=(3.6 * len(measures) + 0.6, 3.8), squeeze=False)
    width = 0.8 / len(thread_counts)
    for ax, measure in zip(axes[0], measures, strict=True):
        names = list(result["latency"][thread_counts[0]][measure])
        for t, threads in enumerate(thread_counts):
            rows = result["latency"][threads][measure]
            medians = [rows[n]["median_ms"] for n in names]
            errors = [
                [rows[n]["median_ms"] - rows[n]["q1_ms"] for n in names],
                [rows[n]["q3_ms"] - rows[n]["median_ms"] for n in names],
            ]
            positions = [i + (t - (len(thread_counts) - 1) / 2) * width for i in range(len(names))]
            ax.bar(positions, medians, width, yerr=errors, capsize=2, label=f"{threads} thread(s)")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("ms per call (median, IQR)")
        ax.set_title(titles[measure], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    model = result["model"]
    fig.suptitle(f"{model['family']}: {model['ratio']:.0%} of {model['group_kind']}s pruned", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__" and sys.argv[1:2] == ["--memory-server"]:
    from plprune.bench import latency  # the importable module, so that pickles and this code share classes

    latency.memory_server()
