"""The layout flows one way (docs/design.md §3): cli → commands → pipeline.run → stages →
pipeline.{context, inputs, graph, preflight} → modeling → {data, engine} → recipe → losses.

Read from the source with ast, imports inside functions included, so a lazy import that runs back up
fails here as well as a module-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "midpo_cli"
PIPELINE_BELOW_STAGES = ("midpo_cli.pipeline.context", "midpo_cli.pipeline.inputs", "midpo_cli.pipeline.graph",
                         "midpo_cli.pipeline.preflight")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(midpo_cli modules imported anywhere in the file, those imported at module level)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    anywhere, top = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("midpo_cli"):
            for alias in node.names:  # `from midpo_cli.stages import generate` imports a module
                sub = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / (sub.replace(".", "/") + ".py")).is_file()
                names.append(sub if is_module else node.module)
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("midpo_cli")]
        anywhere.update(names)
        if node in tree.body:
            top.update(names)
    return anywhere, top


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _importers(prefix: str) -> dict[str, set[str]]:
    return {m: {i for i in anywhere if i == prefix or i.startswith(prefix + ".")}
            for m, (anywhere, _) in GRAPH.items()
            if any(i == prefix or i.startswith(prefix + ".") for i in anywhere)}


def test_the_stage_modules_are_imported_only_by_the_runner_and_the_commands() -> None:
    allowed = ("midpo_cli.pipeline.run", "midpo_cli.commands.")
    wrong = {m: i for m, i in _importers("midpo_cli.stages").items() if not m.startswith(allowed)}
    assert wrong == {}, f"these modules import a stage (only pipeline.run and commands may): {wrong}"


def test_the_pipeline_below_the_stages_never_reaches_up() -> None:
    for module in PIPELINE_BELOW_STAGES:
        up = {i for i in GRAPH[module][0] if i.startswith(("midpo_cli.stages", "midpo_cli.commands", "midpo_cli.cli",
                                                             "midpo_cli.pipeline.run"))}
        assert not up, f"{module} imports {up}"


def test_libraries_never_import_the_layers_above_them() -> None:
    above = ("midpo_cli.pipeline", "midpo_cli.stages", "midpo_cli.commands", "midpo_cli.cli", "midpo_cli.worker")
    libraries = ("midpo_cli.modeling", "midpo_cli.data", "midpo_cli.engine", "midpo_cli.recipe", "midpo_cli.losses",
                 "midpo_cli.manifest", "midpo_cli.io", "midpo_cli.evaluation.summary",
                 "midpo_cli.evaluation.headroom", "midpo_cli.evaluation.gate_stats", "midpo_cli.evaluation.refusal",
                 "midpo_cli.evaluation.report", "midpo_cli.assets")
    for module, (anywhere, _) in GRAPH.items():
        if module.startswith(libraries):
            up = {i for i in anywhere if i.startswith(above)}
            assert not up, f"{module} imports {up}"
    engine_up = {m: {i for i in GRAPH[m][0] if i.startswith("midpo_cli.modeling")} for m in GRAPH
                 if m.startswith("midpo_cli.engine")}
    assert all(not v for v in engine_up.values()), engine_up
    assert not {i for i in GRAPH["midpo_cli.recipe"][0] if i not in ("midpo_cli.errors",)}


def test_module_level_imports_have_no_cycle() -> None:
    top = {m: {i for i in imports if i in GRAPH} for m, (_, imports) in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(top[module]):
            assert state.get(other) != 1, "import cycle: " + " → ".join([*path, module, other])
            if other not in state:
                visit(other, [*path, module])
        state[module] = 2

    for module in sorted(top):
        if module not in state:
            visit(module, [])
