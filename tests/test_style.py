"""The house rules, kept by the suite: ruff-clean (E, F, I, UP, W, B) and formatted; the import layers
of pyproject.toml (import-linter) hold, so a cycle fails CI; tests import helpers from tests/support,
never from each other; a module over 400 lines says at its top why; command modules' docstrings name
their commands."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gu1sync.cli import cli
from tests.support.helpers import ROOT

PACKAGES = ("gu1sync", "rules", "connectors")


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.skip(f"{name} is not installed (it is in requirements-dev.txt)")
    return found


def _python_files(*roots: str) -> list[Path]:
    return sorted(path for root in roots for path in (ROOT / root).rglob("*.py") if ".venv" not in path.parts)


def _imports(path: Path) -> list[str]:
    """Every module a file imports, absolute (relative imports are resolved against its package)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff(command):
    result = subprocess.run([_tool("ruff"), *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_import_layers_hold():
    """pyproject.toml's contracts: entry points, services, their work, the runtime, storage, config,
    rules, connectors, core; each imports only what is below it."""
    result = subprocess.run([_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_nothing_imports_the_entry_point_module():
    importers = [str(path) for path in _python_files(*PACKAGES) if "app" in _imports(path)]
    assert importers == []


def test_tests_and_benchmarks_share_helpers_only_through_tests_support():
    wrong = {
        str(path.relative_to(ROOT)): name
        for path in _python_files("tests", "bench")
        for name in _imports(path)
        if re.match(r"tests\.(test_\w+|conftest)(\.|$)", name)
    }
    assert wrong == {}


def test_a_module_over_400_lines_says_at_its_top_why():
    unexplained = []
    for path in _python_files(*PACKAGES, "tests", "bench") + [ROOT / "app.py"]:
        text = path.read_text()
        if text.count("\n") > 400 and "long because" not in (ast.get_docstring(ast.parse(text)) or "").lower():
            unexplained.append(str(path.relative_to(ROOT)))
    assert unexplained == []


def test_each_command_module_names_the_commands_it_defines():
    modules = {}
    for name, command in cli.commands.items():
        modules.setdefault(sys.modules[command.callback.__module__], []).append(name)
    package_doc = sys.modules["gu1sync.cli"].__doc__
    for module, names in modules.items():
        for name in names:
            assert f"`{name}`" in module.__doc__, (module.__name__, name)
            assert name in package_doc, name


SQL = re.compile(r"\b(SELECT\b.+\bFROM|INSERT INTO|UPDATE \w+ SET|DELETE FROM|PRAGMA|CREATE (TABLE|INDEX))\b", re.S)


def test_sql_is_written_in_the_storage_layer_only():
    """Everything above gu1sync/storage asks it; none writes SQL of its own (Salesforce's SOQL aside)."""
    found = []
    for path in _python_files(*PACKAGES):
        relative = path.relative_to(ROOT)
        if relative.parts[:2] == ("gu1sync", "storage") or relative == Path("connectors/salesforce.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                found.append(f"{relative}:{node.lineno}")
    assert found == []


_CLOCKS = {"perf_counter", "monotonic", "time", "perf_counter_ns", "monotonic_ns", "time_ns"}


def _reads_a_clock(node: ast.AST, readings: set[str] = frozenset()) -> bool:
    """A call of time.perf_counter() and its kind, or a name that holds such a reading."""
    return any(
        (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in _CLOCKS
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "time"
        )
        or (isinstance(call, ast.Name) and call.id in readings)
        for call in ast.walk(node)
    )


def _measures(node: ast.AST, readings: set[str], durations: set[str]) -> bool:
    """Whether an expression is a duration: a difference with a clock's reading in it, or a name holding one."""
    return any(
        (isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Sub) and _reads_a_clock(sub, readings))
        or (isinstance(sub, ast.Name) and sub.id in durations)
        for sub in ast.walk(node)
    )


def test_no_test_asserts_how_long_something_took():
    """Tests assert behaviour; speed is measured in bench/. A test that must guard against runaway work
    bounds the work itself, or leaves a hang to pytest-timeout (README: Tests)."""
    timed = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text())
        assignments = [node for node in ast.walk(tree) if isinstance(node, ast.Assign)]
        names = lambda node: {t.id for t in node.targets if isinstance(t, ast.Name)}  # noqa: E731
        readings = {name for node in assignments if _reads_a_clock(node.value) for name in names(node)}
        durations = {name for node in assignments if _measures(node.value, readings, set()) for name in names(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert) and _measures(node.test, readings, durations):
                timed.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert timed == []
