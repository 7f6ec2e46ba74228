"""Corpus curation before training: datatrove dedup + quality filters (tools/curate.py), and
clustering similar documents into packed sequences (tools/cluster_pack.py, data.packing).

Names are loaded on first use, so the training loader (clustered_dataset) does not pull in
datatrove, faiss or scipy.
"""

import importlib

_EXPORTS = {
    "CurateConfig": "config", "load_curate_config": "config",
    "Stage": "pipeline", "build_stages": "pipeline",
    "TokenCount": "steps", "check_word_tokenizer": "steps",
    "ExecutorSettings": "executors", "build_executors": "executors", "describe": "executors",
    "run_chain": "executors",
    "WriteReport": "report", "build_report": "report", "format_table": "report", "save_plan": "report",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
