"""Deployment: write a pruned model as a physically smaller one (safetensors, optionally ONNX); load it back.

:func:`export` compacts a copy of the masked model (:func:`plprune.compaction.compact`) and writes a
directory::

    OUT/model.safetensors   the compacted weights (no pickle; tied weights stored once, ties recorded)
    OUT/plprune.json        how to rebuild it: architecture, pruned kinds, group names, final mask,
                            per-layer group counts after compaction, example input, sha256 of the files
    OUT/model.onnx          (format "onnx") the compacted model, checked with onnxruntime against PyTorch

:func:`load` rebuilds the *dense* architecture from ``plprune.json`` (or takes the caller's dense skeleton),
finds its groups, applies the recorded mask, compacts in place and then loads the weights strictly. The
weights file is verified (size and sha256) before anything is built, and every tensor's shape is checked
against the rebuilt model, so a damaged or mismatched export fails with one :class:`PlpruneError` naming
what is wrong, never with a half-loaded model. :func:`export_run` does the same for a ``plprune train`` run
directory (``plprune export RUN_DIR``). See docs/deploy.md.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plprune.compaction.core import strip_gate_hooks
from plprune.errors import PlpruneError, RunDirError
from plprune.gates import GroupSet
from plprune.quiet import quiet

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "build_architecture",
    "describe_architecture",
    "export",
    "export_run",
    "load",
    "model_from_run",
    "read_manifest",
]

FORMAT_VERSION = 1
FORMATS = ("safetensors", "onnx")
MANIFEST = "plprune.json"
WEIGHTS = "model.safetensors"
ONNX_FILE = "model.onnx"
ONNX_TOLERANCE = 1e-4
CHECK_BATCHES = 4  # the ONNX check runs the example inputs and 3 random batches (other sizes on dynamic axes)
DEFAULT_EXPORT_DIR = "export"


# -- architecture descriptions ------------------------------------------------------------------------
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise PlpruneError(f"{MANIFEST}: unknown dtype {name!r}")
    return dtype


def _is_transformers_model(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return type(model).__module__.startswith("transformers.") and hasattr(config, "to_dict")


def _hf_description(model: nn.Module) -> dict[str, Any]:
    config = model.config
    return {
        "class": type(model).__name__,
        "config": json.loads(config.to_json_string(use_diff=False)),
        "attn_implementation": getattr(config, "_attn_implementation", None),
    }


def _vgg_args(model: nn.Module) -> dict[str, Any]:
    from plprune.models.filters import GatedConvBN, scale_channels
    from plprune.models.vgg import VGG16_CFG, MaxPoolIfLarger

    widths: list[int | str] = []
    for layer in model.features:
        if isinstance(layer, MaxPoolIfLarger):
            widths.append("M")
        elif isinstance(layer, GatedConvBN):
            widths.append(int(layer.conv.out_channels))
        else:
            raise PlpruneError(f"cannot describe a VGG with a {type(layer).__name__} in its features")
    args: dict[str, Any] = {
        "width_multiplier": model.width_multiplier,
        "in_channels": model.in_channels,
        "num_classes": model.num_classes,
        "dims": model.dims,
    }
    default = [c if c == "M" else scale_channels(c, model.width_multiplier, "") for c in VGG16_CFG]
    if widths != default:  # a custom cfg: record the actual widths at width 1
        args.update(width_multiplier=1.0, cfg=widths)
    return args


def describe_architecture(model: nn.Module) -> dict[str, Any]:
    """What :func:`load` needs to rebuild the dense ``model``: ``{"family": ..., ...}``.

    plprune's own models record their constructor arguments (``BertConfig``/``SwitchConfig``, VGG/ResNet
    sizes); Hugging Face ``transformers`` models their class name and ``config.to_dict()``; any other model
    is ``{"family": "custom", "class": ...}`` and needs a dense skeleton at load time."""
    from plprune.models import VGG, BertForMaskedLM, ResNet, SwitchForMaskedLM
    from plprune.models.hf_bert import HfBertForMaskedLM
    from plprune.models.hf_llama import HfLlamaForCausalLM

    kind = type(model)
    if kind is SwitchForMaskedLM:
        return {
            "family": "plprune.SwitchForMaskedLM",
            "bert_config": model.config.to_dict(),
            "switch_config": dataclasses.asdict(model.switch_config),
        }
    if kind is BertForMaskedLM:
        return {"family": "plprune.BertForMaskedLM", "bert_config": model.config.to_dict()}
    if kind is HfBertForMaskedLM:
        return {
            "family": "plprune.HfBertForMaskedLM",
            "bert_config": model.config.to_dict() if model.config is not None else None,
            "hf": _hf_description(model.hf),
        }
    if kind is HfLlamaForCausalLM:
        return {
            "family": "plprune.HfLlamaForCausalLM",
            "llama_config": model.config.to_dict() if model.config is not None else None,
            "hf": _hf_description(model.hf),
        }
    if kind is VGG:
        return {"family": "plprune.VGG", "args": _vgg_args(model)}
    if kind is ResNet:
        args = {k: getattr(model, k) for k in ("depth", "width_multiplier", "in_channels", "num_classes")}
        return {"family": "plprune.ResNet", "args": {**args, "dims": model.dims}}
    if _is_transformers_model(model):
        return {"family": "transformers", **_hf_description(model)}
    return {"family": "custom", "class": f"{kind.__module__}.{kind.__qualname__}"}


def _build_hf(description: dict[str, Any]) -> nn.Module:
    try:
        transformers = importlib.import_module("transformers")
    except ImportError as error:
        raise PlpruneError(
            "this export holds a Hugging Face model: install transformers (pip install 'plprune[hf]')"
        ) from error
    klass = getattr(transformers, str(description.get("class")), None)
    if klass is None or not hasattr(klass, "config_class"):
        raise PlpruneError(f"{MANIFEST}: transformers has no model class {description.get('class')!r}")
    config = klass.config_class.from_dict(dict(description["config"]))
    if description.get("attn_implementation"):
        config._attn_implementation = description["attn_implementation"]
    return klass(config)


def build_architecture(description: dict[str, Any]) -> nn.Module:
    """The dense model a :func:`describe_architecture` dictionary describes (freshly initialised)."""
    from plprune.models import VGG, BertConfig, BertForMaskedLM, ResNet, SwitchConfig, SwitchForMaskedLM

    family = description.get("family")
    try:
        if family == "plprune.BertForMaskedLM":
            return BertForMaskedLM(BertConfig(**description["bert_config"]))
        if family == "plprune.SwitchForMaskedLM":
            return SwitchForMaskedLM(
                BertConfig(**description["bert_config"]), SwitchConfig(**description["switch_config"])
            )
        if family == "plprune.HfBertForMaskedLM":
            from plprune.models.hf_bert import HfBertForMaskedLM

            wrapper = HfBertForMaskedLM(hf_model=_build_hf(description["hf"]))
            if description.get("bert_config") is not None:
                wrapper.config = BertConfig(**description["bert_config"])
            return wrapper
        if family == "plprune.HfLlamaForCausalLM":
            from plprune.models.hf_llama import CausalLmConfig, HfLlamaForCausalLM

            llama = HfLlamaForCausalLM(hf_model=_build_hf(description["hf"]))
            if description.get("llama_config") is not None:
                llama.config = CausalLmConfig(**description["llama_config"])
            return llama
        if family == "plprune.VGG":
            args = dict(description["args"])
            if "cfg" in args:
                args["cfg"] = tuple(args["cfg"])
            return VGG(**args)
        if family == "plprune.ResNet":
            return ResNet(**description["args"])
        if family == "transformers":
            return _build_hf(description)
    except (KeyError, TypeError) as error:
        raise PlpruneError(f"{MANIFEST}: invalid {family} architecture description ({error})") from error
    if family == "custom":
        raise PlpruneError(
            f"this export holds a user-defined model ({description.get('class')}): pass its dense, "
            "unpruned skeleton, plprune.load(path, model=MyModel(...))"
        )
    raise PlpruneError(f"{MANIFEST}: unknown model family {family!r}")


# -- example inputs -----------------------------------------------------------------------------------
def _as_tuple(inputs: Any) -> tuple[Tensor, ...]:
    items = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    if not items or not all(isinstance(x, Tensor) for x in items):
        raise PlpruneError(
            "example_inputs must be a tensor or a tuple of tensors (model(*example_inputs)), got "
            f"{type(inputs).__name__}"
        )
    return tuple(x.detach().cpu() for x in items)


def _vocab_input(vocab: int, max_length: int) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(0, vocab, (2, max(1, min(8, max_length))), generator=generator),)


def _default_inputs(architecture: dict[str, Any]) -> tuple[Tensor, ...] | None:
    """Token ids for language models (batch 2, up to 8 tokens); ``None`` where the input shape is unknown."""
    family = architecture["family"]
    if family in ("plprune.BertForMaskedLM", "plprune.SwitchForMaskedLM"):
        config = architecture["bert_config"]
        return _vocab_input(config["vocab_size"], config["max_length"])
    wrapped = family in ("plprune.HfBertForMaskedLM", "plprune.HfLlamaForCausalLM")
    hf = architecture.get("hf") if wrapped else architecture
    if wrapped or family == "transformers":
        config = hf["config"]
        if isinstance(config.get("vocab_size"), int):
            return _vocab_input(config["vocab_size"], config.get("max_position_embeddings") or 8)
        if isinstance(config.get("image_size"), int) and isinstance(config.get("num_channels"), int):
            size = config["image_size"]
            generator = torch.Generator().manual_seed(0)
            return (torch.randn(2, config["num_channels"], size, size, generator=generator),)
    return None


def _input_spec(inputs: tuple[Tensor, ...]) -> list[dict[str, Any]]:
    return [{"shape": list(x.shape), "dtype": _dtype_name(x.dtype)} for x in inputs]


def _inputs_from_spec(spec: list[dict[str, Any]]) -> tuple[Tensor, ...]:
    return tuple(torch.zeros(item["shape"], dtype=_dtype(item["dtype"])) for item in spec)


# -- weights ------------------------------------------------------------------------------------------
def _split_ties(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, ties)``: each tensor once (contiguous, owning its storage: safetensors refuses shared
    memory) and ``ties[alias] = name`` for every state entry that is the same tensor as an earlier one."""
    seen: dict[tuple, str] = {}
    tensors: dict[str, Tensor] = {}
    ties: dict[str, str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        if tensor.numel() and key in seen:
            ties[name] = seen[key]
            continue
        seen[key] = name
        whole = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        tensors[name] = (
            tensor.cpu().contiguous() if whole and tensor.is_contiguous() else tensor.cpu().clone()
        )
    # distinct names may still share one storage (views): give each its own copy
    owners: dict[int, str] = {}
    for name, tensor in list(tensors.items()):
        pointer = tensor.untyped_storage().data_ptr()
        if tensor.numel() and pointer in owners:
            tensors[name] = tensor.clone()
        owners.setdefault(pointer, name)
    return tensors, ties


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_record(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path)}


def _verify_file(directory: Path, record: dict[str, Any], what: str) -> Path:
    name = str(record.get("file", ""))
    if not name or Path(name).name != name:
        raise PlpruneError(f"{MANIFEST}: the {what} file must be a plain file name, got {name!r}")
    path = directory / name
    if not path.is_file():
        raise PlpruneError(f"{what} file {path} is missing")
    size = path.stat().st_size
    if size != record.get("bytes"):
        state = "truncated" if size < int(record.get("bytes") or 0) else "longer than recorded"
        raise PlpruneError(
            f"{what} file {path} is {state}: {size} bytes, {MANIFEST} records {record.get('bytes')} "
            "(copy or re-export the whole directory)"
        )
    if _sha256(path) != record.get("sha256"):
        raise PlpruneError(
            f"{what} file {path} does not match the sha256 recorded in {MANIFEST}: it was modified or "
            "corrupted after export (copy or re-export the whole directory)"
        )
    return path


# -- groups -------------------------------------------------------------------------------------------
def _resolve_groups(groups_or_pruner: Any) -> tuple[GroupSet | None, bool, Any]:
    """``(groups, already_compacted, example_inputs)`` of a GroupSet, a Pruner, an HF pruning callback or
    ``None`` (a dense model)."""
    if groups_or_pruner is None:
        return None, False, None
    if isinstance(groups_or_pruner, GroupSet):
        return groups_or_pruner, False, groups_or_pruner.example_inputs
    pruner = getattr(groups_or_pruner, "pruner", groups_or_pruner)  # HFPruningCallback holds a Pruner
    groups = getattr(pruner, "groups", None)
    if not isinstance(groups, GroupSet):
        raise PlpruneError(
            "export takes the GroupSet or Pruner that pruned the model (or None for a dense model), got "
            f"{type(groups_or_pruner).__name__}"
        )
    return groups, bool(getattr(pruner, "compacted", False)), groups.example_inputs


def _layer_counts(groups: GroupSet) -> list[dict[str, Any]]:
    layers = []
    for site, start, stop in groups.site_ranges():
        keep = groups.mask[start:stop]
        layers.append(
            {
                "kind": site.kind,
                "module": site.module_name,
                "before": stop - start,
                "after": int(keep.sum()),
                "kept": keep.nonzero().flatten().tolist(),
            }
        )
    return layers


def _pruning_record(groups: GroupSet) -> dict[str, Any]:
    layers = _layer_counts(groups)
    counts = {
        kind: {
            "before": sum(layer["before"] for layer in layers if layer["kind"] == kind),
            "after": sum(layer["after"] for layer in layers if layer["kind"] == kind),
            "per_layer": [layer["after"] for layer in layers if layer["kind"] == kind],
        }
        for kind in groups.kinds
    }
    return {
        "kinds": list(groups.kinds),
        "groups": groups.names,
        "mask": [bool(m) for m in groups.mask],
        "counts": counts,
        "layers": layers,
    }


# -- ONNX ---------------------------------------------------------------------------------------------
class _Logits(nn.Module):
    """``model(*inputs)`` reduced to one tensor: the output itself, its ``.logits``, or its first item."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> Tensor:
        return _logits(self.model(*inputs))


def _logits(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise PlpruneError(f"cannot export a model whose output is a {type(output).__name__} (no logits tensor)")


def _input_names(model: nn.Module, count: int) -> list[str]:
    try:
        params = [
            p.name
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"input_{i}" for i in range(count)]


def _check_every_expert_is_traced(model: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    """Tracing records only the experts the example batch reaches (plprune's Switch skips an expert with no
    token): refuse an example that leaves one out, instead of an ONNX graph without it."""
    from plprune.models.switch import SwitchFeedForward

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SwitchFeedForward)]
    if not layers:
        return
    with torch.no_grad():
        model(*inputs)
    for name, layer in layers:
        idle = (layer.last_expert_counts == 0).nonzero().flatten().tolist()
        if idle:
            raise PlpruneError(
                f"ONNX export traces the MoE routing with the example inputs, which send no token to experts "
                f"{idle} of {name}: the ONNX graph would leave them out. Pass a larger example_inputs batch"
            )


def _onnx_export(model: nn.Module, inputs: tuple[Tensor, ...], path: Path) -> str:
    """Write ``path``: ``torch.export``-based exporter (batch, and the token axis of integer inputs,
    dynamic where the model allows), else with static shapes, else the TorchScript exporter (models with
    data-dependent control flow, e.g. MoE routing); returns which one worked."""
    names = _input_names(model, len(inputs))
    wrapper = _Logits(model).eval()
    auto = torch.export.Dim.AUTO
    dynamic = tuple(
        {0: auto, **({1: auto} if not x.is_floating_point() and x.dim() > 1 else {})} for x in inputs
    )
    errors = []
    # one entry per forward argument: the wrapper takes *inputs, a single (tuple) argument
    attempts = [("torch.onnx.export(dynamo=True)", (dynamic,)), ("torch.onnx.export(dynamo=True)", None)]
    for exporter, shapes in attempts:
        try:
            with quiet():
                program = torch.onnx.export(
                    wrapper,
                    inputs,
                    dynamo=True,
                    input_names=names,
                    output_names=["logits"],
                    dynamic_shapes=shapes,
                )
                program.save(str(path))
            return exporter + (" with dynamic axes" if shapes else "")
        except Exception as error:
            text = str(error)
            errors.append(f"{exporter}: {type(error).__name__}: {text.splitlines()[0][:300]}")
            if "DataDependent" in text or "data-dependent" in text:
                break  # control flow on tensor values: static shapes would not help either
    _check_every_expert_is_traced(model, inputs)
    try:
        with quiet():
            torch.onnx.export(
                wrapper, inputs, str(path), dynamo=False, input_names=names, output_names=["logits"]
            )
        return "torch.onnx.export(dynamo=False)"
    except Exception as error:
        errors.append(f"torch.onnx.export(dynamo=False): {type(error).__name__}: {error}")
    raise PlpruneError("ONNX export failed:\n  " + "\n  ".join(errors))


def _onnx_check(model: nn.Module, inputs: tuple[Tensor, ...], path: Path) -> dict[str, Any]:
    """Run the ONNX file with onnxruntime on the example inputs and on a second, different batch (other
    sizes along the dynamic axes); return the inputs' ONNX shapes and the largest difference to PyTorch."""
    import onnx
    import onnxruntime

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    graph_inputs = [i for i in graph.input if i.name not in initializers]
    shapes = [
        [d.dim_param or int(d.dim_value) for d in item.type.tensor_type.shape.dim] for item in graph_inputs
    ]
    generator = torch.Generator().manual_seed(1)
    batches = [inputs]
    for k in range(1, CHECK_BATCHES):
        batch = []
        for x, shape in zip(inputs, shapes, strict=True):
            size = [
                (n + k if axis == 0 else max(1, n - k)) if isinstance(dim, str) else n
                for axis, (n, dim) in enumerate(zip(x.shape, shape, strict=True))
            ]
            if x.is_floating_point():
                batch.append(torch.randn(size, generator=generator, dtype=x.dtype))
            else:
                low, high = int(x.min()), int(x.max()) + 1
                batch.append(torch.randint(low, max(high, low + 1), size, generator=generator, dtype=x.dtype))
        batches.append(tuple(batch))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    checked = []
    for batch in batches:
        with torch.no_grad():
            expected = _logits(model(*batch)).float()
        feed = {name: x.numpy() for name, x in zip(names, batch, strict=True)}
        got = torch.from_numpy(session.run(None, feed)[0]).float()
        if got.shape != expected.shape:
            raise PlpruneError(
                f"ONNX check: onnxruntime returned shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}"
            )
        worst = max(worst, float((got - expected).abs().max()) if got.numel() else 0.0)
        checked.append([list(x.shape) for x in batch])
    return {
        "inputs": [
            {
                "name": name,
                "shape": shape,
                "dtype": _dtype_name(x.dtype),
                "dynamic_axes": [axis for axis, dim in enumerate(shape) if isinstance(dim, str)],
            }
            for name, shape, x in zip(names, shapes, inputs, strict=True)
        ],
        "output": "logits",
        "checked_input_shapes": checked,
        "max_abs_diff": worst,
        "tolerance": ONNX_TOLERANCE,
    }


# -- writing ------------------------------------------------------------------------------------------
def _check_destination(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise PlpruneError(
            f"{path} already exists; pass force=True (--force) to replace it, or pick another path"
        )


def _ordinary_permissions(directory: Path) -> None:
    """Give the temporary directory (created private) and its files the modes a plain ``open`` gave the
    manifest (the umask's), as if they had been written directly."""
    mode = (directory / MANIFEST).stat().st_mode & 0o777
    for file in directory.iterdir():
        file.chmod(mode)
    directory.chmod(mode | (mode & 0o444) >> 2)  # directories: x wherever r


def _publish(temporary: Path, path: Path, force: bool) -> None:
    """Move the finished ``temporary`` directory to ``path``; with ``force`` an existing ``path`` is
    replaced (renamed aside first and removed only once the new directory is in place)."""
    _check_destination(path, force)
    aside = None
    if path.exists() or path.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        aside.rmdir()
        os.rename(path, aside)
    try:
        os.rename(temporary, path)
    except BaseException:
        if aside is not None:
            os.rename(aside, path)
        raise
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink()


def export(
    model: nn.Module,
    groups_or_pruner: Any,
    path: str | os.PathLike,
    *,
    format: str = "safetensors",
    example_inputs: Any = None,
    force: bool = False,
    description: str | None = None,
) -> dict[str, Any]:
    """Write the compacted ``model`` to the directory ``path``; returns the manifest (``plprune.json``).

    ``groups_or_pruner``: the :class:`GroupSet`, :class:`~plprune.Pruner` (or HF pruning callback) that
    pruned ``model``, or ``None`` to export a dense model. ``format``: ``"safetensors"`` (weights and
    manifest) or ``"onnx"`` (also ``model.onnx``, checked with onnxruntime against PyTorch: fails if they
    differ by more than 1e-4). ``example_inputs`` (``model(*example_inputs)``): the ONNX input; default:
    the groups' own (conv filters), or token ids for language models. ``path`` must not exist unless
    ``force``; it is written to a temporary directory beside it and renamed into place when complete.
    The ``model`` itself is left as it is.
    """
    from plprune.compaction import compact
    from plprune.validation import check_choice

    check_choice("format", format, FORMATS)
    path = Path(path)
    _check_destination(path, force)
    groups, compacted_already, groups_example = _resolve_groups(groups_or_pruner)
    if groups is not None and groups.model is not model:
        raise PlpruneError("the GroupSet/Pruner given to export belongs to another model than the one given")
    architecture = describe_architecture(model)
    example = example_inputs if example_inputs is not None else groups_example
    example = _as_tuple(example) if example is not None else _default_inputs(architecture)
    if groups is not None and "filter" in groups.kinds and groups.example_inputs is None and example is None:
        raise PlpruneError("exporting pruned conv filters needs example_inputs (the model's input)")
    if format == "onnx":
        for module in ("onnx", "onnxruntime", "onnxscript"):
            if importlib.util.find_spec(module) is None:
                raise PlpruneError(f"format 'onnx' needs {module}: pip install 'plprune[deploy]'")
        if example is None:
            raise PlpruneError(f"format 'onnx' needs example_inputs for a {type(model).__name__}")

    # a model the Pruner already compacted in place is saved as it is (its dense size is not known here)
    parameters_before = None if compacted_already else sum(p.numel() for p in model.parameters())
    if groups is None or compacted_already or bool(groups.mask.all()):
        compacted = copy.deepcopy(model)
    else:
        own = groups.example_inputs
        compacted, _ = compact(groups, example_inputs=own if own is not None else example)
    strip_gate_hooks(compacted)  # the copy must not be gated by the original's sites (ONNX traces hooks)
    compacted.eval()
    state = compacted.state_dict()
    tensors, ties = _split_ties(state)
    floating = [p.dtype for p in model.parameters() if p.is_floating_point()]

    manifest: dict[str, Any] = {
        "format": "plprune-export",
        "format_version": FORMAT_VERSION,
        # the package root is a higher layer than this module: read, not imported
        "plprune_version": getattr(sys.modules.get("plprune"), "__version__", None),
        "torch_version": torch.__version__,
        "description": description,
        "architecture": architecture,
        "dtype": _dtype_name(floating[0]) if floating else None,
        "pruning": _pruning_record(groups) if groups is not None else None,
        "parameters": {
            "dense": parameters_before,
            "compacted": sum(p.numel() for p in compacted.parameters()),
        },
        "example_inputs": _input_spec(example) if example is not None else None,
    }
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    try:
        from safetensors.torch import save_file

        weights = temporary / WEIGHTS
        save_file(
            tensors, str(weights), metadata={"format": "pt", "plprune_format_version": str(FORMAT_VERSION)}
        )
        manifest["weights"] = {**_file_record(weights), "tensors": len(tensors), "ties": ties}
        if format == "onnx":
            onnx_path = temporary / ONNX_FILE
            exporter = _onnx_export(compacted, example, onnx_path)
            check = _onnx_check(compacted, example, onnx_path)
            if not check["max_abs_diff"] <= ONNX_TOLERANCE:
                raise PlpruneError(
                    "ONNX check failed: onnxruntime and PyTorch outputs differ by "
                    f"{check['max_abs_diff']:.3g} (> {ONNX_TOLERANCE:g}) on the same inputs; nothing was "
                    "written"
                )
            extra = sorted(p.name for p in temporary.iterdir() if p.name not in (WEIGHTS, ONNX_FILE))
            manifest["onnx"] = {
                **_file_record(onnx_path),
                "exporter": exporter,
                **check,
                "external_data": extra,
            }
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _ordinary_permissions(temporary)
        _publish(temporary, path, force)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return manifest


# -- loading ------------------------------------------------------------------------------------------
def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The ``plprune.json`` of an export directory, checked to be one plprune can read."""
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    if not file.is_file():
        raise PlpruneError(f"{path} is not a plprune export: no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlpruneError(f"{file} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != "plprune-export":
        raise PlpruneError(f"{file} is not a plprune export manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PlpruneError(
            f"{file} has format version {manifest.get('format_version')!r}; this plprune reads version "
            f"{FORMAT_VERSION} (upgrade plprune)"
        )
    for key in ("architecture", "weights"):
        if not isinstance(manifest.get(key), dict):
            raise PlpruneError(f"{file} lacks its {key!r} section")
    return manifest


def _read_weights(file: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as error:
        raise PlpruneError(f"weights file {file} is unreadable ({type(error).__name__}: {error})") from error


def _check_pruning(pruning: dict[str, Any]) -> tuple[tuple[str, ...], Tensor]:
    try:
        kinds, names, mask = tuple(pruning["kinds"]), list(pruning["groups"]), list(pruning["mask"])
    except (KeyError, TypeError) as error:
        raise PlpruneError(f"{MANIFEST}: invalid 'pruning' section ({error})") from error
    if len(names) != len(mask) or not all(isinstance(m, bool) for m in mask):
        raise PlpruneError(f"{MANIFEST}: the mask must hold one true/false per group ({len(names)} groups)")
    return kinds, torch.tensor(mask, dtype=torch.bool)


def _mask_from_layer_counts(groups: GroupSet, pruning: dict[str, Any]) -> Tensor:
    """A mask that shrinks each site of ``groups`` to its recorded count after compaction: a site that has
    the recorded count before compaction keeps the recorded heads (``kept``), one that already has the count
    after compaction (its config says so) keeps all. The weights are loaded afterwards, so which groups are
    kept only has to give the right shapes. Raises when the sites are not the recorded ones."""
    layers = pruning.get("layers")
    sites = groups.site_ranges()
    recorded = [(layer.get("kind"), layer.get("module")) for layer in layers or ()]
    found = [(site.kind, site.module_name) for site, _, _ in sites]
    if recorded != found:
        names = list(pruning["groups"])
        diff = next(
            (i for i, (a, b) in enumerate(zip(groups.names, names, strict=False)) if a != b),
            min(len(groups.names), len(names)),
        )
        raise PlpruneError(
            f"the rebuilt model has {len(groups)} groups, {MANIFEST} records {len(names)}; they first differ "
            f"at position {diff} (is this the export's architecture?)"
        )
    mask = torch.ones(len(groups), dtype=torch.bool)
    for (site, start, stop), layer in zip(sites, layers, strict=True):
        count = stop - start
        if count == layer.get("before"):
            keep = torch.zeros(count, dtype=torch.bool)
            keep[list(layer.get("kept") or [])] = True
            if int(keep.sum()) != layer.get("after"):
                raise PlpruneError(
                    f"{MANIFEST}: {site.module_name} records {layer.get('after')} kept groups but lists "
                    f"{int(keep.sum())}"
                )
            mask[start:stop] = keep
        elif count != layer.get("after"):
            raise PlpruneError(
                f"{site.module_name or 'the model'}: the rebuilt model has {count} {site.kind}s, {MANIFEST} "
                f"records {layer.get('before')} before and {layer.get('after')} after compaction"
            )
    return mask


def _check_state(model: nn.Module, tensors: dict[str, Tensor], ties: dict[str, str]) -> None:
    """Every tensor of the rebuilt model is in the file with the same shape, and nothing else is."""
    expected = model.state_dict()
    found = dict(tensors)
    for alias, name in ties.items():
        if name in found:
            found[alias] = found[name]
    for name, tensor in expected.items():
        if name not in found:
            raise PlpruneError(
                f"the weights file has no tensor {name} (expected shape {tuple(tensor.shape)} from "
                f"{MANIFEST})"
            )
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise PlpruneError(
                f"tensor {name}: {MANIFEST} describes shape {tuple(tensor.shape)} but the weights file "
                f"holds {tuple(found[name].shape)}; the architecture or mask in {MANIFEST} does not match "
                "the weights"
            )
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise PlpruneError(
            f"the weights file holds tensors the model described in {MANIFEST} does not have: "
            f"{unexpected[:5]}"
        )


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the compacted model exported to ``path`` by :func:`export`, in eval mode.

    The dense architecture is built from ``plprune.json`` (or ``model``: the dense, unpruned skeleton of a
    user-defined architecture; it is copied, not changed), its groups are found, the recorded mask is
    applied, the model is compacted and the weights are loaded strictly. The weights file's size and
    sha256 are checked first; any damage or mismatch raises one :class:`PlpruneError`."""
    from plprune.compaction import compact

    path = Path(path)
    manifest = read_manifest(path)
    directory = path if path.is_dir() else path.parent
    weights_file = _verify_file(directory, manifest["weights"], "weights")
    tensors = _read_weights(weights_file)
    ties = dict(manifest["weights"].get("ties") or {})

    if model is not None:
        if not isinstance(model, nn.Module):
            raise PlpruneError(f"model must be the dense nn.Module skeleton, got {type(model).__name__}")
        built = copy.deepcopy(model)
        strip_gate_hooks(built)
    else:
        built = build_architecture(manifest["architecture"])
    if manifest.get("dtype"):
        built = built.to(_dtype(manifest["dtype"]))
    pruning = manifest.get("pruning")
    if pruning is not None:
        kinds, mask = _check_pruning(pruning)
        spec = manifest.get("example_inputs")
        example = _inputs_from_spec(spec) if spec and "filter" in kinds else None
        groups = GroupSet(built, kinds, example_inputs=example)
        if groups.names != list(pruning["groups"]):
            # the recorded config already says some compacted counts (a Hugging Face config rewritten by
            # compaction): shrink each layer to its recorded count instead
            mask = _mask_from_layer_counts(groups, pruning)
        if bool(mask.all()):
            groups.remove_hooks()
        else:
            groups.apply_mask(mask)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                compact(groups, inplace=True)
    _check_state(built, tensors, ties)
    for alias, name in ties.items():
        tensors[alias] = tensors[name]
    built.load_state_dict(tensors, strict=True)
    return built.eval()


# -- run directories ----------------------------------------------------------------------------------
def _vocab_size(state: dict[str, Tensor], key: str) -> int:
    if key not in state or state[key].dim() != 2:
        raise RunDirError(f"the checkpoint's model weights have no {key}; is this run's config.json its own?")
    return int(state[key].shape[0])


def model_from_run(run_dir: str | os.PathLike) -> tuple[nn.Module, GroupSet | None, Any, str]:
    """The trained (masked) model of a ``plprune train`` run directory: ``(model, groups, example_inputs,
    note)``. ``groups`` hold the final mask of ``pruning.jsonl`` (``None`` for a run that pruned nothing);
    ``note`` says what was found. The model is built from ``config.json`` (vocabulary size from the
    checkpoint; CNN tasks rebuild their offline data for the input shape) and holds the checkpoint's
    weights."""
    from plprune.run_config import RunConfig
    from plprune.runner import CONFIG_NAME, SUMMARY_NAME
    from plprune.tasks.registry import DEFAULT_KINDS, build_task, causal_lm_model_for, mlm_model_for
    from plprune.train.checkpoint import load_latest_checkpoint
    from plprune.train.loop import CHECKPOINT_NAME
    from plprune.train.metrics import read_jsonl
    from plprune.train.pruning import PRUNING_LOG

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        raise RunDirError(f"{run_dir} is not a plprune run directory: no {CONFIG_NAME}")
    try:
        config = RunConfig.from_dict(json.loads((run_dir / CONFIG_NAME).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirError(f"{run_dir / CONFIG_NAME} is unreadable: {error}") from error
    # the newest checkpoint that matches its checksum: checkpoint.pt, else checkpoint.prev.pt (said in note)
    checkpoint, used, skipped = load_latest_checkpoint(run_dir / CHECKPOINT_NAME)
    state = checkpoint.get("model")
    if not isinstance(state, dict):
        raise RunDirError(f"{used} holds no model weights")
    step = int(checkpoint.get("step", 0))

    example = None
    if config.task.startswith(("vgg-", "resnet-")):
        model, task = build_task(config, run_dir)  # offline data: gives the input shape
        example = task.train_batch(0)[0][:2]
    elif config.task.startswith("hf-bert-"):
        vocab = _vocab_size(state, "hf.bert.embeddings.word_embeddings.weight")
        model = mlm_model_for(config, vocab, hf=True)
    elif config.task.startswith("hf-llama-"):
        vocab = _vocab_size(state, "hf.model.embed_tokens.weight")
        model = causal_lm_model_for(config, vocab)
    elif config.task in DEFAULT_KINDS:
        vocab = _vocab_size(state, "token_embedding.weight")
        model = mlm_model_for(config, vocab, switch=config.task.startswith("switch-"))
    else:
        raise RunDirError(f"cannot export runs of task {config.task!r}")

    records = read_jsonl(run_dir / PRUNING_LOG) if (run_dir / PRUNING_LOG).is_file() else []
    groups = None
    if records:
        last = records[-1]
        names = list(last.get("groups") or [])
        mask = last.get("mask")
        if not names or not isinstance(mask, list) or len(mask) != len(names):
            raise RunDirError(f"the last record of {run_dir / PRUNING_LOG} has no valid groups and mask")
        if step < int(last.get("step", 0)):
            raise RunDirError(
                f"the checkpoint (step {step}) predates the last pruning event (step {last['step']}); "
                "continue the run with plprune train --resume first"
            )
        kinds = tuple(dict.fromkeys(name.split(":", 1)[0] for name in names))
        groups = GroupSet(model, kinds, example_inputs=example if "filter" in kinds else None)
        if groups.names != names:
            raise RunDirError(
                f"the groups of the model rebuilt from {CONFIG_NAME} differ from those in {PRUNING_LOG}"
            )
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise RunDirError(
            f"the checkpoint's weights do not fit the model of {CONFIG_NAME}: {str(error).splitlines()[-1]}"
        ) from error
    if groups is not None:
        groups.apply_mask(torch.tensor(records[-1]["mask"], dtype=torch.bool))
        pruned = {kind: f"{groups.pruned_ratio(kind):.0%}" for kind in groups.kinds}
        note = f"final mask of pruning event {len(records)} (step {records[-1]['step']}): pruned {pruned}"
    else:
        note = f"no pruning events in {PRUNING_LOG}: the dense model is exported"
    if skipped:
        problems = "; ".join(n.split("; resuming from")[0] for n in skipped)
        note += f" (from {used.name}, step {step}: the newer checkpoint is unusable: {problems})"
    if not (run_dir / SUMMARY_NAME).is_file():
        note += f" (no {SUMMARY_NAME}: the run is unfinished; exporting its checkpoint at step {step})"
    return model.eval(), groups, example, note


def export_run(
    run_dir: str | os.PathLike,
    *,
    format: str = "safetensors",
    out: str | os.PathLike | None = None,
    force: bool = False,
) -> tuple[Path, dict[str, Any], str]:
    """Export the model of a ``plprune train`` run directory (``plprune export``); ``out`` defaults to
    ``RUN_DIR/export``. Returns ``(out, manifest, note)``."""
    from plprune.validation import check_choice

    check_choice("format", format, FORMATS)
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / DEFAULT_EXPORT_DIR
    _check_destination(out, force)
    model, groups, example, note = model_from_run(run_dir)
    description = f"plprune run {run_dir.resolve().name}: {note}"
    manifest = export(
        model, groups, out, format=format, example_inputs=example, force=force, description=description
    )
    return out, manifest, note
