"""What the data stage's key knows about files outside the pipeline directory.

A path in the YAML says nothing about the contents behind it: a JSONL edited in place, or a
corpus regenerated in place, must change the data stage's key (and so count as a changed
config), not leave every stage "cached" with stale results.

- `data: prepare: input`: for every file `data prepare` reads, its size, modification time
  (ns) and the sha256 of its first and last 1 MiB. That reads at most 2 MiB a file, so it is
  cheap on a terabyte corpus; an edit that keeps the size and the mtime and touches only the
  middle of a file larger than 2 MiB goes unnoticed (touching a file without editing it
  counts as a change: the mtime moved).
- `data: path`: the sha256 of the corpus's manifest.json, which records every domain's token
  and block counts and the tokenizer's fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mixweight.data.manifest import MANIFEST_NAME
from mixweight.data.readers import list_sources

EDGE_BYTES = 1 << 20  # hash this much of each file's head and tail


def head_tail_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        digest.update(handle.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            handle.seek(max(size - EDGE_BYTES, EDGE_BYTES))
            digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()


def input_fingerprints(input_path: str | Path) -> list[list]:
    """[name relative to the input, size, mtime_ns, sha256 of head+tail] for every file `data prepare` reads."""
    root = Path(input_path)
    entries = []
    for source in list_sources(root):
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        for path in files:
            stat = path.stat()
            name = path.relative_to(root).as_posix() if path != root else path.name
            entries.append([name, stat.st_size, stat.st_mtime_ns, head_tail_sha256(path)])
    return entries


def manifest_sha256(corpus_dir: str | Path) -> str:
    return hashlib.sha256((Path(corpus_dir) / MANIFEST_NAME).read_bytes()).hexdigest()


def file_fingerprints(paths: list[str]) -> list[list]:
    """[path, size, mtime_ns, sha256 of head+tail] of files a stage reads as config (a swarm table); a file that
    is not there is [path, None, None, None] (its stage refuses it when it runs)."""
    entries = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            entries.append([name, None, None, None])
            continue
        stat = path.stat()
        entries.append([name, stat.st_size, stat.st_mtime_ns, head_tail_sha256(path)])
    return entries
