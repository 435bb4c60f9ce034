"""The full, serialisable description of one run: task, data, model, training (and, later, pruning).

Precedence when built from the CLI: dataclass defaults < ``--config FILE`` (TOML) < explicit flags.
The resolved config is saved as ``RUN_DIR/config.json``; ``--resume`` refuses a different config.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plprune.errors import PlpruneError
from plprune.train.config import TrainConfig
from plprune.validation import (
    check_bool,
    check_choice,
    check_field_types,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    check_probability,
    check_text,
)

TOKENIZERS = ("word", "bpe")
MAX_WIDTH_MULTIPLIER = 16.0


@dataclass
class DataConfig:
    """Where the data comes from; for text, how it is tokenised and blocked (``num_samples``: MNIST-1D size;
    ``train_fraction``: train on the first fraction of the training blocks (text; vocabulary unchanged) or
    samples (classification) only, test set unchanged —
    a smaller training set makes the same model more over-parameterised; ``masking``: ``"dynamic"``
    (default: a fresh MLM masking per batch) or ``"static"`` (each training block masked once, as BERT's
    original data pipeline; see :func:`plprune.data.mlm.static_masking`).

    ``data_dir`` falls back to the ``PLPRUNE_DATA_DIR`` environment variable. WikiText-2 here: train on
    ``valid.txt``, evaluate on ``test.txt`` (the training split is not available offline).
    """

    data_dir: str | None = None
    train_file: str = "valid.txt"
    test_file: str = "test.txt"
    tokenizer: str = "word"
    min_freq: int = 2
    bpe_vocab_size: int = 8000
    seq_len: int = 128
    num_samples: int = 4000
    train_fraction: float = 1.0
    masking: str = "dynamic"

    def __post_init__(self) -> None:
        if self.data_dir is not None:
            check_text("data_dir", self.data_dir)
        check_text("train_file", self.train_file)
        check_text("test_file", self.test_file)
        check_choice("tokenizer", self.tokenizer, TOKENIZERS)
        check_choice("masking", self.masking, ("dynamic", "static"))
        check_positive_int("min_freq", self.min_freq)
        check_positive_int("bpe_vocab_size", self.bpe_vocab_size)
        check_positive_int("seq_len", self.seq_len)
        check_positive_int("num_samples", self.num_samples)
        if not (isinstance(self.train_fraction, (int, float)) and 0 < self.train_fraction <= 1):
            raise PlpruneError(f"train_fraction must lie in (0, 1], got {self.train_fraction!r}")


@dataclass
class ModelConfig:
    """Architecture sizes. BERT/Switch: layers, hidden, heads, ffn, dropout, pre_layer_norm; Switch only:
    experts, capacity_factor, aux_loss_weight, expert_ffn (default: ffn). Llama (hf-llama-*): layers, hidden,
    heads (query heads), kv_heads (key/value heads, grouped-query attention; ``None``: as many as heads),
    ffn (SwiGLU width), dropout (attention dropout; Llama has no other). CNNs (vgg-*, resnet-*):
    width_multiplier (channels × w), depth (ResNet: 6n+2, e.g. 20 or 56)."""

    layers: int = 4
    hidden: int = 128
    heads: int = 8
    ffn: int = 512
    dropout: float = 0.1
    pre_layer_norm: bool = False
    experts: int = 4
    capacity_factor: float = 1.5
    aux_loss_weight: float = 0.01
    expert_ffn: int | None = None
    width_multiplier: float = 0.25
    depth: int = 20
    kv_heads: int | None = None

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "ffn"):
            check_positive_int(name, getattr(self, name))
        check_probability("dropout", self.dropout)
        check_bool("pre_layer_norm", self.pre_layer_norm)
        check_positive_int("experts", self.experts)
        if self.experts < 2:
            raise PlpruneError(f"experts must be an integer >= 2 (a mixture needs two), got {self.experts!r}")
        check_positive_float("capacity_factor", self.capacity_factor)
        check_non_negative_float("aux_loss_weight", self.aux_loss_weight)
        if self.expert_ffn is not None:
            check_positive_int("expert_ffn", self.expert_ffn)
        check_positive_float("width_multiplier", self.width_multiplier)
        if self.width_multiplier > MAX_WIDTH_MULTIPLIER:  # x16 of VGG-16 is already ~4e9 parameters
            raise PlpruneError(
                f"width_multiplier must lie in (0, {MAX_WIDTH_MULTIPLIER}], got {self.width_multiplier!r}"
            )
        check_positive_int("depth", self.depth)
        if self.hidden % self.heads:
            raise PlpruneError(f"heads ({self.heads}) must divide hidden ({self.hidden})")
        if self.kv_heads is not None:
            check_positive_int("kv_heads", self.kv_heads)
            if self.heads % self.kv_heads:
                valid = [k for k in range(1, self.heads + 1) if self.heads % k == 0]
                raise PlpruneError(
                    f"kv_heads ({self.kv_heads}) must divide heads ({self.heads}): each key/value head "
                    f"serves heads / kv_heads query heads; valid: {valid}"
                )


@dataclass
class PruneConfig:
    """Which method prunes which groups when (``method = "dense"`` trains without pruning).

    ``prune_at``/``prune_end``/``prune_every`` are times: steps (``800``) or epochs (``"5e"``). ``kinds``:
    which groups are prunable (default: the task's, e.g. heads for BERT, experts for Switch);
    ``kind_ratios``: a final ratio per kind (e.g. ``{"head": 0.5, "expert": 0.5}``) instead of ``ratio``.
    ``method``: one of :data:`plprune.pruners.registry.METHOD_NAMES`. ``curvature_every``: every N steps,
    log the NTK condition number and Hessian trace at the evaluation (0 = off; also for dense runs; Fig.
    3/5); ``allocation``: ``"global"`` (rank all groups of a kind together) or ``"per_layer"`` (the same
    fraction from every layer); ``None``: the method's own. ``compact``: after the last pruning event,
    remove the pruned groups physically (a smaller, faster model; optimizer state carried over).

    ``settings``: each method's own settings dataclass by method name (``[prune.pl]``, ``[prune.imp]``,
    ... in a config file; defined next to each scorer and registered with it), defaults filled in.
    """

    method: str = "dense"
    ratio: float = 0.75
    schedule: str = "one-shot"
    prune_at: str | int = "5e"
    prune_end: str | int | None = None
    prune_every: str | int | None = None
    rounds: int = 3
    kinds: tuple[str, ...] | None = None
    kind_ratios: dict[str, float] | None = None
    diagnostics: bool = False
    curvature_every: int = 0
    allocation: str | None = None
    compact: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from plprune.groups import check_kinds, check_prune_kinds
        from plprune.keep import ALLOCATIONS
        from plprune.pruners.registry import METHOD_NAMES as METHODS
        from plprune.pruners.registry import method_settings
        from plprune.schedules import SCHEDULES, check_time

        check_choice("method", self.method, METHODS)
        check_choice("schedule", self.schedule, SCHEDULES)
        for name in ("prune_at", "prune_end", "prune_every"):
            if getattr(self, name) is not None:
                check_time(name, getattr(self, name))
        for name in ("diagnostics", "compact"):
            check_bool(name, getattr(self, name))
        check_probability("prune ratio", self.ratio)
        check_positive_int("rounds", self.rounds)
        check_non_negative_int("curvature_every", self.curvature_every)
        if self.allocation is not None:
            check_choice("allocation", self.allocation, ALLOCATIONS)
        if self.kinds is not None:
            self.kinds = check_prune_kinds(tuple(self.kinds))
        if self.kind_ratios is not None:
            check_kinds(tuple(self.kind_ratios))
            for kind, value in self.kind_ratios.items():
                check_probability(f"{kind} prune ratio", value)
        raw = {k: v if isinstance(v, dict) else asdict(v) for k, v in self.settings.items()}
        self.settings = method_settings(raw)

    @property
    def method_settings(self) -> Any:
        """The settings dataclass of ``method`` (``None`` if it has none)."""
        return self.settings.get(self.method)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, each method's settings as a table under its name (``prune.pl.alpha``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "settings"}
        out = json.loads(json.dumps(out))
        out.update({name: asdict(value) for name, value in self.settings.items()})
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PruneConfig:
        """From a ``[prune]`` table: general keys plus one sub-table per method's settings."""
        from plprune.pruners.registry import METHODS

        general = {f.name for f in dataclasses.fields(cls)} - {"settings"}
        tables = {k: v for k, v in values.items() if k in METHODS and METHODS[k].config is not None}
        unknown = set(values) - general - set(tables)
        if unknown:
            with_settings = sorted(k for k, s in METHODS.items() if s.config is not None)
            raise PlpruneError(
                f"unknown keys in [prune]: {sorted(unknown)}; allowed: {sorted(general)} and a table of "
                f"settings per method: {with_settings}"
            )
        for name, table in tables.items():
            if not isinstance(table, dict):
                raise PlpruneError(f"[prune.{name}] must be a table of settings, got {type(table).__name__}")
        check_field_types("prune", cls, {k: v for k, v in values.items() if k in general})
        try:
            return cls(**{k: v for k, v in values.items() if k in general}, settings=tables)
        except TypeError as error:
            raise PlpruneError(f"invalid [prune] section: {error}") from error


@dataclass
class RunConfig:
    task: str = "bert-wikitext2"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["prune"] = self.prune.to_dict()
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Build from nested dicts (a TOML file or a saved config.json); unknown keys are errors."""
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "prune": PruneConfig}
        if not isinstance(raw, dict):
            raise PlpruneError(f"a config must be a table of sections, got {type(raw).__name__}")
        unknown = set(raw) - {"task", *sections}
        if unknown:
            raise PlpruneError(f"unknown config keys {sorted(unknown)}; allowed: task, {', '.join(sections)}")
        kwargs: dict[str, Any] = {}
        if "task" in raw:
            check_field_types("top level", cls, {"task": raw["task"]})
            kwargs["task"] = raw["task"]
        for name, klass in sections.items():
            values = raw.get(name, {})
            if not isinstance(values, dict):
                raise PlpruneError(f"config section [{name}] must be a table, got {type(values).__name__}")
            if name == "prune":
                kwargs[name] = PruneConfig.from_dict(values)
                continue
            allowed = {f.name for f in dataclasses.fields(klass)}
            bad = set(values) - allowed
            if bad:
                raise PlpruneError(f"unknown keys in [{name}]: {sorted(bad)}; allowed: {sorted(allowed)}")
            check_field_types(name, klass, values)
            try:
                kwargs[name] = klass(**values)
            except TypeError as error:
                raise PlpruneError(f"invalid [{name}] section: {error}") from error
        return cls(**kwargs)

    def with_overrides(self, overrides: dict[str, dict[str, Any]]) -> RunConfig:
        """A copy with ``{section: {field: value}}`` replaced (``section`` may be ``"task"``, or a method
        name for that method's settings, e.g. ``{"pl": {"alpha": 0}}``)."""
        raw = self.to_dict()
        for section, values in overrides.items():
            if section == "task":
                raw["task"] = values
            elif section in raw:
                raw[section].update(values)
            elif isinstance(raw["prune"].get(section), dict):
                raw["prune"][section].update(values)
            else:
                raw[section] = values  # an unknown section: from_dict names it
        return RunConfig.from_dict(raw)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update``'s values laid over it, tables merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: Path) -> dict[str, Any]:
    """The raw tables of a TOML config file (validated later by :meth:`RunConfig.from_dict`)."""
    path = Path(path)
    if not path.exists():
        raise PlpruneError(f"config file {path} does not exist")
    if not path.is_file():
        raise PlpruneError(f"config file {path} is not a file (a TOML file is expected)")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise PlpruneError(
            f"config file {path} is not UTF-8 text (byte offset {error.start}: {error.reason}); "
            "a TOML file is expected"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise PlpruneError(f"config file {path} is not valid TOML: {error}") from error
    except OSError as error:
        raise PlpruneError(f"cannot read config file {path}: {error.strerror or error}") from error
    return raw


def load_config_file(path: Path) -> RunConfig:
    """Read a TOML config (``task = ...``, ``[data]``, ``[model]``, ``[train]``, ``[prune]``)."""
    return RunConfig.from_dict(read_config_file(path))


def config_differences(saved: dict[str, Any], requested: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable ``key: saved -> requested`` lines where two config dicts differ."""
    lines = []
    for key in sorted(set(saved) | set(requested)):
        a, b = saved.get(key), requested.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines.extend(config_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines


def normalised_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved ``config.json`` with every field a later version added filled in with its default (so that
    ``--resume`` of an older run compares like with like); as saved if it no longer parses."""
    try:
        return json.loads(json.dumps(RunConfig.from_dict(saved).to_dict()))
    except (PlpruneError, TypeError, ValueError):
        return saved


def save_config(path: Path, config: RunConfig) -> None:
    from plprune.train.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(config.to_dict(), indent=2) + "\n")
