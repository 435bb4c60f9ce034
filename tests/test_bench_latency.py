"""``plprune bench-latency``: one end-to-end run on a tiny model, and one clear error per bad argument."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plprune.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bench_latency_tiny_bert_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench"
    code, stdout, stderr = run_cli(
        capsys, "bench-latency", "--model", "bert", "--size", "tiny", "--repeats", "2", "--warmup", "1",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, stderr
    assert "written to" in stdout
    assert "bench-latency:" not in stderr  # no progress line without a terminal
    result = json.loads((out / "latency.json").read_text())
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "LATENCY.md").read_text()
    assert result["meta"]["command"] in markdown and "| compacted |" in markdown

    meta, model, variants = result["meta"], result["model"], result["variants"]
    assert meta["command"].startswith("plprune bench-latency --model bert --ratio 0.75")
    assert meta["threads"] == [1] and meta["versions"]["torch"]
    assert model["groups"] == 8 and model["groups_kept"] == 2  # 2 layers x 4 heads, 75% pruned
    assert 0 < model["group_parameter_fraction"] < 1
    assert list(variants) == ["dense", "masked", "compacted", "compacted+ort"], result["unavailable"]
    dense, compacted = variants["dense"], variants["compacted"]
    assert variants["masked"]["parameters"] == dense["parameters"] > compacted["parameters"]
    assert dense["macs_per_sample"] > compacted["macs_per_sample"] > 0
    assert compacted["max_abs_diff_vs_masked"] < 1e-4
    assert variants["compacted+ort"]["max_abs_diff_vs_compacted"] < 1e-4
    assert variants["compacted+ort"]["onnx_bytes"] > 0 and dense["safetensors_bytes"] > 0
    for info in variants.values():
        memory = info["memory"]
        assert "error" not in memory, memory
        assert memory["peak_rss_mb"] >= memory["model_and_forward_mb"] > 0 and memory["forward_mb"] >= 0
    for measure in ("batch1", "batch32", "attention_batch1", "attention_batch32"):
        rows = result["latency"]["1"][measure]
        assert set(rows) == set(variants)
        for row in rows.values():
            assert row["runs"] == 2 and 0 < row["q1_ms"] <= row["median_ms"] <= row["q3_ms"]
    assert result["ratios"]["speedup_vs_dense"]["1"]["batch32"]["dense"] == 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "bench-latency needs --model, one of: bert, hf-bert, switch, vgg, resnet56"),
        (["--model", "gpt"], "unknown --model 'gpt'; valid: bert, hf-bert, switch, vgg, resnet56"),
        (["--model", "bert", "--no-out"], None),  # argparse: unknown flag (its own usage message)
        (["--model", "bert"], "bench-latency needs --out DIR"),
        (["--model", "bert", "--ratio", "1", "--out", "x"], "--ratio must lie in (0, 1)"),
        (["--model", "bert", "--ratio", "half", "--out", "x"], "--ratio must be a number, got 'half'"),
        (["--model", "bert", "--width", "0.5", "--out", "x"], "--width applies to the CNNs (vgg, resnet56)"),
        (["--model", "vgg", "--width", "-1", "--out", "x"], "--width must be > 0"),
        (["--model", "vgg", "--input", "imagenet", "--out", "x"], "unknown --input 'imagenet'"),
        (["--model", "bert", "--size", "huge", "--out", "x"], "unknown --size 'huge'; valid: default, tiny"),
        (["--model", "bert", "--threads", "0", "--out", "x"], "--threads must be between 1 and the"),
        (["--model", "bert", "--threads", "1,1", "--out", "x"], "--threads lists a thread count twice"),
        (["--model", "bert", "--repeats", "1", "--out", "x"], "--repeats must be >= 2"),
        (["--model", "bert", "--repeats", "2.5", "--out", "x"], "--repeats must be an integer, got '2.5'"),
        (
            ["--model", "bert", "--size", "tiny", "--ratio", "0.9", "--out", "x"],
            "the largest allowed ratio here is 0.750",
        ),
    ],
)
def test_bench_latency_bad_arguments(tmp_path: Path, capsys, monkeypatch, argv: list[str], message) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli(capsys, "bench-latency", *argv)
    assert code == 2
    if message is None:
        assert "unrecognized arguments: --no-out" in stderr
        return
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plprune: error: "), stderr
    assert message in lines[0]
    assert "Traceback" not in stderr and not (tmp_path / "x").exists()
