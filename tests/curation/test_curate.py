"""tools/curate.py on a corpus with planted exact copies, near copies (1% of words changed) and
low-quality documents of six kinds, two input files, two datatrove tasks: the planted duplicates
go (recall >= 0.95), the unique documents stay (>= 0.98), and the report's counts are the
corpus's own. Also: the SLURM executor's submissions (a stand-in sbatch records them), the
offline checks (c4_badwords word list, word tokenizer), and config errors."""

import json
import os
import stat
import sys
from pathlib import Path

import dill
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curate_helpers import load_tool, read_output, write_jsonl  # noqa: E402

from aria_train.data.curation.synthetic import planted_corpus  # noqa: E402
from aria_train.data.tokenizer import load_tokenizer  # noqa: E402

curate = load_tool("curate")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("curate")
    corpus = planted_corpus(n_unique=300, n_exact=30, n_near=30, n_low=30, seed=0)
    half = len(corpus.records) // 2
    write_jsonl(base / "in" / "a.jsonl", corpus.records[:half])
    write_jsonl(base / "in" / "b.jsonl", corpus.records[half:])
    argv = ["--input", str(base / "in"), "--output", str(base / "out"), "--workdir", str(base / "work"),
            "--tasks", "2", "--workers", "1"]
    assert curate.main(argv) == 0
    report = json.loads((base / "work" / "report.json").read_text())
    return {"base": base, "corpus": corpus, "argv": argv, "out": read_output(base / "out"), "report": report}


def test_planted_duplicates_removed_unique_documents_kept(run):
    corpus, kept = run["corpus"], {r["id"] for r in run["out"]}
    planted_copies = sum(len(copies) for copies in corpus.dup_groups.values())
    removed = sum(len(copies) + 1 - max(1, sum(i in kept for i in [orig, *copies]))
                  for orig, copies in corpus.dup_groups.items())
    assert removed / planted_copies >= 0.95, (removed, planted_copies)
    # every distinct content (singletons, and each duplicate group) keeps one copy
    distinct = [[s] for s in corpus.singletons] + [[o, *c] for o, c in corpus.dup_groups.items()]
    survivors = sum(any(i in kept for i in ids) for ids in distinct)
    assert survivors / len(distinct) >= 0.98, (survivors, len(distinct))
    low_kept = [i for i in corpus.low_quality if i in kept]
    assert len(low_kept) <= 0.05 * len(corpus.low_quality), low_kept
    assert len(kept) == len(run["out"])  # no document written twice


def test_report_counts_match_the_corpus(run):
    corpus, rows = run["corpus"], {row["stage"]: row for row in run["report"]["stages"]}
    tokenizer = load_tokenizer()
    assert [r["stage"] for r in run["report"]["stages"]] == [
        "input", "exact dedup", "quality filters", "minhash dedup", "line dedup"]
    assert rows["input"]["docs_out"] == len(corpus.records)
    assert rows["input"]["tokens_out"] == sum(len(tokenizer.encode(r["text"])) + 1 for r in corpus.records)
    exact = rows["exact dedup"]
    assert exact["docs_removed"] == len(corpus.exact_copies)  # exact hashing: exactly the copies
    assert sum(h.get("dropped", 0) for h in exact["hits"].values()) == exact["docs_removed"]
    filters = rows["quality filters"]
    assert sum(h.get("dropped", 0) for h in filters["hits"].values()) == filters["docs_removed"]
    assert filters["docs_removed"] == len(corpus.low_quality)
    minhash = rows["minhash dedup"]
    dropped = [h["dropped"] for name, h in minhash["hits"].items() if "stage 4" in name]
    assert dropped == [minhash["docs_removed"]] and minhash["docs_removed"] >= 0.95 * len(corpus.near_copies)
    for before, after in zip(run["report"]["stages"], run["report"]["stages"][1:]):
        assert (after["docs_in"], after["tokens_in"]) == (before["docs_out"], before["tokens_out"])
    final = run["report"]["stages"][-1]
    assert final["docs_out"] == len(run["out"])
    assert final["tokens_out"] == sum(len(tokenizer.encode(r["text"])) + 1 for r in run["out"])
    table = (run["base"] / "work" / "report.txt").read_text()
    assert "minhash dedup" in table and f"{final['docs_out']:,}" in table


def test_rerun_continues_and_other_settings_are_refused(run, capsys):
    before = sorted(p.name for p in (run["base"] / "out").iterdir())
    assert curate.main(run["argv"]) == 0  # every task completed: nothing runs again, same report
    assert sorted(p.name for p in (run["base"] / "out").iterdir()) == before
    assert json.loads((run["base"] / "work" / "report.json").read_text()) == run["report"]
    capsys.readouterr()
    assert curate.main(run["argv"] + ["--disable", "minhash"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0]


def _fake_sbatch(folder: Path) -> Path:
    """An sbatch that records its arguments and script and answers with a job id."""
    folder.mkdir(parents=True)
    script = folder / "sbatch"
    script.write_text("#!/bin/bash\n"
                      f"n=$(ls {folder} | grep -c '^job')\n"
                      f"printf '%s\\n' \"$@\" > {folder}/job$((n+1)).args\n"
                      f"cp \"${{@: -1}}\" {folder}/job$((n+1)).script\n"
                      "echo \"Submitted batch job $((1000+n+1))\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def test_slurm_executor_submits_a_dependent_chain(run, tmp_path, monkeypatch, capsys):
    calls = _fake_sbatch(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{calls}{os.pathsep}{os.environ['PATH']}")
    work = tmp_path / "work"
    argv = ["--input", str(run["base"] / "in"), "--output", str(tmp_path / "out"), "--workdir", str(work),
            "--tasks", "3", "--executor", "slurm", "--partition", "cpu", "--time", "2:00:00",
            "--env-command", "source /opt/venv/bin/activate"]
    assert curate.main(argv) == 0
    jobs = sorted(calls.glob("job*.args"), key=lambda p: int(p.stem[3:]))
    arrays = [j for j in jobs if "merge_stats" not in (calls / f"{j.stem}.script").read_text()]
    stages = ["exact_signatures", "exact_find", "filter", "minhash_signatures", "minhash_buckets",
              "minhash_cluster", "minhash_filter", "lines_signatures", "lines_find", "lines_filter", "report"]
    tasks = [3, 1, 3, 3, 14, 1, 3, 3, 1, 3, 1]
    assert len(arrays) == len(stages) and len(jobs) == 2 * len(stages)  # + datatrove's merge-stats job each
    previous = None
    for job, stage, n in zip(arrays, stages, tasks):
        script = (calls / f"{job.stem}.script").read_text()
        assert "#SBATCH --partition=cpu" in script and "#SBATCH --time=2:00:00" in script
        assert f"#SBATCH --array=0-{n - 1}" in script and f"aria-curate-{stage}" in script
        assert "source /opt/venv/bin/activate" in script and str(work / "logs" / stage / "executor.pik") in script
        args = job.read_text().splitlines()
        assert (f"--dependency=afterok:{previous}" in args) if previous else not any("dependency" in a for a in args)
        previous = 1000 + int(job.stem[3:])
        with open(work / "logs" / stage / "executor.pik", "rb") as f:
            assert dill.load(f).world_size == n  # what each compute node will unpickle and run


def _cluster_commands(folder: Path) -> Path:
    """srun that runs its command here, and scontrol that names this host: a one-node 'cluster'."""
    folder.mkdir(parents=True)
    (folder / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == -* ]]; do shift; [[ "$1" =~ ^[0-9]+$ ]] && shift; done\n'
                                 'exec "$@"\n')
    (folder / "scontrol").write_text("#!/bin/bash\necho localhost\n")
    for tool in ("srun", "scontrol"):
        (folder / tool).chmod(0o755)
    return folder


def test_slurm_jobs_run_on_a_node_and_match_the_local_run(run, tmp_path, monkeypatch):
    """Plays the cluster: each submitted job array's script runs once per array index, in
    submission order, as SLURM would; the report job's numbers equal the local executor's."""
    import subprocess

    calls, tools = _fake_sbatch(tmp_path / "bin"), _cluster_commands(tmp_path / "tools")
    path = os.pathsep.join([str(calls), str(tools), str(Path(sys.executable).parent), os.environ["PATH"]])
    monkeypatch.setenv("PATH", path)
    work = tmp_path / "work"
    argv = ["--input", str(run["base"] / "in"), "--output", str(tmp_path / "out"), "--workdir", str(work),
            "--tasks", "1", "--executor", "slurm", "--partition", "cpu", "--env-command", "true",
            "--disable", "minhash", "--disable", "lines"]
    assert curate.main(argv) == 0
    for job in sorted(calls.glob("job*.script"), key=lambda p: int(p.stem[3:])):
        script = job.read_text()
        if "merge_stats" in script:
            continue
        tasks = int(script.split("#SBATCH --array=0-")[1].split()[0]) + 1
        for index in range(tasks):
            env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(index), SLURM_JOB_ID="1", SLURM_NODELIST="localhost",
                       OMP_NUM_THREADS="1")
            done = subprocess.run(["bash", str(job)], env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((work / "report.json").read_text())
    assert [r["stage"] for r in report["stages"]] == ["input", "exact dedup", "quality filters"]
    assert report["stages"] == run["report"]["stages"][:3]
    # the same texts survive (which of two exact copies is kept depends on how tasks split the input)
    assert sorted(r["text"] for r in read_output(tmp_path / "out")) == sorted(
        r["text"] for r in read_output(run["base"] / "work" / "stage_output" / "filters"))


def test_dry_run_prints_sbatch_scripts_without_submitting(run, tmp_path, capsys):
    argv = ["--input", str(run["base"] / "in"), "--output", str(tmp_path / "out"), "--workdir", str(tmp_path / "w"),
            "--tasks", "4", "--executor", "slurm", "--partition", "big", "--dry-run", "--disable", "lines"]
    assert curate.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 8 and "#SBATCH --partition=big" in out and "#SBATCH --array=0-13" in out
    assert "lines_" not in out and not (tmp_path / "w" / "logs" / "filter" / "executor.pik").exists()


def test_c4_badwords_needs_its_word_list(run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "cached_assets_path", lambda **kw: str(tmp_path))
    argv = ["--input", str(run["base"] / "in"), "--output", str(tmp_path / "o"), "--workdir", str(tmp_path / "w"),
            "--enable", "c4_badwords", "--dry-run"]
    assert curate.main(argv) == 2  # off by default; asked for, it says what it lacks instead of skipping
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "c4_badwords" in err and str(tmp_path) in err


@pytest.mark.parametrize("extra, message", [
    (["--disable", "nope"], "--disable nope"),
    (["--config", "missing.yaml"], "missing.yaml"),
])
def test_bad_settings_are_one_line_errors(run, tmp_path, capsys, extra, message):
    argv = ["--input", str(run["base"] / "in"), "--output", str(tmp_path / "o"), "--workdir", str(tmp_path / "w")]
    assert curate.main(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_config_file_settings_and_unknown_keys(tmp_path, capsys):
    from aria_train.data.curation.config import load_curate_config
    from aria_train.errors import UserError

    good = tmp_path / "good.yaml"
    good.write_text("dedup: [minhash]\nfilters:\n  gopher_quality: {min_doc_words: 20}\nminhash: {num_buckets: 4}\n")
    cfg = load_curate_config(str(good), enable=("c4_quality",))
    assert cfg.dedup == ["minhash"] and cfg.minhash.num_buckets == 4
    assert cfg.ordered_filters() == [("gopher_quality", {"min_doc_words": 20}), ("c4_quality", {})]
    for text, culprit in [("dedupe: []\n", "dedupe"), ("minhash: {buckets: 3}\n", "buckets"),
                          ("filters: {gopher: {}}\n", "gopher")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(UserError, match=culprit):
            load_curate_config(str(bad))


def test_word_tokenizer_that_needs_a_download_is_refused(tmp_path, capsys):
    from aria_train.data.curation.steps import check_word_tokenizer
    from aria_train.errors import UserError

    check_word_tokenizer("eng")  # spaCy's blank English pipeline: offline
    with pytest.raises(UserError, match="'xyz'"):
        check_word_tokenizer("xyz")
