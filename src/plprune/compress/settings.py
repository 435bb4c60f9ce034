"""What ``plprune compress`` is asked to do, validated before anything is loaded or written.

One :class:`CompressSettings` holds the whole request (model, text, target, criterion, recovery, output);
:meth:`CompressSettings.check` fails with one clear message per problem, naming what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plprune.errors import PlpruneError
from plprune.groups import GROUP_KINDS

RECOVERY_MODES = ("full", "lora")


def calibration_methods() -> list[str]:
    """The registered methods that can score a finished model from calibration batches in one event: all
    but the dense reference and those registered ``training_time`` (regularisers, rewinding)."""
    from plprune.pruners.registry import METHODS

    return [name for name, spec in METHODS.items() if spec.build is not None and not spec.training_time]


@dataclass
class CompressSettings:
    """A compression request (fields as the CLI flags of ``plprune compress``).

    ``keep_params``: the fraction of the model's parameters to keep (one pruning ratio, shared by every kind
    in ``kinds`` that ``kind_ratios`` leaves out, is solved for it); or give ``kind_ratios`` for every kind.
    ``calibration_samples`` sequences of ``seq_len`` tokens score the groups; ``eval_samples`` held-out
    sequences (from ``eval_data``, else the tail of ``data``) measure perplexity. ``recover_steps`` steps of
    fine-tuning on the calibration text (``recovery="lora"``: LoRA adapters through ``peft``, merged back).
    """

    model_dir: Path
    data: Path
    out: Path
    kinds: tuple[str, ...] = ("head", "neuron")
    keep_params: float | None = None
    kind_ratios: dict[str, float] = field(default_factory=dict)
    method: str = "pl"
    method_settings: dict[str, Any] = field(default_factory=dict)
    allocation: str = "per_layer"
    tokenizer: Path | None = None
    eval_data: Path | None = None
    seq_len: int = 128
    batch_size: int = 8
    calibration_samples: int = 128
    eval_samples: int = 64
    recover_steps: int = 0
    recovery: str = "full"
    recover_lr: float = 1e-4
    lora_rank: int = 8
    latency_repeats: int = 5
    seed: int = 0
    device: str = "cpu"
    force: bool = False
    resume: bool = False
    progress: bool | None = None

    def check(self) -> CompressSettings:
        """Raise :class:`PlpruneError` on the first invalid field; returns ``self``."""
        for name in ("model_dir", "data", "out"):
            setattr(self, name, Path(getattr(self, name)))
        for name in ("tokenizer", "eval_data"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        if not self.kinds:
            raise PlpruneError(f"kinds must name at least one of {', '.join(GROUP_KINDS)}")
        unknown = [k for k in self.kinds if k not in GROUP_KINDS]
        if unknown:
            raise PlpruneError(f"unknown kinds {unknown}; valid: {', '.join(GROUP_KINDS)}")
        stray = sorted(set(self.kind_ratios) - set(self.kinds))
        if stray:
            raise PlpruneError(
                f"kind ratios given for {stray}, which are not among --kinds {list(self.kinds)}"
            )
        for kind, ratio in self.kind_ratios.items():
            if not 0.0 <= float(ratio) < 1.0:
                raise PlpruneError(f"the ratio of {kind} must lie in [0, 1), got {ratio}")
        free = [k for k in self.kinds if k not in self.kind_ratios]
        if self.keep_params is None and free:
            raise PlpruneError(
                "give a target: --keep-params F (the fraction of parameters to keep) or a ratio for "
                "every kind "
                f"(--kind-ratios; missing: {', '.join(free)})"
            )
        if self.keep_params is not None and not 0.0 < float(self.keep_params) < 1.0:
            raise PlpruneError(
                f"keep_params is the fraction of parameters to keep, in (0, 1); got {self.keep_params}"
            )
        if self.keep_params is not None and not free:
            raise PlpruneError(
                "--keep-params needs at least one kind without a fixed ratio in --kind-ratios (it "
                "solves that "
                "kind's ratio)"
            )
        allowed = calibration_methods()
        if self.method not in allowed:
            from plprune.pruners.registry import METHODS

            known = self.method in METHODS
            what = "acts during training and cannot score" if known else "is no method that scores"
            raise PlpruneError(
                f"method {self.method!r} {what} a finished model in one shot; use a calibration criterion "
                f"({', '.join(allowed)}; block-influence for layers), or plprune train for training-time "
                "methods"
            )
        positive = (
            "seq_len",
            "batch_size",
            "calibration_samples",
            "eval_samples",
            "lora_rank",
            "latency_repeats",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PlpruneError(f"{name} must be a positive integer, got {value!r}")
        for name in ("recover_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PlpruneError(f"{name} must be a non-negative integer, got {value!r}")
        if self.recovery not in RECOVERY_MODES:
            raise PlpruneError(f"recovery must be one of {', '.join(RECOVERY_MODES)}, got {self.recovery!r}")
        if not self.recover_lr > 0:
            raise PlpruneError(f"recover_lr must be positive, got {self.recover_lr}")
        if self.allocation not in ("per_layer", "global"):
            raise PlpruneError(f"allocation must be per_layer or global, got {self.allocation!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings (the record of what was asked, in report.json and for --resume)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        out["kinds"] = list(self.kinds)
        return out
