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
what is wrong, never with a half-loaded model. See docs/deploy.md.

This module is the file format only. How a model family is described and rebuilt lives with the family
(:mod:`plprune.models.architecture`, registered by each ``plprune.models`` module); which kinds need example
inputs the kind registry says (:func:`plprune.sites.kinds_need_inputs`); reading a ``plprune train`` run
directory is :mod:`plprune.run_export` (``plprune export RUN_DIR``). Nothing here imports the training
stack (``train/``, ``tasks/``, the runner or run configs).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
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
from plprune.errors import PlpruneError
from plprune.export_onnx import ONNX_TOLERANCE, dtype_name, onnx_check, onnx_export
from plprune.gates import GroupSet
from plprune.models.architecture import (
    MANIFEST,
    build_architecture,
    default_example_inputs,
    describe_architecture,
)
from plprune.sites import kinds_need_inputs

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "build_architecture",
    "check_destination",
    "describe_architecture",
    "export",
    "load",
    "read_manifest",
]

FORMAT_VERSION = 1
FORMATS = ("safetensors", "onnx")
WEIGHTS = "model.safetensors"
ONNX_FILE = "model.onnx"


# -- dtypes -------------------------------------------------------------------------------------------
def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise PlpruneError(f"{MANIFEST}: unknown dtype {name!r}")
    return dtype


# -- example inputs -----------------------------------------------------------------------------------
def _as_tuple(inputs: Any) -> tuple[Tensor, ...]:
    items = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    if not items or not all(isinstance(x, Tensor) for x in items):
        raise PlpruneError(
            "example_inputs must be a tensor or a tuple of tensors (model(*example_inputs)), got "
            f"{type(inputs).__name__}"
        )
    return tuple(x.detach().cpu() for x in items)


def _input_spec(inputs: tuple[Tensor, ...]) -> list[dict[str, Any]]:
    return [{"shape": list(x.shape), "dtype": dtype_name(x.dtype)} for x in inputs]


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


# -- writing ------------------------------------------------------------------------------------------
def check_destination(path: Path, force: bool) -> None:
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
    check_destination(path, force)
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
    check_destination(path, force)
    groups, compacted_already, groups_example = _resolve_groups(groups_or_pruner)
    if groups is not None and groups.model is not model:
        raise PlpruneError("the GroupSet/Pruner given to export belongs to another model than the one given")
    architecture = describe_architecture(model)
    example = example_inputs if example_inputs is not None else groups_example
    example = _as_tuple(example) if example is not None else default_example_inputs(architecture)
    traced = [kind for kind in groups.kinds if kinds_need_inputs((kind,))] if groups is not None else []
    if traced and groups.example_inputs is None and example is None:
        raise PlpruneError(
            f"exporting pruned {'/'.join(traced)} groups needs example_inputs (the model's input: they are "
            "found by tracing it)"
        )
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
        "dtype": dtype_name(floating[0]) if floating else None,
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
            exporter = onnx_export(compacted, example, onnx_path)
            check = onnx_check(compacted, example, onnx_path)
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


def add_created_biases(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Give a bias to each ``nn.Linear`` the architecture builds without one but whose ``NAME.bias`` the
    weights hold with the layer's output size: a bias a pruning criterion created (FLAP's bias compensation
    on Llama's bias-free ``o_proj``/``down_proj``; :mod:`plprune.pruners.flap`). Anything else the weights
    hold and the model lacks is still refused (:func:`_check_state`, or a strict ``load_state_dict``). Used
    by :func:`load` and by :func:`plprune.run_export.model_from_run` for a run's checkpoint."""
    modules = dict(model.named_modules())
    for key, tensor in tensors.items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if leaf != "bias" or not isinstance(module, nn.Linear) or module.bias is not None:
            continue
        if tuple(tensor.shape) == (module.out_features,):
            weight = module.weight
            zeros = torch.zeros(module.out_features, dtype=weight.dtype, device=weight.device)
            module.bias = nn.Parameter(zeros)


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
        example = _inputs_from_spec(spec) if spec and kinds_need_inputs(kinds) else None
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
    add_created_biases(built, tensors)
    _check_state(built, tensors, ties)
    for alias, name in ties.items():
        tensors[alias] = tensors[name]
    built.load_state_dict(tensors, strict=True)
    return built.eval()


#: names that moved out of this module with the run-directory reader (plprune.run_export)
_MOVED = {"model_from_run": "plprune.run_export", "export_run": "plprune.run_export"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        raise AttributeError(
            f"plprune.export.{name} moved to {_MOVED[name]}.{name} (export no longer imports the training "
            f"stack): from {_MOVED[name]} import {name}"
        )
    raise AttributeError(f"module 'plprune.export' has no attribute {name!r}")
