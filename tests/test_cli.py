"""CLI: each bad input gives one clear message and exit status 2, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plprune.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout, stderr of ``plprune ARGV`` (argparse's own usage errors exit via SystemExit)."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


TINY = [
    "--seq-len",
    "16",
    "--layers",
    "1",
    "--hidden",
    "16",
    "--heads",
    "2",
    "--ffn",
    "32",
    "--batch-size",
    "4",
    "--eval-every",
    "4",
    "--eval-batches",
    "1",
    "--min-freq",
    "1",
    "--no-progress",
]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "steps must be a positive integer"),
        (["--steps", "-3"], "steps must be a positive integer"),
        (["--batch-size", "0"], "batch_size must be a positive integer"),
        (["--lr", "0"], "lr must be a finite number > 0"),
        (["--lr=-1e-3"], "lr must be a finite number > 0"),
        (["--heads", "3"], "heads (3) must divide hidden (16)"),
        (
            ["--task", "gpt-imagenet"],
            "unknown task 'gpt-imagenet'; valid: bert-wikitext2, bert-pydoc, switch-wikitext2",
        ),
        (["--method", "magic"], "unknown method 'magic'"),
        (["--method", "pl", "--prune-ratio", "1.0"], "prune ratio must lie in [0, 1)"),
        (["--method", "pl", "--prune-at", "500"], "not before the end of training"),
        (["--method", "pl", "--alpha=-1"], "alpha must be a finite number >= 0"),
        (["--method", "pl", "--num-probes", "0"], "num_probes must be a positive integer"),
        (["--method", "pl", "--prune-ratio", "0.9", "--prune-at", "2"], "would remove a protected group"),
    ],
)
def test_bad_arguments(
    capsys, tiny_wikitext_dir: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys,
        "train",
        "--data-dir",
        str(tiny_wikitext_dir),
        "--out",
        str(out),
        *TINY,
        "--steps",
        "8",
        *extra,
    )
    assert code == 2
    assert message in err
    assert err.startswith("plprune: error:") and "Traceback" not in err
    assert not out.exists(), "a failed start must not leave a half-made run directory"


def test_data_errors(capsys, tmp_path: Path, tiny_wikitext_dir: Path) -> None:
    code, _, err = run_cli(
        capsys, "train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")
    )
    assert code == 2 and "nowhere" in err and "--data-dir" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "valid.txt").write_text("   \n")
    (empty / "test.txt").write_text("some words here\n")
    code, _, err = run_cli(capsys, "train", "--data-dir", str(empty), "--out", str(tmp_path / "b"))
    assert code == 2 and "valid.txt" in err and "empty" in err

    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "valid.txt").write_text("words\n")
    code, _, err = run_cli(capsys, "train", "--data-dir", str(missing), "--out", str(tmp_path / "c"))
    assert code == 2 and "test.txt" in err

    code, _, err = run_cli(
        capsys,
        "train",
        "--data-dir",
        str(tiny_wikitext_dir),
        "--out",
        str(tmp_path / "d"),
        *TINY,
        "--seq-len",
        "5000",
    )
    assert code == 2 and "block" in err


def test_missing_data_dir_mentions_the_environment_variable(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PLPRUNE_DATA_DIR", raising=False)
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "x"))
    assert code == 2 and "PLPRUNE_DATA_DIR" in err


def test_existing_run_dir_needs_resume(capsys, tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_wikitext_dir), "--out", str(out), *TINY, "--steps", "4"]
    assert run_cli(capsys, *args)[0] == 0
    before = (out / "metrics.jsonl").read_text()
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "--resume" in err
    assert (out / "metrics.jsonl").read_text() == before
    code, _, err = run_cli(
        capsys,
        "train",
        "--data-dir",
        str(tiny_wikitext_dir),
        "--out",
        str(tmp_path / "new"),
        *TINY,
        "--steps",
        "4",
        "--resume",
    )
    assert code == 2 and "nothing to resume" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; permission bits do not apply")
def test_unwritable_output_dir(capsys, tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    code, _, err = run_cli(
        capsys, "train", "--data-dir", str(tiny_wikitext_dir), "--out", str(locked / "run"), *TINY
    )
    assert code == 2 and "cannot write" in err


def test_output_path_that_is_a_file(capsys, tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(
        capsys,
        "train",
        "--data-dir",
        str(tiny_wikitext_dir),
        "--out",
        str(blocker / "run"),
        *TINY,
        "--steps",
        "4",
    )
    assert code == 2 and "cannot write" in err
    assert blocker.read_text() == "x"


def test_config_file_and_flags(capsys, tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        f'task = "bert-wikitext2"\n[data]\ndata_dir = "{tiny_wikitext_dir}"\nseq_len = 16\n'
        "[train]\nsteps = 4\nbatch_size = 4\neval_every = 2\n[model]\nlayers = 1\nhidden = 16\n"
        "heads = 2\nffn = 32\n"
    )
    code, out, _ = run_cli(
        capsys,
        "train",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "6",
        "--no-progress",
        "--eval-batches",
        "1",
    )
    assert code == 0 and "test PPL" in out
    assert '"steps": 6' in (tmp_path / "run" / "config.json").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nstepz = 3\n")
    code, _, err = run_cli(capsys, "train", "--config", str(bad), "--out", str(tmp_path / "r2"))
    assert code == 2 and "stepz" in err


def test_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "train" in out and "demo" in out


def test_switch_task_prunes_experts_and_heads_with_kind_ratios(
    capsys, tiny_wikitext_dir: Path, tmp_path: Path
) -> None:
    import json

    out = tmp_path / "switch"
    code, _, err = run_cli(
        capsys,
        "train",
        "--task",
        "switch-wikitext2",
        "--data-dir",
        str(tiny_wikitext_dir),
        "--out",
        str(out),
        *TINY,
        "--steps",
        "8",
        "--experts",
        "4",
        "--method",
        "pl",
        "--prune-at",
        "4",
        "--kinds",
        "head,expert",
        "--kind-ratios",
        "head=0.5,expert=0.5",
        "--gate-steps",
        "2",
        "--feature-samples",
        "4",
        "--no-diagnostics",
    )
    assert code == 0, err
    event = json.loads((out / "pruning.jsonl").read_text().splitlines()[0])
    assert event["pruned_ratio"] == {"head": 0.5, "expert": 0.5}
    assert sum(name.startswith("expert") for name in event["groups"]) == 4  # 1 layer × 4 experts
    code, _, err = run_cli(
        capsys,
        "train",
        "--task",
        "switch-wikitext2",
        "--data-dir",
        str(tiny_wikitext_dir),
        "--out",
        str(tmp_path / "bad"),
        *TINY,
        "--experts",
        "1",
    )
    assert code == 2 and "experts must be an integer >= 2" in err
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "bad2"), "--kind-ratios", "head:0.5")
    assert code == 2 and "KIND=RATIO" in err


def test_cnn_task_uses_its_defaults_and_prunes_filters_on_a_linear_schedule(capsys, tmp_path: Path) -> None:
    import json

    out = tmp_path / "vgg"
    code, stdout, err = run_cli(
        capsys,
        "train",
        "--task",
        "vgg-digits",
        "--out",
        str(out),
        "--steps",
        "90",
        "--eval-every",
        "45",
        "--method",
        "random",
        "--prune-at",
        "30",
        "--prune-end",
        "60",
        "--prune-every",
        "30",
        "--no-diagnostics",
        "--no-progress",
    )
    assert code == 0, err
    assert "test acc %" in stdout and "final test accuracy" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["optimizer"] == "sgd" and config["prune"]["schedule"] == "linear"
    events = [json.loads(line) for line in (out / "pruning.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [30, 60]
    assert [e["pruned_ratio"]["filter"] for e in events] == pytest.approx([0.25, 0.5], abs=0.01)


@pytest.mark.parametrize("command", ["train", "demo", "compare", "report", "export", "bench-latency"])
def test_every_command_prints_its_help(command: str, capsys) -> None:
    from plprune.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: plprune" in capsys.readouterr().out
