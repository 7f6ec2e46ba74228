"""Reading documents from JSONL files (one JSON object per line); errors point at the line."""

import json
import os
from typing import Iterator

from aria_train.data.errors import DataError


def iter_jsonl_texts(path: str, json_key: str = "text") -> Iterator[str]:
    """The json_key string of each non-blank line of path."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8", errors="strict") as f:
        line_number = 0
        try:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{line_number}: malformed JSON ({err.msg})") from None
                if not isinstance(record, dict) or json_key not in record:
                    raise DataError(f"{path}:{line_number}: no {json_key!r} field")
                text = record[json_key]
                if not isinstance(text, str):
                    raise DataError(f"{path}:{line_number}: field {json_key!r} is not a string")
                yield text
        except UnicodeDecodeError:
            raise DataError(f"{path}:{line_number + 1}: not valid UTF-8") from None
