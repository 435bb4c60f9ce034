"""The package's layering: low-level modules never import high-level ones, and no import cycles.

Every ``import plprune...`` in a module (top level or inside a function; not under ``TYPE_CHECKING``) is
read with ``ast``; each module has a layer, and an import may only go to the same or a lower layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first; a module's layer is that of the longest matching prefix
# ruff: noqa: RUF005
LAYERS: list[tuple[str, ...]] = [
    ("plprune.errors", "plprune.validation", "plprune.seeding", "plprune.table", "plprune.faults")
    + ("plprune.quiet", "plprune.distributed", "plprune.devices", "plprune.memory"),
    # the sparsity methods' maths and training hooks work on any Units; they import no model
    ("plprune.groups", "plprune.keep", "plprune.schedules", "plprune.task", "plprune.gating")
    + ("plprune.sparsity",),
    ("plprune.models", "plprune.data", "plprune.curvature", "plprune.exact_norms"),
    ("plprune.sites", "plprune.gates", "plprune.sparsity.group_units"),
    ("plprune.pruners", "plprune.compaction"),
    # the library's entry points; export is the file format (safetensors, manifest, ONNX) and sits here with
    # no exception: families describe themselves (models.architecture), kinds say what they need (sites)
    ("plprune.pruner", "plprune.weight_pruner", "plprune.scorers", "plprune.export", "plprune.export_onnx"),
    ("plprune.train", "plprune.tasks", "plprune.integrations"),
    # the run-level glue: configs, named tasks built from a config, the runner, reading run directories for
    # export (run_export), benchmarks, compress (a trained model in, a smaller one out), CLI
    ("plprune.run_config", "plprune.tasks.registry", "plprune.runner", "plprune.run_export", "plprune.bench")
    + ("plprune.compress",),
    ("plprune.cli",),
    ("plprune",),  # the package root re-exports the public API
]


def layer_of(module: str) -> int:
    best, level = "", None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, level = prefix, index
    assert level is not None, f"{module} has no layer: add it to LAYERS"
    return level


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("plprune"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("plprune"))
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in (SRC / "plprune").rglob("*.py")}


def test_no_module_imports_a_higher_layer() -> None:
    violations = [
        f"{module} (layer {layer_of(module)}) imports {dep} (layer {layer_of(dep)})"
        for module, deps in graph().items()
        for dep in deps
        if layer_of(dep) > layer_of(module)
    ]
    assert not violations, "\n".join(violations)


def test_no_import_cycles_between_modules() -> None:
    edges = graph()
    modules = set(edges)

    def resolve(dep: str) -> str | None:
        return dep if dep in modules else None

    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges[node]):
            target = resolve(dep)
            if target is None or target == node or node.startswith(target + "."):
                continue  # a package's __init__ re-exporting its own modules is not a cycle
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_masking_core_imports_no_model() -> None:
    """Groups, sites, gates and the keep rule work on any nn.Module: they never import plprune's models
    (the exact norm layers of ``plprune.models.layers`` are building blocks, not models)."""
    core = ("plprune.groups", "plprune.keep", "plprune.gates", "plprune.sites")
    offending = [
        f"{module} imports {dep}"
        for module, deps in graph().items()
        if any(module == c or module.startswith(c + ".") for c in core)
        for dep in deps
        if (dep == "plprune.models" or dep.startswith("plprune.models.")) and dep != "plprune.models.layers"
    ]
    assert not offending, "\n".join(offending)


def test_deployment_needs_no_training_stack() -> None:
    """``plprune.export`` (with everything it imports, transitively) reaches no trainer, task, runner or run
    config: a deployed model is loaded by the library alone. Only ``plprune.run_export`` reads run
    directories."""
    edges = graph()
    training = ("plprune.train", "plprune.tasks", "plprune.runner", "plprune.run_config")
    training += ("plprune.run_export",)
    seen: set[str] = set()
    todo = ["plprune.export"]
    while todo:
        module = todo.pop()
        if module in seen or module not in edges:
            continue
        seen.add(module)
        todo.extend(edges[module])
        todo.extend(module.rsplit(".", i)[0] for i in range(1, module.count(".")))  # packages run on import
    reached = sorted(m for m in seen if any(m == t or m.startswith(t + ".") for t in training))
    assert "plprune.compaction" in seen and "plprune.models.architecture" in seen  # the walk went somewhere
    assert not reached, f"plprune.export reaches {reached}"
