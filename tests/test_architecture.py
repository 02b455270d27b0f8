"""The shape of the package: no import cycles, thin Flower adapters, and one spec per variant in every registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mfpt.config import Paradigm, PeftMethod
from mfpt.specs import METHODS, PARADIGMS

PACKAGE = Path(__file__).resolve().parent.parent / "mfpt"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _in_type_checking_block(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """Every runtime import between mfpt modules, at any depth of a file (function-level ones included)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if _in_type_checking_block(node, parents):
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for target in targets:
                if target in modules and target != name and target != "mfpt":
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "mfpt.protocol" in graph["mfpt.strategy"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("app", ["client_app.py", "server_app.py"])
def test_flower_apps_are_thin_adapters(app):
    source = (PACKAGE / app).read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 80
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert "mfpt.client_app" not in imported and "mfpt.server_app" not in imported, "neither app imports the other"
    assert "mfpt.strategy" not in imported


def test_message_keys_live_only_in_the_protocol_module():
    for path in PACKAGE.rglob("*.py"):
        if path.name == "protocol.py":
            continue
        source = path.read_text(encoding="utf-8")
        for literal in ('"train-loss"', '"num-examples"', '"client-index"', '"proximal-mu"', '"cm-', '"eval-loss-sum"'):
            assert literal not in source, f"{path.name} spells the message key {literal}; import it from mfpt.protocol"


@pytest.mark.parametrize("paradigm", list(Paradigm))
def test_every_paradigm_has_one_spec_with_a_runner(paradigm):
    spec = PARADIGMS.get(paradigm.value)
    assert callable(spec.runner()) and spec.heldout_model and spec.order == sorted(
        PARADIGMS.get(n).order for n in PARADIGMS.names()).index(spec.order)
    assert PARADIGMS.names() == sorted(PARADIGMS.names(), key=lambda n: PARADIGMS.get(n).order)


@pytest.mark.parametrize("method", list(PeftMethod))
def test_every_method_has_one_spec(method):
    spec = METHODS.get(method.value)
    assert spec.name == method.value and spec.tuned
    assert spec.frozen_encoder == (method != PeftMethod.FULL)
    assert set(METHODS.names()) == {m.value for m in PeftMethod}


def _readme_layout() -> list[str]:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines() if line.startswith("  ") and line.split()[0].endswith(".py")]


def test_readme_layout_lists_every_module_in_layer_order():
    listed = [name[:-3] for name in _readme_layout()]
    assert sorted(listed) == sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    position = {f"mfpt.{name}": i for i, name in enumerate(listed)}
    upward = [(m, d) for m, deps in import_graph().items() for d in deps
              if m in position and d in position and position[d] > position[m]]
    assert not upward, f"modules importing from a later layer of the README layout: {upward}"
