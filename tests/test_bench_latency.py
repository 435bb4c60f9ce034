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


# -- the shared benchmark harness ---------------------------------------------------------------------------
def test_time_rounds_interleaves_rotates_and_passes_round_inputs() -> None:
    import torch

    from plprune.bench.harness import time_rounds

    log: list[tuple[str, int, bool]] = []
    calls = {
        name: (lambda r, name=name: log.append((name, r, torch.is_inference_mode_enabled())))
        for name in ("a", "b", "c")
    }
    times = time_rounds(calls, 4, warmup=2, inputs=lambda r: (r,))
    assert {name: len(t) for name, t in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for seconds in times.values() for t in seconds)
    warm, timed = log[:6], log[6:]
    assert [(n, r) for n, r, _ in warm] == [(n, r) for r in (-2, -1) for n in "abc"]  # warm-up: fixed order
    # timed rounds 0..3 start one entry later each round: abc, bca, cab, abc
    assert [n for n, _, _ in timed] == list("abcbcacababc")
    assert [r for _, r, _ in timed] == [r for r in range(4) for _ in range(3)]
    assert all(inference for _, _, inference in log)

    log.clear()
    time_rounds(calls, 2, inputs=lambda r: (r,), rotate=False, inference=False)
    assert [n for n, _, _ in log] == list("abcabc") and not any(i for _, _, i in log)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"calls": {}, "repeats": 2}, "at least one entry"),
        ({"calls": {"a": print}, "repeats": 0}, "repeats must be an integer >= 1"),
        ({"calls": {"a": print}, "repeats": 2, "warmup": -1}, "warmup must be an integer >= 0"),
    ],
)
def test_time_rounds_bad_arguments(kwargs: dict, message: str) -> None:
    from plprune.bench.harness import time_rounds
    from plprune.errors import PlpruneError

    with pytest.raises(PlpruneError, match=message):
        time_rounds(**kwargs)


def test_summaries_match_numpy_and_hand_computed_pairs() -> None:
    import numpy as np

    from plprune.bench.harness import quartiles, summarize, summarize_rounds

    seconds = [0.004, 0.001, 0.003, 0.010, 0.002, 0.006]
    q1, median, q3 = quartiles(seconds)
    assert (q1, median, q3) == pytest.approx(
        tuple(np.percentile(seconds, [25, 50, 75]))
    )  # linear = inclusive
    row = summarize(seconds, per=2)
    assert row["median_ms"] == pytest.approx(1000 * np.median(seconds) / 2)
    assert row["min_ms"] == pytest.approx(0.5) and row["runs"] == 6
    one = quartiles([0.5])
    assert one[1] == 0.5 and np.isnan(one[0]) and np.isnan(one[2])

    times = {"dense": [2.0, 4.0, 3.0], "fast": [1.0, 1.0, 3.0]}
    rows = summarize_rounds(times)
    # per round dense / fast = 2, 4, 1: median 2, inclusive quartiles 1.5 and 3
    assert rows["fast"]["paired_speedup"] == 2.0 and rows["fast"]["paired_speedup_iqr"] == [1.5, 3.0]
    assert rows["dense"]["paired_speedup"] == 1.0
    assert "paired_speedup" not in summarize_rounds({"x": [1.0, 2.0]})["x"]  # no reference timed


def test_markdown_table_and_metadata() -> None:
    from plprune.bench.harness import machine, markdown_table, versions
    from plprune.errors import PlpruneError

    assert markdown_table(("a", "b", "c"), [[1, "x", ""], ["y", 2.5, "z"]]) == [
        "| a | b | c |",
        "|---|---|---|",
        "| 1 | x | |",
        "| y | 2.5 | z |",
    ]
    with pytest.raises(PlpruneError, match="a row has 2 cells for 3 columns"):
        markdown_table(("a", "b", "c"), [[1, 2]])
    host = machine(note="shared")
    assert host["cpu_count"] >= 1 and len(host["load_average_at_start"]) == 3 and host["note"] == "shared"
    found = versions("numpy", "no_such_module_here")
    assert found["torch"] and found["numpy"] != "not installed"
    assert found["no_such_module_here"] == "not installed"


@pytest.mark.parametrize("model", ["bert", "vgg"])
def test_memory_job_rebuilds_each_form_from_its_state_dict(tmp_path: Path, model: str) -> None:
    """What a fresh memory process measures: the form rebuilt from spec + mask, its safetensors loaded
    strictly, computes what the form built in the parent computes (no pickled module involved)."""
    import torch
    from safetensors.torch import save_model

    from plprune.bench.latency.memory import _skeleton
    from plprune.bench.latency.spec import parse_spec
    from plprune.bench.latency.variants import build_variants

    spec = parse_spec(model=model, out=tmp_path / "out", size="tiny")
    built = build_variants(spec)
    x = built.family.example(3)
    for name, form in built.models().items():
        weights = str(tmp_path / f"{name}.safetensors")
        save_model(form, weights)
        skeleton = _skeleton({"spec": spec, "variant": name, "mask": built.mask, "weights": weights})
        assert sum(t.numel() for t in skeleton.model.state_dict().values()) == 0  # no weights held
        module = skeleton.fill(weights)  # uninitialised storage, then the file's tensors
        with torch.inference_mode():
            expected, got = built.family.wrap(form).eval()(x), module(x)
        assert torch.allclose(got, expected, atol=1e-6), name
    assert set(built.models()) == (
        {"dense", "masked", "compacted", "torch-pruning"}
        if model == "vgg"
        else {"dense", "masked", "compacted"}
    )
