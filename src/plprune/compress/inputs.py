"""What ``plprune compress`` reads: a Hugging Face model directory, its tokenizer, and plain text.

* :func:`load_model`: a ``save_pretrained`` directory of a causal LM (``*ForCausalLM``) or a masked LM
  (``*ForMaskedLM``), rebuilt with ``AutoModelFor*.from_pretrained`` (eager attention: the head hooks see
  every head's output); a directory written by ``plprune.export`` is read with :func:`plprune.load`.
* :func:`load_codec`: the tokenizer as a :class:`TextCodec` — a plprune tokenizer file
  (``plprune_tokenizer.json`` in the model directory, or ``--tokenizer FILE``) or any tokenizer
  ``transformers.AutoTokenizer`` reads (the model directory, or ``--tokenizer DIR``); its vocabulary must fit
  the model's embedding.
* :func:`read_text` / :func:`text_blocks`: UTF-8 text (empty or binary files refused) cut into
  non-overlapping blocks of ``seq_len`` tokens (:func:`plprune.data.causal_lm.make_lm_blocks`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plprune.data.causal_lm import make_lm_blocks
from plprune.errors import DataError, PlpruneError

PLPRUNE_TOKENIZER = "plprune_tokenizer.json"
OBJECTIVES = {"ForCausalLM": "causal", "ForMaskedLM": "masked"}


@dataclass(frozen=True)
class TextCodec:
    """Text → token ids, with what the objectives need: the mask id (masked LM), the special ids (never
    masked, never replacement tokens) and the unknown-token id (not a prediction target)."""

    encode: Callable[[str], list[int]]
    vocab_size: int
    special_ids: frozenset[int]
    mask_id: int | None
    unk_id: int | None
    source: str


def objective_of(config: Any) -> str:
    """``"causal"`` or ``"masked"`` from ``config.architectures`` (e.g. ``LlamaForCausalLM``)."""
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        for suffix, objective in OBJECTIVES.items():
            if name.endswith(suffix):
                return objective
    raise PlpruneError(
        "compress works on causal LMs (*ForCausalLM) and masked LMs (*ForMaskedLM); this model's "
        "config names "
        f"{names or 'no architectures'}"
    )


def load_model(model_dir: Path, device: str = "cpu") -> tuple[nn.Module, str]:
    """``(model in eval mode, objective)`` from a ``save_pretrained`` or ``plprune.export`` directory."""
    if not model_dir.is_dir():
        raise PlpruneError(f"model directory {str(model_dir)!r} does not exist or is not a directory")
    if (model_dir / "plprune.json").is_file() and not (model_dir / "config.json").is_file():
        from plprune.export import load

        model = load(model_dir)
        config = getattr(model, "config", None)
        if config is None:
            raise PlpruneError(
                f"{model_dir} holds a plprune export of a model that is not a Hugging Face model"
            )
        return model.to(device).eval(), objective_of(config)
    if not (model_dir / "config.json").is_file():
        raise PlpruneError(
            f"{str(model_dir)!r} is not a model directory: it has no config.json (a save_pretrained "
            "directory) "
            "and no plprune.json (a plprune export)"
        )
    from plprune.models.hf_import import require_transformers

    transformers = require_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError) as error:
        raise PlpruneError(f"cannot read the config in {model_dir}: {error}") from error
    objective = objective_of(config)
    auto = transformers.AutoModelForCausalLM if objective == "causal" else transformers.AutoModelForMaskedLM
    try:
        model = auto.from_pretrained(str(model_dir), attn_implementation="eager")
    except (OSError, ValueError, RuntimeError) as error:
        raise PlpruneError(f"cannot load the model in {model_dir}: {error}") from error
    return model.to(device).eval(), objective


def _plprune_codec(path: Path) -> TextCodec:
    from plprune.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(path)
    return TextCodec(
        tokenizer.encode,
        tokenizer.vocab_size,
        tokenizer.special_ids,
        tokenizer.mask_id,
        tokenizer.unk_id,
        str(path),
    )


def _hf_codec(path: Path) -> TextCodec:
    from plprune.models.hf_import import require_transformers

    transformers = require_transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PlpruneError(
            f"no tokenizer in {path} ({error}); pass --tokenizer (a tokenizer directory, or a plprune "
            "tokenizer "
            "file)"
        ) from error

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    return TextCodec(
        encode,
        len(tokenizer),
        frozenset(int(i) for i in tokenizer.all_special_ids),
        tokenizer.mask_token_id,
        tokenizer.unk_token_id,
        str(path),
    )


def _is_plprune_tokenizer(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        return "kind" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def load_codec(model_dir: Path, tokenizer: Path | None, model: nn.Module, objective: str) -> TextCodec:
    """The tokenizer (module docstring), checked against the model's vocabulary and objective."""
    if tokenizer is not None:
        if not tokenizer.exists():
            raise PlpruneError(f"tokenizer {str(tokenizer)!r} does not exist")
        codec = _plprune_codec(tokenizer) if _is_plprune_tokenizer(tokenizer) else _hf_codec(tokenizer)
    elif (model_dir / PLPRUNE_TOKENIZER).is_file():
        codec = _plprune_codec(model_dir / PLPRUNE_TOKENIZER)
    else:
        codec = _hf_codec(model_dir)
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = int(embedding.weight.shape[0]) if embedding is not None else None
    if rows is not None and codec.vocab_size > rows:
        raise PlpruneError(
            f"the tokenizer ({codec.source}) has {codec.vocab_size} tokens but the model's embedding "
            f"has {rows} "
            "rows: it is not this model's tokenizer (pass the right one with --tokenizer)"
        )
    if objective == "masked" and codec.mask_id is None:
        raise PlpruneError(f"the tokenizer ({codec.source}) has no mask token, which a masked LM needs")
    return codec


def read_text(path: Path, role: str) -> str:
    """The UTF-8 text of ``path``; missing, empty, binary or undecodable files are refused."""
    if not path.is_file():
        raise DataError(f"{role} file {str(path)!r} does not exist")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise DataError(f"{role} file {str(path)!r} looks binary (it holds NUL bytes); give plain UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{role} file {str(path)!r} is not UTF-8 text: {error}") from error
    if not text.strip():
        raise DataError(f"{role} file {str(path)!r} is empty")
    return text


def text_blocks(text: str, codec: TextCodec, seq_len: int, role: str) -> tuple[Tensor, Tensor]:
    """``(inputs, next-token labels)`` blocks of ``seq_len`` tokens; unknown-token targets get -100."""
    ids = torch.as_tensor(codec.encode(text), dtype=torch.long)
    ignore = () if codec.unk_id is None else (codec.unk_id,)
    try:
        return make_lm_blocks(ids, seq_len, ignore_ids=ignore)
    except DataError as error:
        raise DataError(f"{role} text is too short for one block of {seq_len} tokens: {error}") from error
