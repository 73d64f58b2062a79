"""`open_corpus(location)`: the one way every command turns `--data` into a corpus it can read.

    synthetic          the built-in default corpus, written on first use under MIXWEIGHT_CACHE
    s3://..., file:///DIR, ...   a corpus URL: its local cache copy (manifest, indexes, validation shards;
                       training shards arrive on demand through mosaicml-streaming)
    anything else      a local corpus directory

The result holds the local directory to read and the checked manifest. Network I/O happens
here (fetching a URL) and nowhere in `manifest.py`, which reads local directories only.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixweight.data.manifest import Manifest, load_manifest
from mixweight.data.remote import fetch_corpus, is_url, remote_of
from mixweight.errors import MixweightError

SYNTHETIC_ALIAS = "synthetic"


@dataclass(frozen=True)
class Corpus:
    location: str  # as the user gave it: a path, a URL or `synthetic`
    directory: str  # the local directory read (a URL's cache copy)
    manifest: Manifest
    remote: str | None = None  # the URL a cache copy came from


def local_directory(location: str, is_main: bool = True) -> str:
    """The local directory `location` is read from (fetching a URL, writing the default synthetic corpus)."""
    if is_url(location):
        return str(fetch_corpus(location))
    if location != SYNTHETIC_ALIAS:
        return location
    from mixweight.data.synthetic import default_corpus_dir, write_synthetic_corpus

    path = default_corpus_dir()
    if is_main:
        write_synthetic_corpus(path)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # the other processes read the corpus only once the main one has written it
    return str(path)


def open_corpus(location, is_main: bool = True) -> Corpus:
    """The corpus at `location` (see the module docstring), its manifest and streams checked.

    Under torchrun every process calls it: a URL is fetched by each (nodes need no shared
    filesystem); the synthetic corpus is written by the main process while the others wait.
    """
    location = str(location)
    directory = local_directory(location, is_main)
    remote = remote_of(directory)
    try:
        manifest = load_manifest(directory, fetched_lazily=remote is not None)
    except MixweightError as exc:
        if remote is None:
            raise
        raise MixweightError(
            f"{exc} (in the local cache copy of {remote}; if that copy was damaged, delete {directory} to fetch it "
            "again)"
        ) from None
    return Corpus(location, directory, manifest, remote)
