"""Where training metrics go: one console line, one JSON object per logged step, and wandb.

Console: the main numbers, then a compact time split (`time 0.52s [data 0.01 fwd 0.20 bwd 0.25
sync 0.03 opt 0.02]`), memory, skipped steps when any, and `console_extras` (routing summary).
JSONL: every key (nested values such as `router_counts`, per-expert arrays, included).
wandb: the scalar keys only.

Only rank 0 writes. wandb runs offline unless the user set WANDB_MODE or logged in and chose
`logging.wandb_mode: online`; it never prompts.
"""

import json
import os
import time
from pathlib import Path
from typing import Optional

from aria_train.train.config import LoggingConfig

CONSOLE_FIELDS = [
    ("step", "{:d}"),
    ("loss", "{:.4f}"),
    ("lm_loss", "{:.4f}"),
    ("balance_loss", "{:.4f}"),
    ("z_loss", "{:.5f}"),
    ("lr", "{:.3e}"),
    ("grad_norm", "{:.3f}"),
    ("tokens_per_s", "{:.0f}"),
    ("tokens_per_s_per_rank", "{:.0f}"),
    ("mfu", "{:.1%}"),
    ("visual_tokens_per_s", "{:.0f}"),
    ("text_tokens_per_s", "{:.0f}"),
    ("image_crops", "{:d}"),
    ("video_clips", "{:d}"),
    ("audio_clips", "{:d}"),
]
CONSOLE_LABELS = {"tokens_per_s": "tok/s", "tokens_per_s_per_rank": "tok/s/gpu", "visual_tokens_per_s": "vis tok/s",
                  "text_tokens_per_s": "text tok/s", "image_crops": "images", "video_clips": "videos",
                  "audio_clips": "audio"}
TIME_PHASES = [("data", "data"), ("forward", "fwd"), ("backward", "bwd"), ("grad_sync_wait", "sync"),
               ("optimizer", "opt"), ("other", "other")]
EXIT_STATUS_FILE = "exit_status"


def console_line(metrics: dict) -> str:
    parts = [f"{CONSOLE_LABELS.get(name, name)} " + fmt.format(metrics[name])
             for name, fmt in CONSOLE_FIELDS if name in metrics]
    if "step_time_s" in metrics:
        split = " ".join(f"{label} {metrics[f'time_{key}_s']:.2f}" for key, label in TIME_PHASES
                         if f"time_{key}_s" in metrics)
        parts.append(f"time {metrics['step_time_s']:.2f}s [{split}]")
    if "peak_memory_gib" in metrics:
        parts.append(f"mem {metrics['peak_memory_gib']:.2f}GiB")
    if metrics.get("skipped_steps"):
        parts.append(f"skipped {metrics['skipped_steps']}")
    extras = metrics.get("console_extras", "")
    return " | ".join(parts + ([extras] if extras else []))


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, bool)) or value is None


class MetricsLogger:
    def __init__(self, cfg: LoggingConfig, rank: int, run_config: Optional[dict] = None):
        self.enabled = rank == 0
        self.log_dir = Path(cfg.log_dir)
        self._jsonl = None
        self._wandb = None
        if not self.enabled:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.log_dir / "metrics.jsonl", "a", buffering=1)
        if cfg.wandb:
            os.environ.setdefault("WANDB_MODE", cfg.wandb_mode)
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self._wandb = wandb.init(project=cfg.wandb_project, dir=str(self.log_dir), config=run_config or {})

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        print(console_line(metrics), flush=True)
        record = {k: v for k, v in metrics.items() if k != "console_extras"}
        record["time"] = time.time()
        self._jsonl.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if _is_scalar(v)}, step=metrics["step"])

    def write_exit_status(self, reason: str, step: int) -> None:
        """LOG_DIR/exit_status = "<reason> <step>": why training stopped, for job chaining."""
        if not self.enabled:
            return
        path = self.log_dir / EXIT_STATUS_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"{reason} {step}\n")
        os.replace(tmp, path)

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()
