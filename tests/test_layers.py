"""The layer contract of pyproject.toml ([tool.importlinter]): energyhub's packages import only downward.

lint-imports runs as a developer runs it, on a tree named by PYTHONPATH: the checkout's src/ for the contract itself,
and a copy with one upward import to show the same run does report a broken contract.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"
SRC = REPO / "src"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACT = "energyhub's layers import only downward"


def lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the checkout's contract on the package ``energyhub`` found in ``src`` (and only there)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(PYPROJECT), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def python_files(package: Path) -> int:
    return sum(1 for path in package.rglob("*.py") if "__pycache__" not in path.parts)


@pytest.mark.live  # a process: `make lint` runs the same check
def test_the_layer_contract_is_kept() -> None:
    result = lint_imports(SRC, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{CONTRACT} KEPT" in result.stdout
    assert "Contracts: 1 kept, 0 broken." in result.stdout
    # It read this checkout's package: every module of src/energyhub.
    assert f"Analyzed {python_files(SRC / 'energyhub')} files" in result.stdout


@pytest.mark.live
def test_an_upward_import_breaks_the_contract_and_is_named(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(SRC / "energyhub", copy / "energyhub", ignore=shutil.ignore_patterns("__pycache__"))
    isp = copy / "energyhub" / "domain" / "isp.py"
    source = isp.read_text()
    isp.write_text(source + "\nimport energyhub.cli.main  # upward: domain is the lowest layer\n")
    line = source.count("\n") + 2

    result = lint_imports(copy, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{CONTRACT} BROKEN" in result.stdout
    assert "Contracts: 0 kept, 1 broken." in result.stdout
    assert "energyhub.domain is not allowed to import energyhub.cli" in result.stdout
    assert f"energyhub.domain.isp -> energyhub.cli.main (l.{line})" in result.stdout


def test_every_package_of_energyhub_is_in_a_layer() -> None:
    """A new package outside the layers would be bound by nothing: the contract must name each one."""
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    assert contract["type"] == "layers"
    # Siblings in one layer are separated by | (independent) or : (may import each other).
    named = {name.strip() for layer in contract["layers"] for name in re.split(r"[|:]", layer)}
    packages = {f"energyhub.{path.parent.name}" for path in (SRC / "energyhub").glob("*/__init__.py")}
    assert packages == named
