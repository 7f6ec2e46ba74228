"""Where training metrics go: one console line, one JSON object per logged step, and wandb.

Console: `step N/total`, the main numbers, then a compact time split (`time 0.52s [data 0.01 fwd
0.20 bwd 0.25 sync 0.03 opt 0.02]`), elapsed time and ETA, memory, skipped steps when any, and
`console_extras` (routing summary).
JSONL (LOG_DIR/metrics.jsonl): every key (nested values such as `router_counts`, per-expert
arrays, included). wandb: the scalar keys only.

Only rank 0 writes. Files are opened by `start(step)` when training starts (after any resume):
the records a previous attempt wrote after `step` are dropped first, so a resumed run's file
holds every step once. wandb runs offline unless the user set WANDB_MODE or logged in and chose
`logging.wandb_mode: online`; it never prompts; its directory is printed at start.
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import yaml

from aria_train.errors import UserError
from aria_train.train.config import LoggingConfig
from aria_train.train.run_dir import METRICS_FILE, truncate_records

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
    if parts and "train_iters" in metrics and "step" in metrics:
        parts[0] = f"step {metrics['step']}/{metrics['train_iters']}"
    if "step_time_s" in metrics:
        split = " ".join(f"{label} {metrics[f'time_{key}_s']:.2f}" for key, label in TIME_PHASES
                         if f"time_{key}_s" in metrics)
        parts.append(f"time {metrics['step_time_s']:.2f}s [{split}]")
    if "elapsed_s" in metrics:
        eta = f" eta {format_duration(metrics['eta_s'])}" if "eta_s" in metrics else ""
        parts.append(f"elapsed {format_duration(metrics['elapsed_s'])}{eta}")
    if "peak_memory_gib" in metrics:
        parts.append(f"mem {metrics['peak_memory_gib']:.2f}GiB")
    if metrics.get("skipped_steps"):
        parts.append(f"skipped {metrics['skipped_steps']}")
    extras = metrics.get("console_extras", "")
    return " | ".join(parts + ([extras] if extras else []))


def format_duration(seconds: float) -> str:
    """H:MM:SS (M:SS under an hour)."""
    total = int(round(max(seconds, 0.0)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, bool)) or value is None


class MetricsLogger:
    def __init__(self, cfg: LoggingConfig, rank: int, run_config: Optional[dict] = None):
        self.cfg = cfg
        self.enabled = rank == 0
        self.log_dir = Path(cfg.log_dir)
        self.run_config = run_config or {}
        self._jsonl = None
        self._wandb = None

    def start(self, step: int) -> None:
        """Opens the run's files as training starts at `step` (0, or the step resumed from):
        metrics.jsonl without records after `step`, config.yaml, and wandb."""
        if not self.enabled or self._jsonl is not None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.log_dir / METRICS_FILE
        dropped = truncate_records(metrics, step)
        if dropped:
            self.info(f"{metrics}: dropped {dropped} records after step {step}, the step this run resumes from")
        self._jsonl = open(metrics, "a", buffering=1)
        (self.log_dir / "config.yaml").write_text(yaml.safe_dump(self.run_config, sort_keys=False))
        if self.cfg.wandb:
            self._start_wandb()

    def _start_wandb(self) -> None:
        os.environ.setdefault("WANDB_MODE", self.cfg.wandb_mode)
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self._wandb = wandb.init(project=self.cfg.wandb_project, dir=str(self.log_dir), config=self.run_config)
        run_dir = Path(self._wandb.dir).parent  # wandb.dir is the run's files/ folder
        sync = f"; upload with: wandb sync {run_dir}" if os.environ["WANDB_MODE"] == "offline" else ""
        self.info(f"wandb ({os.environ['WANDB_MODE']}): {run_dir}{sync}")

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        print(console_line(metrics), flush=True)
        record = {k: v for k, v in metrics.items() if k != "console_extras"}
        record["time"] = time.time()
        if self._jsonl is not None:
            try:
                self._jsonl.write(json.dumps(record) + "\n")
            except OSError as error:
                raise UserError(f"cannot write {self.log_dir / METRICS_FILE}: {error.strerror or error}") from None
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if _is_scalar(v)}, step=metrics["step"])

    def write_exit_status(self, reason: str, step: int) -> None:
        """LOG_DIR/exit_status = "<reason> <step>": why training stopped, for job chaining."""
        if not self.enabled:
            return
        path = self.log_dir / EXIT_STATUS_FILE
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"{reason} {step}\n")
            os.replace(tmp, path)
        except OSError as error:  # e.g. a full disk: the run's own error matters more
            print(f"warning: cannot write {path}: {error.strerror or error}", file=sys.stderr, flush=True)

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
