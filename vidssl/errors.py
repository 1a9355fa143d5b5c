"""The error boundary of every command: which failures are the user's to fix (one line naming the
file or flag and what to do, exit code 2) and how an OS error is said. Anything else is a bug in
vidssl and keeps its traceback; ``VIDSSL_DEBUG=1`` shows the traceback of any failure.

Kept free of heavy imports: ``vidssl --help`` must stay fast.
"""

from __future__ import annotations

import contextlib
import errno
import os


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: one line, exit code 2, no traceback (VIDSSL_DEBUG=1 shows it)."""
    from .checkpoint import CheckpointError
    from .data.splits import SplitError
    from .data.video import VideoError

    return (VideoError, SplitError, CheckpointError, OSError, ValueError, FloatingPointError)


# What to do about the OS errors a user meets (a read-only folder, a full disk, a long name).
OS_HINTS = {
    errno.EACCES: "check its permissions, or choose another --out",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.ENOSPC: "the disk is full: free space or choose another --out; what was written before is intact",
    errno.EDQUOT: "the disk quota is used up: free space or choose another --out",
    errno.ENAMETOOLONG: "the name is too long for the file system: rename the video or use a shorter --out",
    errno.EMFILE: "too many open files: fewer --workers, or raise `ulimit -n`",
}


def error_line(e: BaseException) -> str:
    """The one line for an expected failure: OS errors name the file and what to do."""
    if isinstance(e, OSError) and e.strerror:  # raised by the OS (ours carry a whole sentence instead)
        name = f"{e.filename}: " if e.filename else ""
        hint = OS_HINTS.get(e.errno)
        return f"{name}{e.strerror}" + (f"; {hint}" if hint else "")
    return str(e) or type(e).__name__


def _own_children() -> list[int]:
    """The pids whose parent is this process (from /proc; empty where there is none)."""
    me, found = os.getpid(), []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
            except OSError:
                continue
            if int(fields[1]) == me:
                found.append(int(name))
    return found


@contextlib.contextmanager
def signals_end_the_command(name: str):
    """Within the block, Ctrl-C (SIGINT) and SIGTERM (a scheduler's or torchrun's stop) print one
    line and end the process at once: exit code 130 or 143. They are not raised as exceptions:
    unwinding from an arbitrary point through a DataLoader whose workers were signalled too hung
    in about one try in three (measured with `kill -INT/-TERM -PGID` during pretraining). Checkpoints
    and cache entries are two-phase or atomic writes, so a stop at any point leaves them whole;
    the command's worker processes are killed first."""
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    resume = " (--resume continues from its last checkpoint)" if name in ("pretrain", "finetune") else ""
    codes = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}
    owner = os.getpid()

    def handler(signum, frame):
        import multiprocessing

        code, word = codes[signum]
        if os.getpid() != owner:  # a forked worker inherited this: a pool ending it is no stop of the command
            os._exit(code)
        sys.stderr.write(f"\nvidssl {name}: {word}{resume}\n")
        sys.stderr.flush()
        # Workers first: one stuck in a lock it inherited at fork would never see its parent go
        # (seen once on a loaded machine: a worker outlived its command by more than a minute).
        for child in multiprocessing.active_children():
            child.kill()
        # A worker forked just after the group's signal (a new epoch's loader) missed the signal, and
        # one forked as the handler ran is not in active_children yet: seen in CI, a worker outlived
        # its command by 10 s. Every process whose parent is this one goes too (Linux /proc).
        for pid in _own_children():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(code)

    previous = {sig: signal.signal(sig, handler) for sig in codes}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
