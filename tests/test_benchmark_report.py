"""The benchmark report renders from fixture results: tables, paired ratios, corrupt files skipped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from dense_vs_pl_report import summarise, write_report


def _history(test_values: list[float], train_values: list[float]) -> list[dict]:
    records = [
        {
            "step": 100 * (i + 1),
            "epoch": i + 1.0,
            "train_ppl": tr,
            "test_ppl": te,
            "delta_ppl": te - tr,
            "wall_time": 10.0 * (i + 1),
        }
        for i, (tr, te) in enumerate(zip(train_values, test_values, strict=True))
    ]
    final = dict(records[-1], final=True, prune_seconds=0.5, diagnostics_seconds=2.0)
    return [*records, final]


def _write_run(
    out: Path, name: str, test_values: list[float], train_values: list[float], method: str
) -> None:
    run = out / "runs" / name
    run.mkdir(parents=True)
    history = _history(test_values, train_values)
    summary = {"steps": 300, "final": history[-1], "history": history, "pruning_events": [], "method": method}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.json").write_text(
        json.dumps(
            {
                "task": "bert-wikitext2",
                "data": {"train_fraction": 1.0},
                "model": {"layers": 1},
                "train": {"steps": 300},
                "prune": {"ratio": 0.75, "schedule": "one-shot", "prune_at": "5e"},
            }
        )
    )


def test_report_from_fixture_results(tmp_path: Path, capsys) -> None:
    _write_run(tmp_path, "dense-s0", [500.0, 400.0, 300.0], [450.0, 350.0, 250.0], "dense")
    _write_run(tmp_path, "dense-s1", [520.0, 420.0, 320.0], [470.0, 370.0, 270.0], "dense")
    _write_run(tmp_path, "pl-s0", [480.0, 290.0, 285.0], [440.0, 260.0, 240.0], "pl")
    _write_run(tmp_path, "pl-s1", [490.0, 330.0, 288.0], [450.0, 280.0, 250.0], "pl")
    corrupt = tmp_path / "runs" / "random-s0"
    corrupt.mkdir()
    (corrupt / "summary.json").write_text("{not json")
    meta = {"command": "test", "machine": {}, "variants": {"dense": "d", "pl": "p", "random": "r"}}

    write_report(tmp_path, ["dense", "pl", "random"], [0, 1], meta)

    assert "skipping corrupt" in capsys.readouterr().out
    report = (tmp_path / "REPORT.md").read_text()
    assert "| method |" in report and "final test PPL" in report
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {row["method"]: row for row in results["rows"]}
    assert set(rows) == {"dense", "pl"}
    assert rows["dense"]["final test PPL"] == "310.00 ± 14.14"
    # paired ratios: 285/300 = 0.95 and 288/320 = 0.90
    assert rows["pl"]["test / dense (paired)"] == "0.925 ± 0.035"  # ratios 0.95, 0.90: std 0.05/√2
    # dense's mean final test PPL is 310: seed 0 reaches it at step 200 (290), seed 1 only at 300 (288)
    assert rows["pl"]["reaches dense final (× steps)"] == "0.83 ± 0.24 (2/2)"
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "results.csv").read_text().startswith("method,seeds,")


def test_summarise_picks_three_train_checkpoints_for_mlm(tmp_path: Path) -> None:
    _write_run(tmp_path, "dense-s0", [500.0, 400.0, 300.0], [450.0, 350.0, 250.0], "dense")
    from dense_vs_pl_report import load_runs

    rows, columns, details = summarise(load_runs(tmp_path, ["dense"], [0]))
    assert details["checkpoints"] == [100, 200, 300]
    assert [c for c in columns if c.startswith("train PPL @")] == [
        "train PPL @100",
        "train PPL @200",
        "train PPL @300",
    ]
    assert (
        rows[0]["train PPL @200"] == pytest.approx("350.00 ± 0.00")
        or rows[0]["train PPL @200"] == "350.00 ± 0.00"
    )
