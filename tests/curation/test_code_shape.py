"""The curation package keeps the project's shape rules (files < 400 lines, functions < 60), and
the documented YAML (pipelines/curation/curate.yaml) states the code's defaults."""

import ast
import dataclasses
from pathlib import Path

from aria_train.data.curation.config import load_curate_config

REPO = Path(__file__).resolve().parents[2]
FILES = sorted((REPO / "aria_train" / "data" / "curation").glob("*.py")) + [
    REPO / "tools" / "curate.py", REPO / "tools" / "cluster_pack.py", REPO / "bench" / "curation_throughput.py"]


def test_files_and_functions_are_short():
    for path in FILES:
        lines = path.read_text().splitlines()
        assert len(lines) < 400, f"{path}: {len(lines)} lines"
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length < 60, f"{path}:{node.lineno} {node.name} has {length} lines"


def test_documented_yaml_is_the_default():
    documented = load_curate_config(str(REPO / "pipelines" / "curation" / "curate.yaml"))
    assert dataclasses.asdict(documented) == dataclasses.asdict(load_curate_config(None))
