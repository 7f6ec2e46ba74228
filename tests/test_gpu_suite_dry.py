"""The device suite (bench/gpu_suite.sh) is complete and runnable where no GPU is lent: its dry
run plans every step, runs each benchmark's own dry run, collects the CUDA tests and proves that
nothing the suite imports is missing on the GPU machine; the report renders real results."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_common  # noqa: E402
import gpu_report  # noqa: E402


def test_dry_run_plans_every_step_and_imports_only_what_the_gpu_machine_has(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), str(tmp_path / "out"), "--dry"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "dry run: 4 steps planned, 0 failed their dry run [], 0 import problems" in result.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["dry"] and results["import_problems"] == []
    assert [p["name"] for p in results["plan"]] == ["gpu_tests", "moe_layer", "decoder_step", "long_layer_memory"]
    assert "11 tests collected" in results["plan"][0]["dry_output"]
    assert "unmeasured" in (tmp_path / "out" / "results.md").read_text()


def test_smoke_run_goes_through_every_step_on_cpu(tmp_path):
    """The suite's real path (subprocesses, JSON, the junit report, the tables) at tiny shapes."""
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), str(tmp_path / "out"), "--smoke"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [s["status"] for s in results["steps"]] == ["ok"] * 4
    assert results["tests"]["skipped"] == 11 and all("needs CUDA" in c["outcome"] for c in results["tests"]["cases"])
    assert results["moe_layer"]["transformers_experts"] and results["moe_layer"]["max_abs_output_diff"] < 1e-2
    assert results["decoder_step"]["step_ms"] > 0
    assert 0.8 < results["long_layer_memory"]["activations_measured_over_estimate"] < 1.2
    text = (tmp_path / "out" / "results.md").read_text()
    assert "Smoke run: tiny shapes on CPU" in text and "### MoE layer" in text


def test_the_import_check_names_a_module_the_gpu_machine_lacks(tmp_path):
    planted = ROOT / "bench" / f"_planted_{tmp_path.name}.py"
    planted.write_text("import torch\nimport scipy.sparse\nfrom aria_train.moe import layer\n")
    # In a fresh interpreter: this test process has loaded PIL, scipy & co. for other tests, and
    # the check also reports what is loaded after importing the suite.
    check = ("import sys; sys.path.insert(0, 'bench'); import gpu_common; "
             f"print('\\n'.join(gpu_common.check_imports(files=['bench/{planted.name}'])))")
    try:
        result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        planted.unlink()
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [f"bench/{planted.name} imports scipy, which the GPU machine may not have"]


def test_the_usage_error_is_one_line():
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == "usage: bash bench/gpu_suite.sh OUT [--dry | --smoke]"


def test_report_of_measured_results():
    results = {
        "device": {"device": "NVIDIA H200", "torch": "2.11.0"},
        "steps": [{"name": "gpu_tests", "status": "ok", "seconds": 80.0},
                  {"name": "moe_layer", "status": "ok", "seconds": 30.0}],
        "tests": {"passed": 10, "failed": 0, "skipped": 1,
                  "cases": [{"test": "tests.gpu.test_gpu_kernels::test_x", "outcome": "passed", "seconds": 1.0}]},
        "moe_layer": {"shape": {"tokens": 8192, "hidden": 2560, "experts": 64, "ffn": 1664, "top_k": 6, "shared": 3328},
                      "model_tflop_per_step": 5.03, "ours": {"ms": 12.5, "tflops": 402.0},
                      "transformers": {"ms": 20.0, "tflops": 251.0}, "transformers_experts": "grouped_mm",
                      "speedup_over_transformers": 1.6, "max_abs_output_diff": 0.01,
                      "ours_top_kernels": [{"kernel": "sm90_gemm", "calls": 6, "device_ms": 7.5}]},
        "decoder_step": {"layers": 4, "layers_note": "", "parameters": 3.99e9, "seq": 8192, "step_ms": 200.0,
                         "tokens_per_s": 40960.0, "tflops": 450.0, "mfu": 0.455, "peak_memory_gib": 85.0,
                         "estimate_gib": 80.8, "peak_over_estimate": 1.05},
        "long_layer_memory": {"seq": 65536, "mode": "selective", "measured_activations_gib": 21.0,
                              "estimated_activations_gib": 20.5, "activations_measured_over_estimate": 1.02,
                              "measured_peak_gib": 44.0, "estimated_total_gib": 43.7},
    }
    text = gpu_report.render(results)
    assert "Device: NVIDIA H200 (torch 2.11.0)" in text
    assert "| ours | 12.50 | 402 |" in text and "| transformers (grouped_mm) | 20.00 | 251 |" in text
    assert "ours / transformers speed: 1.60x (target >= 1.3x)" in text
    assert "| 200.0 | 40960 | 450 | 45.5% | 85.0 | 80.8 | 1.05 |" in text
    assert "| 21.00 | 20.50 | 1.02 | 44.00 | 43.70 |" in text
    assert "| `sm90_gemm` | 6 | 7.50 |" in text
