"""results.md of the device suite (bench/gpu_suite.py): the tables, from results.json's dict."""

from __future__ import annotations


def _fmt(value, spec: str = ".1f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def _kernels(rows) -> list[str]:
    if not rows:
        return []
    lines = ["", "| top kernels (one step) | calls | device ms |", "|---|---:|---:|"]
    lines += [f"| `{r['kernel']}` | {r['calls']} | {r['device_ms']:.2f} |" for r in rows]
    return lines


def _moe(m: dict) -> list[str]:
    if not m:
        return ["MoE layer: no result (see the step's output in results.json)."]
    s = m["shape"]
    lines = [f"### MoE layer: {s['tokens']} tokens, H {s['hidden']}, {s['experts']} x {s['ffn']} top-{s['top_k']}, "
             f"shared {s['shared']}, bf16, forward + backward ({m['model_tflop_per_step']:.2f} model TFLOP)", "",
             "| | ms | TFLOP/s |", "|---|---:|---:|",
             f"| ours | {m['ours']['ms']:.2f} | {m['ours']['tflops']:.0f} |"]
    if m.get("transformers"):
        lines.append(f"| transformers ({m['transformers_experts']}) | {m['transformers']['ms']:.2f} | "
                     f"{m['transformers']['tflops']:.0f} |")
        lines += ["", f"ours / transformers speed: {m['speedup_over_transformers']:.2f}x (target >= 1.3x); "
                      f"max |output difference| {_fmt(m.get('max_abs_output_diff'), '.3g')}"]
    else:
        lines += ["", f"transformers: {m['transformers_experts']}"]
    lines.append(f"ours: {m['ours']['tflops']:.0f} TFLOP/s (target >= 550)")
    return lines + _kernels(m.get("ours_top_kernels"))


def _decoder(d: dict) -> list[str]:
    if not d:
        return ["Decoder: no result (see the step's output in results.json)."]
    lines = [f"### aria-25b widths, {d['layers']} layers ({d['parameters'] / 1e9:.2f}B parameters), seq {d['seq']}, "
             f"ZeRO-1, bf16 layout", ""]
    if d.get("layers_note"):
        lines += [f"Note: {d['layers_note']}", ""]
    lines += ["| step ms | tokens/s | model TFLOP/s | MFU | peak GiB | estimate GiB | peak / estimate |",
              "|---:|---:|---:|---:|---:|---:|---:|",
              f"| {d['step_ms']:.1f} | {d['tokens_per_s']:.0f} | {d['tflops']:.0f} | "
              f"{_fmt(d['mfu'] and 100 * d['mfu'], '.1f')}{'%' if d['mfu'] else ''} | {_fmt(d['peak_memory_gib'])} | {d['estimate_gib']:.1f} | "
              f"{_fmt(d['peak_over_estimate'], '.2f')} |", "", "MFU target >= 45%."]
    return lines + _kernels(d.get("top_kernels"))


def _long(m: dict) -> list[str]:
    if not m:
        return ["Long layer: no result (see the step's output in results.json)."]
    return [f"### One aria-25b layer at {m['seq']:,} tokens, {m['mode']} recompute, bf16 layout", "",
            "| activations measured GiB | estimated GiB | measured / estimated | whole peak GiB | estimated GiB |",
            "|---:|---:|---:|---:|---:|",
            f"| {m['measured_activations_gib']:.2f} | {m['estimated_activations_gib']:.2f} | "
            f"{m['activations_measured_over_estimate']:.2f} | {m['measured_peak_gib']:.2f} | "
            f"{m['estimated_total_gib']:.2f} |"]


def _tests(t: dict) -> list[str]:
    if not t or "error" in t:
        return [f"Tests: {t.get('error') if t else 'no report'}"]
    lines = [f"Tests (tests/gpu): {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped", ""]
    lines += [f"- {c['test']}: {c['outcome']} ({c['seconds']:.1f} s)" for c in t["cases"]]
    return lines


def render(results: dict) -> str:
    device = results.get("device", {})
    lines = ["# Device suite results", "", f"Device: {device.get('device')} (torch {device.get('torch', '?')})", ""]
    if results.get("dry"):
        lines += ["Dry run: nothing was measured; the figures are unmeasured.", "",
                  "| step | command | dry run |", "|---|---|---|"]
        lines += [f"| {p['name']} | `{p['command']}` | {'ok' if p['dry_returncode'] == 0 else 'FAILED'} |"
                  for p in results["plan"]]
        problems = results.get("import_problems") or []
        lines += ["", f"Import check: {'ok' if not problems else '; '.join(problems)}"]
        return "\n".join(lines) + "\n"
    if results.get("smoke"):
        lines += ["Smoke run: tiny shapes on CPU, the code paths checked; no figure below is a GPU measurement.", ""]
    lines += ["| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.0f} |" for s in results["steps"]]
    for block in (_tests(results.get("tests")), _moe(results.get("moe_layer")), _decoder(results.get("decoder_step")),
                  _long(results.get("long_layer_memory"))):
        lines += [""] + block
    return "\n".join(lines) + "\n"
