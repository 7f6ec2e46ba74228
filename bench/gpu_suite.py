"""The issue-15 device suite, one command: CUDA tests and the GPU benchmarks, each in its own
process with a time limit, results to OUT/results.json and OUT/results.md.

    bash bench/gpu_suite.sh OUT          # on a GPU machine: about 5 minutes on one H200
    bash bench/gpu_suite.sh OUT --dry    # anywhere: the plan, every import checked, nothing run
    bash bench/gpu_suite.sh OUT --smoke  # anywhere: the whole suite at tiny shapes on CPU (tests skip)

Steps (each a python module callable alone; limits keep the whole under 8 minutes):
  1. pytest tests/gpu: grouped GEMM = per-expert matmuls (bf16), fused AdamW = unfused, host syncs
     per MoE layer (torch.cuda.set_sync_debug_mode), bf16 layout vs fp32 loss, document masking
     by the varlen kernel = documents one by one, exact resume on one GPU (CUDA RNG included),
     pinned background batches;
  2. bench/moe_layer.py: the MoE layer at ARIA's shape, ours vs transformers' AriaTextMoELayer;
  3. bench/decoder_step.py: 4 full-width aria-25b layers, seq 8192, ZeRO-1, bf16 layout;
  4. bench/long_layer_memory.py: one layer at 65,536 tokens, selective recompute, peak vs estimate.
A step that fails or times out is recorded as such (its name, return code, the tail of its
output) and the suite goes on; nothing is skipped silently: a missing capability is a named skip
in the test report or a named field in a benchmark's JSON.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import REPO, SUITE_FILES, check_imports, device_summary, loaded_absent_modules  # noqa: E402

BUDGET_S = 470  # all steps together, under 8 minutes


def steps(out: Path, smoke: bool = False) -> list[dict]:
    py = sys.executable
    extra = ["--smoke"] if smoke else []
    return [
        {"name": "gpu_tests", "limit_s": 200,
         "cmd": [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/gpu", f"--junitxml={out / 'gpu_tests.xml'}"]},
        {"name": "moe_layer", "limit_s": 120,
         "cmd": [py, "bench/moe_layer.py", "--json", str(out / "moe_layer.json")] + extra},
        {"name": "decoder_step", "limit_s": 150,
         "cmd": [py, "bench/decoder_step.py", "--json", str(out / "decoder_step.json")] + extra},
        {"name": "long_layer_memory", "limit_s": 100,
         "cmd": [py, "bench/long_layer_memory.py", "--json", str(out / "long_layer_memory.json")] + extra},
    ]


def run_step(step: dict, remaining_s: float) -> dict:
    limit = max(10.0, min(step["limit_s"], remaining_s))
    start = time.monotonic()
    try:
        proc = subprocess.run(step["cmd"], cwd=REPO, capture_output=True, text=True, timeout=limit)
        status, rc, tail = ("ok" if proc.returncode == 0 else "failed"), proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as error:
        status, rc, tail = "timed out", None, (error.stdout or b"").decode(errors="replace") if isinstance(
            error.stdout, bytes) else (error.stdout or "")
    seconds = time.monotonic() - start
    print(f"[{step['name']}] {status} in {seconds:.0f} s (limit {limit:.0f} s)", flush=True)
    return {"name": step["name"], "status": status, "returncode": rc, "seconds": seconds,
            "command": " ".join(step["cmd"]), "output_tail": tail[-3000:]}


def test_report(path: Path) -> dict:
    if not path.exists():
        return {"error": "no junit report"}
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    cases = []
    for case in ET.parse(path).iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = f"skipped ({child.get('message', '')})"
        counts["failed" if outcome == "failed" else "skipped" if outcome.startswith("skipped") else "passed"] += 1
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time", 0))})
    return {**counts, "cases": cases}


def markdown(results: dict) -> str:
    from gpu_report import render  # bench/gpu_report.py: the tables

    return render(results)


def run(out: Path, smoke: bool = False) -> int:
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + BUDGET_S
    results = {"device": device_summary(), "smoke": smoke, "steps": []}
    for step in steps(out, smoke):
        results["steps"].append(run_step(step, deadline - time.monotonic()))
    results["tests"] = test_report(out / "gpu_tests.xml")
    for name in ("moe_layer", "decoder_step", "long_layer_memory"):
        path = out / f"{name}.json"
        results[name] = json.loads(path.read_text()) if path.exists() else None
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "results.md").write_text(markdown(results))
    print((out / "results.md").read_text())
    return 0 if all(s["status"] == "ok" for s in results["steps"]) else 1


def dry(out: Path) -> int:
    """The plan, each benchmark's own --dry, the tests collected, and the import check."""
    out.mkdir(parents=True, exist_ok=True)
    plan = []
    for step in steps(out):
        print(f"would run [{step['name']}] (limit {step['limit_s']} s): {' '.join(step['cmd'])}", flush=True)
        dry_cmd = step["cmd"][:2] + ["--dry"] if step["name"] != "gpu_tests" else \
            step["cmd"][:3] + ["--collect-only", "-q", "-p", "no:cacheprovider", "tests/gpu"]
        proc = subprocess.run(dry_cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        print(proc.stdout.strip()[-2000:], flush=True)
        plan.append({"name": step["name"], "command": " ".join(step["cmd"]), "dry_returncode": proc.returncode,
                     "dry_output": proc.stdout[-2000:] + proc.stderr[-2000:]})
    problems = import_everything()
    for problem in problems:
        print(f"import problem: {problem}")
    results = {"dry": True, "device": device_summary(), "plan": plan, "import_problems": problems,
               "budget_s": BUDGET_S}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results))
    failed = [p["name"] for p in plan if p["dry_returncode"] != 0]
    print(f"dry run: {len(plan)} steps planned, {len(failed)} failed their dry run {failed}, "
          f"{len(problems)} import problems")
    return 0 if not failed and not problems else 1


def import_everything() -> list[str]:
    """Imports every module the suite's files name (also those imported inside functions), then
    checks what got loaded (gpu_common.check_imports)."""
    sys.path.insert(0, str(REPO / "tests" / "gpu"))
    importlib.import_module("transformers.models.aria.modeling_aria")
    # transformers imports the optional packages it finds (PIL, sentencepiece, ...) and does without
    # them where they are missing: those are not the suite's
    by_transformers = frozenset(loaded_absent_modules())
    for name in SUITE_FILES:
        for node in ast.walk(ast.parse((REPO / name).read_text())):
            module = None
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                module = node.module
            elif isinstance(node, ast.Import):
                module = node.names[0].name
            if module and (module.startswith(("aria_train", "transformers")) or module in _LOCAL):
                importlib.import_module(module)
    for name in SUITE_FILES:
        importlib.import_module(Path(name).stem)
    return check_imports(by_transformers)


_LOCAL = {"gpu_common", "gpu_helpers", "moe_layer", "decoder_step", "long_layer_memory", "gpu_report"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="directory for results.json, results.md and each step's files")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry", action="store_true", help="the plan and the import check; nothing runs")
    mode.add_argument("--smoke", action="store_true", help="every step at tiny shapes on CPU; nothing measured")
    args = parser.parse_args(argv)
    return dry(Path(args.out)) if args.dry else run(Path(args.out), smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
