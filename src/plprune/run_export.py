"""``plprune export RUN_DIR``: the trained model of a ``plprune train`` run directory, exported.

:func:`model_from_run` rebuilds the masked model of a run from its ``config.json`` (through the task
registry), the newest checkpoint that matches its checksum and the final mask of ``pruning.jsonl``;
:func:`export_run` hands it to :func:`plprune.export.export`. This is the only part of deployment that reads
the training stack's files, so it sits next to the runner; :mod:`plprune.export` (the file format) imports
none of it. See docs/deploy.md, "From the command line".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plprune.errors import RunDirError
from plprune.export import FORMATS, add_created_biases, check_destination, export
from plprune.gates import GroupSet
from plprune.run_config import RunConfig
from plprune.runner import CONFIG_NAME, SUMMARY_NAME
from plprune.sites import kinds_need_inputs
from plprune.tasks.registry import DEFAULT_KINDS, build_task, causal_lm_model_for, mlm_model_for
from plprune.train.checkpoint import load_latest_checkpoint
from plprune.train.loop import CHECKPOINT_NAME
from plprune.train.metrics import read_jsonl
from plprune.train.pruning import PRUNING_LOG
from plprune.validation import check_choice

__all__ = ["DEFAULT_EXPORT_DIR", "export_run", "model_from_run"]

DEFAULT_EXPORT_DIR = "export"


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
        groups = GroupSet(model, kinds, example_inputs=example if kinds_need_inputs(kinds) else None)
        if groups.names != names:
            raise RunDirError(
                f"the groups of the model rebuilt from {CONFIG_NAME} differ from those in {PRUNING_LOG}"
            )
    add_created_biases(model, state)  # e.g. FLAP's compensation biases on a bias-free Llama
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
    check_choice("format", format, FORMATS)
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / DEFAULT_EXPORT_DIR
    check_destination(out, force)
    model, groups, example, note = model_from_run(run_dir)
    description = f"plprune run {run_dir.resolve().name}: {note}"
    manifest = export(
        model, groups, out, format=format, example_inputs=example, force=force, description=description
    )
    return out, manifest, note
