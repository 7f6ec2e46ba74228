"""Which (dataset, objective) pair each optimizer step of stage 0 trains on: alternating
gradient descent (IMP, arXiv 2305.06324) takes one pair per step instead of mixing every
objective into every batch.

    weighted_round_robin  deterministic and smooth (nginx's weighted round-robin): every step each
                          pair earns its weight in credit, the richest pair is taken and pays the
                          total weight. Over any n steps pair p is taken n * w_p / sum(w) times
                          to within one visit, and the visits of each pair are spread evenly.
    sampled               independent draws with probabilities w_p / sum(w); draw k is a pure
                          function of (seed, k) (numpy's PCG64 seeded with [seed, k]), so the
                          sequence does not depend on how a run was cut into jobs.

The state (draws made, and the round-robin credits) is part of the checkpoint: a resumed run
takes exactly the pairs an uninterrupted one would.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from aria_train.data.errors import DataError

SCHEDULES = ("weighted_round_robin", "sampled")


class PairSchedule:
    def __init__(self, weights: Sequence[float], kind: str = "weighted_round_robin", seed: int = 0):
        if kind not in SCHEDULES:
            raise DataError(f"pair schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
        weights = [float(w) for w in weights]
        if not weights or any(not np.isfinite(w) or w <= 0 for w in weights):
            raise DataError(f"pair schedule: weights must be positive and finite, got {weights}")
        self.kind = kind
        self.seed = int(seed)
        self.weights = weights
        total = sum(weights)
        self._cumulative = np.cumsum(np.asarray(weights) / total)
        self.draws = 0
        self.credits = [0.0] * len(weights)

    def next(self) -> int:
        """The pair of the next step."""
        if self.kind == "sampled":
            u = np.random.default_rng([self.seed, self.draws]).random()
            pair = min(int(np.searchsorted(self._cumulative, u, side="right")), len(self.weights) - 1)
        else:
            self.credits = [c + w for c, w in zip(self.credits, self.weights)]
            pair = max(range(len(self.credits)), key=lambda p: (self.credits[p], -p))
            self.credits[pair] -= sum(self.weights)
        self.draws += 1
        return pair

    def state_dict(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "weights": list(self.weights), "draws": self.draws,
                "credits": list(self.credits)}

    def load_state_dict(self, state: dict) -> None:
        saved = (state.get("kind"), int(state.get("seed", -1)), [float(w) for w in state.get("weights", [])])
        if saved != (self.kind, self.seed, self.weights):
            raise DataError(f"the checkpoint's pair schedule {saved[0]} (seed {saved[1]}, weights {saved[2]}) is not "
                            f"this run's {self.kind} (seed {self.seed}, weights {self.weights}); resume with the "
                            f"same encoder.pairs and encoder.schedule, or start fresh")
        self.draws = int(state["draws"])
        self.credits = [float(c) for c in state["credits"]]
