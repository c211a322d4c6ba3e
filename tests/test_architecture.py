"""The layers hold (import-linter's contract in pyproject.toml, checked here and by `make lint`), no module imports
inside a function except an optional dependency loaded lazily or, in a command module, what its run needs beyond its
flags (each commented so), and functions and files stay short."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SRC = REPO / "src" / "arlm"
LAZY = "# lazy: optional dependency"
KEPT_OUT_OF_HELP = "# lazy: kept out of --help"  # a command module's heavy imports: `arlm VERB --help` loads no torch
COMMANDS = SRC / "commands"
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 500


def _lint_imports() -> str:
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail("lint-imports is missing (pip install -e '.[dev]')")
        pytest.skip("needs import-linter (pip install -e '.[dev]')")
    return found


def _run_contract(src: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [_lint_imports(), "--config", str(config), "--no-cache", "--no-logo"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_the_layer_contract_holds():
    done = _run_contract(REPO / "src", REPO / "pyproject.toml")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_the_contract_refuses_an_upward_import(tmp_path):
    shutil.copytree(SRC, tmp_path / "src" / "arlm")
    corpus = tmp_path / "src" / "arlm" / "data" / "corpus.py"
    corpus.write_text(corpus.read_text() + "\nimport arlm.commands.train  # an upward import\n")
    done = _run_contract(tmp_path / "src", REPO / "pyproject.toml")
    assert done.returncode == 1, done.stdout[-3000:]
    assert "arlm.data.corpus -> arlm.commands.train" in done.stdout


def test_imports_inside_functions_only_load_optional_dependencies_lazily():
    offenders = []
    for path in _modules():
        lines = path.read_text(encoding="utf-8").splitlines()
        marks = (LAZY, KEPT_OUT_OF_HELP) if path.parent == COMMANDS else (LAZY,)
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if not isinstance(inner, (ast.Import, ast.ImportFrom)):
                    continue
                line = lines[inner.lineno - 1]
                if not any(mark in line for mark in marks):
                    offenders.append(f"{path.relative_to(REPO)}:{inner.lineno}: {line.strip()}")
    assert not offenders, (
        f"imports inside functions (comment a lazy optional one with '{LAZY}', a command's heavy one with "
        f"'{KEPT_OUT_OF_HELP}'):\n" + "\n".join(offenders)
    )


def test_functions_fit_a_screen_and_files_stay_short():
    long_functions, long_files = [], []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long_functions)
    assert not long_files, f"files over {MAX_FILE_LINES} lines:\n" + "\n".join(long_files)


def test_the_documented_layers_are_the_contracts():
    """docs/architecture.md's diagram names the contract's layers, top to bottom, as pyproject.toml states them
    (it had left `values` out)."""
    import re

    block = (REPO / "pyproject.toml").read_text().split("layers = [", 1)[1].split("]", 1)[0]  # (tomllib: 3.11 on)
    layers = [re.split(r"\s*[|:]\s*", layer) for layer in re.findall(r'"([^"]+)"', block)]
    doc = (REPO / "docs" / "architecture.md").read_text()
    diagram = doc.split("```")[1].strip().splitlines()
    names = [re.findall(r"[a-z_]+(?=\.py|/|\s|$)", line.split("  ")[0]) for line in diagram]  # each line's first column
    documented = [[n for n in line if n != "py"] for line in names]
    assert [sorted(layer) for layer in layers] == [sorted(line) for line in documented if line], documented
