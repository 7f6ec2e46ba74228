"""The doc test: every command of README.md runs as written, at tiny size.

The ```bash blocks run in order, each with `bash -euo pipefail`, in one fresh working directory
(as a new user's clone would be: `launch/`, `tools/`, `pipelines/` and `bench/` of this checkout, nothing
generated). "Tiny size" is the only change, and it is made behind the command, not in its text:
`launch/pretrain.py` there is a shim that runs the real one with 64 synthetic multimodal samples,
no validation, and `--train-iters 4` unless the command gives its own (a `--dry-run` runs as
written: it uses no memory). Two blocks are not run here because CI runs them: the set-up
(installing the project) and the test suite (this test is part of it); they must be exactly what
`.ci/run` runs. The blocks in NOT_RUN are skipped, each with its reason (inputs no CI machine
has). Afterwards, every path the commands created must be ignored by git, so the README leaves a
clone clean.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHIM = '''import runpy, sys
REAL = {real!r}
args = sys.argv[1:]
tiny = ["--set", "data.synthetic_samples=64", "--set", "train.eval_interval=0"]
if "--train-iters" not in args:
    tiny += ["--train-iters", "4"]
if "--dry-run" in args:
    tiny = []
sys.argv = [REAL, *args, *tiny]
runpy.run_path(REAL, run_name="__main__")
'''


def bash_blocks() -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _ci_commands() -> list[str]:
    return [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _commands(block: str) -> list[str]:
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def _is_ci_block(block: str) -> bool:
    return "pip install" in block or block.strip() == "python -m pytest -q tests"


def test_setup_and_test_blocks_are_what_ci_runs():
    ci = " ; ".join(_ci_commands())
    ci_blocks = [block for block in bash_blocks() if _is_ci_block(block)]
    assert len(ci_blocks) == 2
    for block in ci_blocks:
        for command in _commands(block):
            for part in command.split(" && "):
                part = part.replace("python3 -m venv .venv", "python3 -m venv .venv-ci")
                part = part.replace(". .venv/bin/activate", ". .venv-ci/bin/activate")
                part = re.sub(r"^pip install", "python -m pip install -q", part)
                assert part in ci, f"README command {part!r} is not what .ci/run runs"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    (work / "launch").mkdir()
    for name in ("run.py", "curriculum.sh", "slurm"):
        (work / "launch" / name).symlink_to(REPO / "launch" / name)
    (work / "launch" / "pretrain.py").write_text(SHIM.format(real=str(REPO / "launch" / "pretrain.py")))
    for name in ("tools", "pipelines", "bench"):
        (work / name).symlink_to(REPO / name)
    return work


BLOCKS = [block for block in bash_blocks() if not _is_ci_block(block)]

# A block containing the key is not run, for the reason given. Only for inputs a CI machine cannot
# have; everything else runs.
NOT_RUN = {
    "--init-from-hf /models/Aria": "fine-tunes the released Aria weights (25.3B parameters, about 100 GB, "
                                   "downloaded by the user) on 80 GB GPUs; --init-from-hf itself is tested "
                                   "on tiny transformers checkpoints in tests/post/test_init_from_hf.py",
    "bash bench/gpu_suite.sh gpu_suite\n": "measures on a CUDA GPU (none on CI machines); the same script runs here "
                                           "with --dry and --smoke (the block before it, and "
                                           "tests/test_gpu_suite_dry.py)",
}


def test_not_run_blocks_exist():
    """Each NOT_RUN key still names a README block (a skip cannot outlive its command)."""
    for key in NOT_RUN:
        assert sum(key in block for block in BLOCKS) == 1, key


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(workdir, index):
    for key, reason in NOT_RUN.items():
        if key in BLOCKS[index]:
            pytest.skip(f"not run: {reason}")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", BLOCKS[index]], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, f"{BLOCKS[index]}\n---\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def test_what_the_commands_made_is_git_ignored(workdir):
    made = [p for p in workdir.iterdir() if p.name not in ("launch", "tools", "pipelines", "bench")]
    assert made, "the README commands wrote nothing?"
    names = [p.name + ("/" if p.is_dir() else "") for p in made]
    result = subprocess.run(["git", "check-ignore", "--no-index", "-v", *names], cwd=REPO, capture_output=True,
                            text=True)
    ignored = {line.split("\t")[-1] for line in result.stdout.splitlines()}
    assert sorted(set(names) - ignored) == [], f"not git-ignored: {sorted(set(names) - ignored)}"
