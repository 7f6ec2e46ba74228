"""What the GPU benchmarks share: CUDA-event timing, a fast on-device initialisation, the model
FLOPs of the MoE layer, the device's peak, and the import rule of the suite.

The GPU machine has torch, transformers, numpy, safetensors, pyyaml and pytest and nothing else
(no megatron-core, no sentencepiece, no network). Every module of the suite imports only those
and aria_train's model / moe / optim / parallel / train / checkpoint / accounting code, never its
data package (which needs megatron-core and sentencepiece). `check_imports` proves it on CPU:
bench/gpu_suite.sh --dry runs it.
"""

from __future__ import annotations

import ast
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Third-party top-level modules the suite's own files may import.
ALLOWED_IMPORTS = {"torch", "transformers", "numpy", "safetensors", "yaml", "pytest", "aria_train"}
# Present here but absent on the GPU machine: nothing the suite imports may pull them in.
ABSENT_ON_GPU_MACHINE = ("megatron", "sentencepiece", "wandb", "PIL", "datatrove", "faiss", "scipy", "matplotlib",
                         "webdataset", "spacy")
SUITE_FILES = ["bench/gpu_common.py", "bench/gpu_suite.py", "bench/gpu_report.py", "bench/moe_layer.py",
               "bench/decoder_step.py", "bench/long_layer_memory.py", "tests/gpu/conftest.py", "tests/gpu/gpu_helpers.py",
               "tests/gpu/test_gpu_kernels.py", "tests/gpu/test_gpu_training.py"]


def direct_imports(path: Path) -> set[str]:
    """Top-level names of the modules a file imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def loaded_absent_modules() -> set[str]:
    """Which of ABSENT_ON_GPU_MACHINE are loaded in this process now."""
    return {m.split(".")[0] for m in sys.modules} & set(ABSENT_ON_GPU_MACHINE)


def check_imports(loaded_by_transformers: frozenset = frozenset(), files: list = SUITE_FILES) -> list[str]:
    """Problems with the suite's imports (empty = fine): a suite file importing a third-party
    module outside ALLOWED_IMPORTS (bench-local modules aside), or, after importing every suite
    module, a module loaded that the GPU machine does not have. `loaded_by_transformers`: what
    importing transformers alone loaded (its optional dependencies, used only where installed)."""
    local = {Path(f).stem for f in SUITE_FILES} | {"conftest", "gpu_helpers"}
    problems = []
    for name in files:
        for module in sorted(direct_imports(REPO / name)):
            if module in sys.stdlib_module_names or module in ALLOWED_IMPORTS or module in local:
                continue
            problems.append(f"{name} imports {module}, which the GPU machine may not have")
    loaded = sorted(loaded_absent_modules() - set(loaded_by_transformers))
    problems.extend(f"importing the suite loaded {m}, absent on the GPU machine" for m in loaded)
    return problems


def cuda_times_ms(fn: Callable[[], None], warmup: int, iters: int) -> list[float]:
    """Milliseconds of each of `iters` calls of fn after `warmup`, by CUDA events (one wait at the
    end); without CUDA (the --smoke runs) by the host clock."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        import time

        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return times
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


@torch.no_grad()
def fast_init_(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Normal(0, std) weights drawn on the device (norm scales 1): the benchmarks need a realistic
    scale, not aria_train's per-expert CPU-seeded initialisation (minutes at full width)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=generator)


def moe_layer_forward_flops(tokens: int, hidden: int, num_experts: int, top_k: int, ffn: int, shared: int) -> float:
    """Model FLOPs of one MoE layer's forward: router, top_k routed SwiGLU experts, the shared MLP."""
    return tokens * (2 * hidden * num_experts + 2 * 3 * hidden * ffn * top_k + 2 * 3 * hidden * shared)


def device_summary() -> dict:
    from aria_train.train.flops import peak_flops

    if not torch.cuda.is_available():
        return {"device": "cpu", "cuda": False}
    name = torch.cuda.get_device_name()
    props = torch.cuda.get_device_properties(0)
    return {"device": name, "cuda": True, "memory_gib": props.total_memory / 2**30, "torch": torch.__version__,
            "peak_bf16_tflops": (peak_flops(name) or 0) / 1e12 or None}


def top_kernels(fn: Callable[[], None], rows: int = 12) -> list[dict]:
    """The `rows` CUDA kernels with the most device time over one call of fn (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        return []
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    return [{"kernel": e.key[:90], "calls": e.count, "device_ms": e.self_device_time_total / 1000.0}
            for e in events[:rows]]


def write_json(path: Optional[str], payload: dict) -> None:
    text = json.dumps(payload, indent=1, default=str)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")


def bench_device(what: str, smoke: bool) -> str:
    """cuda, or cpu for a --smoke run (tiny shapes: the code path is checked, nothing measured)."""
    if smoke:
        return "cpu"
    if not torch.cuda.is_available():
        raise SystemExit(f"{what}: needs CUDA (--dry checks the plan and imports, --smoke the code on CPU)")
    return "cuda"


def peak_bytes(device: str, fn: Callable[[], None]) -> tuple[int, int]:
    """(bytes allocated before fn, peak bytes allocated while it ran): CUDA's allocator
    statistics, or on CPU the profiler's allocator events (aria_train.accounting)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return before, torch.cuda.max_memory_allocated()
    from aria_train.accounting import measure_cpu_peak_bytes

    return 0, measure_cpu_peak_bytes(fn)
