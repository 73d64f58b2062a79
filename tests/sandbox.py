"""The hostile-input harness of test_hostile_inputs.py and test_fuzz_inputs.py.

    listing(*roots)             every file and directory under the roots: {path: (size, mtime_ns, sha256)}
    changes(before, after, ok)  what was added, removed or modified outside the paths in `ok` (a command's own
                                outputs; removed is flagged there too, but for a command's own leftovers)
    run_cli(argv)               `mixweight ARGV` in this process: its exit code, stdout and stderr; anything but
                                SystemExit escaping `main` (a traceback) is raised into the test
    assert_refused(outcome)     exit 2, exactly one `mixweight: error:` line, no traceback
    failing_writes(n, errno)    a context in which the (n+1)-th file opened for writing raises OSError(errno):
                                a disk that fills up (ENOSPC) or a filesystem that is read-only (EROFS)
    stray_children(before)      this process's live children that were not in `before` (a `live_children()`),
                                but for the helpers a process starts once and keeps (SHARED_HELPERS)

The harness holds no expectations of its own beyond these: each test says what must be refused and which
paths a command may write.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

SMALL = 1 << 20  # files up to this size are compared by content too (not only size and mtime)


def listing(*roots) -> dict[str, tuple]:
    found = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for path in [root, *root.rglob("*")]:
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if path.is_dir() and not path.is_symlink():
                found[str(path)] = ("dir",)
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and info.st_size <= SMALL else ""
            found[str(path)] = (info.st_size, info.st_mtime_ns, digest)
    return found


# What a command removes of its own making: checkpoints past keep_checkpoints, its temporaries and staging copies.
OWN_LEFTOVERS = re.compile(r"/checkpoints/|/\.[^/]*(tmp|partial|retired|replaced)[^/]*(/|$)")


def changes(before: dict, after: dict, ok=(), removable=()) -> list[str]:
    """Every path added, removed or modified, except under the paths in `ok` (a command's own outputs). Removed is
    flagged even there, unless it is OWN_LEFTOVERS under `ok` or under a path in `removable` (a corpus that
    --overwrite replaces)."""

    def under(path: str, roots) -> bool:
        return any(path == a or path.startswith(a.rstrip("/") + "/") for a in map(os.path.abspath, roots))

    def removal_ok(path: str) -> bool:
        return under(path, removable) or (under(path, ok) and OWN_LEFTOVERS.search(path) is not None)

    found = [f"removed {p}" for p in before if p not in after and not removal_ok(p)]
    found += [f"added {p}" for p in after if p not in before and not under(p, ok)]
    found += [f"changed {p}" for p in before if p in after and before[p] != after[p] and not under(p, ok)]
    return found


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(argv) -> Outcome:
    from mixweight.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Outcome(code, out.getvalue(), err.getvalue())


def assert_refused(outcome: Outcome, argv=()) -> str:
    lines = [line for line in outcome.error_lines if not line.startswith("mixweight: warning:")]
    assert outcome.code == 2, (argv, outcome.code, outcome.err[-2000:])
    assert "Traceback" not in outcome.err, (argv, outcome.err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("mixweight: error: "), (argv, lines)
    return lines[0]


@contextlib.contextmanager
def failing_writes(after: int, code: int, under: str | Path):
    """Files under `under` opened for writing fail with OSError(code) once `after` have been opened."""
    real_open = builtins.open
    root = os.path.abspath(under)
    opened = [0]

    def guarded(file, mode="r", *args, **kwargs):
        writing = isinstance(file, (str, bytes, os.PathLike)) and any(c in str(mode) for c in "wax+")
        if writing and os.path.abspath(os.fsdecode(file)).startswith(root):
            opened[0] += 1
            if opened[0] > after:
                raise OSError(code, os.strerror(code), os.fsdecode(file))
        return real_open(file, mode, *args, **kwargs)

    builtins.open = io.open = guarded  # io.open: what pathlib's write_text and open call
    try:
        yield opened
    finally:
        builtins.open = io.open = real_open


# Started once per process and kept for its lifetime: Python's resource tracker, torch.compile's worker pool.
SHARED_HELPERS = ("multiprocessing.resource_tracker", "torch._inductor.compile_worker", "_inductor/compile_worker")


def live_children() -> dict[int, str]:
    """{pid: command line} of this process's children that have not exited (zombies left out)."""
    found = {}
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            pids = task.read_text().split()
        except OSError:  # the thread ended while we read
            continue
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError):  # it exited meanwhile
                continue
            if state != "Z":
                found[int(pid)] = command.strip()
    return found


def stray_children(before: dict[int, str]) -> dict[int, str]:
    return {
        pid: command
        for pid, command in live_children().items()
        if pid not in before and not any(helper in command for helper in SHARED_HELPERS)
    }
