"""``plprune.save_pretrained``: Hugging Face's ``save_pretrained`` for a compacted model, checked and atomic.

Hugging Face's own ``model.save_pretrained(dir)`` works after ``pruner.compact()`` whenever the config can
describe the compacted model (:mod:`plprune.compaction.hf_config` rewrote it); this function adds what the
plain call cannot promise:

* a model its config cannot describe (per-layer counts that differ, pruned heads of a family without a head
  size in its config, a count the config refuses) is refused with one :class:`PlpruneError` naming the
  per-layer counts and the alternative (``plprune.export`` + ``plprune.load``), before anything is written;
* the files are written into a temporary sibling directory, reloaded with the model's own class
  ``from_pretrained`` and compared with the model on a small dummy input (``verify=True``), and only then
  renamed into place: a failed save leaves no directory, and an existing non-empty directory is never
  replaced without ``overwrite=True``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plprune.compaction.hf_config import HOW_TO_SAVE, ConfigSync, is_hf_model, sync_hf_config
from plprune.errors import PlpruneError

#: largest absolute difference allowed between the model and its reloaded copy
VERIFY_TOLERANCE = 1e-5


def _counts_text(sync: ConfigSync) -> str:
    return (
        ", ".join(f"{kind} per layer {values}" for kind, values in sync.counts.items()) or "no layers found"
    )


def _check_destination(path: Path, overwrite: bool) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise PlpruneError(f"{path} exists and is not a directory; pick another path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise PlpruneError(
            f"{path} already exists and is not empty; pass overwrite=True to replace it, or pick another path"
        )


def dummy_inputs(model: nn.Module) -> dict[str, Tensor]:
    """A small fixed input for ``model(**inputs)``: token ids (2 × 8, within the vocabulary; decoder ids too
    for encoder-decoder models), pixel values or audio features, by ``model.main_input_name``."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    name = getattr(model, "main_input_name", "input_ids")
    if name == "input_ids":
        vocab = getattr(config, "vocab_size", None)
        if not isinstance(vocab, int) or vocab < 1:
            raise PlpruneError(
                f"cannot make a dummy input for {type(model).__name__}: its config has no vocab_size"
            )
        ids = torch.randint(0, vocab, (2, 8), generator=generator)
        inputs = {"input_ids": ids}
        if getattr(config, "is_encoder_decoder", False):
            inputs["decoder_input_ids"] = ids.flip(1)
        return inputs
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if name == "pixel_values":
        size, channels = config.image_size, getattr(config, "num_channels", 3)
        return {"pixel_values": torch.randn(2, channels, size, size, generator=generator, dtype=dtype)}
    if name == "input_features":
        frames = 2 * int(config.max_source_positions)
        features = torch.randn(2, int(config.num_mel_bins), frames, generator=generator, dtype=dtype)
        return {"input_features": features, "decoder_input_ids": torch.zeros(2, 4, dtype=torch.long)}
    raise PlpruneError(
        f"cannot make a dummy input for {type(model).__name__} (main input {name!r}): pass example_inputs="
        "{...} (keyword arguments of model(...)) or verify=False"
    )


def _output(result: Any) -> Tensor:
    for key in ("logits", "last_hidden_state"):
        value = getattr(result, key, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(result, Tensor):
        return result
    if isinstance(result, (tuple, list)) and result and isinstance(result[0], Tensor):
        return result[0]
    raise PlpruneError(f"cannot compare the model's output: a {type(result).__name__} with no logits")


def _compare(model: nn.Module, reloaded: nn.Module, inputs: dict[str, Any]) -> float:
    was_training = model.training
    model.eval()
    reloaded.eval()
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
    try:
        with torch.no_grad():
            want, got = _output(model(**inputs)), _output(reloaded.to(device)(**inputs))
    finally:
        model.train(was_training)
    if got.shape != want.shape:
        raise PlpruneError(
            f"the reloaded model returns shape {tuple(got.shape)}, the model {tuple(want.shape)}; nothing "
            "was saved"
        )
    return float((got.float() - want.float()).abs().max()) if got.numel() else 0.0


def _publish(temporary: Path, path: Path, overwrite: bool) -> None:
    """Rename ``temporary`` to ``path``; an existing ``path`` (empty, or with ``overwrite``) is renamed aside
    first and removed only once the new directory is in place."""
    _check_destination(path, overwrite)
    aside = None
    if path.exists():
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
        shutil.rmtree(aside, ignore_errors=True)


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    verify: bool = True,
    overwrite: bool = False,
    example_inputs: dict[str, Any] | None = None,
    **save_kwargs: Any,
) -> ConfigSync:
    """Save a (compacted) Hugging Face model so that ``from_pretrained(directory)`` rebuilds it exactly.

    The config is brought in line with the model's shapes first (:func:`sync_hf_config`); a model it cannot
    describe is refused (use ``plprune.export``/``plprune.load``). The files are written to a temporary
    directory beside ``directory`` (``model.save_pretrained(tmp, **save_kwargs)``); with ``verify`` the copy
    is reloaded with ``type(model).from_pretrained`` and must give the model's outputs on ``example_inputs``
    (default: :func:`dummy_inputs`) within 1e-5; then it is renamed into place. ``directory`` may exist only
    if empty, unless ``overwrite=True``. Returns the :class:`ConfigSync`.
    """
    if not is_hf_model(model):
        raise PlpruneError(
            f"plprune.save_pretrained takes a Hugging Face model (with a config and save_pretrained), got "
            f"{type(model).__name__}; save other models with plprune.export(model, pruner, path)"
        )
    if example_inputs is not None and not isinstance(example_inputs, dict):
        raise PlpruneError(
            "example_inputs must be a dict of model(...) keyword arguments, got "
            f"{type(example_inputs).__name__}"
        )
    path = Path(directory)
    _check_destination(path, overwrite)
    sync = sync_hf_config(model)
    if not sync.describable:
        raise PlpruneError(
            f"cannot save {type(model).__name__} with save_pretrained: its config cannot describe the "
            f"compacted model ({'; '.join(sync.reasons)}; {_counts_text(sync)}). Instead, {HOW_TO_SAVE}"
        )
    inputs = (example_inputs if example_inputs is not None else dummy_inputs(model)) if verify else None
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        model.save_pretrained(str(temporary), **save_kwargs)
        if inputs is not None:
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
            attention = getattr(model.config, "_attn_implementation", None)
            reloaded = type(model).from_pretrained(str(temporary), dtype=dtype, attn_implementation=attention)
            difference = _compare(model, reloaded, inputs)
            if not difference <= VERIFY_TOLERANCE:
                raise PlpruneError(
                    f"the model reloaded with {type(model).__name__}.from_pretrained differs from it by "
                    f"{difference:.3g} (> {VERIFY_TOLERANCE:g}) on the same input; nothing was saved"
                )
        _publish(temporary, path, overwrite)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return sync
