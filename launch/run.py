#!/usr/bin/env python3
"""torchrun, with the root cause of a failure as the last line and exit 0 after a clean stop.

    python launch/run.py --nproc_per_node=2 launch/pretrain.py --stage 1

The arguments are torchrun's, unchanged: this runs torchrun's own `main` in this process and
changes only what happens at the end.

- A worker fails: torchrun would raise ChildFailedError and print its traceback and failure
  table (~40 lines, exit 1) after the worker's message. Here the table is read instead: the
  first failed worker's error file (TORCHELASTIC_ERROR_FILE, which launch/pretrain.py writes
  for every error, torch.distributed.elastic's `@record` format) gives ONE line, printed last,
  e.g. `error: data.data_path: /x/corpus.bin not found`, and the launcher exits with that
  worker's exit code (2 for an error a user can fix). A worker that left no error file (killed,
  crashed in C++) is named with its exit code or signal.
- SIGTERM and SIGUSR1 (SLURM's time limit and its early warning, `scancel`, `kill`): forwarded
  to the workers, which save a checkpoint at the end of the step and exit 0, and then so does
  this launcher. (Plain torchrun dies of SIGUSR1, and on SIGTERM forwards it to the workers,
  waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds for them, then raises SignalException: a
  traceback and exit 1 even when they saved.) torchrun is told to leave these two alone with
  its `--signals-to-handle` option. Repeated signals are forwarded again (harmless). A SIGTERM
  before any worker runs (start-up, rendezvous) stops the launcher: exit 143.
- SIGINT (Ctrl-C), SIGHUP, SIGQUIT: torchrun's handling (the workers get the signal, then
  SIGKILL after TORCH_ELASTIC_SHUTDOWN_TIMEOUT); one line and exit 128 + the signal number. This
  is also the way out when workers do not stop on SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

FORWARDED = (signal.SIGTERM, signal.SIGUSR1)
# torchrun turns these into SignalException; SIGTERM and SIGUSR1 are left to this launcher.
TORCHRUN_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"


def worker_pids() -> list[int]:
    """The processes torchrun started: this process's children (from /proc)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.append(int(entry.name))
    return sorted(found)


class SignalForwarder:
    def __init__(self):
        self.received: list[str] = []

    def install(self) -> None:
        for signum in FORWARDED:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        # Every time, repeats included: SLURM may signal every process of the step and the
        # per-node script forward the same signal again; a worker just sets its stop flag twice.
        name = signal.Signals(signum).name
        if name not in self.received:
            self.received.append(name)
        workers = worker_pids()
        if not workers and signum == signal.SIGTERM:  # no worker to save anything: stop here
            if "torch.distributed.elastic.multiprocessing.api" not in sys.modules:
                raise SystemExit(128 + signum)  # still starting up
            from torch.distributed.elastic.multiprocessing.api import SignalException

            raise SignalException(f"{name} before the workers started", sigval=signal.Signals(signum))
        print(f"launch/run.py: {name}: forwarding it to the workers {workers}; they stop after "
              f"saving at the end of the step", file=sys.stderr, flush=True)
        for pid in workers:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def root_cause(error) -> tuple[str, int]:
    """(one line, exit code) for torchrun's ChildFailedError: the earliest failure, and among
    failures in the same second one with our `error:` line before a traceback before none."""

    def reported(failure) -> str:
        message = failure.message  # a dict when the worker left an error file, else a str
        return str(message.get("message", "")).strip() if isinstance(message, dict) else ""

    def priority(item) -> tuple:
        _, failure = item
        text = reported(failure)
        return failure.timestamp, 0 if text.startswith("error: ") else 1 if text else 2

    rank, failure = min(error.failures.items(), key=priority)
    text, code = reported(failure), failure.exitcode
    if text.startswith("error: ") and "\n" not in text:
        line = text
    elif text:
        line = f"error: rank {rank} failed: {text.splitlines()[0]} (traceback above)"
    elif code < 0:
        line = f"error: rank {rank} was killed by {failure.signal_name()} (exit {code})"
    else:
        line = f"error: rank {rank} exited with code {code} without an error message (see its output above)"
    exit_code = code if code > 0 else 128 - code if code < 0 else 1
    return line, exit_code


def torchrun_args(argv: list[str]) -> list[str]:
    """torchrun's arguments, told (--signals-to-handle) to leave SIGTERM and SIGUSR1 to us unless
    the caller chose the signals."""
    if any(arg.startswith(("--signals-to-handle", "--signals_to_handle")) for arg in argv):
        return argv
    return [f"--signals-to-handle={TORCHRUN_SIGNALS}", *argv]


def main(argv: list[str] | None = None) -> int:
    # torchrun's own error file: where its `@record` copies the root cause (else it logs that it
    # has none). The workers get their own (torchrun sets TORCHELASTIC_ERROR_FILE for each).
    own_error_file = Path(tempfile.mkdtemp(prefix="aria-run-")) / "error.json"
    os.environ["TORCHELASTIC_ERROR_FILE"] = str(own_error_file)
    try:
        return _run(argv)
    finally:
        shutil.rmtree(own_error_file.parent, ignore_errors=True)


def _run(argv: list[str] | None) -> int:
    forwarder = SignalForwarder()
    forwarder.install()  # before torch is imported: a SLURM warning during start-up is forwarded too
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.main(torchrun_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as error:
        line, code = root_cause(error)
        print(line, file=sys.stderr, flush=True)
        return code
    except SignalException as error:
        print(f"error: stopped by {error.sigval.name}; the workers were shut down", file=sys.stderr, flush=True)
        return 128 + int(error.sigval)
    if forwarder.received:
        print(f"launch/run.py: stopped on {', '.join(forwarder.received)}: every worker exited 0", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
