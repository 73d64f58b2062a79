"""mosaicml-streaming's shared memory: find and remove segments a crashed run left behind.

A `StreamingDataset` registers a prefix ``NNNNNN`` and creates segments
``/dev/shm/NNNNNN_<name>`` (``locals``, ``barrier``, ``next_epoch``, ...) plus file locks
``$TMPDIR/NNNNNN_{barrier,cache}_filelock``. `MixtureLoader.close()` removes them; a run
killed before that leaves them behind.

mosaicml-streaming's `clean_stale_shared_memory()` unlinks the segments of every prefix, also
those of another job running on the same machine, which then fails or, worse, silently
mixes its state with a new dataset's. The rule here is narrower. A prefix is stale, and its
segments and file locks are removed, only when all of these hold:

1. its ``locals`` segment exists and names at least one of *our* stream directories
   (the streams of the corpus this run reads), so it was made by a dataset over our data;
2. every one of its segments is owned by our user (we never touch another user's files);
3. no live process has any of its segments mapped (no ``/dev/shm/NNNNNN_`` path in any
   readable ``/proc/<pid>/maps``): a running dataset keeps all its segments mapped, so a
   concurrent job over the same corpus is left alone.

Segments whose prefix has no ``locals`` segment cannot be attributed to a job and are kept.

Python's resource tracker is kept out of these segments (`untrack_shared_memory`): mixweight removes them
itself (`MixtureLoader.close`, streaming's exit handler, and the rule above after a crash). The tracker's
bookkeeping raced with streaming's (which swaps `resource_tracker.register` in and out while it attaches,
from several threads), so a rerun after a kill -9 printed a KeyError traceback per segment at exit, and the
tracker of a killed process unlinked segments a new run was about to clean.
"""

from __future__ import annotations

import os
import re
from multiprocessing import resource_tracker
from pathlib import Path
from tempfile import gettempdir

from streaming.base.constant import BARRIER_FILELOCK, CACHE_FILELOCK, LOCALS
from streaming.base.shared.prefix import _unpack_locals

SHM_DIR = Path("/dev/shm")
SEGMENT = re.compile(r"^(\d{6})_([a-z_]+)$")


def untrack_shared_memory() -> None:
    """Stop this process from registering shared-memory segments with Python's resource tracker (module
    docstring); every other resource type is still tracked. Idempotent."""
    if getattr(resource_tracker.register, "mixweight_untracked", False):
        return
    register, unregister = resource_tracker.register, resource_tracker.unregister

    def tracked_register(name, rtype):
        if rtype != "shared_memory":
            register(name, rtype)

    def tracked_unregister(name, rtype):
        if rtype != "shared_memory":
            unregister(name, rtype)

    tracked_register.mixweight_untracked = True
    resource_tracker.register, resource_tracker.unregister = tracked_register, tracked_unregister


def streaming_segments(shm_dir: Path = SHM_DIR) -> dict[str, list[Path]]:
    """Prefix -> the mosaicml-streaming segments with that prefix."""
    by_prefix: dict[str, list[Path]] = {}
    if not shm_dir.is_dir():
        return by_prefix
    for entry in shm_dir.iterdir():
        match = SEGMENT.match(entry.name)
        if match:
            by_prefix.setdefault(match.group(1), []).append(entry)
    return by_prefix


def mapped_prefixes(shm_dir: Path = SHM_DIR) -> set[str]:
    """Prefixes that some live process (whose maps we can read) has a segment of mapped."""
    pattern = re.compile(re.escape(str(shm_dir)) + r"/(\d{6})_")
    found: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # the process exited, or belongs to another user
            continue
        found.update(pattern.findall(text))
    return found


def registered_locals(segment: Path) -> list[str]:
    """The stream directories a ``NNNNNN_locals`` segment registers ([] when unreadable)."""
    try:
        data = segment.read_bytes()
    except OSError:
        return []
    try:
        dirnames, _ = _unpack_locals(data)
    except (ValueError, UnicodeDecodeError):
        return []
    return dirnames


def stale_prefixes(our_locals: list[str], shm_dir: Path = SHM_DIR) -> dict[str, list[Path]]:
    """Prefix -> segments, for the prefixes the module docstring's rule calls stale."""
    ours = {os.path.realpath(d) for d in our_locals}
    uid = os.getuid()
    candidates = {}
    for prefix, segments in streaming_segments(shm_dir).items():
        locals_segment = shm_dir / f"{prefix}_{LOCALS}"
        if locals_segment not in segments:
            continue
        if not ours & {os.path.realpath(d) for d in registered_locals(locals_segment)}:
            continue
        try:
            if any(s.stat().st_uid != uid for s in segments):
                continue
        except OSError:
            continue
        candidates[prefix] = segments
    if not candidates:
        return {}
    live = mapped_prefixes(shm_dir)
    return {p: s for p, s in candidates.items() if p not in live}


def remove_filelocks(prefix: int | str) -> None:
    """Remove the file locks mosaicml-streaming made for a prefix (it never removes them itself).

    A leftover lock file makes every later dataset skip that prefix, so a process building many
    datasets (one per phase, a test suite) would walk an ever longer list of prefixes.
    """
    prefix = f"{int(prefix):06}"
    for name in (BARRIER_FILELOCK, CACHE_FILELOCK):
        for path in (Path(gettempdir()) / f"{prefix}_{name}", Path(gettempdir()) / f"{prefix}_{name}.lock"):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                pass  # another user's lock: not ours to remove


def clean_stale_shared_memory(our_locals: list[str], shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove the stale segments (and file locks) of datasets over `our_locals`; returns the names removed."""
    removed = []
    for prefix, segments in sorted(stale_prefixes(our_locals, shm_dir).items()):
        for segment in segments:
            try:
                segment.unlink()
                removed.append(segment.name)
            except FileNotFoundError:
                pass
        remove_filelocks(prefix)
    return removed
