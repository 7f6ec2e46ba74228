"""DataConfig's Megatron-style blend (data_path) and split strings, parsed with clear errors.

data_path follows Megatron-LM's --data-path: ["pfx"], ["pfx_a", "pfx_b"] (weighted by size), or
["0.7", "pfx_a", "0.3", "pfx_b"]. A single whitespace-separated string is accepted too, as a
YAML file may write it. split follows --split: up to three non-negative weights for
train/valid/test, "969,30,1"; missing ones are 0.
"""

import math
import re
from typing import Optional, Sequence, Union

from aria_train.data.errors import DataError


def parse_blend(data_path: Union[str, Sequence[str]]) -> tuple[list[str], Optional[list[float]]]:
    """(prefixes, weights or None) from a Megatron blend list."""
    entries = data_path.split() if isinstance(data_path, str) else [str(e) for e in data_path]
    if not entries:
        raise DataError("data_path: empty blend")
    numeric = [_as_number(e) is not None for e in entries]
    if len(entries) % 2 == 0 and all(numeric[0::2]) and not any(numeric[1::2]):
        weights = [_as_number(e) for e in entries[0::2]]
        prefixes = [_strip_suffix(e) for e in entries[1::2]]
        for weight, prefix in zip(weights, prefixes):
            if not (weight > 0 and math.isfinite(weight)):
                raise DataError(f"data_path: weight {weight} of {prefix} must be a positive number")
        return prefixes, weights
    if not any(numeric):
        return [_strip_suffix(e) for e in entries], None
    raise DataError(
        f"data_path: expected PREFIX... or WEIGHT PREFIX pairs, got {' '.join(entries)!r}"
    )


def parse_split(split: str) -> tuple[str, list[float]]:
    """(canonical "a,b,c" string, normalized [train, valid, test] fractions) of a split string.

    Only plain decimals are accepted: megatron-core re-reads the string with the regex
    [.0-9]+, which would silently misread "1e3" or "-1".
    """
    parts = [p.strip() for p in str(split).replace("/", ",").split(",") if p.strip()]
    decimal = re.compile(r"[0-9]*\.?[0-9]+|[0-9]+\.")
    if not 1 <= len(parts) <= 3 or not all(decimal.fullmatch(p) for p in parts):
        raise DataError(
            f"data split {split!r}: expected up to three non-negative numbers like '969,30,1'"
        )
    values = [float(p) for p in parts] + [0.0] * (3 - len(parts))
    total = sum(values)
    if total <= 0:
        raise DataError(f"data split {split!r}: the weights sum to zero")
    return ",".join(parts), [v / total for v in values]


def _as_number(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def _strip_suffix(prefix: str) -> str:
    # a prefix given as the .bin or .idx file itself
    for suffix in (".bin", ".idx"):
        if prefix.endswith(suffix):
            return prefix[: -len(suffix)]
    return prefix
