"""Per-domain MDS streams of fixed-length token blocks, written with mosaicml-streaming.

Every sample is one block: ``tokens`` (seq_len token ids) and ``domain`` (the domain's
index in the manifest), so any loader over several streams knows where a sample came from.

Each shard's xxh3_64 hash is recorded in the stream's index (streaming's ``hashes`` option), so
bytes edited in place (the same size) are found: `check_shard_hashes` reads and hashes the shards
of a corpus whose local shards total at most CHEAP_HASH_BYTES (at every start and resume of a run),
and only the validation shards of a larger one (read whole by every evaluation anyway). A larger
corpus's training shards are pinned by their size and modification time instead (`shard_stamp`,
in the run's inputs.json): an in-place edit that also restores the modification time goes unseen
there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
from streaming import MDSWriter
from streaming.base.format import reader_from_json
from streaming.base.format.index import get_index_basename

from mixweight.errors import MixweightError

# Shards of 32 MiB keep the file count low for big corpora and small for tiny ones.
SHARD_SIZE_LIMIT = 1 << 25
SHARD_HASH = "xxh3_64"  # recorded per shard in index.json: fast (GB/s), enough to see an edit
CHEAP_HASH_BYTES = 1 << 30  # every shard is hashed at a run's start up to this many local shard bytes


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype holding every token id: halves disk and IO for vocabularies under 65k."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def write_stream(
    out_dir: str | Path, blocks: Iterable[np.ndarray], domain_id: int, seq_len: int, vocab_size: int
) -> int:
    """Write blocks (each a 1-D array of seq_len ids) as one MDS stream; returns the number written."""
    dtype = token_dtype(vocab_size)
    columns = {"tokens": f"ndarray:{dtype.name}:{seq_len}", "domain": "int32"}
    count = 0
    with MDSWriter(
        out=str(out_dir), columns=columns, size_limit=SHARD_SIZE_LIMIT, hashes=[SHARD_HASH], progress_bar=False
    ) as writer:
        for block in blocks:
            if block.shape != (seq_len,):
                raise ValueError(f"block of shape {block.shape}, expected ({seq_len},)")
            writer.write({"tokens": block.astype(dtype, copy=False), "domain": np.int32(domain_id)})
            count += 1
    return count


TOKEN_DTYPES = ("uint16", "uint32")  # what token_dtype can choose


def accepted_columns(seq_len: int | str) -> dict[str, str]:
    """The columns write_stream writes, as index.json spells them (names sorted, as MDSWriter stores them)."""
    return {"domain": "int32", "tokens": f"ndarray:{'|'.join(TOKEN_DTYPES)}:{seq_len}"}


def read_index(index_path: Path, where: str) -> list[dict]:
    try:
        index = json.loads(index_path.read_text())
        shards = index["shards"]
        if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
            raise TypeError("'shards' is not a list of objects")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MixweightError(
            f"{where}: cannot read the stream index {index_path} ({exc}); re-create the corpus"
        ) from exc
    return shards


def check_encodings(shards: list[dict], index_path: Path, where: str, seq_len: int | None = None) -> None:
    """Refuse any shard whose columns are not exactly what write_stream writes, before a sample is decoded.

    MDS decodes a `pkl` column with pickle (and `json` with a parser of another's choosing): a corpus
    is shared data, so reading one must never run code. Only mixweight's own encodings pass; with
    `seq_len`, the token arrays must also have the manifest's block length.
    """
    wanted = accepted_columns(seq_len if seq_len is not None else "SEQ_LEN")
    accepted = f"accepted: uncompressed MDS shards with columns {wanted}"
    for number, shard in enumerate(shards):
        names, encodings = shard.get("column_names"), shard.get("column_encodings")
        well_formed = (
            isinstance(names, list)
            and isinstance(encodings, list)
            and len(names) == len(encodings)
            and all(isinstance(x, str) for x in names + encodings)
            and len(set(names)) == len(names)
        )
        found = dict(zip(names, encodings)) if well_formed else {}
        problem = None
        if shard.get("format") != "mds" or shard.get("compression") is not None:
            problem = f"format {shard.get('format')!r}, compression {shard.get('compression')!r}"
        elif not well_formed or sorted(found) != sorted(wanted):
            problem = f"columns {names!r} with encodings {encodings!r}"
        else:
            token_kind = str(found["tokens"]).split(":")
            bad_tokens = (
                len(token_kind) != 3
                or token_kind[0] != "ndarray"
                or token_kind[1] not in TOKEN_DTYPES
                or not token_kind[2].isdigit()
                or (seq_len is not None and int(token_kind[2]) != seq_len)
            )
            if found["domain"] != "int32":
                problem = f"column 'domain' encoded as {found['domain']!r}"
            elif bad_tokens:
                problem = f"column 'tokens' encoded as {found['tokens']!r}"
        if problem is not None:
            raise MixweightError(
                f"{where}: shard {number} of {index_path} has {problem}, which mixweight does not read "
                f"(a stream of another tool, or one that could run code when decoded); {accepted}"
            )


def _shard_entry(shard: dict, number: int, index_path: Path, where: str) -> tuple[str, int, int]:
    """(file name, samples, bytes) of one index entry; a name that leaves the directory is refused."""
    try:
        raw, count = shard["raw_data"], int(shard["samples"])
        basename, size = raw["basename"], int(raw["bytes"])
        if not isinstance(basename, str) or "/" in basename or "\\" in basename or basename.startswith("."):
            raise ValueError(f"shard file name {basename!r} is not a file of this directory")
    except (KeyError, TypeError, ValueError) as exc:
        raise MixweightError(
            f"{where}: shard {number} of {index_path} is malformed ({exc}); re-create the corpus"
        ) from exc
    return basename, count, size


def shard_basename(shard: dict, number: int, index_path: Path, where: str) -> str:
    return _shard_entry(shard, number, index_path, where)[0]


def verify_stream(stream_dir: str | Path, where: str, seq_len: int | None = None, fetched_lazily: bool = False) -> int:
    """Check a local stream's index (mixweight's encodings only) and shards (present, complete).

    With `fetched_lazily` (the training streams of a remote corpus's cache copy) a shard not yet
    downloaded is fine; one that is there must still have its indexed size.

    Returns its sample count. Size checks are cheap and catch truncated or missing shards before
    training starts, where mosaicml-streaming would fail later inside a background thread.
    """
    stream_dir = Path(stream_dir)
    index_path = stream_dir / get_index_basename()
    shards = read_index(index_path, where)
    check_encodings(shards, index_path, where, seq_len)
    samples = 0
    for number, shard in enumerate(shards):
        basename, count, size = _shard_entry(shard, number, index_path, where)
        path = stream_dir / basename
        if not path.is_file():
            if fetched_lazily:  # a cache copy of a remote stream: streaming downloads the shard when needed
                samples += count
                continue
            raise MixweightError(f"{where}: shard {path} is missing; re-create the corpus")
        if path.stat().st_size != size:
            raise MixweightError(
                f"{where}: shard {path} has {path.stat().st_size} bytes, its index says {size}: "
                "the shard is truncated or corrupted; re-create the corpus"
            )
        samples += count
    return samples


def _local_shards(stream_dir: Path, where: str) -> list[tuple[Path, dict]]:
    """(shard file, its raw_data entry) for every shard of a local stream that is on disk."""
    index_path = stream_dir / get_index_basename()
    found = []
    for number, shard in enumerate(read_index(index_path, where)):
        path = stream_dir / _shard_entry(shard, number, index_path, where)[0]
        if path.is_file():
            found.append((path, shard["raw_data"]))
    return found


def check_shard_hashes(streams: list[tuple[Path, str, bool]]) -> int:
    """Hash the shards of `streams` ((stream dir, where, always)) whose index records SHARD_HASH: every shard
    when they total at most CHEAP_HASH_BYTES, else only those of the streams marked `always` (validation).
    A shard whose bytes differ from its hash: MixweightError naming it. Returns how many were hashed."""
    from streaming.base.hashing import get_hash

    shards = [
        (path, raw, where, always) for stream, where, always in streams for path, raw in _local_shards(stream, where)
    ]
    total = sum(path.stat().st_size for path, _, _, _ in shards)
    hashed = 0
    for path, raw, where, always in shards:
        recorded = raw.get("hashes") if isinstance(raw.get("hashes"), dict) else {}
        if SHARD_HASH not in recorded or not (always or total <= CHEAP_HASH_BYTES):
            continue  # written before hashes were recorded, or too costly to read here
        if get_hash(SHARD_HASH, path.read_bytes()) != recorded[SHARD_HASH]:
            raise MixweightError(
                f"{where}: shard {path} does not match the hash its index records ({SHARD_HASH}): its bytes were "
                "edited or damaged since the corpus was written; re-create the corpus"
            )
        hashed += 1
    return hashed


def shard_stamp(streams: list[Path]) -> str:
    """sha256 of every local shard's name, size and modification time: cheap (no reads), and changed by any
    rewrite of a shard's bytes in place (what `inputs.json` pins beside the indexes)."""
    import hashlib

    digest = hashlib.sha256()
    for stream in streams:
        for path, _ in _local_shards(stream, str(stream)):
            info = path.stat()
            digest.update(f"{stream.name}/{path.name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def read_stream(stream_dir: str | Path, limit: int | None = None, seq_len: int | None = None) -> np.ndarray:
    """All blocks of a local stream as an int64 array [n, seq_len], in write order.

    Reads shards directly (no StreamingDataset, hence none of its unsafe-type checks: the
    encodings are checked here), so it needs no shared memory: the right tool for small
    splits such as validation sets and for tests.
    """
    stream_dir = Path(stream_dir)
    index_path = stream_dir / get_index_basename()
    shards = read_index(index_path, str(stream_dir))
    check_encodings(shards, index_path, str(stream_dir), seq_len)
    blocks = []
    for shard_info in shards:
        shard = reader_from_json(str(stream_dir), None, shard_info)
        for i in range(shard.samples):
            blocks.append(np.asarray(shard[i]["tokens"], dtype=np.int64))
            if limit is not None and len(blocks) >= limit:
                return np.stack(blocks)
    if not blocks:
        return np.zeros((0, 0), dtype=np.int64)
    return np.stack(blocks)
