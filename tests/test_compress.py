"""``plprune compress`` end to end on tiny models built from configs: a Llama-style decoder with grouped-query
attention (output reloaded by ``transformers`` alone) and a BERT masked LM (read with ``plprune.load``),
the parameter-budget solver against a plain scan, resume after a kill, and one clear error per bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from plprune.compress import CompressSettings, compress
from plprune.compress.target import GRID, group_sizes, removed_size, solve_ratios
from plprune.data.causal_lm import make_lm_blocks
from plprune.data.word_tokenizer import WordTokenizer
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from tiny_data import write_tiny_wikitext

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Text, a plprune word tokenizer, and two trained-from-nothing checkpoints (seeded)."""
    root = tmp_path_factory.mktemp("compress")
    data = write_tiny_wikitext(root / "data")
    tokenizer = WordTokenizer.build((data / "valid.txt").read_text())
    torch.manual_seed(0)
    llama = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
    )
    transformers.LlamaForCausalLM(llama).save_pretrained(root / "llama")
    tokenizer.save(root / "llama" / "plprune_tokenizer.json")
    bert = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        architectures=["BertForMaskedLM"],
    )
    transformers.BertForMaskedLM(bert).save_pretrained(root / "bert")
    tokenizer.save(root / "bert" / "plprune_tokenizer.json")
    return root


def _settings(root: Path, model: str, out: str, **overrides: object) -> CompressSettings:
    values: dict = dict(
        model_dir=root / model,
        data=root / "data" / "valid.txt",
        eval_data=root / "data" / "test.txt",
        out=root / out,
        keep_params=0.8,
        method="random",
        seq_len=16,
        batch_size=4,
        calibration_samples=8,
        eval_samples=8,
        latency_repeats=1,
        progress=False,
    )
    values.update(overrides)
    return CompressSettings(**values)


def _next_token_ppl(model: torch.nn.Module, root: Path, tokenizer: WordTokenizer) -> float:
    """An independent perplexity: next-token cross-entropy over the first 8 blocks of test.txt."""
    ids = torch.tensor(tokenizer.encode((root / "data" / "test.txt").read_text()))
    inputs, labels = make_lm_blocks(ids, 16, ignore_ids=(tokenizer.unk_id,))
    with torch.no_grad():
        logits = model(input_ids=inputs[:8]).logits
    loss = F.cross_entropy(logits.flatten(0, 1), labels[:8].flatten(), ignore_index=-100, reduction="mean")
    return math.exp(float(loss))


def test_decoder_with_gqa_is_compressed_with_pl_recovered_and_reloaded_by_transformers(
    workspace: Path,
) -> None:
    settings = _settings(
        workspace,
        "llama",
        "llama-pl",
        method="pl",
        method_settings={"gate_steps": 2, "feature_samples": 4},
        keep_params=0.85,
        recover_steps=3,
    )
    report = compress(settings)
    out = workspace / "llama-pl"
    written = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "plprune_tokenizer.json",
        "report.md",
        "report.json",
    } <= written
    assert "quality_vs_size.png" in written
    assert not [p for p in workspace.iterdir() if p.name.startswith(".llama-pl")]  # no work or temp left
    stages = report["stages"]
    assert stages["save"]["format"] == "save_pretrained"
    # the budget is met, and every KV head keeps the same number of query heads
    assert stages["prune"]["parameters"] <= 0.85 * stages["dense"]["parameters"]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    config = reloaded.config
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert sum(p.numel() for p in reloaded.parameters()) == stages["recover"]["parameters"]
    tokenizer = WordTokenizer.from_dict(json.loads((out / "plprune_tokenizer.json").read_text()))
    # the report's perplexity is the reloaded model's, recomputed independently
    assert _next_token_ppl(reloaded, workspace, tokenizer) == pytest.approx(
        stages["recover"]["perplexity"], rel=1e-4
    )
    assert "from_pretrained" in (out / "report.md").read_text()


def test_masked_lm_with_pruned_heads_goes_the_plprune_load_way(workspace: Path) -> None:
    import plprune

    report = compress(_settings(workspace, "bert", "bert-grad", method="grad-score", keep_params=0.75))
    out = workspace / "bert-grad"
    assert report["stages"]["save"]["format"] == "plprune.export"  # BERT configs cannot say the head size
    model = plprune.load(out)
    assert sum(p.numel() for p in model.parameters()) == report["stages"]["prune"]["parameters"]
    assert "plprune.load" in (out / "report.md").read_text()


def test_masked_lm_with_pruned_neurons_is_reloaded_by_transformers(workspace: Path) -> None:
    """An encoder MLM whose FFN width shrinks alike in every layer: its config says the new width, so
    ``AutoModelForMaskedLM.from_pretrained`` rebuilds it without plprune, and the reloaded model gives the
    report's pseudo-perplexity on the same fixed masks."""
    from plprune.compress.inputs import load_codec, read_text, text_blocks
    from plprune.compress.measure import objective_batches, perplexity

    settings = _settings(workspace, "bert", "bert-neurons", kinds=("neuron",), keep_params=0.95)
    report = compress(settings)
    out = workspace / "bert-neurons"
    assert report["stages"]["save"]["format"] == "save_pretrained"
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(out, attn_implementation="eager").eval()
    assert reloaded.config.intermediate_size < 96  # the dense width
    widths = {layer.intermediate.dense.out_features for layer in reloaded.bert.encoder.layer}
    assert widths == {reloaded.config.intermediate_size}
    assert sum(p.numel() for p in reloaded.parameters()) == report["stages"]["prune"]["parameters"]
    codec = load_codec(out, None, reloaded, "masked")
    text = read_text(settings.eval_data, "evaluation")
    inputs, labels = text_blocks(text, codec, settings.seq_len, "evaluation")
    n = settings.eval_samples
    batches = objective_batches(inputs[:n], labels[:n], "masked", codec, settings.batch_size, seed=12345)
    assert perplexity(reloaded, batches) == pytest.approx(report["stages"]["prune"]["perplexity"], rel=1e-5)


def test_lora_recovery_merges_back_into_plain_weights(workspace: Path) -> None:
    report = compress(
        _settings(workspace, "llama", "llama-lora", recover_steps=4, recovery="lora", recover_lr=1e-2)
    )
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(workspace / "llama-lora")
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    pruned = transformers.AutoModelForCausalLM.from_pretrained(workspace / "llama-lora")
    assert report["stages"]["recover"]["mode"] == "lora"
    assert report["stages"]["recover"]["perplexity"] != report["stages"]["prune"]["perplexity"]
    assert sum(p.numel() for p in pruned.parameters()) == report["stages"]["prune"]["parameters"]


def test_the_solved_ratio_is_the_smallest_on_the_grid_that_meets_the_budget(workspace: Path) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(workspace / "llama")
    groups = GroupSet(model, ("head", "neuron"))
    total = sum(p.numel() for p in model.parameters())
    sizes = group_sizes(groups)
    # a group's size by hand: query head = head_dim rows of q_proj + head_dim columns of o_proj
    head_dim = 64 // 8
    assert float(sizes[groups.kind_index("head")[0]]) == 2 * head_dim * 64
    assert float(sizes[groups.kind_index("neuron")[0]]) == 3 * 64  # gate, up rows and a down column
    for keep in (0.9, 0.8, 0.7):
        ratios, kept, rounded = solve_ratios(groups, total, keep, {}, "per_layer")
        assert not rounded
        scan = next(
            s
            for s in range(GRID)
            if removed_size(groups, dict.fromkeys(groups.kinds, s / GRID), "per_layer", sizes)
            >= total * (1 - keep)
        )
        assert ratios == dict.fromkeys(groups.kinds, scan / GRID)
        assert kept <= keep
    # with a test that refuses 6 of 8 heads (hidden 64), the ratio is raised to the next accepted one
    index = groups.kind_index("head")

    def no_six(ratios: dict[str, float]) -> bool:
        from plprune.keep import select_mask

        kept = select_mask(groups, torch.zeros(len(groups)), ratios, "per_layer")[index]
        return int(kept.sum()) != 12  # 2 layers x 6 heads

    plain, _, _ = solve_ratios(groups, total, 0.85, {}, "per_layer")
    assert not no_six(plain)  # the shared ratio alone lands on 6 heads here
    raised, kept, rounded = solve_ratios(groups, total, 0.85, {}, "per_layer", no_six)
    assert rounded and no_six(raised) and kept <= 0.85
    # it keeps at least as much as raising the one shared ratio until the test passes would
    shared = next(
        r
        for s in range(GRID)
        if no_six(r := dict.fromkeys(groups.kinds, s / GRID))
        and removed_size(groups, r, "per_layer", sizes) >= total * 0.15
    )
    assert kept >= 1 - removed_size(groups, shared, "per_layer", sizes) / total
    with pytest.raises(PlpruneError, match="cannot keep only"):
        solve_ratios(groups, total, 0.05, {}, "per_layer")


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``plprune compress ARGS`` in this process: (exit status, stderr)."""
    from plprune.cli import main

    status = main(["compress", *args, "--no-progress"])
    return status, capsys.readouterr().err


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "plprune.cli", "compress", *args, "--no-progress"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _common(root: Path, out: str) -> list[str]:
    return [
        str(root / "llama"),
        "--data", str(root / "data" / "valid.txt"),
        "--eval-data", str(root / "data" / "test.txt"),
        "--out", str(root / out),
        "--seq-len", "16", "--batch-size", "4", "--calibration-samples", "8", "--eval-samples", "8",
        "--latency-repeats", "1", "--method", "grad-score", "--keep-params", "0.8", "--recover-steps", "2",
    ]  # fmt: skip


def test_a_run_killed_after_a_stage_resumes_to_the_same_result(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = _main(capsys, *_common(workspace, "whole"))
    assert status == 0, err
    killed = _cli(*_common(workspace, "resumed"), env={"PLPRUNE_TEST_KILL_AT": "compress-stage:2"})
    assert killed.returncode != 0
    assert not (workspace / "resumed").exists()  # the output appears only when complete
    status, err = _main(capsys, *_common(workspace, "resumed"))
    assert status == 2 and "--resume" in err
    status, err = _main(capsys, *_common(workspace, "resumed"), "--resume")
    assert status == 0, err
    a = json.loads((workspace / "whole" / "report.json").read_text())["stages"]
    b = json.loads((workspace / "resumed" / "report.json").read_text())["stages"]
    for stage in ("dense", "prune", "recover"):
        assert b[stage]["perplexity"] == pytest.approx(a[stage]["perplexity"], rel=1e-6)
    from safetensors.torch import load_file

    left, right = (
        load_file(workspace / "whole" / "model.safetensors"),
        load_file(workspace / "resumed" / "model.safetensors"),
    )
    assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "missing"}, "does not exist"),
        ({"model": "data"}, "not a model directory"),
        ({"data": "empty.txt"}, "is empty"),
        ({"data": "binary.bin"}, "looks binary"),
        ({"args": ["--keep-params", "0.05"]}, "cannot keep only"),
        ({"args": ["--method", "imp"]}, "acts during training"),
        ({"args": ["--kinds", "head,wing"]}, "unknown kinds"),
        ({"tokenizer": True}, "not this model's tokenizer"),
        ({"existing": True}, "exists; pass --force"),
    ],
)
def test_bad_input_gives_one_clear_error_and_writes_nothing(
    workspace: Path, change: dict, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (workspace / "empty.txt").write_text("  \n")
    (workspace / "binary.bin").write_bytes(b"\x00\x01\x02" * 100)
    data = workspace / change["data"] if "data" in change else workspace / "data" / "valid.txt"
    args = [
        str(workspace / change.get("model", "llama")),
        "--data", str(data),
        "--out", str(workspace / "bad-out"),
        "--seq-len", "16", "--batch-size", "4", "--calibration-samples", "4", "--eval-samples", "4",
        "--method", "random",
    ]  # fmt: skip
    extra = change.get("args", [])
    if "--keep-params" not in extra:
        args += ["--keep-params", "0.8"]
    if change.get("tokenizer"):
        big = WordTokenizer.build(" ".join(f"w{i}" for i in range(500)))
        big.save(workspace / "big_tokenizer.json")
        args += ["--tokenizer", str(workspace / "big_tokenizer.json")]
    if change.get("existing"):
        (workspace / "bad-out").mkdir(exist_ok=True)
    status, err = _main(capsys, *args, *extra)
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.startswith("plprune: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert not (workspace / ".bad-out.compress-work").exists()  # nothing half-written
    if change.get("existing"):
        assert not any((workspace / "bad-out").iterdir())
        (workspace / "bad-out").rmdir()
    else:
        assert not (workspace / "bad-out").exists()


@pytest.mark.parametrize("method", ["magnitude", "taylor", "wanda-sp", "flap", "block-influence"])
def test_every_calibration_criterion_gives_a_model_transformers_reloads(workspace: Path, method: str) -> None:
    """FLAP's compensation biases (created on a bias-free Llama) are described by the config's bias flags;
    block influence removes whole layers (the config's layer count follows)."""
    kinds = ("layer",) if method == "block-influence" else ("head", "neuron")
    extra = {"kind_ratios": {"layer": 0.5}, "keep_params": None} if method == "block-influence" else {}
    report = compress(_settings(workspace, "llama", f"llama-{method}", method=method, kinds=kinds, **extra))
    out = workspace / f"llama-{method}"
    assert report["stages"]["save"]["format"] == "save_pretrained"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tokenizer = WordTokenizer.from_dict(json.loads((out / "plprune_tokenizer.json").read_text()))
    assert _next_token_ppl(reloaded, workspace, tokenizer) == pytest.approx(
        report["stages"]["prune"]["perplexity"], rel=1e-4
    )
    if method == "flap":
        assert reloaded.config.mlp_bias or reloaded.config.attention_bias
    if method == "block-influence":
        assert reloaded.config.num_hidden_layers == 1


def test_training_time_methods_are_refused_by_their_registration() -> None:
    """compress takes every registered method but the dense reference and those registered training_time; the
    refused set is the hand-kept list it replaced (regularisers, rewinding, every proximal method)."""
    from plprune.compress.settings import calibration_methods
    from plprune.pruners.registry import METHOD_NAMES

    refused = set(METHOD_NAMES) - set(calibration_methods())
    former = {"dense", "imp", "gsm", "l0-gates", "cont-sparse", "trimmed-l1"}
    assert refused == former | {m for m in METHOD_NAMES if m.startswith("prox-")}
    assert {"pl", "random", "magnitude", "taylor", "flap", "wanda-sp", "block-influence"} <= set(
        calibration_methods()
    )
    for method, message in (("gsm", "acts during training"), ("nosuch", "is no method that scores")):
        with pytest.raises(PlpruneError, match=message):
            CompressSettings(
                model_dir=Path("m"), data=Path("d"), out=Path("o"), keep_params=0.7, method=method
            ).check()


def test_the_criterions_settings_flags_reach_it(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--gate-steps 10 --gate-batch-size 0`` (PL's paper budget) become the criterion's settings, as in
    ``plprune train``; a flag of another method is one clear error."""
    import plprune.compress as compress_module

    seen: list[CompressSettings] = []

    def fake(settings: CompressSettings) -> dict:
        seen.append(settings)
        raise PlpruneError("stopped after the settings were built")

    monkeypatch.setattr(compress_module, "compress", fake)
    args = ["m", "--data", "d.txt", "--out", "o", "--keep-params", "0.7"]
    paper = ["--gate-steps", "10", "--gate-batch-size", "0", "--feature-samples", "16"]
    status, err = _main(capsys, *args, *paper)
    assert status == 2 and "stopped after the settings were built" in err
    assert seen[0].method == "pl"
    assert seen[0].method_settings == {"gate_steps": 10, "gate_batch_size": 0, "feature_samples": 16}
    status, err = _main(capsys, *args, "--method", "taylor", "--gate-steps", "10")
    assert status == 2 and "--gate-steps is a setting of pl" in err and len(seen) == 1
