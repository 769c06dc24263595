"""The layout rules, read from the source with ``ast``: imports point one way, functions stay short, and the
checkpoint file names are spelled in one module only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from resnet_ffcv import resume

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "resnet_ffcv"
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parse_modules() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(path): (path, ast.parse(path.read_text(), str(path))) for path in PACKAGE.rglob("*.py")}


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


def test_the_graph_reader_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "resnet_ffcv.resume" in graph["resnet_ffcv.callbacks.checkpointing"]
    assert "resnet_ffcv.callbacks.checkpointing" in graph["resnet_ffcv.callbacks"]  # the package's __init__
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (module-level and function-level imports): " + " -> ".join(cycle or [])


def test_resume_is_below_callbacks_and_cli():
    imports = import_graph()["resnet_ffcv.resume"]
    above = {name for name in imports if name.startswith(("resnet_ffcv.callbacks", "resnet_ffcv.cli"))}
    assert not above, f"resume.py imports {sorted(above)}: it must stay below the callbacks and the CLI"


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
        if name == "resnet_ffcv.resume":
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
