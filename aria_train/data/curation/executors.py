"""datatrove executors for the curation stages: local processes or SLURM job arrays.

Both chain the stages with datatrove's own `depends=`: locally each stage runs when the one
before it has completed every task; on SLURM each stage is a job array submitted with
`--dependency=afterok:<previous job>` (datatrove's SlurmPipelineExecutor.launch_job), and a last
one-task job writes the report from the stats files once everything has run. Completed tasks
are skipped on a re-run (datatrove's completion markers), so a crashed run continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aria_train.data.curation.pipeline import Stage
from aria_train.errors import UserError


@dataclass
class ExecutorSettings:
    kind: str = "local"  # local | slurm
    workers: int = -1  # local: tasks run at once (-1 = all)
    partition: str = ""
    time: str = "24:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    qos: str = ""
    env_command: str = ""  # shell line that activates the environment on a compute node
    job_name: str = "aria-curate"
    max_array_size: int = 1001


def build_executors(stages: list[Stage], settings: ExecutorSettings, logs: Path, report_step=None) -> list:
    """One executor per stage (plus, on SLURM, the report job), each depending on the one before."""
    if settings.kind not in ("local", "slurm"):
        raise UserError(f"curate --executor {settings.kind}: must be local or slurm")
    if settings.kind == "slurm" and not settings.partition:
        raise UserError("curate --executor slurm needs --partition")
    executors, previous = [], None
    for stage in stages:
        previous = _executor(stage.pipeline, stage.tasks, stage.name, settings, Path(logs), previous)
        executors.append(previous)
    if settings.kind == "slurm" and report_step is not None:
        executors.append(_executor([report_step], 1, "report", settings, Path(logs), previous))
    return executors


def _executor(pipeline: list, tasks: int, name: str, settings: ExecutorSettings, logs: Path, depends):
    if settings.kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        workers = settings.workers if settings.workers > 0 else tasks
        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(workers, tasks),
                                     logging_dir=str(logs / name), depends=depends)
    from datatrove.executor import SlurmPipelineExecutor

    return SlurmPipelineExecutor(
        pipeline, tasks=tasks, time=settings.time, partition=settings.partition,
        cpus_per_task=settings.cpus_per_task, mem_per_cpu_gb=settings.mem_per_cpu_gb,
        workers=settings.workers, job_name=f"{settings.job_name}-{name}", qos=settings.qos or None,
        env_command=settings.env_command or None, logging_dir=str(logs / name), depends=depends,
        max_array_size=settings.max_array_size, slurm_logs_folder=str(logs / name / "slurm_logs"),
    )


def run_chain(executors: list) -> None:
    """Runs (local) or submits (SLURM) the whole chain: the last executor pulls in its dependencies."""
    last = executors[-1]
    if hasattr(last, "launch_job"):
        last.launch_job()  # submit from here even when this shell is itself inside a SLURM allocation
    else:
        last.run()


def describe(executors: list) -> str:
    """What would run, without running or submitting anything: per stage its tasks and, on SLURM,
    the sbatch script datatrove would submit (its directives and the command)."""
    blocks = []
    for executor in executors:
        name = Path(executor.logging_dir.path).name
        steps = " -> ".join(str(step) for step in executor.pipeline)
        header = f"== {name}: {executor.world_size} task(s): {steps}"
        if hasattr(executor, "get_sbatch_args"):
            array = min(executor.world_size, executor.max_array_size)
            script = executor.get_launch_file_contents(
                executor.get_sbatch_args(array),
                f"srun -l -n {executor.nodes_per_task} launch_pickled_pipeline "
                f"{executor.logging_dir.resolve_paths('executor.pik')}")
            header += "\n" + script.strip()
        blocks.append(header)
    return "\n".join(blocks)
