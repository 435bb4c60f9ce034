"""Bad input, systematically (issue 12): property-based tests over CLI arguments, config files and data.

Every bad input must give exit status 2, exactly one ``plprune: error: ...`` line on stderr (argparse's
own usage errors use the same one-line format), never a traceback, and leave an existing run directory
byte-identical. ``plprune.cli.main`` runs in-process; every generated input fails validation before any
training starts (the flags, fields and settings are read from the parser and the config dataclasses, so
a new flag or config key is covered without editing this file). Examples are derandomized (CI is
deterministic); ``python -m pytest tests/test_bad_input_properties.py --hypothesis-show-statistics``
shows how many inputs each property tried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import math
import string
import typing
from hashlib import sha256
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from plprune import runner  # noqa: E402
from plprune.bench import report  # noqa: E402
from plprune.cli import build_parser, main  # noqa: E402
from plprune.errors import PlpruneError  # noqa: E402
from plprune.groups import WEIGHT_KIND  # noqa: E402
from plprune.keep import ALLOCATIONS  # noqa: E402
from plprune.pruners.registration import ALL_KINDS  # noqa: E402
from plprune.pruners.registry import METHODS, setting_flags  # noqa: E402
from plprune.run_config import TOKENIZERS, DataConfig, ModelConfig, PruneConfig, RunConfig, save_config  # noqa: E402
from plprune.schedules import SCHEDULES  # noqa: E402
from plprune.tasks.registry import TASKS  # noqa: E402
from plprune.train.config import OPTIMIZERS, TrainConfig  # noqa: E402
from plprune.validation import _matches  # noqa: E402

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- helpers ------------------------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Exit status and stderr of ``plprune ARGV`` run in-process (argparse exits via SystemExit)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


def assert_one_error(code: Any, err: str, *names: str) -> str:
    """Exit 2, exactly one ``plprune: error:`` line, no traceback; the line names one of ``names``."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("plprune: error: "), err
    if names:
        assert any(name in lines[0] for name in names), (names, lines[0])
    return lines[0]


def tree_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by relative path (directories listed too)."""
    return {
        str(path.relative_to(root)): sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory) -> Path:
    """A hand-made run directory with known files (the real config.json of a run, other files opaque)."""
    run = tmp_path_factory.mktemp("existing") / "run"
    run.mkdir()
    save_config(run / "config.json", RunConfig())
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (run / "metrics.jsonl").write_text('{"step": 4, "train_loss": 1.0}\n')
    (run / "summary.json").write_text("{}\n")
    (run / "tokenizer.json").write_text("{}\n")
    return run


@pytest.fixture
def guard(existing_run: Path):
    """Yields the existing run directory; fails if anything under it changed."""
    before = tree_hashes(existing_run)
    yield existing_run
    assert tree_hashes(existing_run) == before, "a bad input modified an existing run directory"


_fresh = itertools.count()
TINY = ["--seq-len", "8", "--layers", "1", "--hidden", "8", "--heads", "2", "--ffn", "8", "--eval-every", "2"]


def fresh_out(tmp_path: Path) -> Path:
    return tmp_path / f"fresh-{next(_fresh)}"


# -- what the parser and the config classes say ---------------------------------------------------------


def _train_parser():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return subparsers.choices["train"]


_SETTING_METHODS = {f"setting_{flag.field}": flag.methods for flag in setting_flags()}
# every numeric option of plprune train: (flag, destination, type); the method a settings flag needs
NUMERIC_FLAGS = [
    (action.option_strings[0], action.dest, action.type)
    for action in _train_parser()._actions
    if action.type in (int, float)
]

CHOICES = {
    "--method": set(METHODS),
    "--task": set(TASKS),
    "--kinds": {*ALL_KINDS, WEIGHT_KIND},
    "--schedule": set(SCHEDULES),
    "--optimizer": set(OPTIMIZERS),
    "--tokenizer": set(TOKENIZERS),
    "--allocation": set(ALLOCATIONS),
}
# (section, config class) of every config-file table; each method's settings are [prune.METHOD]
SECTIONS: list[tuple[str, type]] = [
    ("data", DataConfig),
    ("model", ModelConfig),
    ("train", TrainConfig),
    ("prune", PruneConfig),
    *((f"prune.{name}", spec.config) for name, spec in METHODS.items() if spec.config is not None),
]
FIELDS = [
    (section, f.name, typing.get_type_hints(cls)[f.name])
    for section, cls in SECTIONS
    for f in dataclasses.fields(cls)
    if f.name != "settings"
]
FLOAT_FIELDS = [(s, n, h) for s, n, h in FIELDS if _matches(0.5, h)]


def flag_args(flag: str, dest: str, value: str) -> list[str]:
    """``FLAG=VALUE``, plus ``--method M`` for a method's settings flag (M: its first method)."""
    methods = _SETTING_METHODS.get(dest)
    return [f"{flag}={value}", *(["--method", methods[0]] if methods else [])]


def names_of(flag: str, dest: str) -> tuple[str, ...]:
    field = dest.removeprefix("setting_")
    return flag, field, field.replace("_", " ")


# no NUL (a real command line cannot hold one) and no lone surrogates
_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def _parses(kind: type, text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


# -- numeric flags ------------------------------------------------------------------------------------------


def never_valid(kind: type) -> st.SearchStrategy[str]:
    """Values bad for every numeric flag: not a number of the type, NaN, ±inf (floats overflowing to inf,
    e.g. 1e400), integers beyond 64 bits, negative numbers."""
    not_a_number = st.text(_TEXT, max_size=12).filter(lambda s: not _parses(kind, s))
    special = st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e999"])
    overflow = st.one_of(st.integers(min_value=2**63, max_value=10**40), st.integers(max_value=-(2**63)))
    negative = (
        st.integers(min_value=-(10**6), max_value=-1)
        if kind is int
        else st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False)
    )
    if kind is float:  # a float of 2**63 is finite: too big an integer is an error of integer flags only
        return st.one_of(not_a_number, special, negative.map(repr))
    return st.one_of(not_a_number, special, overflow.map(str), negative.map(repr))


@pytest.mark.parametrize(("flag", "dest", "kind"), NUMERIC_FLAGS, ids=[f[0] for f in NUMERIC_FLAGS])
@settings(PROPERTY, max_examples=12)
@given(data=st.data())
def test_numeric_flags_reject_never_valid_values(data, flag: str, dest: str, kind: type, guard: Path) -> None:
    value = data.draw(never_valid(kind), label="value")
    code, err = run_cli(["train", *flag_args(flag, dest, value), "--out", str(guard), "--no-progress"])
    assert_one_error(code, err, *names_of(flag, dest))


# zero is a legal value of these (off switches and lower bounds); every other numeric flag must refuse it
ZERO_ALLOWED = {
    "--checkpoint-every",
    "--seed",
    "--weight-decay",
    "--grad-clip",
    "--warmup-fraction",
    "--dropout",
    "--prune-ratio",
    "--aux-loss-weight",
    "--alpha",
    "--gate-steps",
    "--gate-batch-size",  # 0 = the whole training batch (the paper's gate training)
    "--sparsity-strength",
    "--strength",
    "--weight-step",
    "--trimmed",
}


@pytest.mark.parametrize(("flag", "dest", "kind"), NUMERIC_FLAGS, ids=[f[0] for f in NUMERIC_FLAGS])
def test_zero_is_refused_unless_it_means_something(flag: str, dest: str, kind: type, guard: Path) -> None:
    code, err = run_cli(["train", *flag_args(flag, dest, "0"), "--out", str(guard), "--no-progress"])
    if flag in ZERO_ALLOWED:  # accepted: the only complaint left is the existing run directory
        assert_one_error(code, err, "already exists")
    else:
        assert_one_error(code, err, *names_of(flag, dest))


class _StopError(PlpruneError):
    """Raised instead of training: the run was accepted and its model, data and pruner were built."""


def _stop(*args: Any, **kwargs: Any) -> None:
    raise _StopError("accepted; training not started")


SMALL_INTS = st.integers(min_value=-1, max_value=6)
SMALL_FLOATS = st.sampled_from([-0.5, 0.0, 1e-3, 0.5, 0.999, 1.0, 2.0, 4.0])
RUN_FLAGS = [f for f in NUMERIC_FLAGS if f[1] not in _SETTING_METHODS]


@settings(PROPERTY, max_examples=30)
@given(data=st.data())
def test_odd_but_plausible_settings_never_crash_the_setup(data, tmp_path: Path) -> None:
    """Small, zero and negative values anywhere (tiny models): the run is refused with one line, or its
    data, model and pruner are all built (training itself is replaced by a stop)."""
    task = data.draw(st.sampled_from(["bert-pydoc", "switch-pydoc"]), label="task")
    method = data.draw(st.sampled_from(sorted(METHODS)), label="method")
    own = [f for f in NUMERIC_FLAGS if method in _SETTING_METHODS.get(f[1], ())]
    chosen = data.draw(st.lists(st.sampled_from(RUN_FLAGS + own), max_size=4, unique=True), label="flags")
    argv = ["train", "--task", task, "--method", method, *TINY, "--prune-at", "1", "--steps", "4"]
    for flag, _dest, kind in chosen:
        argv.append(f"{flag}={data.draw(SMALL_INTS if kind is int else SMALL_FLOATS, label=flag)}")
    out = fresh_out(tmp_path)
    with mock.patch.object(runner, "Trainer", _stop):
        code, err = run_cli([*argv, "--out", str(out), "--no-progress"])
    line = assert_one_error(code, err)
    event("accepted" if "training not started" in line else "refused")
    if "training not started" not in line:
        assert not out.exists(), "a refused run must leave no run directory behind"


# -- unknown names ------------------------------------------------------------------------------------------


@PROPERTY
@given(data=st.data())
def test_unknown_choices_are_named(data, guard: Path, tmp_path: Path) -> None:
    flag = data.draw(st.sampled_from(sorted(CHOICES)), label="flag")
    name = st.text(st.sampled_from(string.ascii_letters + string.digits + "-_."), min_size=1, max_size=12)
    if flag == "--kinds":  # a comma list with at least one unknown kind
        names = data.draw(st.lists(st.one_of(name, st.sampled_from(sorted(CHOICES[flag]))), min_size=1))
        names = [n for n in names if n.strip(" ,")]
        value = ",".join(names)
        if not names or all(n in CHOICES[flag] for n in names):
            value += ",bogus"
    else:
        value = data.draw(name.filter(lambda n: n not in CHOICES[flag]), label="value")
    out = data.draw(st.sampled_from([guard, fresh_out(tmp_path)]), label="out")
    code, err = run_cli(["train", f"{flag}={value}", "--data-dir", str(tmp_path / "none"), "--out", str(out)])
    assert_one_error(code, err, "unknown", "invalid", "kinds")
    assert out == guard or not out.exists()


# every other option of plprune train that takes a value (names, times, paths, lists); not --out
TEXT_FLAGS = [
    action.option_strings[0]
    for action in _train_parser()._actions
    if action.option_strings and action.nargs != 0 and action.type not in (int, float)
    and action.option_strings[0] not in ("--out", "--help")
]


@settings(PROPERTY, max_examples=80)
@given(flag=st.sampled_from(TEXT_FLAGS), value=st.text(_TEXT, max_size=16))
def test_any_text_for_any_other_flag(flag: str, value: str, guard: Path) -> None:
    # a valid value leaves one complaint: the existing run directory (never touched)
    code, err = run_cli(["train", f"{flag}={value}", "--out", str(guard), "--no-progress"])
    assert_one_error(code, err)


# -- config files -------------------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (strings, numbers incl. nan/inf, booleans, arrays, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        escaped = "".join(
            "\\" + ch if ch in '"\\' else f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch
            for ch in value
        )
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_table(section: str, values: dict[str, Any]) -> str:
    head = "" if section == "" else "[" + ".".join(f'"{p}"' for p in section.split(".")) + "]\n"
    return head + "".join(f"{toml_value(k)} = {toml_value(v)}\n" for k, v in values.items())


_SCALARS = st.one_of(
    st.text(_TEXT, max_size=8),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.booleans(),
)


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    """Arrays and tables of ``inner`` values (the recursive step of TOML and JSON values)."""
    return st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(_TEXT, min_size=1, max_size=5), inner, max_size=3),
    )


TOML_VALUES = st.recursive(_SCALARS, _containers, max_leaves=6)


def run_with_config(tmp_path: Path, out: Path, content: bytes) -> tuple[int, str]:
    path = tmp_path / f"config-{next(_fresh)}.toml"
    path.write_bytes(content)
    return run_cli(["train", "--config", str(path), "--out", str(out), "--no-progress"])


@PROPERTY
@given(content=st.binary(max_size=64))
def test_arbitrary_bytes_as_config(content: bytes, guard: Path, tmp_path: Path) -> None:
    # whatever the bytes: one error line (bad UTF-8, bad TOML, bad keys, or finally the existing run dir)
    assert_one_error(*run_with_config(tmp_path, guard, content))


@PROPERTY
@given(text=st.text(_TEXT, max_size=40), position=st.integers(min_value=0, max_value=40))
def test_non_utf8_config(text: str, position: int, guard: Path, tmp_path: Path) -> None:
    raw = text.encode("utf-8")
    position = min(position, len(raw))
    while position and (raw[position - 1] & 0xC0) == 0x80:  # step off a multi-byte character
        position -= 1
    content = raw[:position] + b"\xff\xfe" + raw[position:]
    assert_one_error(*run_with_config(tmp_path, guard, content), "UTF-8")


def _invalid_toml(text: str) -> bool:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return True
    return False


@PROPERTY
@given(text=st.text(st.sampled_from('[]=."\'{}#\n abc123,'), min_size=1, max_size=30).filter(_invalid_toml))
def test_invalid_toml_config(text: str, guard: Path, tmp_path: Path) -> None:
    assert_one_error(*run_with_config(tmp_path, guard, text.encode()), "not valid TOML")


_KEY = st.text(st.sampled_from(string.ascii_lowercase + "_-"), min_size=1, max_size=10)


@PROPERTY
@given(data=st.data())
def test_unknown_config_keys_at_every_level(data, guard: Path, tmp_path: Path) -> None:
    levels = ["", *(section for section, _ in SECTIONS)]
    section = data.draw(st.sampled_from(levels), label="section")
    if section == "":
        allowed = {"task", "data", "model", "train", "prune"}
    else:
        cls = dict(SECTIONS)[section]
        allowed = {f.name for f in dataclasses.fields(cls)} | (set(METHODS) if section == "prune" else set())
    key = data.draw(_KEY.filter(lambda k: k not in allowed), label="key")
    value = data.draw(TOML_VALUES, label="value")
    content = toml_table(section, {key: value})
    assert_one_error(*run_with_config(tmp_path, guard, content.encode()), key)


@PROPERTY
@given(data=st.data())
def test_wrongly_typed_config_values(data, guard: Path, tmp_path: Path) -> None:
    section, name, hint = data.draw(st.sampled_from(FIELDS), label="field")
    value = data.draw(TOML_VALUES.filter(lambda v: not _matches(v, hint)), label="value")
    content = toml_table(section, {name: value})
    assert_one_error(*run_with_config(tmp_path, guard, content.encode()), name)


@PROPERTY
@given(data=st.data())
def test_nan_and_inf_config_values(data, guard: Path, tmp_path: Path) -> None:
    section, name, _hint = data.draw(st.sampled_from(FLOAT_FIELDS), label="field")
    value = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]), label="value")
    content = toml_table(section, {name: value})
    if section.startswith("prune."):  # make the method the run's, as a user would
        content = f'[prune]\nmethod = "{section.partition(".")[2]}"\n' + content
    assert_one_error(*run_with_config(tmp_path, guard, content.encode()), name)


def test_config_edge_cases(guard: Path, tmp_path: Path) -> None:
    # an empty config file is valid (all defaults): the complaint is the existing run directory
    assert_one_error(*run_with_config(tmp_path, guard, b""), "already exists")
    missing = tmp_path / "nope.toml"
    assert_one_error(*run_cli(["train", "--config", str(missing), "--out", str(guard)]), "does not exist")
    assert_one_error(*run_cli(["train", "--config", str(tmp_path), "--out", str(guard)]), "not a file")
    for section in ("data", "model", "train", "prune"):
        line = assert_one_error(*run_with_config(tmp_path, guard, f"{section} = 3\n".encode()), section)
        assert "table" in line


# -- data paths ---------------------------------------------------------------------------------------------



def _bad_text(content: bytes) -> bool:
    try:
        return not content.decode("utf-8").strip()
    except UnicodeDecodeError:
        return True


@settings(PROPERTY, max_examples=20)
@given(
    data=st.data(),
    shape=st.sampled_from(["file", "missing", "binary-train", "binary-test", "no-test", "subdir"]),
)
def test_bad_data_directories(data, shape: str, guard: Path, tmp_path: Path) -> None:
    root = tmp_path / f"data-{next(_fresh)}"
    bad = st.binary(max_size=40).filter(_bad_text)
    if shape == "file":
        root.write_bytes(data.draw(st.binary(max_size=40), label="file bytes"))
    elif shape != "missing":
        root.mkdir()
        good = b"the cat sat on the mat .\n" * 20
        train = data.draw(bad, label="train") if shape == "binary-train" else good
        (root / "valid.txt").write_bytes(train)
        if shape == "binary-test":
            (root / "test.txt").write_bytes(data.draw(bad, label="test"))
        elif shape == "subdir":
            (root / "test.txt").mkdir()
    out = fresh_out(tmp_path)
    code, err = run_cli(["train", "--data-dir", str(root), "--out", str(out), *TINY, "--no-progress"])
    assert_one_error(code, err, str(root))
    assert not out.exists(), "a failed start must leave no run directory behind"
    # the same data with --resume into the existing run: refused before anything is written
    code, err = run_cli(["train", "--data-dir", str(root), "--out", str(guard), "--resume", *TINY])
    assert_one_error(code, err)


# -- the other commands -------------------------------------------------------------------------------------


@PROPERTY
@given(data=st.data())
def test_compare_rejects_bad_selections(data, guard: Path, tmp_path: Path) -> None:
    name = st.text(st.sampled_from(string.ascii_lowercase + "-0123456789"), min_size=1, max_size=10)
    choice = data.draw(st.sampled_from(["suite", "tasks", "methods", "seeds", "workers"]), label="what")
    args = {
        "suite": lambda: ["--suite", data.draw(name.filter(lambda n: n not in ("quick",)))],
        "tasks": lambda: ["--tasks", data.draw(name.map(lambda n: f"no-such-task-{n}"))],
        "methods": lambda: ["--methods", data.draw(name.filter(lambda n: n not in METHODS))],
        "seeds": lambda: ["--seeds", data.draw(never_valid(int))],
        "workers": lambda: ["--workers", data.draw(st.integers(max_value=0).map(str))],
    }[choice]()
    if choice == "suite":
        from plprune.bench.suites import SUITES

        if args[1] in SUITES:
            args[1] += "-x"
    out = fresh_out(tmp_path)
    code, err = run_cli(["compare", f"{args[0]}={args[1]}", "--out", str(out)])
    assert_one_error(code, err, args[0], "unknown", "seed", "workers")
    assert not out.exists(), "a refused selection must write nothing"
    # an existing train run is never a compare directory, whatever else is asked
    assert_one_error(*run_cli(["compare", f"{args[0]}={args[1]}", "--out", str(guard)]))


@settings(PROPERTY, max_examples=10)
@given(steps=never_valid(int))
def test_demo_rejects_bad_steps_and_an_existing_out(steps: str, guard: Path, tmp_path: Path) -> None:
    out = fresh_out(tmp_path)
    assert_one_error(*run_cli(["demo", f"--steps={steps}", "--out", str(out)]), "--steps", "steps")
    assert not out.exists()
    assert_one_error(*run_cli(["demo", "--out", str(guard)]), "already exists")


def test_report_and_export_reject_bad_directories(guard: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_bytes(b"\xff\x00 binary")
    empty = tmp_path / "empty"
    empty.mkdir()
    for directory in (tmp_path / "missing", a_file, empty, guard):
        assert_one_error(*run_cli(["report", str(directory)]))
        assert_one_error(*run_cli(["export", str(directory), "--out", str(tmp_path / "x")]))
    assert_one_error(*run_cli(["export", str(guard), "--format", "pickle"]), "--format")
    assert_one_error(*run_cli(["export", str(guard), "--out", str(guard)]), "already exists")


@PROPERTY
@given(content=st.binary(max_size=48))
def test_export_of_a_run_with_a_garbled_config(content: bytes, tmp_path: Path) -> None:
    run = tmp_path / f"garbled-{next(_fresh)}"
    run.mkdir()
    (run / "config.json").write_bytes(content)
    (run / "checkpoint.pt").write_bytes(b"garbage")
    before = tree_hashes(run)
    assert_one_error(*run_cli(["export", str(run)]))
    assert tree_hashes(run) == before


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(_TEXT, max_size=6)),
    _containers,
    max_leaves=8,
)


JSON_BYTES = JSON_VALUES.map(lambda v: json.dumps(v).encode())
_RECORD = {"step": 4, "epoch": 1.0, "train_ppl": 50.0, "test_ppl": 60.0, "delta_ppl": 10.0, "wall_time": 1.0}
_SUMMARY = {"task": "bert-pydoc", "steps": 4, "method": "dense", "final": {**_RECORD, "final": True}}
_SUMMARY |= {"history": [_RECORD], "pruning_events": []}
# where a garbled value goes: a top-level entry of summary.json, or an entry of its final/first record
_SPOTS = [(k,) for k in _SUMMARY] + [("final", k) for k in _RECORD] + [("history", 0, k) for k in _RECORD]


@PROPERTY
@given(
    spot=st.sampled_from(_SPOTS),
    value=JSON_VALUES,
    suite=st.one_of(st.binary(max_size=20), JSON_BYTES),
    config=st.one_of(st.none(), st.none(), st.binary(max_size=20), JSON_BYTES),
)
def test_report_of_garbled_results(spot: tuple, value: Any, suite: bytes, config: Any, tmp_path: Path):
    """A results directory whose summary.json, config.json or suite.json a hand (or a bug) garbled: the
    run is skipped with its reason, and the report is written from the others or refused in one line."""
    summary = json.loads(json.dumps(_SUMMARY))
    target = summary
    for key in spot[:-1]:
        target = target[key]
    target[spot[-1]] = value
    out = tmp_path / f"results-{next(_fresh)}"
    run = out / "runs" / "bert-pydoc" / "dense-s0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(summary))
    if config is None:
        save_config(run / "config.json", RunConfig(task="bert-pydoc"))
    else:
        (run / "config.json").write_bytes(config)
    (out / "suite.json").write_bytes(suite)
    plots = ("plot_curvature", "plot_curves", "plot_kept_heatmap", "plot_time_to_target")
    with contextlib.ExitStack() as stack:  # the tables are under test here, not matplotlib (slow)
        for name in plots:
            stack.enter_context(mock.patch.object(report, name, return_value=None))
        code, err = run_cli(["report", str(out)])
    assert "Traceback" not in err
    event("report written" if code == 0 else "refused")
    if code != 0:
        assert_one_error(code, err, "no finished runs")
