"""A compacted Hugging Face model's ``config``, rewritten from its physical shapes.

After compaction a Hugging Face model has fewer heads or a narrower FFN than its ``config`` says, so
``model.save_pretrained(dir)`` followed by ``AutoModel...from_pretrained(dir)`` would build the old shapes and
fail on the smaller weights. :func:`sync_hf_config` reads what the model now is (per layer: query heads,
key/value heads and head size of every attention module, the width of every FFN: :func:`plprune.sites.
find_sites`), and, where every layer agrees and the family's config has keys for it (:data:`FAMILIES`),
writes those counts into ``model.config``. It checks the result the way ``from_pretrained`` will use it: the
new config is rebuilt with ``from_dict`` (the config's own validation runs) and the model class is built from
it on the ``meta`` device (no memory); every tensor shape must equal the compacted model's. Nothing is
rounded: a model the config cannot describe (per-layer counts that differ, heads of a family whose head size
is ``hidden / heads``, a count the config refuses) keeps its config's counts, gets a ``plprune_note`` in its
config saying why and that :func:`plprune.export` / :func:`plprune.load` is the way, and the returned
:class:`ConfigSync` says the same.

A family is one entry of :data:`FAMILIES` (``config.model_type`` -> :class:`ConfigKeys`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from plprune.errors import PlpruneError
from plprune.quiet import quiet

NOTE_KEY = "plprune_note"
HOW_TO_SAVE = (
    "save it with plprune.export(model, pruner, path) and load it with plprune.load(path), which rebuild "
    "per-layer counts"
)


@dataclass(frozen=True)
class ConfigKeys:
    """Where one family's config keeps what compaction changes.

    ``heads``/``kv_heads``/``head_dim``: the config keys of the query-head count, the key/value-head count
    and the head size; ``heads=None`` when the family computes the head size as ``hidden / heads`` (BERT,
    GPT-2, ...): its pruned heads cannot be described. ``ffn``: ``(marker, key)`` pairs for the FFN width; an
    FFN whose module name contains ``marker`` uses ``key`` (first match; ``""`` matches every FFN), e.g.
    BART's encoder and decoder widths."""

    heads: str | None = None
    kv_heads: str | None = None
    head_dim: str | None = None
    ffn: tuple[tuple[str, str], ...] = ()


_LLAMA_LIKE = ConfigKeys(
    "num_attention_heads", "num_key_value_heads", "head_dim", (("", "intermediate_size"),)
)
_T5_LIKE = ConfigKeys("num_heads", None, "d_kv", (("", "d_ff"),))
_INTERMEDIATE = ConfigKeys(ffn=(("", "intermediate_size"),))
_ENCODER_DECODER = ConfigKeys(ffn=(("encoder.", "encoder_ffn_dim"), ("decoder.", "decoder_ffn_dim")))

#: ``config.model_type`` -> its keys. Extend with one entry; a wrong entry is caught by the shape check.
FAMILIES: dict[str, ConfigKeys] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"), _LLAMA_LIKE),
    **dict.fromkeys(("t5", "mt5"), _T5_LIKE),
    **dict.fromkeys(("bert", "roberta", "electra", "vit", "gpt_neox"), _INTERMEDIATE),
    **dict.fromkeys(("bart", "mbart", "marian", "whisper"), _ENCODER_DECODER),
    "distilbert": ConfigKeys(ffn=(("", "hidden_dim"),)),
    "gpt2": ConfigKeys(ffn=(("", "n_inner"),)),
    "opt": ConfigKeys(ffn=(("", "ffn_dim"),)),
    "falcon": ConfigKeys(ffn=(("", "ffn_hidden_size"),)),
}


@dataclass(frozen=True)
class LayerCounts:
    """One site's counts: ``kind`` ``"head"`` (``count`` query heads, ``kv_heads``, ``head_size``) or
    ``"neuron"`` (``count`` = FFN width), of the module ``module``."""

    kind: str
    module: str
    count: int
    kv_heads: int | None = None
    head_size: int | None = None

    @property
    def shape(self) -> tuple[int, int | None, int | None]:
        return (self.count, self.kv_heads, self.head_size)


@dataclass(frozen=True)
class ConfigSync:
    """What :func:`sync_hf_config` did. ``describable``: the config now describes the model (``changed``:
    ``key -> (old, new)``, possibly empty); otherwise ``reasons`` say why not and the config's counts are
    left as they were. ``counts``: per kind, the per-layer counts (``"heads"``, ``"kv_heads"``,
    ``"head_size"``, ``"neurons"``)."""

    model_type: str | None
    describable: bool
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    counts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def message(self) -> str:
        """One line: what changed, or why the config cannot describe the model and what to use instead."""
        if self.describable:
            if not self.changed:
                return "the config already describes the model"
            return "config updated: " + ", ".join(
                f"{k} {old!r} -> {new!r}" for k, (old, new) in self.changed.items()
            )
        return f"the config cannot describe the compacted model: {'; '.join(self.reasons)}; {HOW_TO_SAVE}"


def is_hf_model(module: nn.Module) -> bool:
    """A Hugging Face ``PreTrainedModel`` (by structure): a ``config`` with ``model_type`` and ``to_dict``,
    and ``save_pretrained``."""
    config = getattr(module, "config", None)
    return (
        isinstance(getattr(config, "model_type", None), str)
        and callable(getattr(config, "to_dict", None))
        and callable(getattr(module, "save_pretrained", None))
    )


def hf_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost Hugging Face models in ``model`` (the model itself, or e.g. a wrapper's ``hf``)."""
    if is_hf_model(model):
        return [("", model)]
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not any(name.startswith(f"{outer}.") for outer, _ in found) and is_hf_model(module):
            found.append((name, module))
    return found


def _sites(model: nn.Module, kind: str) -> list[Any]:
    from plprune.sites import find_sites

    try:
        return list(find_sites(model, (kind,)))
    except PlpruneError:  # no such layers (or the kind is not known to this plprune)
        return []


def read_counts(model: nn.Module) -> list[LayerCounts]:
    """Per attention module and per FFN of ``model``, in module order: its counts, read from its shapes."""
    counts = [
        LayerCounts("head", s.module_name, int(s.num_groups), int(s.kv_heads), int(s.head_size))
        for s in _sites(model, "head")
    ]
    counts += [LayerCounts("neuron", s.module_name, int(s.num_groups)) for s in _sites(model, "neuron")]
    return counts


def _summary(counts: list[LayerCounts]) -> dict[str, list[int]]:
    heads = [c for c in counts if c.kind == "head"]
    out = {
        "heads": [c.count for c in heads],
        "kv_heads": [int(c.kv_heads or c.count) for c in heads],
        "head_size": [int(c.head_size or 0) for c in heads],
        "neurons": [c.count for c in counts if c.kind == "neuron"],
    }
    return {k: v for k, v in out.items() if v}


def _rebuilt_config(config: Any, updates: dict[str, Any]) -> Any:
    """``config`` with ``updates`` as ``from_pretrained`` will read it: through ``to_dict``/``from_dict``
    (the config class's own validation runs)."""
    values = {**config.to_dict(), **updates}
    values.pop(NOTE_KEY, None)
    with quiet():
        rebuilt = type(config).from_dict(values)
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        rebuilt._attn_implementation = config._attn_implementation
    return rebuilt


def heads_describable(config: Any, heads: int) -> bool | None:
    """Whether ``config``'s family can describe ``heads`` query heads per layer at the current head size
    (its own validation run through ``from_dict``, e.g. the Llama family's ``hidden % heads == 0``);
    ``None`` when the family cannot describe pruned heads at all (head size = hidden / heads) or unknown."""
    keys = FAMILIES.get(str(getattr(config, "model_type", "")))
    if keys is None or keys.heads is None:
        return None
    updates: dict[str, Any] = {keys.heads: int(heads)}
    if keys.head_dim is not None:
        size = getattr(config, keys.head_dim, None)
        updates[keys.head_dim] = size or config.hidden_size // getattr(config, keys.heads)
    try:
        _rebuilt_config(config, updates)
    except Exception:  # the config's validators raise their own error types (huggingface_hub's, ValueError)
        return False
    return True


def _meta_model(model: nn.Module, config: Any) -> nn.Module:
    """``type(model)(config)`` on the meta device: its shapes, without memory or initialisation cost."""
    with quiet(), torch.device("meta"):
        return type(model)(config)


def _shape_mismatches(model: nn.Module, built: nn.Module) -> list[str]:
    """Tensors whose shape the config would build differently (or not at all)."""
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    out = [
        f"{k}: the model has {have[k]}, the config builds {want[k]}"
        for k in have
        if k in want and have[k] != want[k]
    ]
    out += [f"{k}: the config builds no such tensor" for k in have if k not in want]
    out += [f"{k}: the config builds it, the model has none" for k in want if k not in have]
    return out


def _ffn_key(keys: ConfigKeys, module: str) -> str | None:
    return next((key for marker, key in keys.ffn if marker in module), None)


def _plan(
    model_type: str, keys: ConfigKeys, physical: list[LayerCounts], differing: set[str]
) -> tuple[dict[str, Any], list[str]]:
    """The config updates for the kinds in ``differing`` (``"head"``, ``"neuron"``), or why there are none."""
    updates: dict[str, Any] = {}
    reasons: list[str] = []
    heads = [c for c in physical if c.kind == "head"]
    if "head" in differing:
        shapes = sorted({c.shape for c in heads})
        if keys.heads is None:
            reasons.append(
                f"{model_type} computes the head size as hidden size / heads (its config has no "
                f"head-size key), so it cannot describe pruned heads (per layer: {[c.count for c in heads]} "
                f"heads of size {heads[0].head_size})"
            )
        elif len(shapes) > 1:
            reasons.append(
                f"the attention layers keep different head counts ({_describe_heads(heads)}); "
                f"{model_type}'s config has one count for every layer"
            )
        else:
            count, kv_heads, size = shapes[0]
            updates[keys.heads] = count
            if keys.kv_heads is not None:
                updates[keys.kv_heads] = kv_heads
            elif kv_heads != count:
                reasons.append(
                    f"{model_type}'s config has no key/value-head count ({count} query, {kv_heads} kv)"
                )
            if keys.head_dim is not None:
                updates[keys.head_dim] = size
    if "neuron" in differing:
        widths: dict[str, list[int]] = {}
        for c in physical:
            if c.kind == "neuron":
                key = _ffn_key(keys, c.module)
                if key is None:
                    reasons.append(f"{model_type}: no config key for the FFN width of {c.module}")
                    continue
                widths.setdefault(key, []).append(c.count)
        for key, values in widths.items():
            if len(set(values)) > 1:
                reasons.append(
                    f"the FFN layers keep different widths ({key} per layer: {values}); the config has one "
                    f"{key} for every layer"
                )
            else:
                updates[key] = values[0]
    return updates, reasons


def _describe_heads(heads: list[LayerCounts]) -> str:
    counts = [c.count for c in heads]
    kv = [c.kv_heads for c in heads]
    return f"query heads per layer {counts}" + (f", key/value heads {kv}" if kv != counts else "")


def _differing(physical: list[LayerCounts], described: list[LayerCounts]) -> set[str]:
    by_module = {(c.kind, c.module): c for c in described}
    out = {c.kind for c in physical if by_module.get((c.kind, c.module)) != c}
    return out | {c.kind for c in described if c not in physical}


def _not_describable(
    config: Any, model_type: str, reasons: list[str], counts: dict[str, list[int]]
) -> ConfigSync:
    note = (
        "plprune compacted this model to shapes this config cannot describe ("
        + "; ".join(reasons)
        + "): from_pretrained builds the config's shapes and fails on these weights; "
        + HOW_TO_SAVE
    )
    setattr(config, NOTE_KEY, note)
    return ConfigSync(model_type, False, {}, tuple(reasons), counts)


def sync_hf_config(model: nn.Module) -> ConfigSync:
    """Rewrite ``model.config`` (in place) to describe the compacted ``model``'s per-layer counts; see the
    module docstring. Returns a :class:`ConfigSync`; raises :class:`PlpruneError` only for a model without a
    Hugging Face config."""
    if not is_hf_model(model):
        raise PlpruneError(
            f"sync_hf_config takes a Hugging Face model (a config with model_type, and save_pretrained), got "
            f"{type(model).__name__}"
        )
    config = model.config
    model_type = str(config.model_type)
    physical = read_counts(model)
    counts = _summary(physical)
    try:
        original = _meta_model(model, config)
    except Exception as error:  # the class cannot be rebuilt from its config at all: nothing to compare with
        reason = f"{type(model).__name__} cannot be built from its config ({type(error).__name__}: {error})"
        return _not_describable(config, model_type, [reason], counts)
    differing = _differing(physical, read_counts(original))
    if not differing and not _shape_mismatches(model, original):
        if hasattr(config, NOTE_KEY):
            delattr(config, NOTE_KEY)
        return ConfigSync(model_type, True, {}, (), counts)
    keys = FAMILIES.get(model_type)
    if keys is None:
        reasons = [
            f"plprune has no config keys for model_type {model_type!r} (add an entry to "
            "plprune.compaction.hf_config.FAMILIES)"
        ]
        return _not_describable(config, model_type, reasons, counts)
    updates, reasons = _plan(model_type, keys, physical, differing)
    if not reasons:
        try:
            candidate = _rebuilt_config(config, updates)
            built = _meta_model(model, candidate)
        except Exception as error:
            text = str(error).strip()
            first = text.splitlines()[-1].strip() if text else type(error).__name__
            reasons.append(f"{type(config).__name__} refuses {updates} ({first})")
        else:
            left = _differing(physical, read_counts(built))
            mismatches = _shape_mismatches(model, built)
            if left or mismatches:
                reasons.append(
                    f"with {updates} the config still builds other shapes ({(mismatches or sorted(left))[0]})"
                )
    if reasons:
        return _not_describable(config, model_type, reasons, counts)
    changed = {k: (getattr(config, k, None), v) for k, v in updates.items() if getattr(config, k, None) != v}
    for key, (_, value) in changed.items():
        setattr(config, key, value)
    if hasattr(config, NOTE_KEY):
        delattr(config, NOTE_KEY)
    return ConfigSync(model_type, True, changed, (), counts)


def _owners(model: nn.Module, path: str) -> list[nn.Module]:
    """The Hugging Face models that hold the submodule ``path``, innermost first."""
    parts = path.split(".") if path else []
    names = [".".join(parts[:depth]) for depth in range(len(parts) - 1, -1, -1)]
    return [m for m in (model.get_submodule(n) for n in names) if is_hf_model(m)]


def layer_count_key(config: Any, path: str, count: int) -> str | None:
    """The config key of the block count of the list at ``path`` (its full module name) that holds ``count``
    blocks: ``decoder_layers``/``num_decoder_layers`` for a decoder list, ``encoder_layers`` for an encoder
    list where the config has them (BART, T5), else ``num_hidden_layers`` (through the config's
    ``attribute_map``: GPT-2's ``n_layer``, T5's ``num_layers``); ``None`` when no key holds ``count``."""
    candidates = []
    if "decoder" in path:
        candidates += ["decoder_layers", "num_decoder_layers"]
    if "encoder" in path:
        candidates += ["encoder_layers"]
    candidates.append("num_hidden_layers")
    for key in candidates:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value == count:
            return key
    return None


def _drop_from(config: Any, path: str, kept: tuple[int, ...], before: int) -> None:
    key = layer_count_key(config, path, before)
    if key is None:
        return
    setattr(config, key, len(kept))
    if key != "num_hidden_layers":
        return
    for name, value in config.to_dict().items():
        if name.endswith("layer_types") and isinstance(value, (list, tuple)) and len(value) == before:
            setattr(config, name, type(value)(value[i] for i in kept))


def drop_config_layers(model: nn.Module, argument: tuple[str, tuple[int, ...], int]) -> None:
    """After the block list ``path`` (its full module name in ``model``) of ``before`` blocks kept the blocks
    ``kept``: in the config of the innermost Hugging Face model that holds the list, its count key
    (:func:`layer_count_key`) becomes ``len(kept)`` and, for a model's main list (``num_hidden_layers``),
    every per-layer list (a key ending in ``layer_types``, e.g. ``layer_types``, ``mlp_layer_types``, with
    ``before`` entries) keeps the entries ``kept``, so each surviving block keeps its attention type. The
    outermost model's config (the one ``save_pretrained`` writes) is updated the same way when it is another
    object that does not hold the inner one (T5's stacks keep copies). A config with no key for the count is
    left alone (the shape check of :func:`sync_hf_config` then says it cannot describe the model)."""
    path, kept, before = argument
    owners = _owners(model, path)
    if not owners:
        return
    inner, outer = owners[0].config, owners[-1].config
    _drop_from(inner, path, kept, before)
    if outer is not inner and not any(value is inner for value in vars(outer).values()):
        _drop_from(outer, path, kept, before)


def sync_hf_configs(model: nn.Module) -> dict[str, ConfigSync]:
    """:func:`sync_hf_config` for every outermost Hugging Face model in ``model`` (by module name; ``""``:
    the model itself). Models without one give ``{}``."""
    return {name: sync_hf_config(module) for name, module in hf_models(model)}
