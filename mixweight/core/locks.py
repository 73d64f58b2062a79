"""One writer per directory: an exclusive `flock` on a lock file that names its holder, and nothing left
behind by a command that was refused.

    lock = DirectoryLock(directory / ".lock", busy=lambda holder: f"... ({holder}) ...")
    lock.acquire()        # makes the missing directories, opens or creates the file, flock(LOCK_NB);
                          # held by another process: MixweightError with busy(holder)
    lock.keep()           # the command has written its first file: the lock file stays after it
    lock.release()        # drops the lock; before keep(): removes the lock file and the directories it made

The kernel drops a flock when its holder dies, even on kill -9, so a stale file never blocks a later
command. Removing a lock file is safe because `acquire` checks, once it holds the lock, that the
file at the path is still the one it locked (else it starts again): a process that opened the old
file before it was removed never holds a lock on a name nobody else can see.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable
from pathlib import Path

from mixweight.errors import MixweightError


class DirectoryLock:
    def __init__(self, path: str | Path, busy: Callable[[str], str], holder: str = "pid {pid} host {host}"):
        self.path = Path(path)
        self.busy = busy  # the refusal's message, given what the lock file says of its holder
        self.holder = holder  # what the lock file says, with {pid} and {host}
        self._fd: int | None = None
        self._made: list[Path] = []  # directories acquire created (deepest first): removed on a refused release
        self._created = False  # whether acquire created the lock file
        self._kept = False

    def acquire(self) -> None:
        self._made = [p for p in [self.path.parent, *self.path.parent.parents] if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                self._created = True
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR)
                self._created = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if self._created:  # made just now and taken already: another process's file from here on
                    self._created = False
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                self._remove_made_dirs()
                raise MixweightError(self.busy(_read_holder(self.path))) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # removed (by a refused command) between our open and our lock: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, (self.holder.format(pid=os.getpid(), host=socket.gethostname()) + "\n").encode())
        self._fd = fd

    def keep(self) -> None:
        """The command has written into the directory: its lock file stays when it ends."""
        self._kept = True

    def release(self) -> None:
        if self._fd is None:
            return
        if not self._kept and self._created:  # refused before writing anything: leave nothing behind
            try:
                self.path.unlink()  # while still holding the lock (see the module docstring)
            except OSError:
                pass
        os.close(self._fd)  # closing the descriptor drops the lock
        self._fd = None
        if not self._kept:
            self._remove_made_dirs()

    def _remove_made_dirs(self) -> None:
        for directory in self._made:
            try:
                directory.rmdir()  # only when empty: whatever else was written there stays
            except OSError:
                return
        self._made = []


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _read_holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "pid and host not yet written"
