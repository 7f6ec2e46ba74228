"""Bad-sample accounting for the multimodal data path.

A corrupt image, malformed JSON, a sample that breaks its kind's schema, or a damaged tar is
either skipped and counted (`on_bad_sample="skip"`, the default) or stops the run with a one-line
DataError (`on_bad_sample="error"`). Every skip is logged as ONE line naming the shard and the
sample key:

    bad sample shard-000003.tar:syn_000017 skipped: image 0: cannot identify image file
"""

from __future__ import annotations

import logging
import re
from collections import Counter

from aria_train.data.errors import DataError

LOG = logging.getLogger("aria_train.data.multimodal")
POLICIES = ("skip", "error")


class BadSample(Exception):
    """Raised inside the multimodal data path for one bad sample; never escapes it (it becomes a
    counted skip or a DataError)."""


def one_line(text) -> str:
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(text))  # PIL names "<_io.BytesIO object at 0x..>"
    return " ".join(text.split())[:300]


class BadSamples:
    """Counts (and logs) skipped samples; in "error" mode raises DataError instead."""

    def __init__(self, policy: str = "skip", logger: logging.Logger | None = None, keep: int = 1000):
        if policy not in POLICIES:
            raise DataError(f"on_bad_sample={policy!r}: expected one of {', '.join(POLICIES)}")
        self.policy = policy
        self.logger = logger or LOG
        self.keep = keep
        self.count = 0
        self.by_reason: Counter = Counter()
        self.records: list[tuple[str, str, str]] = []  # (shard, key, reason), the first `keep`

    def report(self, shard: str, key: str, reason: str, kind: str = "bad sample") -> None:
        reason = one_line(reason)
        where = f"{shard}:{key}" if key else shard
        if self.policy == "error":
            raise DataError(f"{kind} {where}: {reason}")
        self.count += 1
        self.by_reason[reason.split(":")[0]] += 1
        if len(self.records) < self.keep:
            self.records.append((shard, key, reason))
        self.logger.warning(f"{kind} {where} skipped: {reason}")

    def state_dict(self) -> dict:
        return {"count": self.count, "by_reason": dict(self.by_reason)}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state.get("count", 0))
        self.by_reason = Counter(state.get("by_reason", {}))
