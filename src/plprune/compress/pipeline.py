"""``plprune compress``: from a trained model directory to a smaller, faster one, stage by stage.

Stages (each reported, each resumable):

1. **dense** — load the model, tokenizer and text; perplexity on the held-out blocks, parameters, MACs,
   weight-file size.
2. **prune** — score the groups of ``kinds`` on the calibration blocks with the chosen criterion (any
   one-shot method of :mod:`plprune.pruners`; PL trains its gating network on them, the paper's objective),
   remove them at the ratios that meet the parameter budget (:mod:`plprune.compress.target`), compact
   (``Pruner.compact``), evaluate, and time the compacted model against the dense one side by side at batch
   1 and batch 32.
3. **recover** (``recover_steps > 0``) — fine-tune (all weights or LoRA, :mod:`plprune.compress.recover`),
   evaluate.
4. **save** — the model with its tokenizer (``plprune.save_pretrained`` when the Hugging Face config can
   describe it, so ``AutoModelFor*.from_pretrained`` reloads it without plprune; else ``plprune.export``,
   read back with ``plprune.load``), ``report.md``/``report.json`` and ``quality_vs_size.png``.

Work goes to ``.OUT.compress-work/`` beside ``OUT`` (``state.json`` after every stage, the model after each
stage that changes it); ``OUT`` appears only when complete (a temporary directory renamed into place). A
killed run continues with ``resume=True`` from the last finished stage and gives the same result (every
stage is seeded).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plprune.compress.inputs import (
    PLPRUNE_TOKENIZER,
    TextCodec,
    load_codec,
    load_model,
    read_text,
    text_blocks,
)
from plprune.compress.measure import (
    latency,
    lm_loss,
    macs,
    objective_batches,
    parameter_count,
    perplexity,
    weight_bytes,
)
from plprune.compress.recover import recover
from plprune.compress.report import write_report
from plprune.compress.settings import CompressSettings
from plprune.compress.target import solve_ratios
from plprune.errors import PlpruneError
from plprune.faults import kill_point
from plprune.train.checkpoint import atomic_write_text

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "spiece.model",
    "tokenizer.model",
    PLPRUNE_TOKENIZER,
)
# settings that may differ between a run and its --resume without changing the result
_NOT_COMPARED = ("resume", "force", "progress", "latency_repeats")


def work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.compress-work"


def _bar(settings: CompressSettings, total: int, description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=description,
        unit="batch",
        disable=None if settings.progress is None else not settings.progress,
        leave=False,
    )


@contextmanager
def _stage(state: dict[str, Any], name: str, work: Path) -> Iterator[dict[str, Any]]:
    """Run one stage: its record gets its seconds, and ``state.json`` is written when it ends."""
    record: dict[str, Any] = {}
    started = time.perf_counter()
    yield record
    work.mkdir(parents=True, exist_ok=True)
    record["seconds"] = round(time.perf_counter() - started, 3)
    state["stages"][name] = record
    atomic_write_text(work / "state.json", json.dumps(state, indent=2) + "\n")
    kill_point("compress-stage")  # tests only (PLPRUNE_TEST_KILL_AT)


def _check_start(settings: CompressSettings) -> tuple[Path, dict[str, Any]]:
    """The work directory and the state to continue from (fresh unless ``resume``)."""
    out, work = settings.out, work_dir(settings.out)
    if out.exists() and not settings.force:
        raise PlpruneError(f"output directory {str(out)!r} exists; pass --force to replace it")
    asked = {k: v for k, v in settings.to_dict().items() if k not in _NOT_COMPARED}
    if work.exists():
        if settings.force and not settings.resume:
            shutil.rmtree(work)
        elif not settings.resume:
            raise PlpruneError(
                f"an unfinished compress of {str(out)!r} is in {str(work)!r}: pass --resume to "
                "continue it, or "
                "--force to start again"
            )
        else:
            state = (
                json.loads((work / "state.json").read_text(encoding="utf-8"))
                if (work / "state.json").is_file()
                else None
            )
            if state is not None:
                saved = {k: v for k, v in state["settings"].items() if k not in _NOT_COMPARED}
                differences = sorted(k for k in asked if saved.get(k) != asked[k])
                if differences:
                    raise PlpruneError(
                        "--resume with other settings than the unfinished run ("
                        + ", ".join(differences)
                        + "); use the original settings, or --force to start again"
                    )
                return work, state
    return work, {"settings": settings.to_dict(), "stages": {}}  # the directory appears with the first stage


# per config flag, the projections it gives a bias (the Llama family: attention_bias, mlp_bias)
_BIAS_FLAGS = {
    "attention_bias": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp_bias": ("gate_proj", "up_proj", "down_proj"),
}


def _describe_created_biases(model: nn.Module) -> list[str]:
    """Make the config say the biases a criterion created (FLAP's bias compensation on a bias-free Llama):
    where a projection covered by a config flag (``attention_bias``, ``mlp_bias``) has a bias the config
    denies, set the flag and give its sibling projections zero biases, so ``from_pretrained`` builds the
    same tensors (the reload check of ``save_pretrained`` confirms it). Returns the flags set."""
    config = getattr(model, "config", None)
    flags: list[str] = []
    for flag, names in _BIAS_FLAGS.items():
        if config is None or getattr(config, flag, None) is not False:
            continue
        linears = [
            m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in names
        ]
        if not any(m.bias is not None for m in linears):
            continue
        for module in linears:
            if module.bias is None:
                weight = module.weight
                module.bias = nn.Parameter(
                    torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
                )
            module.bias.requires_grad_(True)  # FLAP freezes the biases it creates; recovery may train them
        setattr(config, flag, True)
        flags.append(flag)
    return flags


def _save_stage_model(model: nn.Module, pruner: Any, directory: Path) -> str:
    """Write ``model`` to ``directory``: ``save_pretrained`` when its config describes it, else a plprune
    export (``pruner``: the compacted Pruner, or an object with its ``groups`` and ``compacted``). Returns
    ``"save_pretrained"`` or ``"plprune.export"``."""
    from plprune.compaction.hf_config import sync_hf_config
    from plprune.integrations.hf_save import save_pretrained

    if directory.exists():
        shutil.rmtree(directory)
    _describe_created_biases(model)
    if sync_hf_config(model).describable:
        save_pretrained(model, directory, verify=True)
        return "save_pretrained"
    from plprune.export import export

    export(model, pruner, directory)
    return "plprune.export"


def _rebuilt_pruner(settings: CompressSettings, mask: list[bool], model: nn.Module) -> tuple[nn.Module, Any]:
    """The dense model of ``settings.model_dir`` pruned by ``mask`` and compacted, with ``model``'s weights
    (same shapes): what :func:`plprune.export.export` needs to record a model its config cannot describe."""
    from types import SimpleNamespace

    from plprune.compaction import compact
    from plprune.gates import GroupSet

    rebuilt, _ = load_model(settings.model_dir, settings.device)
    groups = GroupSet(rebuilt, settings.kinds)
    groups.apply_mask(torch.tensor(mask, dtype=torch.bool))
    compact(groups, inplace=True)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt, SimpleNamespace(groups=groups, compacted=True)


def get_method_settings(settings: CompressSettings) -> Any:
    """The criterion's settings dataclass (unknown or invalid settings raise)."""
    from plprune.pruners.registry import get_method

    return get_method(settings.method).settings(settings.method_settings or None)


def _describable_heads(model: nn.Module, groups: Any, allocation: str) -> Any:
    """A test of ratios: the same head count is kept in every layer and the model's config can say it
    (:func:`plprune.compaction.hf_config.heads_describable`); ``None`` where no config could describe pruned
    heads anyway (BERT-style: the plprune.export way) or no heads are pruned."""
    from plprune.compaction.hf_config import heads_describable
    from plprune.keep import select_mask

    config = getattr(model, "config", None)
    if config is None or allocation != "per_layer" or "head" not in groups.kinds:
        return None
    index = groups.kind_index("head")
    layers = groups.layer_ids[index]
    per_layer = int((layers == layers[0]).sum())
    if heads_describable(config, per_layer) is None:
        return None
    answers: dict[int, bool] = {}

    def acceptable(ratios: dict[str, float]) -> bool:
        kept = select_mask(groups, torch.zeros(len(groups)), ratios, allocation)[index]
        counts = {int(kept[layers == layer].sum()) for layer in layers.unique()}
        if len(counts) != 1:
            return False
        count = counts.pop()
        if count not in answers:
            answers[count] = bool(heads_describable(config, count))
        return answers[count]

    return acceptable


def _plan(model: nn.Module, settings: CompressSettings) -> tuple[dict[str, float], float, bool]:
    """``(ratios, expected kept fraction, rounded)``, found before any stage runs, which checks that the
    kinds are in the model, the criterion scores them and the target is reachable."""
    from plprune.gates import GroupSet
    from plprune.pruners.registry import check_method_kinds

    check_method_kinds(settings.method, settings.kinds)
    groups = GroupSet(model, settings.kinds)
    ratios, expected, rounded = solve_ratios(
        groups,
        parameter_count(model),
        settings.keep_params,
        settings.kind_ratios,
        settings.allocation,
        _describable_heads(model, groups, settings.allocation),
    )
    groups.remove_hooks()  # only the counts were needed; the prune stage finds the groups again
    if max(ratios.values()) <= 0:
        raise PlpruneError("the target removes nothing: raise the ratios or lower --keep-params")
    return ratios, expected, rounded


def _score_and_compact(
    model: nn.Module,
    settings: CompressSettings,
    calibration: list[Any],
    ratios: dict[str, float],
    record: dict[str, Any],
) -> Any:
    """Prune ``model`` in place at ``ratios`` by the criterion; returns the compacted Pruner."""
    from plprune.gates import GroupSet
    from plprune.pruner import Pruner
    from plprune.pruners.registration import BuildInfo
    from plprune.pruners.registry import build_scorer
    from plprune.schedules import OneShot

    scorer = build_scorer(settings.method, get_method_settings(settings), BuildInfo(1, len(calibration)))
    pruner = Pruner(
        model,
        scorer,
        OneShot(0, max(ratios.values())),
        kinds=settings.kinds,
        loss_fn=lambda m, batch: lm_loss(m, batch),
        batches=calibration,
        kind_ratios=ratios,
        allocation=settings.allocation,
        seed=settings.seed,
        groups=GroupSet(model, settings.kinds),
    )
    model.eval()
    event = pruner.step(0)[0]
    record.update(
        scoring_seconds=round(event["scoring_seconds"], 3),
        pruned_ratio=event["pruned_ratio"],
        mask=event["mask"],
        **{k: v for k, v in event.items() if k in ("gate_training_seconds", "feature_seconds")},
    )
    report = pruner.compact()
    record["compaction"] = str(report)
    return pruner


def _evaluate(
    model: nn.Module, settings: CompressSettings, held_out: list[Any], record: dict[str, Any], name: str
) -> None:
    bar = _bar(settings, len(held_out), f"{name}: perplexity")
    record["perplexity"] = perplexity(model, held_out, progress=lambda: bar.update(1))
    bar.close()
    record["parameters"] = parameter_count(model)
    record["macs"] = macs(model, settings.seq_len)


def _copy_tokenizer(settings: CompressSettings, destination: Path) -> None:
    if settings.tokenizer is not None and settings.tokenizer.is_file():
        shutil.copy2(settings.tokenizer, destination / PLPRUNE_TOKENIZER)
        return
    source = settings.tokenizer if settings.tokenizer is not None else settings.model_dir
    sources = [source / name for name in TOKENIZER_FILES if (source / name).is_file()]
    for path in sources:
        shutil.copy2(path, destination / path.name)


def compress(settings: CompressSettings) -> dict[str, Any]:
    """Run every stage (module docstring); returns the report (also written as ``OUT/report.json``)."""
    settings.check()
    work, state = _check_start(settings)
    torch.manual_seed(settings.seed)
    model, objective = load_model(settings.model_dir, settings.device)
    codec: TextCodec = load_codec(settings.model_dir, settings.tokenizer, model, objective)
    if "prune" not in state["stages"]:  # fail on the kinds, criterion or target before any stage runs
        get_method_settings(settings)
        ratios, expected, rounded = _plan(model, settings)
    text = read_text(settings.data, "calibration")
    inputs, labels = text_blocks(text, codec, settings.seq_len, "calibration")
    if settings.eval_data is not None:
        eval_inputs, eval_labels = text_blocks(
            read_text(settings.eval_data, "evaluation"), codec, settings.seq_len, "evaluation"
        )
    else:  # the tail of --data is held out
        held = max(1, min(settings.eval_samples, inputs.shape[0] // 10))
        if inputs.shape[0] - held < 1:
            raise PlpruneError(
                f"{settings.data} is too short: it gives {inputs.shape[0]} block(s) of "
                f"{settings.seq_len} tokens, and calibration and evaluation need 2 or more (or give "
                "--eval-data)"
            )
        eval_inputs, eval_labels = inputs[-held:], labels[-held:]
        inputs, labels = inputs[:-held], labels[:-held]
    eval_inputs, eval_labels = eval_inputs[: settings.eval_samples], eval_labels[: settings.eval_samples]
    held_out = objective_batches(eval_inputs, eval_labels, objective, codec, settings.batch_size, seed=12345)
    state.setdefault("data", {}).update(
        objective=objective,
        tokenizer=codec.source,
        calibration_blocks=int(min(inputs.shape[0], settings.calibration_samples)),
        recovery_blocks=int(inputs.shape[0]),
        eval_blocks=int(eval_inputs.shape[0]),
        eval_source=str(settings.eval_data or f"last {eval_inputs.shape[0]} blocks of {settings.data}"),
    )
    stages = state["stages"]
    if "dense" not in stages:
        with _stage(state, "dense", work) as record:
            _evaluate(model, settings, held_out, record, "dense")
            record["weight_bytes"] = weight_bytes(settings.model_dir)
    if "prune" not in stages:
        with _stage(state, "prune", work) as record:
            calibration_rows = torch.randperm(
                inputs.shape[0], generator=torch.Generator().manual_seed(settings.seed)
            )
            rows = calibration_rows[: settings.calibration_samples]
            calibration = objective_batches(
                inputs[rows], labels[rows], objective, codec, settings.batch_size, settings.seed
            )
            dense_copy, _ = load_model(settings.model_dir, settings.device)
            record.update(ratios=ratios, expected_kept_fraction=expected, rounded_for_config=rounded)
            pruner = _score_and_compact(model, settings, calibration, ratios, record)
            _evaluate(model, settings, held_out, record, "pruned")
            record["latency"] = latency(
                dense_copy, model, settings.seq_len, (1, 32), settings.latency_repeats, codec.vocab_size
            )
            record["threads"] = torch.get_num_threads()
            del dense_copy
            record["saved_with"] = _save_stage_model(model, pruner, work / "pruned")
    if settings.recover_steps and "recover" not in stages:
        # from the saved stage, also right after pruning: a resumed run recovers the very same model
        model, _ = load_model(work / "pruned", settings.device)
        with _stage(state, "recover", work) as record:
            bar = _bar(settings, settings.recover_steps, f"recover ({settings.recovery})")

            def tick(loss: float) -> None:
                bar.set_postfix(loss=f"{loss:.3f}")
                bar.update(1)

            model, losses = recover(
                model,
                inputs,
                labels,
                objective=objective,
                codec=codec,
                steps=settings.recover_steps,
                batch_size=settings.batch_size,
                lr=settings.recover_lr,
                mode=settings.recovery,
                rank=settings.lora_rank,
                seed=settings.seed,
                progress=tick,
            )
            bar.close()
            record.update(
                first_loss=losses[0], last_loss=losses[-1], steps=len(losses), mode=settings.recovery
            )
            _evaluate(model, settings, held_out, record, "recovered")
            if stages["prune"]["saved_with"] == "save_pretrained":
                record["saved_with"] = _save_stage_model(model, None, work / "recovered")
            else:
                rebuilt, pruned_groups = _rebuilt_pruner(settings, stages["prune"]["mask"], model)
                record["saved_with"] = _save_stage_model(rebuilt, pruned_groups, work / "recovered")
    final_dir = work / ("recovered" if settings.recover_steps else "pruned")
    out = settings.out
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for path in final_dir.iterdir():
            shutil.copy2(path, temporary / path.name)
        _copy_tokenizer(settings, temporary)
        stages["save"] = {
            "weight_bytes": weight_bytes(temporary),
            "format": stages["recover" if settings.recover_steps else "prune"]["saved_with"],
        }
        report = write_report(state, temporary)
        if out.exists():
            shutil.rmtree(out)
        temporary.rename(out)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return report
