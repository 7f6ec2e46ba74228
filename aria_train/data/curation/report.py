"""The curation report, built from datatrove's own per-task stats files (LOGS/STAGE/stats/*.json,
merged with datatrove's PipelineStats), never from a second count of our own.

Per stage: documents and tokens in and out (TokenCount points), documents removed, and the hit
counts each datatrove step recorded (duplicates dropped, matching MinHash pairs, each quality
filter's drops by reason, lines removed). Written as WORKDIR/report.json and a table in
WORKDIR/report.txt.
"""

from __future__ import annotations

import json
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from aria_train.data.curation.pipeline import Stage
from aria_train.data.curation.steps import TOKEN_COUNT_PREFIX
from aria_train.errors import UserError

PLAN_FILE = "curate_plan.json"
# (report row, the TokenCount point where its documents leave, step kinds whose stats it shows)
_ROWS = (
    ("exact dedup", "after exact", ("exact-deduplication stage",)),
    ("quality filters", "after filters", ("FILTER",)),
    ("minhash dedup", "after minhash", ("MinHash stage",)),
    ("line dedup", "after lines", ("sentence-deduplication stage",)),
)


def save_plan(workdir: Path, stages: list[Stage], output: Path, config: dict) -> None:
    """Records what runs in workdir; a workdir already used with other settings is refused, since
    its signatures and completion markers belong to that other run."""
    plan = {"output": str(output), "config": config,
            "stages": [{"name": s.name, "tasks": s.tasks, "steps": [str(step) for step in s.pipeline]}
                       for s in stages]}
    path = Path(workdir) / PLAN_FILE
    if path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(plan)):
        raise UserError(f"curate: {workdir} holds a run with other settings or input; use a new --workdir "
                        f"or remove it")
    path.write_text(json.dumps(plan, indent=1))


def build_report(workdir: Path) -> dict:
    """The report of the run planned in workdir, from the stats its tasks saved."""
    workdir = Path(workdir)
    plan_path = workdir / PLAN_FILE
    if not plan_path.is_file():
        raise UserError(f"curate report: {plan_path} not found (no curation run planned in {workdir})")
    plan = json.loads(plan_path.read_text())
    steps = {}  # step name -> merged stats, over every stage
    for stage in plan["stages"]:
        for entry in _merged_stage_stats(workdir / "logs" / stage["name"], stage["tasks"]):
            steps[entry["name"]] = entry["stats"]
    points = {name.split(TOKEN_COUNT_PREFIX, 1)[1]: stats for name, stats in steps.items()
              if TOKEN_COUNT_PREFIX in name}
    previous = _point(points, "input")
    rows = [{"stage": "input", "docs_out": previous[0], "tokens_out": previous[1]}]
    for row_name, point, kinds in _ROWS:
        if point not in points:
            continue
        out = _point(points, point)
        hits = {name: _hits(stats) for name, stats in steps.items() if any(k in name for k in kinds)}
        rows.append({"stage": row_name, "docs_in": previous[0], "docs_out": out[0], "tokens_in": previous[1],
                     "tokens_out": out[1], "docs_removed": previous[0] - out[0], "hits": hits})
        previous = out
    return {"output": plan["output"], "stages": rows, "config": plan["config"]}


def write_report(workdir: Path) -> dict:
    report = build_report(workdir)
    Path(workdir, "report.json").write_text(json.dumps(report, indent=1))
    Path(workdir, "report.txt").write_text(format_table(report) + "\n")
    return report


def format_table(report: dict) -> str:
    header = f"{'stage':<16} {'docs in':>10} {'docs out':>10} {'removed':>9} {'tokens in':>12} {'tokens out':>12}"
    lines = [header, "-" * len(header)]
    for row in report["stages"]:
        lines.append(f"{row['stage']:<16} {_cell(row, 'docs_in', 10)} {_cell(row, 'docs_out', 10)} "
                     f"{_cell(row, 'docs_removed', 9)} {_cell(row, 'tokens_in', 12)} {_cell(row, 'tokens_out', 12)}")
        for step, hits in row.get("hits", {}).items():
            shown = ", ".join(f"{key} {value}" for key, value in hits.items())
            if shown:
                lines.append(f"    {step.split(': ', 1)[-1]}: {shown}")
    return "\n".join(lines)


class WriteReport(PipelineStep):
    """The last SLURM job: writes the report once every stage has run."""

    type = "📝 - REPORT"
    name = "curation report"

    def __init__(self, workdir: str):
        super().__init__()
        self.workdir = workdir

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        write_report(Path(self.workdir))
        return iter(())


def _merged_stage_stats(folder: Path, tasks: int) -> list[dict]:
    from datatrove.utils.stats import PipelineStats

    files = sorted((folder / "stats").glob("*.json"))
    if len(files) != tasks:
        raise UserError(f"curate report: {folder} has stats of {len(files)} of {tasks} tasks (not finished?)")
    merged = sum((PipelineStats.from_json(json.loads(f.read_text())) for f in files), start=PipelineStats())
    return [stat.to_dict() for stat in merged.stats]


def _value(stats: dict, key: str) -> int:
    value = stats.get(key, 0)
    return int(value["total"] if isinstance(value, dict) else value)


def _point(points: dict, label: str) -> tuple[int, int]:
    stats = points.get(label, {})
    return _value(stats, "documents"), _value(stats, "tokens")


def _hits(stats: dict) -> dict:
    keep = ("dropped", "total_matches", "to_remove", "removed_sentences", "original_sentences")
    return {key: _value(stats, key) for key in stats
            if key in keep or key.startswith("dropped_") or key.startswith("line-filter")}


def _cell(row: dict, key: str, width: int) -> str:
    return f"{row[key]:>{width},}" if key in row else " " * (width - 1) + "-"
