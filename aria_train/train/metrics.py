"""Where training metrics go: one console line, one JSON object per logged step, and wandb.

Only rank 0 writes. wandb runs offline unless the user set WANDB_MODE or logged in and chose
`logging.wandb_mode: online`; it never prompts.
"""

import json
import os
import time
from pathlib import Path
from typing import Optional

from aria_train.config.schema import LoggingConfig

CONSOLE_FIELDS = [
    ("step", "{:d}"),
    ("loss", "{:.4f}"),
    ("lm_loss", "{:.4f}"),
    ("balance_loss", "{:.4f}"),
    ("z_loss", "{:.5f}"),
    ("lr", "{:.3e}"),
    ("grad_norm", "{:.3f}"),
    ("tokens_per_s", "{:.0f}"),
    ("mfu", "{:.1%}"),
]


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
        parts = [f"{name} " + fmt.format(metrics[name]) for name, fmt in CONSOLE_FIELDS if name in metrics]
        extras = metrics.get("console_extras", "")
        print(" | ".join(parts) + (f" | {extras}" if extras else ""), flush=True)
        record = {k: v for k, v in metrics.items() if k != "console_extras"}
        record["time"] = time.time()
        self._jsonl.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log(record, step=metrics["step"])

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()
