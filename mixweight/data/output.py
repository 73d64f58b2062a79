"""Writing a corpus directory safely: build it beside the target, then swap it in.

A crash mid-write leaves the previous corpus (if any) untouched and only a
``.<name>.partial-*`` directory behind, which the next run removes. The swap itself is two
renames (old copy -> ``.<name>.retired``, new copy -> ``<name>``); a kill between them is
finished or rolled back by the next run (:func:`recover_swap`), never cleaned up blindly.

Only what mixweight made is ever replaced: ``--overwrite`` applies to a directory holding
a corpus (its manifest says so, and it holds nothing else), never to other files.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mixweight.core.outputs import WRITE_ERRNOS, enclosing_store
from mixweight.data.manifest import FORMAT, MANIFEST_NAME
from mixweight.errors import MixweightError

# What a corpus directory holds; anything else in --out is the user's, and is never deleted.
CORPUS_ENTRIES = {MANIFEST_NAME, "train", "val", "tokenizer", "domains"}


def existing_corpus_hash(out_dir: Path) -> str | None:
    try:
        return json.loads((out_dir / MANIFEST_NAME).read_text()).get("config_hash")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None


def is_same_corpus(out_dir: Path, config_hash: str) -> bool:
    """True when `out_dir` already holds exactly the corpus this config would write."""
    return existing_corpus_hash(out_dir) == config_hash


def holds_corpus(out_dir: Path) -> bool:
    """True when `out_dir`'s manifest says it is a mixweight corpus."""
    try:
        raw = json.loads((out_dir / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and raw.get("format") == FORMAT


def _foreign_entries(out_dir: Path) -> list[str]:
    """Entries of a directory that no corpus writes (our own atomic-write temporaries aside)."""
    return sorted(
        p.name
        for p in out_dir.iterdir()
        if p.name not in CORPUS_ENTRIES and not p.name.startswith(f".{MANIFEST_NAME}.tmp-")
    )


def _retired(out_dir: Path) -> list[Path]:
    """Where a swap parks the old copy (the second name is the one older versions used)."""
    return [out_dir.parent / f".{out_dir.name}.retired", out_dir.parent / f".{out_dir.name}.partial-retired"]


def recover_swap(out_dir: Path) -> None:
    """Finish or roll back a swap that a kill cut between its renames; never delete the only complete copy."""
    for retired in _retired(out_dir):
        if not retired.is_dir():
            continue
        if holds_corpus(out_dir):  # the new copy was swapped in: only removing the old one was cut short
            shutil.rmtree(retired)
            continue
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # an empty directory made since: the old copy takes its place
        if out_dir.exists():
            raise MixweightError(
                f"{out_dir}: an interrupted write left the previous corpus at {retired}, and {out_dir} now holds "
                f"something else; move one of them away (or rename {retired} to {out_dir}) and rerun"
            )
        retired.rename(out_dir)  # roll back: the complete old copy is back where it was
        print(f"mixweight: {out_dir}: restored the previous corpus from an interrupted write", file=sys.stderr)


def check_location(out_dir: Path, input_path=None) -> None:
    """`--out` (a local directory, or the directory of a file:// URL) apart from the input and from every other
    corpus or run: refused when it overlaps the input, or lies inside a corpus or a run directory."""
    if input_path is not None:
        source = Path(input_path).resolve()
        if out_dir == source or source in out_dir.parents or out_dir in source.parents:
            raise MixweightError(
                f"--out {out_dir} overlaps --input {source} (the same, inside it, or holding it); "
                "write the corpus to a directory outside the input"
            )
    found = enclosing_store(out_dir, include_self=False)
    if found is not None:
        raise MixweightError(
            f"--out {out_dir} lies inside the {found[0]} directory {found[1]}; a corpus is never written into "
            "another corpus or a run: choose a directory outside it"
        )


def resolve_output(out_dir, input_path=None) -> Path:
    """The absolute `--out`, refused when replacing it would pull the rug from under the user or the input."""
    out_dir = Path(out_dir).resolve()
    check_location(out_dir, input_path)
    recover_swap(out_dir)
    return out_dir


def check_can_write(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an empty directory or, with `overwrite`, a mixweight corpus.

    Called only when a corpus is about to be written (an identical corpus already there is a no-op).
    """
    cwd = Path.cwd().resolve()
    if out_dir == cwd or out_dir in cwd.parents:  # the swap would pull the directory from under the shell
        raise MixweightError(
            f"--out {out_dir} is the current directory or holds it; a corpus is written beside its --out and "
            f"swapped in whole, so name a directory of its own (for example --out {out_dir / 'corpus'})"
        )
    check_contents(out_dir)
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise MixweightError(
            f"--out {out_dir} already holds a different corpus; choose another --out, or pass --overwrite to replace it"
        )


def check_contents(out_dir: Path) -> None:
    """`out_dir` absent, empty, or a corpus and nothing else: what a corpus may be written over (with --overwrite,
    or at a file:// URL when it is the same corpus)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise MixweightError(f"--out {out_dir} is a file, not a directory; choose another --out")
    if not any(out_dir.iterdir()):
        return
    if not holds_corpus(out_dir):
        found = _foreign_entries(out_dir)
        raise MixweightError(
            f"--out {out_dir} holds files that are not a mixweight corpus ({', '.join(found[:5])}"
            f"{', ...' if len(found) > 5 else ''}); mixweight replaces only a corpus it wrote, "
            "so choose a new or empty directory"
        )
    foreign = _foreign_entries(out_dir)
    if foreign:
        raise MixweightError(
            f"--out {out_dir} holds a corpus and other files ({', '.join(foreign[:5])}); mixweight replaces only "
            "what it wrote, so move those files away or choose another --out"
        )


@contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """Yield a fresh staging directory; on success it becomes `out_dir` (see the module doc for crashes).

    A write error (disk full, read-only, permission) becomes one line naming `out_dir`,
    with the staging directory removed: nothing partial is left.
    """
    out_dir = Path(out_dir)
    made = [p for p in [out_dir.parent, *out_dir.parent.parents] if not p.exists()]  # removed again on failure
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{out_dir.name}.partial-"  # matched as a prefix, not a glob: names may hold '[' or '*'
        for stale in out_dir.parent.iterdir():
            if stale.name.startswith(prefix) and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    except OSError as exc:
        _remove_empty(made)
        raise _write_error(out_dir, exc) from exc
    try:
        yield staging
        _swap(staging, out_dir)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(made)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise _write_error(out_dir, exc) from exc
        raise


def _remove_empty(directories: list[Path]) -> None:
    """Remove the parent directories a refused write created (deepest first), if still empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def _swap(staging: Path, out_dir: Path) -> None:
    retired = _retired(out_dir)[0]
    if out_dir.exists():
        out_dir.rename(retired)
    staging.rename(out_dir)  # a kill before this line is rolled back by recover_swap
    if retired.exists():
        shutil.rmtree(retired)


def _write_error(out_dir: Path, exc: OSError) -> MixweightError:
    where = f" ({exc.filename})" if exc.filename else ""
    return MixweightError(
        f"--out {out_dir}: cannot write the corpus: {exc.strerror or exc}{where}; "
        "nothing was written; free space or choose another --out"
    )


def write_remote(url: str, write, input_path=None) -> "object":
    """`--out URL`: write the corpus locally with `write(local_dir)`, then upload it, manifest LAST.

    The local copy is a temporary directory under the cache, removed afterwards. A corpus already
    at the URL is never replaced or deleted (object stores have no atomic swap, and a reader could
    meet half of each): the same corpus is a no-op, anything else is refused before any upload.
    A file:// URL names a local directory: it meets the same rules as a local --out first (apart from
    the input, outside any corpus or run, empty or a corpus and nothing else).
    """
    from mixweight.data.remote import cache_dir, check_url, local_path_of, remote_manifest, upload_corpus

    url = check_url(url, "--out")
    local = local_path_of(url)
    if local is not None:
        local = local.resolve()
        check_location(local, input_path)
        check_contents(local)
    existing = remote_manifest(url)
    if existing is not None and existing.get("format") != FORMAT:
        raise MixweightError(f"--out {url} holds a {MANIFEST_NAME} that is not a mixweight corpus; choose another URL")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=root))
    try:
        manifest = write(staging / "corpus")
        if existing is not None:
            if existing.get("config_hash") == manifest.config_hash:
                return manifest  # the same corpus is there already
            raise MixweightError(
                f"--out {url} already holds a different corpus; mixweight never replaces or deletes remote objects, "
                "so choose another URL (or remove the old corpus with your storage tool first)"
            )
        upload_corpus(staging / "corpus", url)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
