"""The shape of the package, checked on every CI run: import layers (.importlinter: upper layers
may import lower ones, never the reverse; no import cycles) and size limits (no file in
aria_train/ over 400 lines, no function over 60)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "aria_train"
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """import-linter with the repository's contracts on the `aria_train` found in package_parent."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(REPO / '.importlinter')!r}, no_cache=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=package_parent, capture_output=True, text=True,
                          timeout=300)


def test_import_layers_and_no_cycles():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_a_planted_upward_import_breaks_the_layers(tmp_path):
    """The check can fail: moe/ importing the trainer is reported, naming the import."""
    shutil.copytree(PACKAGE, tmp_path / "aria_train", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    router = tmp_path / "aria_train" / "moe" / "router.py"
    router.write_text(router.read_text() + "\nfrom aria_train.train import trainer  # noqa: E402 (planted)\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout[-4000:]
    assert "aria_train.moe is not allowed to import aria_train.train" in result.stdout
    assert "aria_train.moe.router -> aria_train.train.trainer" in result.stdout


def oversized(package: Path) -> list[str]:
    """Every file over MAX_FILE_LINES lines and function over MAX_FUNCTION_LINES lines."""
    found = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(package.parent)
        lines = len(text.splitlines())
        if lines > MAX_FILE_LINES:
            found.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno} {node.name}(): {length} lines")
    return found


def test_no_file_over_400_lines_and_no_function_over_60():
    assert oversized(PACKAGE) == []


def test_the_size_check_finds_a_long_function_and_a_long_file(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n" + "\n" * (MAX_FILE_LINES - MAX_FUNCTION_LINES))
    assert oversized(tmp_path) == [f"{tmp_path.name}/long.py: {MAX_FILE_LINES + 1} lines",
                                   f"{tmp_path.name}/long.py:1 long(): {MAX_FUNCTION_LINES + 1} lines"]
