"""Deduplicate and quality-filter a JSONL corpus with datatrove: JSONL in, cleaned JSONL out.

    python tools/curate.py --input raw.jsonl --output clean/ --workdir curate_work \
        [--config pipelines/curation/curate.yaml] [--tasks 4] [--workers 2] \
        [--disable minhash] [--enable c4_badwords] [--dry-run]
    python tools/curate.py ... --executor slurm --partition cpu --tasks 512 --time 12:00:00 \
        --env-command "source /path/to/.venv/bin/activate"

Stages (each switchable): exact dedup (content hash), the Gopher repetition / Gopher quality /
C4 quality / FineWeb quality filters, MinHash near-duplicate dedup (signatures, buckets,
clusters, filter) and repeated-line removal, all datatrove pipeline steps. The report
(documents and tokens in and out per stage, duplicates removed, filter hits) goes to
WORKDIR/report.json and WORKDIR/report.txt, and is printed. Re-running the same command
continues an interrupted run (completed tasks are skipped).
"""

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.data.errors import DataError  # noqa: E402
from aria_train.errors import UserError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="a JSONL file or a folder of *.jsonl[.gz] files")
    p.add_argument("--output", required=True, help="folder for the cleaned JSONL (one file per task)")
    p.add_argument("--workdir", required=True, help="signatures, duplicate lists, logs, stats, the report")
    p.add_argument("--config", default=None, help="YAML settings (default: pipelines/curation/curate.yaml values)")
    p.add_argument("--disable", action="append", default=[], help="a dedup stage or filter to skip (repeatable)")
    p.add_argument("--enable", action="append", default=[], help="a dedup stage or filter to add (repeatable)")
    p.add_argument("--tasks", type=int, default=1, help="datatrove tasks per document-reading stage")
    p.add_argument("--workers", type=int, default=-1, help="tasks run at once (-1: all)")
    p.add_argument("--executor", default="local", choices=("local", "slurm"))
    p.add_argument("--partition", default="", help="SLURM partition")
    p.add_argument("--time", default="24:00:00", help="SLURM time limit per task")
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--mem-per-cpu-gb", type=int, default=2)
    p.add_argument("--qos", default="")
    p.add_argument("--env-command", default="", help="SLURM: shell line that activates this environment")
    p.add_argument("--dry-run", action="store_true", help="print the stages (and sbatch scripts); run nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return curate(args)
    except (UserError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def curate(args) -> int:
    from aria_train.data.curation import (ExecutorSettings, WriteReport, build_executors, build_stages,
                                          check_word_tokenizer, describe, format_table, load_curate_config,
                                          run_chain, save_plan, write_report)

    cfg = load_curate_config(args.config, disable=tuple(args.disable), enable=tuple(args.enable))
    check_word_tokenizer(cfg.language)
    workdir, output = Path(args.workdir).resolve(), Path(args.output).resolve()
    stages = build_stages(cfg, args.input, workdir, output, args.tasks)
    settings = ExecutorSettings(kind=args.executor, workers=args.workers, partition=args.partition, time=args.time,
                                cpus_per_task=args.cpus_per_task, mem_per_cpu_gb=args.mem_per_cpu_gb, qos=args.qos,
                                env_command=args.env_command)
    executors = build_executors(stages, settings, workdir / "logs", report_step=WriteReport(str(workdir)))
    if args.dry_run:
        print(describe(executors))
        return 0
    workdir.mkdir(parents=True, exist_ok=True)
    save_plan(workdir, stages, output, dataclasses.asdict(cfg))
    run_chain(executors)
    if args.executor == "slurm":
        print(f"submitted {len(executors)} SLURM jobs; the report will be in {workdir / 'report.txt'}")
        return 0
    report = write_report(workdir)
    print(format_table(report))
    print(f"cleaned JSONL in {output}; report in {workdir / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
