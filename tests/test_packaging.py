"""`pip install .` gives a working `gu1-sync` command, and every package gu1-sync imports itself is
one of its direct requirements (none rides along as another's dependency)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.support.helpers import ROOT

PACKAGES = ("gu1sync", "rules", "connectors")


def _direct_requirements() -> set[str]:
    """The distributions requirements.txt lists before its `# transitive` section, normalised."""
    names = set()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() == "# transitive":
            break
        if line and not line.startswith("#"):
            names.add(line.split("==")[0].strip().lower().replace("_", "-"))
    return names


def _third_party_imports() -> set[str]:
    found: set[str] = set()
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")] + [ROOT / "app.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name not in (*PACKAGES, "app")}


def test_every_package_imported_directly_is_a_direct_requirement():
    distributions = packages_distributions()
    imported = {
        dist.lower().replace("_", "-")
        for module in _third_party_imports()
        for dist in distributions.get(module, [module])
    }
    assert imported - _direct_requirements() == set()
    assert {"click", "requests"} <= imported  # the two that once rode along as others' dependencies


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of what a release holds, so that setuptools' build/ and egg-info stay out of the tree.
    source = tmp_path_factory.mktemp("source")
    for name in ("app.py", "pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-w",
            str(out),
            ".",
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 and "No matching distribution found for setuptools" in result.stderr:
        pytest.skip("building needs setuptools from PyPI, which cannot be reached")
    assert result.returncode == 0, result.stderr
    [built] = out.glob("gu1_sync-*.whl")
    return built


def test_the_wheel_holds_the_code_and_not_the_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "app.py" in names
    for module in ("gu1sync/cli/__init__.py", "gu1sync/core/records.py", "rules/engine.py", "connectors/slack.py"):
        assert module in names
    # The console's pages and style sheet, which are not Python.
    assert "gu1sync/console/templates/event.html" in names and "gu1sync/console/static/console.css" in names
    assert not [name for name in names if name.startswith("tests/")]
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "gu1-sync = gu1sync.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_pip_install_gives_the_gu1_sync_command(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--disable-pip-version-check",
         "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )  # fmt: skip
    command = target / "bin" / "gu1-sync"
    assert command.exists()
    # Run from elsewhere, with the installed copy (and this venv's dependencies) only: not the project's tree.
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, str(command), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "check" in result.stdout and "worker" in result.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import gu1sync; print(gu1sync.__file__)"], cwd=tmp_path, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(target))
