"""Where a command may write: the one check every writer makes before it writes anything.

mixweight writes only what it made. `check_output_path(path, ...)` refuses, in one line naming the
path and what would be right, an output that

- is a directory where a file is wanted, a file where a directory is, or something else (a FIFO, a device);
- lies inside a corpus or a run directory (`enclosing_store`), or is one when the command writes neither
  (a command's own kind of store, e.g. `train --out RUN`, is the store itself: its own checks decide);
- is one of the command's inputs, or holds or lies inside one;
- exists and was not made by this command: `owned(path)` says whether it was (a weights artifact of the same
  method, a report that `compare` wrote, a work directory holding the method's record);
- cannot be written (no permission, a parent that is a file).

Every check reads only; nothing is created. Corpora and runs are told by their layout, read from the
files alone (core sits below data and train): a corpus directory holds `manifest.json` beside `train/` and
`val/`; a run directory holds the `config.yaml` that `mixweight train` writes (its first line is RUN_MARKER)
or, a run from before the marker, `config.yaml` beside `checkpoints/`.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from mixweight.errors import MixweightError

RUN_MARKER = "# mixweight train: the resolved config of this run (rewritten by each start or --resume)"
CORPUS, RUN = "corpus", "run"
# Errors of writing, not of bad input (a full disk, a read-only filesystem, no permission): one line naming the file.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
MAX_ARTIFACT_BYTES = 1 << 30  # a larger file at an output path is not read to see whether it is ours
URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # s3://..., file:///..., and what Path makes of them (file:/...)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name the OS refuses, a directory we may not enter: not a store
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def store_kind(directory: Path) -> str | None:
    """CORPUS, RUN or None, from the directory's layout (module docstring)."""
    if _is_file(directory / "manifest.json") and _is_dir(directory / "train") and _is_dir(directory / "val"):
        return CORPUS
    config = directory / "config.yaml"
    if not _is_file(config):
        return None
    try:
        with open(config, "rb") as handle:
            head = handle.read(len(RUN_MARKER))
    except OSError:
        head = b""
    return RUN if head == RUN_MARKER.encode() or _is_dir(directory / "checkpoints") else None


def enclosing_store(path: str | Path, include_self: bool = True) -> tuple[str, Path] | None:
    """(kind, directory) of the corpus or run that is `path` or holds it (the nearest), else None."""
    path = Path(os.path.abspath(path))
    candidates = ([path] if include_self else []) + list(path.parents)
    for directory in candidates:
        kind = store_kind(directory)
        if kind is not None:
            return kind, directory
    return None


def _resolved(path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def overlaps(a: str | Path, b: str | Path) -> bool:
    """True when `a` and `b` are the same path, or one lies inside the other (symlinks resolved)."""
    a, b = _resolved(a), _resolved(b)
    return a == b or a in b.parents or b in a.parents


def check_output_path(
    path: str | Path,
    flag: str,
    *,
    kind: str,
    what: str,
    owned: Callable[[Path], bool] | None = None,
    inputs: Iterable[tuple[str, str | Path | None]] = (),
    store: str | None = None,
    inside: str | Path | None = None,
) -> Path:
    """`path` as an output the command will write later: every refusal of the module docstring, now.

    kind: "file" or "dir". what: the command's own word for it ("the weights file", "the report directory"),
    used in messages. owned(path): True when an existing `path` was made by this command (then it may be
    replaced, or written into); an existing non-empty one it did not make is refused. inputs: (flag, path)
    pairs the output must not be, hold or lie inside (None entries are skipped). store: CORPUS or RUN when the
    command writes that kind of directory at `path` (it may be one; it may not lie inside any). inside: the one
    store the output may lie in (a run's own TensorBoard directory).
    """
    if URL_LIKE.match(str(path)):  # Path("s3://b/x") would be the local directory "s3:/b/x"
        raise MixweightError(
            f"{flag} {path}: a URL; {what} is written to a local path (only `data synth` and `data prepare` write a "
            "corpus to a URL): give a local path"
        )
    path = Path(path)
    shown = f"{flag} {path}"
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # new, or under a file: _check_writable names which
        status = None
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a parent that is a file
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MixweightError(f"{shown}: cannot be used as {what} ({reason}); choose another path") from None
    if status is not None:
        if kind == "file" and stat.S_ISDIR(status.st_mode):
            raise MixweightError(
                f"{shown} is a directory; give a file path for {what}, e.g. {path / 'domain_weights.json'}"
            )
        if kind == "dir" and not stat.S_ISDIR(status.st_mode):
            raise MixweightError(f"{shown} exists and is not a directory; {what} is a directory: choose another path")
        if not (stat.S_ISDIR(status.st_mode) or stat.S_ISREG(status.st_mode)):
            raise MixweightError(f"{shown} exists and is not a regular file; choose another path")
    _check_not_in_a_store(path, shown, what, store, inside)
    for input_flag, given in inputs:
        if given is not None and overlaps(path, given):
            raise MixweightError(
                f"{shown} overlaps the input {input_flag} {given} (the same path, inside it, or holding it); "
                f"{what} must be written apart from what the command reads: choose another path"
            )
    if status is not None and not (owned is not None and owned(path)) and not _empty_dir(path):
        raise MixweightError(
            f"{shown} exists and was not written by this command ({_describe(path)}); mixweight never replaces "
            f"what it did not write: choose a new path for {what}"
        )
    _check_writable(path, shown)
    return path


def _check_not_in_a_store(path: Path, shown: str, what: str, store: str | None, inside=None) -> None:
    found = enclosing_store(path, include_self=True)
    if found is None or (inside is not None and _resolved(found[1]) == _resolved(inside)):
        return
    found_kind, directory = found
    if found_kind == store and _resolved(directory) == _resolved(path):
        if enclosing_store(directory, include_self=False) is None:
            return  # the command's own kind of directory, not nested in another store
        found_kind, directory = enclosing_store(directory, include_self=False)
    where = "is" if _resolved(directory) == _resolved(path) else "lies inside"
    raise MixweightError(
        f"{shown} {where} the {found_kind} directory {directory}; mixweight writes nothing into a {found_kind} "
        f"but its own files: choose a path outside it for {what}"
    )


def _empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not any(path.iterdir())
    except OSError:
        return False


def _describe(path: Path) -> str:
    if not path.is_dir():
        return "a file"
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError:
        return "a directory"
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"it holds {shown}"


def _check_writable(path: Path, shown: str) -> None:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the folders that do not exist yet are made by the writer
    if not parent.is_dir():
        raise MixweightError(f"{shown}: {parent} is not a directory, so the file cannot be written there")
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
        try:
            read_only = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = f"{target} is on a read-only filesystem" if read_only else f"no write permission in {target}"
        raise MixweightError(f"{shown}: not writable ({why}); choose another path")


def is_json_with(path: Path, test: Callable[[dict], bool]) -> bool:
    """True when `path` is a JSON object for which `test` holds (a mixweight artifact's own mark)."""
    import json

    try:
        if path.stat().st_size > MAX_ARTIFACT_BYTES:
            return False
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(raw, dict) and bool(test(raw))


def write_failure(exc: OSError) -> str:
    """A failed write (one of WRITE_ERRNOS) as one line: the file, the reason, and what to do."""
    where = exc.filename or "a file"
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
    fix = {
        errno.ENOSPC: "free space",
        errno.EDQUOT: "free space within your quota",
        errno.EROFS: "write to a writable filesystem",
        errno.EACCES: "give write permission",
        errno.EPERM: "give write permission",
    }.get(exc.errno, "check the disk")
    return (
        f"cannot write {where}: {reason}; {fix}, or choose another output path, and rerun (files are written "
        "atomically, so what was written before is intact; a training run continues with --resume)"
    )
