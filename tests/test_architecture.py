"""The shape of the package: layers that hold, no import cycle, thin Flower adapters, one spec per variant."""

from __future__ import annotations

import ast
import contextlib
import io
import logging.config
import textwrap
import tomllib
from pathlib import Path
from unittest import mock

import pytest

from mfpt.config import Paradigm, PeftMethod
from mfpt.config.specs import METHODS, PARADIGMS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mfpt"
# The modules that sit in the package root: the Flower app's two adapters (Flower's own example layout).
ROOT_MODULES = {"__init__.py", "client_app.py", "server_app.py"}


def _lint_imports(pyproject: Path) -> tuple[int, str]:
    """import-linter over the contracts of `pyproject` (its graph cache off): exit code and report."""
    from importlinter.cli import lint_imports

    report = io.StringIO()
    # Its logging.config.dictConfig() would close every handler of this process (pytest's captures, absl's) and
    # disable every logger: its own logging is not what is tested.
    with contextlib.redirect_stdout(report), contextlib.redirect_stderr(report), \
            mock.patch.object(logging.config, "dictConfig"):
        code = lint_imports(config_filename=str(pyproject), no_cache=True, no_logo=True)
    return code, report.getvalue()


def _contract(name: str) -> dict:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"] == name)


def test_the_layers_hold_and_nothing_imports_in_a_cycle():
    code, report = _lint_imports(ROOT / "pyproject.toml")
    assert code == 0, report[-3000:]
    assert "layers KEPT" in report and "no import cycles KEPT" in report


def test_every_package_and_root_module_has_a_layer():
    layered = {name.strip() for layer in _contract("layers")["layers"] for name in layer.split("|")}
    packages = {f"mfpt.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {f"mfpt.{p.stem}" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert layered == packages | modules
    assert {p.name for p in PACKAGE.glob("*.py")} == ROOT_MODULES


def test_the_layer_check_fails_on_an_upward_import_and_on_a_cycle(tmp_path, monkeypatch):
    """The same contracts on a two-layer toy package: an import from the lower layer up, then a cycle."""
    package = tmp_path / "toy"
    for sub in ("low", "high"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "high" / "a.py").write_text("from toy.low import b\n")
    (package / "low" / "b.py").write_text("def f():\n    from toy.high import a\n")  # function-level: still counted
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""\
        [tool.importlinter]
        root_package = "toy"
        [[tool.importlinter.contracts]]
        name = "layers"
        type = "layers"
        layers = ["toy.high", "toy.low"]
        [[tool.importlinter.contracts]]
        name = "no import cycles"
        type = "acyclic_siblings"
        ancestors = ["toy"]
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    code, report = _lint_imports(tmp_path / "pyproject.toml")
    assert code == 1
    assert "layers BROKEN" in report and "toy.low.b -> toy.high.a" in report
    assert "no import cycles BROKEN" in report


@pytest.mark.parametrize("app", ["client_app.py", "server_app.py"])
def test_flower_apps_are_thin_adapters(app):
    source = (PACKAGE / app).read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 80
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert "mfpt.client_app" not in imported and "mfpt.server_app" not in imported, "neither app imports the other"
    assert not any(name.startswith("mfpt.federation.strategies") for name in imported)


def test_message_keys_live_only_in_the_protocol_module():
    for path in PACKAGE.rglob("*.py"):
        if path.name == "protocol.py":
            continue
        source = path.read_text(encoding="utf-8")
        for literal in ('"train-loss"', '"num-examples"', '"client-index"', '"proximal-mu"', '"cm-', '"eval-loss-sum"',
                        '"mfpt.round"', '"mfpt.eval-split"'):
            assert literal not in source, f"{path} spells the message key {literal}; import it from mfpt.federation.protocol"


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


def documented_layout(text: str) -> set[str]:
    """The module paths (e.g. 'mfpt/core/errors.py') in the first code block after '## Layout' of a Markdown text;
    folders are lines ending in '/', nested by two spaces of indentation."""
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    folders: list[str] = []
    found = set()
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        elif name.endswith(".py"):
            found.add("/".join([*folders, name]))
    return found


def test_the_architecture_page_lists_every_module():
    listed = documented_layout((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    actual = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert listed == actual, f"missing from docs: {sorted(actual - listed)}; gone from the package: {sorted(listed - actual)}"


def test_the_layout_reader_nests_folders():
    text = "## Layout\n```\nmfpt/\n  a.py  x\n  core/  y\n    b.py\n  c.py\n```\n"
    assert documented_layout(text) == {"mfpt/a.py", "mfpt/core/b.py", "mfpt/c.py"}
