"""One writer per search folder: a lock file that names its holder.

Every command that writes into a search folder (a search, ``resume``, ``ensemble --retrain-seeds``)
holds ``<folder>/search.lock`` while it runs; a second one is refused with the holder's host, pid
and since when. Readers (``status``, ``report``, ``export``) never look at it.

The lock is an advisory ``flock`` on the file, taken without waiting. The kernel drops it when its
holder exits in any way, SIGKILL included, so a killed search never blocks the next ``resume``. The
file also holds the holder's host, pid, command and start time, as JSON, for the message, and is
deleted when the holder lets go normally. A file left behind by a holder that is gone is taken over:
on the same host the lock being free proves the holder is dead (said in one line). A file that names
another host is not taken over even when the lock is free: the holder may be alive on a file system
whose locks do not reach across machines (an NFS mount with ``nolock``, say), and its pid cannot be
checked from here; the message says which file to delete once that search is known to be gone.

On NFS, Linux turns ``flock`` into a POSIX lock that the server holds for the whole mount, so two
hosts see each other's locks; a host that dies holding one loses it when its lease runs out (about
90 s on NFSv4). POSIX locks are dropped when the holding process closes *any* descriptor of the
file, so the holder only ever touches the file through the descriptor that holds the lock.
``O_CREAT | O_EXCL`` alone would be atomic too, but a SIGKILLed holder leaves the file behind and
only its pid (which the system may reuse, and which cannot be checked from another host) says
whether it is stale.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

LOCK_FILE = "search.lock"
_READ_TRIES = 20  # a holder writes its details just after taking the lock: a reader may come in between


class LockHeld(Exception):
    """The folder's lock is held by another command; ``str(e)`` is the one line to show."""


def holder_text(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (its details are not written yet)"
    command = f"'{info['command']}' " if info.get("command") else ""
    return f"{command}on host {info.get('host', '?')}, pid {info.get('pid', '?')}, since {info.get('since', '?')}"


def read_holder(path: Path) -> dict[str, Any] | None:
    """The details a lock file holds, or None (empty, partly written or missing)."""
    for _ in range(_READ_TRIES):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(text)
            if isinstance(info, dict):
                return info
        except json.JSONDecodeError:
            pass
        time.sleep(0.05)
    return None


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class SearchLock:
    """The lock of one search folder, held from ``acquire`` until ``release`` (or the process ends).

    ``SearchLock.acquire(folder)`` raises ``LockHeld`` when another command holds it; ``taken_over``
    then says whose stale lock was replaced, if any. Also a context manager that releases on exit.
    """

    def __init__(self, path: Path, fd: int, info: dict[str, Any], taken_over: str | None):
        self.path, self._fd, self.info, self.taken_over = path, fd, info, taken_over

    @classmethod
    def acquire(cls, folder: str | Path, command: str | None = None) -> SearchLock:
        path = Path(folder) / LOCK_FILE
        host = socket.gethostname()
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                info = read_holder(path)
                raise LockHeld(f"{path.parent} is in use by {holder_text(info)}"
                               + _foreign_hint(info, host, path)) from None  # fmt: skip
            # The holder before us may have deleted the file between our open and our lock: then we
            # hold a lock on a file nobody else can see. Start again on the file that is there now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_fd(fd)
        if previous and previous.get("host") != host:
            os.close(fd)  # not ours to take: the file stays as it is
            raise LockHeld(f"{path.parent} is in use by {holder_text(previous)}" + _foreign_hint(previous, host, path))
        taken_over = None
        if previous:  # its holder let go without deleting it: it was killed (on this host the lock proves it)
            gone = "no longer running" if not _pid_alive(previous.get("pid")) else "no longer holding it"
            taken_over = f"took over the lock of {path.parent} left by {holder_text(previous)} ({gone})"
        command = command or " ".join(["mtbert-search", *sys.argv[1:]])
        info = {"host": host, "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                "command": " ".join(command.split())}  # fmt: skip
        data = json.dumps(info).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return cls(path, fd, info, taken_over)

    def release(self) -> None:
        """Delete the file, then let go of the lock (a waiter that opened the old file sees it is gone)."""
        if self._fd < 0:
            return
        try:
            if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SearchLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_fd(fd: int) -> dict[str, Any] | None:
    size = os.fstat(fd).st_size
    text = os.pread(fd, size, 0).decode(errors="replace") if size else ""
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def _foreign_hint(info: dict[str, Any] | None, host: str, path: Path) -> str:
    if info and info.get("host") and info["host"] != host:
        return f"; its pid cannot be checked from {host}: if that command is no longer running, delete {path}"
    return "; wait for it to end, or stop it (Ctrl-C)"
