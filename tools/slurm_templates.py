"""Render the SLURM templates in launch/slurm/ with chosen values, and run them without SLURM.

    sys.path.insert(0, "tools")  # from the repository root
    from slurm_templates import render_sbatch, dry_run_job
    script = render_sbatch(1, options={"nodes": 2}, variables={"GPUS_PER_NODE": 8})
    job = dry_run_job(script, job_id=4242, nodelist="gpu[001-002]", workdir=tmp)
    job.torchrun_lines   # the torchrun command each node would run

`dry_run_job` runs the real bash (the template, run_job.sh and torchrun_from_slurm.sh) with
stand-ins for `srun` (runs the per-node launcher once per node), `scontrol` (hostnames, job
command) and `sbatch` (records the chained submission), and with ARIA_PRINT_ONLY=1 so the launcher
prints the torchrun command instead of running it. Also usable by hand to check an edited
template: `python tools/slurm_templates.py 1 --nodes 2 --nodelist 'gpu[001-002]'`.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO_ROOT / "launch" / "slurm"


def template_path(stage: int) -> Path:
    path = SLURM_DIR / f"stage{stage}.sbatch"
    if not path.is_file():
        raise FileNotFoundError(f"no SLURM template for stage {stage}: {path}")
    return path


def expand_hostlist(nodelist: str) -> list[str]:
    """SLURM's compressed host list -> host names, as `scontrol show hostnames` prints them.

    "gpu[001-003,007]" -> gpu001 gpu002 gpu003 gpu007; "a1,b[1-2]" -> a1 b1 b2; several bracket
    groups in one name ("r[1-2]n[1-2]") expand as a product, leftmost slowest.
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist):
        names = [""]
        for prefix, ranges in re.findall(r"([^\[\]]*)(?:\[([^\]]*)\])?", item):
            suffixes = [prefix]
            if ranges:
                suffixes = [prefix + number for number in _expand_ranges(ranges)]
            names = [name + suffix for name in names for suffix in suffixes]
        hosts.extend(name for name in names if name)
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def _expand_ranges(ranges: str) -> list[str]:
    out = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if not high:
            out.append(low)
            continue
        width = len(low)
        out.extend(str(number).zfill(width) for number in range(int(low), int(high) + 1))
    return out


def render_sbatch(stage: int, options: dict | None = None, variables: dict | None = None) -> str:
    """The stage's template with `#SBATCH --KEY=...` and top-level `NAME=...` values replaced.

    Every key must already be in the template (a KeyError otherwise), so a renamed variable fails
    loudly. Variable values are written as given: quote strings yourself when they need it,
    e.g. {"RUN_DIR": '"/tmp/run"'} or {"TRAIN_ARGS": "(--train-iters 4)"}.
    """
    text = template_path(stage).read_text()
    for key, value in (options or {}).items():
        text, count = re.subn(rf"^#SBATCH --{re.escape(key)}=\S+", f"#SBATCH --{key}={value}", text, flags=re.M)
        if count != 1:
            raise KeyError(f"stage{stage}.sbatch has no '#SBATCH --{key}=' line")
    for name, value in (variables or {}).items():
        pattern = rf"^{re.escape(name)}=(\([^)]*\)|\"[^\"]*\"|\S*)"
        text, count = re.subn(pattern, lambda _m: f"{name}={value}", text, count=1, flags=re.M)
        if count != 1:
            raise KeyError(f"stage{stage}.sbatch has no top-level variable {name}")
    return text


@dataclass
class DryRunJob:
    returncode: int
    stdout: str
    stderr: str
    torchrun_lines: list[str] = field(default_factory=list)  # one per node, in node order
    sbatch_calls: list[list[str]] = field(default_factory=list)  # arguments of chained submissions


def dry_run_job(script: str, job_id: int, nodelist: str, workdir: Path, extra_env: dict | None = None,
                timeout: float = 60) -> DryRunJob:
    """Runs a rendered template as `sbatch` would (cwd = workdir = the submit directory), with
    stand-ins for srun/scontrol/sbatch; see the module docstring."""
    workdir = Path(workdir)
    bin_dir = workdir / "fake_slurm_bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script_path = workdir / "job.sbatch"
    script_path.write_text(script)
    hosts = expand_hostlist(nodelist)
    _write_stubs(bin_dir, script_path)
    env = dict(os.environ)
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_NNODES": str(len(hosts)),
        "SLURM_SUBMIT_DIR": str(REPO_ROOT),
        "ARIA_PRINT_ONLY": "1",
        "FAKE_SLURM_LOG": str(workdir / "fake_slurm.log"),
    })
    env.update({k: str(v) for k, v in (extra_env or {}).items()})
    (workdir / "fake_slurm.log").write_text("")
    result = subprocess.run(["bash", str(script_path)], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=timeout)
    job = DryRunJob(result.returncode, result.stdout, result.stderr)
    for line in (workdir / "fake_slurm.log").read_text().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "sbatch":
            job.sbatch_calls.append(shlex.split(rest))
    job.torchrun_lines = [line for line in result.stdout.splitlines()
                          if line.startswith("python ") and "/launch/run.py " in line]
    return job


def _write_stubs(bin_dir: Path, script_path: Path) -> None:
    python = sys.executable
    stubs = {
        # srun: the per-node command once per node, SLURM_NODEID set, in node order.
        "srun": """#!/usr/bin/env bash
            while [[ "$1" == -* ]]; do shift; done
            status=0
            for ((node = 0; node < SLURM_NNODES; node++)); do
                SLURM_NODEID=$node SLURM_PROCID=$node "$@" || status=$?
            done
            exit $status
            """,
        "scontrol": f"""#!{python}
            import sys
            sys.path.insert(0, {str(REPO_ROOT / "tools")!r})
            from slurm_templates import expand_hostlist
            args = sys.argv[1:]
            if args[:2] == ["show", "hostnames"]:
                print("\\n".join(expand_hostlist(args[2])))
            elif args[:2] == ["show", "job"]:
                print(f"JobId={{args[2]}} JobName=aria Command={str(script_path)} WorkDir=/tmp")
            else:
                sys.exit("fake scontrol: unsupported " + " ".join(args))
            """,
        "sbatch": """#!/usr/bin/env bash
            printf 'sbatch' >> "$FAKE_SLURM_LOG"
            printf ' %q' "$@" >> "$FAKE_SLURM_LOG"
            echo >> "$FAKE_SLURM_LOG"
            echo "Submitted batch job 99999"
            """,
    }
    for name, body in stubs.items():
        path = bin_dir / name
        shebang, _, rest = body.partition("\n")
        path.write_text(shebang + "\n" + textwrap.dedent(rest))
        path.chmod(0o755)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="print the torchrun line a SLURM template would run")
    parser.add_argument("stage", type=int)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--nodelist", default="gpu[001-002]")
    parser.add_argument("--job-id", type=int, default=4242)
    parser.add_argument("--workdir", default="runs/slurm_dry_run")
    args = parser.parse_args(argv)
    script = render_sbatch(args.stage, {"nodes": args.nodes, "gpus-per-node": args.gpus_per_node},
                           {"GPUS_PER_NODE": args.gpus_per_node, "ENV_SETUP": "/dev/null"})
    job = dry_run_job(script, args.job_id, args.nodelist, Path(args.workdir).resolve())
    sys.stdout.write(job.stdout)
    sys.stderr.write(job.stderr)
    return job.returncode


if __name__ == "__main__":
    sys.exit(main())
