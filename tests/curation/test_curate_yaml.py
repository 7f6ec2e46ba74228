"""The documented YAML (pipelines/curation/curate.yaml) states the code's defaults. (Size rules
for aria_train/ are tests/test_architecture.py's.)"""

import dataclasses
from pathlib import Path

from aria_train.data.curation.config import load_curate_config

REPO = Path(__file__).resolve().parents[2]


def test_documented_yaml_is_the_default():
    documented = load_curate_config(str(REPO / "pipelines" / "curation" / "curate.yaml"))
    assert dataclasses.asdict(documented) == dataclasses.asdict(load_curate_config(None))
