"""Where a run is: the counters a checkpoint saves and the trainer advances."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done (skipped non-finite steps included)
    consumed_samples: int = 0  # global samples consumed by those steps
    skipped_steps: int = 0  # steps whose update was skipped for a non-finite loss or gradient (not saved)

    def advance(self, samples: int, skipped: bool) -> None:
        """One step done, consuming `samples` global samples."""
        self.step += 1
        self.consumed_samples += samples
        self.skipped_steps += int(skipped)

    # Stateful (aria_train.checkpoint.parts): what a checkpoint keeps as "train.state".
    def state_dict(self) -> dict:
        return {"step": int(self.step), "consumed_samples": int(self.consumed_samples)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.consumed_samples = int(state["consumed_samples"])
