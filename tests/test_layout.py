"""The layout flows one way (docs/design.md §3): cli → commands → serve → pipeline → stages (their kit included) →
judges → modeling → engine → {data, evaluation} → recipe → losses.

Read from the source with ast, imports inside functions included, so a lazy import that runs back up
fails here as well as a module-level one. Seen folder by folder (`midpo_cli.X`, the evaluation layer one
folder), no import runs back up the layers (`UP_IMPORTS` is empty: `pipeline.run` imports each stage module
inside `runner()`, downwards) and the folders form no cycle; file by file, no import cycle at all. The
package's `__init__` (a facade that lazily imports `modeling.midpo`) is no folder and is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "midpo_cli"
STAGE_KIT = "midpo_cli.stages.kit"


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
    """No stage imports another; what they share is the kit (imported by the stages and the pipeline too)."""
    allowed = ("midpo_cli.pipeline.run", "midpo_cli.commands.")
    stages = {m: {i for i in imported if not (i == STAGE_KIT or i.startswith(STAGE_KIT + "."))}
              for m, imported in _importers("midpo_cli.stages").items()}
    wrong = {m: i for m, i in stages.items() if i and not m.startswith(allowed)}
    assert wrong == {}, f"these modules import a stage (only pipeline.run and commands may): {wrong}"


def test_the_stages_and_their_kit_never_import_the_pipeline() -> None:
    """The pipeline prepares a stage's folder and context and calls it; a stage only reads its context."""
    up = {m: i for m, i in _importers("midpo_cli.pipeline").items() if m.startswith("midpo_cli.stages")}
    assert up == {}, f"these stage modules import the pipeline: {up}"


def test_libraries_never_import_the_layers_above_them() -> None:
    above = ("midpo_cli.pipeline", "midpo_cli.stages", "midpo_cli.commands", "midpo_cli.cli", "midpo_cli.worker")
    libraries = ("midpo_cli.modeling", "midpo_cli.data", "midpo_cli.engine", "midpo_cli.recipe", "midpo_cli.losses",
                 "midpo_cli.manifest", "midpo_cli.io", "midpo_cli.evaluation", "midpo_cli.assets", "midpo_cli.judges")
    for module, (anywhere, _) in GRAPH.items():
        if module.startswith(libraries):
            up = {i for i in anywhere if i.startswith(above)}
            assert not up, f"{module} imports {up}"
    engine_up = {m: {i for i in GRAPH[m][0] if i.startswith("midpo_cli.modeling")} for m in GRAPH
                 if m.startswith("midpo_cli.engine")}
    assert all(not v for v in engine_up.values()), engine_up
    assert not {i for i in GRAPH["midpo_cli.recipe"][0] if i not in ("midpo_cli.errors",)}


def _assert_acyclic(imports: dict[str, set[str]]) -> None:
    """Depth-first search; the first cycle found is named module by module."""
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(imports[module]):
            assert state.get(other) != 1, "import cycle: " + " → ".join([*path, module, other])
            if other not in state:
                visit(other, [*path, module])
        state[module] = 2

    for module in sorted(imports):
        if module not in state:
            visit(module, [])


def test_module_level_imports_have_no_cycle() -> None:
    _assert_acyclic({m: {i for i in imports if i in GRAPH} for m, (_, imports) in GRAPH.items()})


# Layers, top to bottom (docs/design.md §3): a module imports its own folder's modules and those of layers below.
LAYERS = (
    ("cli", "worker"),
    ("commands",),
    ("serve",),  # `midpo serve`'s HTTP app and its batching engine, over the modeling layer
    ("pipeline",),  # orchestration: plans, prepares each stage's folder and context, runs the stage
    ("stages",),  # the stages, and the stage kit they share (stages/kit/)
    ("judges",),  # what labels each answer: the toy world's truth, score models, a guard model, an LLM over HTTP
    ("modeling",),
    ("engine",),
    ("data", "evaluation"),
    ("manifest",),  # the evaluation layer reads stage manifests (the verdict's probe ceiling)
    ("assets", "io", "recipe"),
    ("console", "errors"),
    ("losses",),  # the training objectives: torch only
)
# The imports allowed to run back up: (importer, imported folder) → why. None.
UP_IMPORTS: dict[tuple[str, str], str] = {}


def _node(module: str) -> str:
    """The folder or top-level module a module belongs to."""
    return module.split(".")[1]


def _layer(node: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if node in names)


def test_every_module_has_a_layer() -> None:
    nodes = {_node(m) for m in GRAPH if m != "midpo_cli"}
    assert nodes == {n for names in LAYERS for n in names}, "a folder or module is missing from LAYERS (or gone)"


def test_imports_run_down_the_layers_but_for_the_named_ones() -> None:
    up = set()
    for module, (anywhere, top) in GRAPH.items():
        if module == "midpo_cli":
            continue
        for imported in anywhere - {"midpo_cli"}:
            a, b = _node(module), _node(imported)
            if a == b or _layer(a) < _layer(b):
                continue
            assert imported not in top, f"{module} imports {imported} at module level, up the layers"
            up.add((module, b))
    assert up == set(UP_IMPORTS), f"imports running back up the layers: {sorted(up - set(UP_IMPORTS))}"


def test_no_import_cycle_even_through_lazy_imports() -> None:
    _assert_acyclic({m: {i for i in anywhere if i in GRAPH} for m, (anywhere, _) in GRAPH.items()})


def test_the_folders_form_no_import_cycle() -> None:
    """Folder by folder (each top-level folder or module of midpo_cli one node), every import counted, lazy ones
    too: a cycle here means two folders each need the other, whatever the layers say."""
    folders: dict[str, set[str]] = {}
    for module, (anywhere, _) in GRAPH.items():
        if module == "midpo_cli":  # the package's facade: `midpo_cli.load_midpo` imports modeling.midpo lazily
            continue
        edges = folders.setdefault(_node(module), set())
        edges.update(_node(i) for i in anywhere if i != "midpo_cli" and _node(i) != _node(module))
    _assert_acyclic(folders)


def test_no_function_is_longer_than_60_lines() -> None:
    """The team's limit, so that an entry function reads like a table of contents: from `def` to its last
    line, docstring included, at most 60 lines."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} "
                            f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
