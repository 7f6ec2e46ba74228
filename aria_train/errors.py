"""The error type for problems a user can fix (bad input, missing files); shown as one line."""


class UserError(RuntimeError):
    pass


def record_error(message: str) -> None:
    """Leaves `message` (one line) where torchrun's elastic agent reads a worker's error: the file
    TORCHELASTIC_ERROR_FILE names, in the format of torch.distributed.elastic's ErrorHandler
    (what `@record` writes for an exception). torchrun's failure summary and launch/run.py then
    report it as the worker's root cause. Outside torchrun (no such variable) nothing is written."""
    import json
    import os
    import time

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    # ErrorHandler.record_exception's layout; the "traceback" torchrun's summary shows is the line.
    extra = {"py_callstack": message, "timestamp": str(int(time.time()))}
    record = {"message": {"message": message, "extraInfo": extra}}
    try:
        with open(path, "w") as handle:
            json.dump(record, handle)
    except OSError:  # a full disk must not hide the error itself
        pass
