"""Bad-sample accounting for the multimodal data path.

A corrupt image, malformed JSON, a sample that breaks its kind's schema, or a damaged tar is
either skipped and counted (`on_bad_sample="skip"`, the default) or stops the run with a one-line
DataError (`on_bad_sample="error"`). A skip is logged as ONE line naming the shard, the sample
key and the reason (object addresses such as `<_io.BytesIO object at 0x...>` removed):

    bad sample shard-000003.tar:syn_000017 skipped: image 0: cannot identify image file

Only the first `log_first` (10) skips are logged one by one; after that `summary()` gives one
line for the skips since the last summary (the trainer logs it at its log interval). Damage every
rank sees (every rank reads the whole global batch's JSON and image headers) is logged by one
rank only (`log_shared`); pixel decoding failures only the owning rank sees are logged there.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Optional

from aria_train.data.errors import DataError

LOG = logging.getLogger("aria_train.data.multimodal")
POLICIES = ("skip", "error")


class BadSample(Exception):
    """Raised inside the multimodal data path for one bad sample; never escapes it (it becomes a
    counted skip or a DataError)."""


_OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")


def one_line(text) -> str:
    text = _OBJECT_REPR.sub("", " ".join(str(text).split()))
    return text[:300]


class BadSamples:
    """Counts (and logs) skipped samples; in "error" mode raises DataError instead."""

    def __init__(self, policy: str = "skip", logger: logging.Logger | None = None, keep: int = 1000,
                 log_first: int = 10, log_shared: bool = True):
        if policy not in POLICIES:
            raise DataError(f"on_bad_sample={policy!r}: expected one of {', '.join(POLICIES)}")
        self.policy = policy
        self.logger = logger or LOG
        self.keep = keep
        self.log_first = log_first  # skips logged one line each; the rest go into summary()
        self.log_shared = log_shared  # log what every rank sees (one rank should)
        self.count = 0
        self.logged = 0
        self._summarised = 0  # count at the last summary
        self._logged_where: set[str] = set()  # a sample met again (next epoch) is not logged again
        self.by_reason: Counter = Counter()
        self.records: list[tuple[str, str, str]] = []  # (shard, key, reason), the first `keep`

    def report(self, shard: str, key: str, reason: str, kind: str = "bad sample", shared: bool = True) -> None:
        """One bad sample (or shard). `shared`: every rank sees it (JSON, headers, tar damage),
        as opposed to a pixel decode only the owning rank does."""
        reason = one_line(reason)
        where = f"{shard}:{key}" if key else shard
        if self.policy == "error":
            raise DataError(f"{kind} {where}: {reason}")
        self.count += 1
        self.by_reason[reason.split(":")[0]] += 1
        if len(self.records) < self.keep:
            self.records.append((shard, key, reason))
        if (self.log_shared or not shared) and self.logged < self.log_first and where not in self._logged_where:
            self.logged += 1
            self._logged_where.add(where)
            more = " (later ones are summarised)" if self.logged == self.log_first else ""
            self.logger.warning(f"{kind} {where} skipped: {reason}{more}")

    def summary(self) -> Optional[str]:
        """One line for the skips since the last summary, when some were not logged one by one."""
        new = self.count - max(self._summarised, self.logged)  # skips neither logged nor summarised
        self._summarised = self.count
        if new <= 0 or not self.log_shared:
            return None
        reasons = ", ".join(f"{reason} x{n}" for reason, n in self.by_reason.most_common(3))
        return f"bad samples: {new} more skipped, {self.count} in all (most frequent: {reasons})"

    def state_dict(self) -> dict:
        return {"count": self.count, "by_reason": dict(self.by_reason)}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state.get("count", 0))
        self.by_reason = Counter(state.get("by_reason", {}))
