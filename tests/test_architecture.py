"""The layout rules, read from the source with ``ast``: the wings import only the layers below them, the dataset
wing needs neither Lightning nor torch, functions and classes stay short, and the checkpoint file names are
spelled in one module only."""

from __future__ import annotations

import ast
import gc
import re
import subprocess
import sys
from pathlib import Path

from resnet_ffcv.run import resume

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "resnet_ffcv"
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 400

# The package's shape (README "Where things live", ../shared/design.md): each wing or root module may import only
# what stands in a layer below its own. A new module must be placed here.
LAYERS = [
    {"resnet_ffcv.ffcv_import"},  # runs on `import resnet_ffcv`, before anything imports ffcv; imports nothing of ours
    {"resnet_ffcv", "resnet_ffcv.errors", "resnet_ffcv.atomic"},
    {"resnet_ffcv.dataset"},  # the file format and writing: runs without Lightning or torch
    {"resnet_ffcv.data", "resnet_ffcv.recipe", "resnet_ffcv.run"},  # loading; the LightningModule; run safety
    {"resnet_ffcv.callbacks"},
    {"resnet_ffcv.config_checks", "resnet_ffcv.run_dir", "resnet_ffcv.parse_errors"},
    {"resnet_ffcv.lightning_cli"},
    {"resnet_ffcv.tools", "resnet_ffcv.cli"},  # the commands; cli loads them by name only when chosen
]
WINGS = ("dataset", "data", "recipe", "run", "tools", "callbacks")
MAX_LEVELS = 8


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parse(path: Path) -> ast.Module:
    """``ast.parse`` with the garbage collector held off. CPython 3.11.7 keeps the AST constructor's recursion
    counter per interpreter, not per thread: a collection during the parse runs Python code (finalizers), which
    lets another thread's compile interleave, and the parse fails with "SystemError: AST constructor recursion
    depth mismatch" (CPython gh-106905, pytest-dev/pytest#10763; seen here once earlier tests had left threads)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(path.read_text(), str(path))
    finally:
        if enabled:
            gc.enable()


def parse_modules() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(path): (path, parse(path)) for path in PACKAGE.rglob("*.py")}


def imported_modules(name: str, path: Path, tree: ast.Module, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, at any depth (inside functions too), relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` imports mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import resnet_ffcv.x.y`` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = parse_modules()
    known = set(modules)
    return {name: imported_modules(name, path, tree, known) for name, (path, tree) in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def node_of(module: str) -> str:
    """A wing's modules are one node (``resnet_ffcv.data.loading`` -> ``resnet_ffcv.data``); root modules their own."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1] in WINGS else module


def wing_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        graph.setdefault(node_of(module), set()).update(node_of(t) for t in targets if node_of(t) != node_of(module))
    return graph


def test_the_graph_reader_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "resnet_ffcv.run.resume" in graph["resnet_ffcv.callbacks.checkpointing"]
    assert "resnet_ffcv.callbacks.checkpointing" in graph["resnet_ffcv.callbacks"]  # the package's __init__
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (module-level and function-level imports): " + " -> ".join(cycle or [])


def test_every_wing_imports_only_the_layers_below_it():
    layer_of = {node: index for index, layer in enumerate(LAYERS) for node in layer}
    graph = wing_graph()
    assert set(graph) <= set(layer_of), (
        f"modules in no layer (add them to LAYERS): {sorted(set(graph) - set(layer_of))}"
    )
    upward = [
        f"{node} (layer {layer_of[node]}) imports {target} (layer {layer_of[target]})"
        for node, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of[target] >= layer_of[node]
    ]
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_the_wing_graph_is_shallow():
    graph = wing_graph()

    def depth(node: str, seen: tuple[str, ...] = ()) -> int:
        return 1 + max((depth(t, (*seen, node)) for t in graph.get(node, ()) if t not in seen), default=0)

    assert max(map(depth, graph)) <= MAX_LEVELS


def test_the_dataset_wing_runs_without_lightning_or_torch():
    """``write-dataset`` runs on a CPU box without them: importing every dataset module loads neither."""
    modules = sorted(name for name in parse_modules() if name.startswith("resnet_ffcv.dataset"))
    code = f"import sys\nfor m in {modules!r}: __import__(m)\n" + (
        "print(sorted(n for n in ('torch', 'lightning', 'torchvision', 'torchmetrics') if n in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", f"importing {modules} loaded {result.stdout.strip()}"


def test_no_class_longer_than_400_lines():
    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
        for path, tree in sorted(parse_modules().values())
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
    ]
    assert not offenders, f"classes over {MAX_CLASS_LINES} lines:\n" + "\n".join(offenders)


def test_no_function_longer_than_80_lines():
    offenders = []
    for path, tree in sorted(parse_modules().values()):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                doc = node.body[0]
                if isinstance(doc, ast.Expr) and isinstance(getattr(doc.value, "value", None), str):
                    # A tool's docstring is its --help text (one line per option): it documents, it is not logic.
                    lines -= doc.end_lineno - doc.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


def docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return {
        id(n.body[0].value)
        for n in nodes
        if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
    }


def test_checkpoint_names_are_spelled_only_in_resume():
    names = (resume.LATEST_NAME, resume.BEST_NAME, resume.WANDB_ID_FILE, resume.periodic_name(0).removesuffix("0.ckpt"))
    offenders = []
    for name, (path, tree) in parse_modules().items():
        if name == "resnet_ffcv.run.resume":
            continue
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n!r}" for n in names if n in node.value]
    assert not offenders, "checkpoint file names spelled outside resume.py (import them):\n" + "\n".join(offenders)


def test_scripts_use_the_checkpoint_names_of_resume():
    used = {
        (script.name, name)
        for script in sorted((REPO / "scripts").iterdir())
        for name in re.findall(r"[\w.-]+\.ckpt\b", script.read_text())
    }
    assert ("demo.sh", resume.BEST_NAME) in used and ("spot_training.sh", resume.LATEST_NAME) in used
    wrong = {
        (script, name)
        for script, name in used
        if name not in (resume.LATEST_NAME, resume.BEST_NAME) and resume.periodic_epochs(name) is None
    }
    assert not wrong, f"scripts name checkpoint files that resume.py does not write: {sorted(wrong)}"
