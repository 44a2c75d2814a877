"""One `l2m train` at a time in a run directory: an exclusive lock on <run>/.lock, taken before anything is written.

The operating system drops an flock when its holder ends, however it ends, so a crash never leaves the lock stuck and
a requeued job (which starts once the previous one has exited) takes it again. Only global rank 0 locks: the other
ranks of the same run share the directory. When rank 0 is refused, its ranks do not start (Lightning launches them
from rank 0) or are stopped by the launcher (srun --kill-on-bad-exit).
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK = ".lock"


class RunInUse(Exception):
    """Another process is training in this run directory."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock (creating the directory) for the duration of the block."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunInUse(f"{run_dir} is in use by another `l2m train` ({holder}): wait for it to end, or choose "
                           "another run.name") from None
        except OSError as err:  # a filesystem without flock (e.g. Lustre mounted without -o flock)
            print(f"l2m: cannot lock {run_dir} ({err.strerror}): nothing stops a second `l2m train` there",
                  file=sys.stderr)
        else:
            f.truncate(0)
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")  # for the message of a process refused
            f.flush()
        yield
